"""Spawning, probing and stopping inference servers. No pytest import: the fixtures wrap what is here.

Lifecycle of a spawned server (:class:`ServerProcess`):

- it runs in a new session, so it has its own process group and a Ctrl-C in the terminal reaches only
  pytest, which then stops the server deliberately; stdout and stderr go to a log file;
- readiness is "the process is alive **and** the health URL answers 2xx", polled against a deadline; a
  process that exits while we wait raises :class:`ServerExitedError` at once, with its log tail;
- stop sends SIGTERM to the whole group, waits, then SIGKILLs the group; an ``atexit`` hook stops any
  group still running when the interpreter exits;
- given a ``registry_dir``, the server is on record there from its start until it is stopped, so that a
  later session can stop it should this process be killed with SIGKILL (:mod:`pytest_llmperf.servers.registry`). An
  interrupt that arrives while the process is being started waits until it is on record.

Ports: :func:`free_port` asks the OS for a free port, which another process can take before the server
binds it. :func:`spawn` closes that race: before each start it checks that nothing listens on the port,
and if the server exits with a bind failure in its log it retries with a fresh port (a bounded number of
times). :class:`ServerProcess` alone never retries; it raises :class:`PortInUseError`.

API keys travel only in ``Authorization: Bearer`` headers; they are never put into an exception, a log
line or a return value.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from pytest_llmperf.client.interrupts import deferred
from pytest_llmperf.errors import PortInUseError, ServerError, ServerProcessExited, ServerStartTimeout
from pytest_llmperf.servers import registry

if TYPE_CHECKING:
    import httpx

__all__ = [
    "PortInUseError",
    "ServerProcess",
    "ServerProcessExited",
    "free_port",
    "read_log_tail",
    "spawn",
    "stop_process_group",
    "zombie_exit_code",
]

LOG_TAIL_LINES = 40

# Phrases servers print when they cannot bind their port (llama.cpp, uvicorn, Python, Go, Rust runtimes).
_BIND_FAILURE = re.compile(
    r"address already in use|couldn't bind|could not bind|failed to bind|eaddrinuse|errno 98\b|os error 98",
    re.IGNORECASE,
)
# A 2xx health body that still says "not ready" (Dynamo's frontend answers 200 before workers register).
_NOT_READY_STATUSES = frozenset({"unhealthy", "not_ready", "notready", "starting", "loading"})


# Every group started by this interpreter and not yet stopped; the atexit hook stops them.
_RUNNING: dict[int, ServerProcess] = {}


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING.values()):
        # A forked child inherits this registry; only the process that started a server stops it.
        if server._owner_pid == os.getpid():
            server.stop(timeout_s=2.0)


class ServerProcess:
    """One server process (and its whole process group), started and stopped deliberately.

    Use it as a context manager::

        with ServerProcess(argv, log_path=log, health_url=url, startup_timeout_s=60, name="llama") as srv:
            ...  # srv is healthy here; its group is gone after the block

    ``env`` is overlaid on the current environment (``None`` inherits it unchanged).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path,
        health_url: str,
        startup_timeout_s: float = 120.0,
        name: str = "server",
        registry_dir: Path | None = None,
    ) -> None:
        if not argv:
            raise ServerError(f"{name}: empty command; give the program to run and its arguments")
        self.argv = [str(a) for a in argv]
        self.env = dict(env) if env is not None else None
        self.log_path = Path(log_path)
        self.health_url = health_url
        self.startup_timeout_s = startup_timeout_s
        self.name = name
        self.returncode: int | None = None
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None
        self._owner_pid = os.getpid()
        self.registry_dir = registry_dir
        self.record: Path | None = None  # this server's file in registry_dir while it runs

    def __repr__(self) -> str:
        return f"<ServerProcess {self.name} pid={self.pid} alive={self.alive} log={str(self.log_path)!r}>"

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def pgid(self) -> int | None:
        return self._pgid

    @property
    def alive(self) -> bool:
        """Whether the main process is still running (its group may outlive it; :meth:`stop` handles both)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def base_url(self) -> str:
        """``scheme://host:port`` of the health URL."""
        parts = urlsplit(self.health_url)
        return urlunsplit((parts.scheme, parts.netloc, "", "", ""))

    def start(self) -> ServerProcess:
        """Launch the process and return once it is healthy. Stops it again on any failure or interrupt."""
        if self._proc is not None:
            raise ServerError(f"{self.name}: already started (pid {self.pid}); create a new ServerProcess")
        _check_port_free(self.health_url, self.name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with deferred():  # an interrupt acts once the group is known and on record, so it stops the server
                self._launch()
        except BaseException:
            self.stop(timeout_s=5.0)
            raise
        self.wait_ready()
        return self

    def _launch(self) -> None:
        token = registry.new_token()
        env = {**os.environ, **(self.env or {}), registry.TOKEN_ENV: token}
        with open(self.log_path, "wb") as log:
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except FileNotFoundError:
                raise ServerError(
                    f"{self.name}: cannot start {self.argv[0]!r}: no such program. Install it, put it on "
                    "PATH, or fix the profile's command."
                ) from None
            except PermissionError:
                raise ServerError(
                    f"{self.name}: cannot start {self.argv[0]!r}: permission denied. Check that it is an "
                    "executable file (chmod +x)."
                ) from None
        # start_new_session makes the child a session and group leader: its pgid is its pid.
        self._pgid = self._proc.pid
        _RUNNING[self._proc.pid] = self
        if self.registry_dir is not None:
            self.record = registry.record(
                self.registry_dir,
                pid=self._proc.pid,
                argv=self.argv,
                name=self.name,
                token=token,
                log_path=self.log_path,
            )

    def wait_ready(self) -> None:
        """Poll "alive and healthy" until the deadline.

        Raises :class:`ServerExitedError` (or :class:`PortInUseError`) as soon as the process exits, and
        :class:`ServerStartTimeout` at the deadline. On any failure, including KeyboardInterrupt, the
        process group is stopped before the exception propagates.
        """
        import httpx

        if self._proc is None:
            raise ServerError(f"{self.name}: not started; call start() first")
        started = time.monotonic()
        deadline = started + self.startup_timeout_s
        pause = 0.02
        try:
            with httpx.Client(trust_env=False) as client:
                while True:
                    code = self._proc.poll()
                    if code is not None:
                        raise self._exited_error(code)
                    if self._check_health(client, max(0.05, min(2.0, deadline - time.monotonic()))):
                        self.startup_s = time.monotonic() - started
                        registry.note_command(self.record, self._proc.pid)
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ServerStartTimeout(
                            f"{self.name} did not become ready within {self.startup_timeout_s:g} s: "
                            f"{self.health_url} never answered 2xx while the process (pid {self.pid}) was "
                            f"running. Its log is {self.log_path}. Raise the profile's startup_timeout_s "
                            "if it is only slow (large model, first compile), else read the log."
                            + _format_tail(self.log_tail())
                        )
                    time.sleep(min(pause, remaining))
                    pause = min(pause * 1.5, 0.5)
        except BaseException:
            self.stop(timeout_s=5.0)
            raise

    def _check_health(self, client: httpx.Client, timeout_s: float) -> bool:
        import httpx

        try:
            response = client.get(self.health_url, timeout=timeout_s)
        except httpx.HTTPError:
            return False
        if not response.is_success:
            return False
        with contextlib.suppress(ValueError):
            body = response.json()
            if isinstance(body, dict) and str(body.get("status", "")).lower() in _NOT_READY_STATUSES:
                return False
        return True

    def _exited_error(self, code: int) -> ServerProcessExited:
        tail = self.log_tail()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if _BIND_FAILURE.search(tail):
            return PortInUseError(
                f"{self.name} {how}: it could not bind its port ({self.base_url}); another process holds "
                f"it. Stop that process or use another port. Log: {self.log_path}" + _format_tail(tail),
                code,
                tail,
                self.log_path,
            )
        return ServerProcessExited(
            f"{self.name} {how} before it became ready. Command: {_quote(self.argv)}. Log: "
            f"{self.log_path}" + _format_tail(tail),
            code,
            tail,
            self.log_path,
        )

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the process group, wait up to ``timeout_s``, then SIGKILL it. Idempotent.

        Returns the main process's exit code (negative for a signal, as :mod:`subprocess` reports it), or
        ``None`` if it was never started.
        """
        if self._proc is None:
            return None
        if self._pgid is None or stop_process_group(self._pgid, timeout_s=timeout_s, reap=self._proc):
            registry.forget(self.record)  # kept while anything of the group may remain, for a later session
        try:
            self.returncode = self._proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:  # only if the kernel refused SIGKILL (uninterruptible sleep)
            self.returncode = self._proc.poll()
        _RUNNING.pop(self._proc.pid, None)
        return self.returncode

    def detach(self, owner_pid: int | None = None) -> None:
        """Hand ownership to another process (e.g. the pytest-xdist controller, which will call
        :func:`stop_process_group` with :attr:`pgid`): the ``atexit`` hook here will leave it running.
        ``owner_pid`` becomes the owner on record, whose death lets a later session stop the server."""
        if self._proc is not None:
            _RUNNING.pop(self._proc.pid, None)
        if owner_pid is not None:
            registry.hand_over(self.record, owner_pid)

    def exit_code(self) -> int | None:
        """The main process's exit code once it has exited (it is this process's child), else None."""
        return self._proc.poll() if self._proc is not None else None

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        """The last ``n`` lines of the server log ("" if there is none yet)."""
        return read_log_tail(self.log_path, n)


def read_log_tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    """Last ``n`` lines of a log file, decoded leniently; reads only the end of a large file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])


def zombie_exit_code(pid: int) -> int | None:
    """Exit code of ``pid`` while it is a zombie its parent has not reaped (``/proc/PID/stat``), as
    :mod:`subprocess` gives it (negative for a signal); None when unknown. Lets an xdist worker that did not
    start a shared server tell how it ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    if len(fields) < 50 or fields[0] != "Z":  # the exit_code field exists since Linux 3.5
        return None
    status = int(fields[49])
    return -(status & 0x7F) if status & 0x7F else (status >> 8) & 0xFF


def _format_tail(tail: str) -> str:
    if not tail.strip():
        return "\n(the log is empty)"
    return "\n--- last lines of the server log ---\n" + tail


def _quote(argv: Sequence[str]) -> str:
    import shlex

    return shlex.join(argv)


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process remains in group ``pgid``.

    Zombies count as gone: orphans are re-parented to PID 1, and some container init processes never
    reap them, so ``killpg(pgid, 0)`` would keep succeeding for a group that is really dead.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def stop_process_group(pgid: int, *, timeout_s: float = 10.0, reap: subprocess.Popen[bytes] | None = None) -> bool:
    """SIGTERM every process in group ``pgid``, wait up to ``timeout_s`` for them to exit, then SIGKILL.

    ``reap`` is the group leader's Popen when this process started it, so that its zombie is collected
    while waiting. Returns whether the group is gone (after SIGKILL it waits at most two more seconds).
    """

    def signal_group(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def wait_gone(budget_s: float) -> bool:
        end = time.monotonic() + budget_s
        pause = 0.01
        while True:
            if reap is not None:
                reap.poll()
            if not _group_alive(pgid):
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    if not _group_alive(pgid):
        return True
    signal_group(signal.SIGTERM)
    if wait_gone(timeout_s):
        return True
    signal_group(signal.SIGKILL)
    return wait_gone(2.0)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the OS's choice). Another process may take it
    before the server binds it; :func:`spawn` handles that race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _check_port_free(health_url: str, name: str) -> None:
    """Raise :class:`PortInUseError` if something already accepts connections on the health URL's port.

    Without this check a leftover server on the same port would pass our health probe while our own
    process fails to bind, and we would measure the wrong server.
    """
    parts = urlsplit(health_url)
    host, port = parts.hostname, parts.port
    if host is None or port is None:
        return
    try:
        with socket.create_connection((host, port), timeout=0.5):
            pass
    except OSError:
        return
    raise PortInUseError(
        f"{name}: something is already listening on {host}:{port} before the server started: a server "
        "left over from an earlier run, or another service. Stop it or choose another port."
    )


def spawn(
    make_argv: Callable[[int], Sequence[str]],
    *,
    host: str = "127.0.0.1",
    health_path: str = "/health",
    env: Mapping[str, str] | None = None,
    log_path: Path,
    startup_timeout_s: float = 120.0,
    name: str = "server",
    attempts: int = 3,
    registry_dir: Path | None = None,
) -> ServerProcess:
    """Start a server on a free port and return it healthy; retry on a new port if the port was taken.

    ``make_argv(port)`` builds the command for a port. Only :class:`PortInUseError` is retried (at most
    ``attempts`` starts); every other failure propagates at once.
    """
    last: PortInUseError | None = None
    for _ in range(max(1, attempts)):
        port = free_port(host)
        server = ServerProcess(
            make_argv(port),
            env=env,
            log_path=log_path,
            health_url=f"http://{_host_for_url(host)}:{port}{health_path}",
            startup_timeout_s=startup_timeout_s,
            name=name,
            registry_dir=registry_dir,
        )
        try:
            return server.start()
        except PortInUseError as exc:
            last = exc
    assert last is not None
    raise last


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# --- control plane of a running server (attach mode and engine info) ----------------------------------
