"""ServerProcess, spawn, probe and friends against small Python servers on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pytest_llmperf.errors import EndpointError, ServerError, ServerExitedError, ServerStartTimeout
from pytest_llmperf.servers.control import _describe_transport_error, _llamacpp_build, engine_info, fetch_models, probe
from pytest_llmperf.servers.process import (
    PortInUseError,
    ServerProcess,
    ServerProcessExited,
    _group_alive,
    free_port,
    read_log_tail,
    spawn,
    stop_process_group,
)
from pytest_llmperf.spec import redact_url

SECRET = "sk-llmperf-test-SECRET-0123456789"

# A small HTTP server with switches for the failure modes under test.
SERVER_SCRIPT = textwrap.dedent(
    """
    import argparse, json, os, signal, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--status", type=int, default=200)
    ap.add_argument("--body", default='{"status": "ok"}')
    ap.add_argument("--family", help="spawn a child and a grandchild; write their pids here")
    ap.add_argument("--ignore-term", action="store_true")
    ap.add_argument("--require-key")
    args = ap.parse_args()

    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.family:
        grandchild = "import time; time.sleep(120)"
        child = (
            "import subprocess, sys, time; "
            f"g = subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
            f"open({args.family!r} + '.tmp', 'w').write(f'{{__import__(\\"os\\").getpid()}} {{g.pid}}'); "
            f"__import__('os').replace({args.family!r} + '.tmp', {args.family!r}); time.sleep(120)"
        )
        subprocess.Popen([sys.executable, "-c", child])
        for _ in range(500):
            if os.path.exists(args.family):
                break
            time.sleep(0.01)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                self.reply(args.status, args.body)
            elif self.path == "/v1/models":
                if args.require_key and self.headers.get("Authorization") != "Bearer " + args.require_key:
                    self.reply(401, '{"error": "bad key"}')
                else:
                    self.reply(200, json.dumps({"object": "list", "data": [{"id": "tiny", "owned_by": "suite"}]}))
            else:
                self.reply(404, '{"error": "not found"}')

        def reply(self, status, body):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = HTTPServer(("127.0.0.1", args.port), Handler)
    print("serving on", args.port, flush=True)
    server.serve_forever()
    """
)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_server.py"
    path.write_text(SERVER_SCRIPT)
    return path


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port bound (not listening) by this process: connects are refused, but binding it fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (a zombie counts as gone: PID 1 may never reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: fall back to a signal probe
        try:
            import os

            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return state in ("Z", "X")


def server(script: Path, tmp_path: Path, *args: str, port: int | None = None, timeout_s: float = 10.0) -> ServerProcess:
    port = port if port is not None else free_port()
    return ServerProcess(
        [sys.executable, str(script), "--port", str(port), *args],
        log_path=tmp_path / "logs" / "server.log",
        health_url=f"http://127.0.0.1:{port}/health",
        startup_timeout_s=timeout_s,
        name="tiny",
    )


def sleeper(tmp_path: Path, timeout_s: float) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        log_path=tmp_path / "sleeper.log",
        health_url=f"http://127.0.0.1:{port}/health",
        startup_timeout_s=timeout_s,
        name="sleeper",
    )


def test_start_and_stop_as_context_manager(script: Path, tmp_path: Path) -> None:
    with server(script, tmp_path) as srv:
        assert srv.alive
        assert srv.pid is not None
        assert srv.pgid == srv.pid
        assert srv.startup_s is not None
        assert srv.startup_s < 10
        assert httpx.get(srv.health_url, trust_env=False).status_code == 200
        pgid, pid = srv.pgid, srv.pid
    assert gone(pid)
    assert srv.returncode is not None
    assert not _group_alive(pgid)
    assert "serving on" in srv.log_tail()
    assert srv.stop() == srv.returncode  # idempotent


def test_start_twice_is_refused(script: Path, tmp_path: Path) -> None:
    with server(script, tmp_path) as srv, pytest.raises(ServerError, match="already started"):
        srv.start()


def test_missing_command_fails_fast(tmp_path: Path) -> None:
    srv = ServerProcess(
        ["/nonexistent/llmperf-no-such-server", "--port", "1"],
        log_path=tmp_path / "x.log",
        health_url=f"http://127.0.0.1:{free_port()}/health",
        startup_timeout_s=60,
        name="ghost",
    )
    start = time.monotonic()
    with pytest.raises(ServerError, match=r"ghost: cannot start '/nonexistent/llmperf-no-such-server': no such"):
        srv.start()
    # Fast means "not after the 60 s startup timeout": a loaded machine may take seconds to fork, never 20.
    assert time.monotonic() - start < 20
    assert srv.pid is None


def test_immediate_exit_fails_fast_with_code_and_log(tmp_path: Path) -> None:
    srv = ServerProcess(
        [sys.executable, "-c", "import sys; print('fatal: no model at /x.gguf', flush=True); sys.exit(3)"],
        log_path=tmp_path / "exit.log",
        health_url=f"http://127.0.0.1:{free_port()}/health",
        startup_timeout_s=60,
        name="quitter",
    )
    start = time.monotonic()
    with pytest.raises(ServerExitedError, match="quitter exited with code 3") as info:
        srv.start()
    # Fast means "not after the 60 s startup timeout": a loaded machine may take seconds to start Python.
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "fatal: no model at /x.gguf" in message
    assert str(tmp_path / "exit.log") in message
    assert isinstance(info.value, ServerProcessExited)
    assert info.value.returncode == 3
    assert "fatal: no model" in info.value.log_tail


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(None, id="never-listens"),
        pytest.param(("--status", "503"), id="http-503"),
        pytest.param(("--body", '{"status": "unhealthy"}'), id="200-but-unhealthy"),
    ],
)
def test_never_ready_times_out(script: Path, tmp_path: Path, args: tuple[str, ...] | None) -> None:
    srv = sleeper(tmp_path, 0.6) if args is None else server(script, tmp_path, *args, timeout_s=0.6)
    start = time.monotonic()
    with pytest.raises(ServerStartTimeout) as info:
        srv.start()
    # The 0.6 s timeout, then a stop that SIGTERM ends at once: seconds on a loaded machine. Without the timeout
    # the start would wait for as long as the sleeper sleeps (60 s), or for ever.
    assert time.monotonic() - start < 30
    assert srv.health_url in str(info.value)
    assert str(srv.log_path) in str(info.value)
    assert not srv.alive
    assert srv.pid is not None
    assert gone(srv.pid)


def test_stop_kills_the_whole_group(script: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "family.pids"
    srv = server(script, tmp_path, "--family", str(pidfile)).start()
    child, grandchild = map(int, pidfile.read_text().split())
    assert not gone(child)
    assert not gone(grandchild)
    pgid = srv.pgid
    assert pgid is not None
    srv.stop(timeout_s=5)
    assert gone(srv.pid or 0)
    assert gone(child)
    assert gone(grandchild)
    assert not _group_alive(pgid)


def test_stop_escalates_to_sigkill(script: Path, tmp_path: Path) -> None:
    srv = server(script, tmp_path, "--ignore-term").start()
    start = time.monotonic()
    assert srv.stop(timeout_s=0.3) == -9
    # Below stop()'s default 10 s, so the 0.3 s given is what it waited before the SIGKILL; the rest is slack
    # for a loaded machine.
    assert time.monotonic() - start < 8


def test_keyboard_interrupt_during_wait_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    def interrupted(self: ServerProcess, client: object, timeout_s: float) -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return False

    monkeypatch.setattr(ServerProcess, "_check_health", interrupted)
    srv = sleeper(tmp_path, 30)
    with pytest.raises(KeyboardInterrupt):
        srv.start()
    assert not srv.alive
    assert srv.pid is not None
    assert gone(srv.pid)
    assert srv.pgid is not None
    assert not _group_alive(srv.pgid)


def test_port_already_listening_is_refused_before_start(tmp_path: Path, script: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        srv = server(script, tmp_path, port=port)
        with pytest.raises(PortInUseError, match=f"already listening on 127.0.0.1:{port}"):
            srv.start()
    assert srv.pid is None


def test_bind_failure_in_log_is_port_in_use(tmp_path: Path, script: Path, held_port: int) -> None:
    srv = server(script, tmp_path, port=held_port)
    with pytest.raises(PortInUseError, match="could not bind its port") as info:
        srv.start()
    assert info.value.returncode == 1
    assert "Address already in use" in info.value.log_tail


def test_spawn_retries_on_a_new_port(tmp_path: Path, script: Path, held_port: int) -> None:
    ports: list[int] = []

    def make_argv(port: int) -> list[str]:
        ports.append(port)
        # The first attempt "loses the race": its server tries to bind a port someone else holds.
        return [sys.executable, str(script), "--port", str(held_port if len(ports) == 1 else port)]

    srv = spawn(make_argv, log_path=tmp_path / "spawn.log", startup_timeout_s=10, name="racer")
    try:
        assert len(ports) == 2
        assert srv.health_url == f"http://127.0.0.1:{ports[1]}/health"
        assert srv.base_url == f"http://127.0.0.1:{ports[1]}"
    finally:
        srv.stop()


def test_spawn_gives_up_after_attempts(tmp_path: Path, script: Path, held_port: int) -> None:
    with pytest.raises(PortInUseError):
        spawn(
            lambda port: [sys.executable, str(script), "--port", str(held_port)],
            log_path=tmp_path / "spawn.log",
            startup_timeout_s=10,
            attempts=2,
        )


def test_atexit_stops_leftover_servers(tmp_path: Path, script: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from pytest_llmperf.servers.process import ServerProcess, free_port
        port = free_port()
        srv = ServerProcess([sys.executable, {str(script)!r}, "--port", str(port)],
                            log_path=Path({str(tmp_path / "atexit.log")!r}),
                            health_url=f"http://127.0.0.1:{{port}}/health", startup_timeout_s=10)
        srv.start()
        print(srv.pid, flush=True)
        if sys.argv[1] == "detach":
            srv.detach()
        """
    )
    out = subprocess.run([sys.executable, "-c", code, "keep"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert gone(int(out.stdout))

    out = subprocess.run([sys.executable, "-c", code, "detach"], capture_output=True, text=True, timeout=30)
    pid = int(out.stdout)
    try:
        assert not gone(pid)  # detached: ownership passed on, so the exit hook left it running
    finally:
        assert stop_process_group(pid, timeout_s=5)
    assert gone(pid)


def test_read_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert read_log_tail(log, 3) == "line 9997\nline 9998\nline 9999"
    assert read_log_tail(tmp_path / "missing.log") == ""


def test_probe_closed_port_names_url(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(EndpointError) as info:
        probe(url, timeout_s=2, api_key=SECRET)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "refused" in message
    assert "port" in message
    assert SECRET not in message
    assert SECRET not in repr(info.value)


def test_control_plane_against_live_server(script: Path, tmp_path: Path) -> None:
    with server(script, tmp_path, "--require-key", SECRET) as srv:
        url = srv.base_url
        probe(url, timeout_s=5, api_key=SECRET)
        assert fetch_models(url, SECRET) == ["tiny"]
        with pytest.raises(EndpointError, match="HTTP 401") as info:
            probe(url, timeout_s=5, api_key="sk-wrong-key-987")
        assert "sk-wrong-key-987" not in str(info.value)
        with pytest.raises(EndpointError, match="pass a valid API key"):
            fetch_models(url)
        with pytest.raises(EndpointError, match=r"HTTP 404.*root URL"):
            probe(url + "/v1", timeout_s=5, api_key=SECRET)
        info_dict = engine_info(url, SECRET)
        assert info_dict["engine"] == "unknown"
        assert info_dict["engine_version"] is None
        assert info_dict["owned_by"] == "suite"
        assert str(info_dict["server_header"]).startswith("BaseHTTP")
        assert SECRET not in repr(info_dict)


def test_engine_info_unreachable() -> None:
    with pytest.raises(EndpointError, match="refused"):
        engine_info(f"http://127.0.0.1:{free_port()}", SECRET, timeout_s=2)


def test_transport_error_hints() -> None:
    dns = httpx.ConnectError("[Errno -2] Name or service not known")
    assert "cannot resolve the host name" in _describe_transport_error(dns, "http://gpu-node:8000/v1/models", 5)
    slow = httpx.ConnectTimeout("timed out")
    assert "did not answer within 5 s" in _describe_transport_error(slow, "http://gpu-node:8000/v1/models", 5)


def test_redact_url() -> None:
    assert redact_url("http://user:pw@host:8000/v1") == "http://host:8000/v1"
    assert redact_url("http://host:8000") == "http://host:8000"


@pytest.mark.parametrize(
    ("build_info", "url", "shown"),
    [
        ("b6700-1a2b3c4", "http://127.0.0.1:9", "b6700-1a2b3c4"),  # a build with git information, as it is
        ("b0-1a2b3c4", "http://127.0.0.1:9", "commit 1a2b3c4"),
        ("b0-unknown", "http://gpu-node:8000", "unknown"),  # a remote server: the local package says nothing
        ("b0-unknown", "http://127.0.0.1:{free}", "unknown"),  # nothing of the package listens there
    ],
)
def test_llamacpp_build_without_git_information_is_unknown(build_info: str, url: str, shown: str) -> None:
    # The free port is found here, not in the parameters: xdist workers must collect the same test ids.
    assert _llamacpp_build(build_info, url.format(free=free_port())) == shown
