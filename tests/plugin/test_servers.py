"""Spawned servers as users meet them: profiles, faults, xdist sharing, the launcher hook, no leftovers."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SMALL_TEST = """
import pytest

@pytest.mark.perf(input_len=16, output_len=8, num_prompts=6, concurrency=3)
def test_small(llmperf):
    result = llmperf.run()
    assert result.completed == 6
"""


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: nothing reaps orphans on some machines)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def write_profiles(path: Path, body: str) -> Path:
    target = path / "profiles.yaml"
    target.write_text(textwrap.dedent(body))
    return target


def recording_sim_profile(tmp: Path, name: str = "recorded", extra: str = "") -> Path:
    """A profile that starts the simulator through a wrapper recording each start (pid, CUDA devices)."""
    wrapper = tmp / "wrapper.py"
    wrapper.write_text(
        textwrap.dedent(
            f"""
            import os, sys
            with open({str(tmp / "starts.log")!r}, "a") as log:
                log.write(f"{{os.getpid()}} {{os.environ.get('CUDA_VISIBLE_DEVICES', '-')}}\\n")
            with open({str(tmp / "ports.log")!r}, "a") as log:
                log.write(sys.argv[sys.argv.index("--port") + 1] + "\\n")
            os.execv(sys.executable, [sys.executable, "-m", "pytest_llmperf.sim", *sys.argv[1:]])
            """
        )
    )
    return write_profiles(
        tmp,
        f"""
        profiles:
          {name}:
            command: ["{{python}}", "{wrapper}", "--host", "{{host}}", "--port", "{{port}}", "--decode-ms", "2"]
            model: llmperf-sim
            engine: pytest-llmperf-sim
            {extra}
        """,
    )


def starts(tmp: Path) -> list[tuple[int, str]]:
    lines = (tmp / "starts.log").read_text().split("\n")
    return [(int(pid), devices) for pid, devices in (line.split() for line in lines if line)]


def test_sim_profile_is_spawned_and_gone_afterwards(pytester: pytest.Pytester) -> None:
    profiles = recording_sim_profile(pytester.path)
    pytester.makepyfile(SMALL_TEST)
    result = pytester.runpytest("--llmperf-server=recorded", f"--llmperf-profiles={profiles}")
    result.assert_outcomes(passed=1)
    ((pid, _),) = starts(pytester.path)
    assert not alive(pid)


def test_builtin_sim_profile(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SMALL_TEST)
    result = pytester.runpytest("--llmperf-server=sim")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*cpu-default · sim * · model llmperf-sim*"])


def test_unknown_profile_lists_the_known_ones(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SMALL_TEST)
    result = pytester.runpytest("--llmperf-server=simm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # at start-up, not once per perf test
    result.stderr.fnmatch_lines(["*--llmperf-server='simm': unknown server profile 'simm' (did you mean 'sim'?)*"])
    result.stderr.fnmatch_lines(["*Known profiles:*llamacpp-tiny*--llmperf-profiles=PATH*"])
    assert "collected" not in result.stdout.str()


def test_missing_program_fails_fast_with_what_to_do(pytester: pytest.Pytester) -> None:
    profiles = write_profiles(
        pytester.path,
        """
        profiles:
          broken:
            command: ["no-such-engine-binary", "--port", "{port}"]
            model: m
        """,
    )
    pytester.makepyfile(SMALL_TEST)
    started = time.monotonic()
    result = pytester.runpytest("--llmperf-server=broken", f"--llmperf-profiles={profiles}")
    assert time.monotonic() - started < 60  # far below the default 120 s startup timeout, even on a loaded machine
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no-such-engine-binary*no such program*"])


def test_server_exiting_at_once_shows_exit_code_and_log_tail(pytester: pytest.Pytester) -> None:
    profiles = write_profiles(
        pytester.path,
        """
        profiles:
          crashing:
            command: ["{python}", "-c", "import sys; print('CUDA out of memory'); sys.exit(3)", "{port}"]
            model: m
            startup_timeout_s: 120
        """,
    )
    pytester.makepyfile(SMALL_TEST)
    started = time.monotonic()
    result = pytester.runpytest("--llmperf-server=crashing", f"--llmperf-profiles={profiles}")
    assert time.monotonic() - started < 60  # far below the 120 s startup timeout, even on a loaded machine
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*exited with code 3*", "*CUDA out of memory*"])


def test_server_never_ready_names_the_health_url(pytester: pytest.Pytester) -> None:
    profiles = write_profiles(
        pytester.path,
        """
        profiles:
          sleepy:
            command: ["{python}", "-c", "import time; time.sleep(60)", "{port}"]
            model: m
            startup_timeout_s: 2
        """,
    )
    pytester.makepyfile(SMALL_TEST)
    result = pytester.runpytest("--llmperf-server=sleepy", f"--llmperf-profiles={profiles}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*did not become ready within 2 s*http://127.0.0.1:*/health*"])


def junit_failures(path: Path) -> dict[str, str]:
    """Test name -> failure message of a JUnit XML file."""
    import xml.etree.ElementTree as ET

    cases = ET.parse(path).getroot().iter("testcase")
    return {
        case.get("name", ""): failure.get("message", "").removeprefix("Failed: ")
        for case in cases
        if (failure := case.find("failure")) is not None
    }


# For a child test: SIGKILL the server once a run is under way (requests running), however slow the machine.
KILL_WHEN_RUNNING = """
import os, signal, threading, time
import httpx

def kill_when_running(endpoint):
    def kill():
        while httpx.get(endpoint.url + "/sim/stats").json()["running"] < 4:
            time.sleep(0.02)
        time.sleep(0.2)
        os.kill(endpoint.pid, signal.SIGKILL)

    threading.Thread(target=kill, daemon=True).start()
"""


def test_server_killed_during_a_run_is_named_and_later_tests_fail_at_once(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(KILL_WHEN_RUNNING)
    pytester.makepyfile(
        test_dies="""
        from conftest import kill_when_running

        def test_killed(llmperf):
            kill_when_running(llmperf.endpoint)
            llmperf.run(input_len=8, output_len=400, num_prompts=40, concurrency=4)  # ~8 s: the kill lands inside

        def test_after(llmperf):
            llmperf.run(input_len=8, output_len=4, num_prompts=2)
        """
    )
    out = pytester.path / "r.json"
    started = time.monotonic()
    result = pytester.runpytest("--llmperf-server=sim", "--junitxml=j.xml", f"--llmperf-json={out}")
    assert time.monotonic() - started < 60
    result.assert_outcomes(failed=2)
    named = "the spawned server sim exited with code -9 (SIGKILL) during test test_dies.py::test_killed; log tail ("
    failures = junit_failures(pytester.path / "j.xml")
    assert failures["test_killed"].startswith(named)
    assert "LLMPERF_SIM_READY" in failures["test_killed"]  # the log tail
    assert failures["test_after"] == failures["test_killed"]  # at once, with the same message: no load sent
    (entry,) = json.loads(out.read_text())["results"]  # what test_killed measured is kept; test_after ran nothing
    assert entry["nodeid"] == "test_dies.py::test_killed"
    assert entry["outcome"] == "failed"
    assert entry["server_exited"].startswith(named)
    assert entry["summary"]["failed"] >= 1
    assert entry["summary"]["completed"] + entry["summary"]["failed"] == 40
    assert len(entry["detail"]["ttfts"]) == 40
    assert len(entry["runs"]) == 1


def test_xdist_workers_learn_that_the_shared_server_died(pytester: pytest.Pytester) -> None:
    profiles = recording_sim_profile(pytester.path)
    died = pytester.path / "died"
    pytester.makeconftest(KILL_WHEN_RUNNING)
    pytester.makepyfile(
        test_a=f"""
        from conftest import kill_when_running

        def test_killed(llmperf):
            kill_when_running(llmperf.endpoint)
            try:  # a run of about 8 s: the kill lands inside it however slowly a loaded machine polls
                llmperf.run(input_len=8, output_len=400, num_prompts=40, concurrency=4)
            finally:
                open({str(died)!r}, "w").close()
        """,
        test_b=f"""
        import os, time
        import pytest

        @pytest.mark.parametrize("n", range(3))
        def test_later(llmperf, n):
            while not os.path.exists({str(died)!r}):
                time.sleep(0.05)
            llmperf.run(input_len=8, output_len=4, num_prompts=2)
        """,
    )
    result = pytester.runpytest(
        "-n",
        "2",
        "--dist",
        "loadfile",
        "--llmperf-server=recorded",
        f"--llmperf-profiles={profiles}",
        "--junitxml=j.xml",
    )
    result.assert_outcomes(failed=4)
    named = "the spawned server recorded exited with code -9 (SIGKILL) during test test_a.py::test_killed; log tail"
    failures = junit_failures(pytester.path / "j.xml")
    assert len(failures) == 4
    assert all(message.startswith(named) for message in failures.values()), failures


def test_xdist_shares_one_server_and_serializes_measurements(pytester: pytest.Pytester) -> None:
    profiles = recording_sim_profile(pytester.path)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perf(input_len=16, output_len=40, num_prompts=8, concurrency=2)
        @pytest.mark.parametrize("n", range(4))
        def test_many(llmperf, n):
            assert llmperf.run().completed == 8
        """
    )
    out = pytester.path / "r.json"
    result = pytester.runpytest(
        "-n", "2", "--llmperf-server=recorded", f"--llmperf-profiles={profiles}", f"--llmperf-json={out}"
    )
    result.assert_outcomes(passed=4)
    ((pid, _),) = starts(pytester.path)  # exactly one server for both workers
    assert not alive(pid)  # and the controller stopped it
    windows = sorted(
        (r["summary"]["started_at_unix"], r["summary"]["ended_at_unix"]) for r in json.loads(out.read_text())["results"]
    )
    assert len(windows) == 4
    for (_, end), (next_start, _) in itertools.pairwise(windows):
        assert end <= next_start  # no two measurements overlapped


def test_gpus_per_server_gives_each_worker_its_own_devices(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    profiles = recording_sim_profile(pytester.path, extra="gpus_per_server: 2")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_each(llmperf, n):
            result = llmperf.run(input_len=8, output_len=4, num_prompts=2)
            assert result.completed == 2
            assert llmperf.endpoint.gpu_count == 2
        """
    )
    result = pytester.runpytest("-n", "2", "--llmperf-server=recorded", f"--llmperf-profiles={profiles}")
    result.assert_outcomes(passed=4)
    recorded = starts(pytester.path)
    assert sorted(devices for _, devices in recorded) == ["0,1", "2,3"]
    assert not any(alive(pid) for pid, _ in recorded)


def test_launcher_hook_supplies_the_command(pytester: pytest.Pytester) -> None:
    marker = pytester.path / "launched.txt"
    pytester.makeconftest(
        f"""
        from pytest_llmperf.spec import Launch

        def pytest_llmperf_launch(config, profile, port, argv):
            # Stand-in for srun/kubectl: a wrapper shell that records the launch, then runs the command.
            return Launch(argv=("sh", "-c", 'echo "$0" > {marker}; exec "$@"', "wrapped", *argv))
        """
    )
    pytester.makepyfile(SMALL_TEST)
    result = pytester.runpytest("--llmperf-server=sim")
    result.assert_outcomes(passed=1)
    assert marker.read_text().strip() == "wrapped"


def test_result_hook_receives_each_run(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makeconftest(
        """
        seen = []

        def pytest_llmperf_result(item, result):
            seen.append((item.name, result["summary"]["completed"]))

        def pytest_sessionfinish(session):
            print("SEEN", seen)
        """
    )
    pytester.makepyfile(SMALL_TEST)
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}", "-s")
    result.stdout.fnmatch_lines(["*SEEN [[]('test_small', 6)[]]*"])


def test_ctrl_c_during_startup_leaves_no_server(
    tmp_path: Path, spawn_pytest: Callable[..., subprocess.Popen[str]]
) -> None:
    pidfile = tmp_path / "server.pid"
    sleeper = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    (tmp_path / "profiles.yaml").write_text(
        "profiles:\n  slow:\n"
        f"    command: ['{{python}}', -c, {json.dumps(sleeper)}, '{{port}}']\n"
        "    model: m\n    startup_timeout_s: 100\n"
    )
    (tmp_path / "test_x.py").write_text(SMALL_TEST)
    proc = spawn_pytest("--llmperf-server=slow", "--llmperf-profiles=profiles.yaml", "test_x.py", cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    server_pid = int(pidfile.read_text())
    assert alive(server_pid)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(server_pid)


def test_sigterm_during_a_run_leaves_no_server(
    tmp_path: Path, spawn_pytest: Callable[..., subprocess.Popen[str]], wait_for_run: Callable[..., None]
) -> None:
    profiles = recording_sim_profile(tmp_path)
    (tmp_path / "test_x.py").write_text(
        "def test_long(llmperf):\n    llmperf.run(input_len=8, output_len=500, num_prompts=40, concurrency=2)\n"
    )
    proc = spawn_pytest("--llmperf-server=recorded", f"--llmperf-profiles={profiles}", "test_x.py", cwd=tmp_path)
    ports = tmp_path / "ports.log"  # written by the wrapper as it starts the simulator
    deadline = time.monotonic() + 60
    while not (ports.exists() and ports.read_text().endswith("\n")):
        assert proc.poll() is None, "pytest ended: the server was never started"
        assert time.monotonic() < deadline, "the server was never started"
        time.sleep(0.1)
    # The last port written is the one in use, should a port have been taken.
    wait_for_run(proc, f"http://127.0.0.1:{ports.read_text().split()[-1]}", running=2)
    ((server_pid, _),) = starts(tmp_path)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert "interrupted; partial results kept" in output  # SIGTERM stops the run as Ctrl-C does
    deadline = time.monotonic() + 10
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(server_pid)


def test_sigterm_during_startup_stops_the_server_and_keeps_the_json(
    tmp_path: Path, spawn_pytest: Callable[..., subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pidfile = tmp_path / "server.pid"
    slow = f"echo $$ > {pidfile}; sleep 6; exec {{python}} -m pytest_llmperf.sim --host {{host}} --port {{port}}"
    write_profiles(
        tmp_path,
        f"""
        profiles:
          slowstart:
            command: ["sh", "-c", {json.dumps(slow)}]
            model: llmperf-sim
            startup_timeout_s: 60
        """,
    )
    (tmp_path / "test_x.py").write_text(SMALL_TEST)
    out = tmp_path / "r.json"
    proc = spawn_pytest(
        "--llmperf-server=slowstart",
        "--llmperf-profiles=profiles.yaml",
        f"--llmperf-json={out}",
        "test_x.py",
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text().endswith("\n")):
        assert proc.poll() is None, "pytest ended: the server was never started"
        assert time.monotonic() < deadline, "the server was never started"
        time.sleep(0.02)
    server_pid = int(pidfile.read_text())
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output  # handled like Ctrl-C, not killed by it
    assert json.loads(out.read_text())["results"] == []
    assert not group_alive(server_pid)  # the shell and its `sleep`
    assert not list((tmp_path / "cache" / "pytest-llmperf" / "servers").glob("*.json"))  # and off the record


def group_alive(pgid: int, wait_s: float = 10.0) -> bool:
    """Whether process group ``pgid`` still has a live member after up to ``wait_s``."""
    from pytest_llmperf.servers.process import _group_alive

    deadline = time.monotonic() + wait_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _group_alive(pgid)


LONG_TESTS = """
import pytest

@pytest.mark.perf(input_len=8, output_len=500, num_prompts=40, concurrency=2)
@pytest.mark.parametrize("n", range(4))
def test_long(llmperf, n):
    llmperf.run()
"""


@pytest.mark.parametrize(
    ("target", "sig"),
    [
        pytest.param("controller", signal.SIGTERM, id="sigterm-controller"),
        pytest.param("group", signal.SIGTERM, id="sigterm-group"),
        pytest.param("group", signal.SIGINT, id="ctrl-c"),
    ],
)
def test_xdist_interrupt_stops_the_shared_server_and_keeps_partial_results(
    tmp_path: Path,
    spawn_pytest: Callable[..., subprocess.Popen[str]],
    wait_for_run: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    sig: signal.Signals,
) -> None:
    temp = tmp_path / "tmp"  # where the controller makes its run directory
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    profiles = recording_sim_profile(tmp_path)
    (tmp_path / "test_x.py").write_text(LONG_TESTS)
    out = tmp_path / "r.json"
    args = ("-n", "2", "--llmperf-server=recorded", f"--llmperf-profiles={profiles}", f"--llmperf-json={out}")
    proc = spawn_pytest(*args, "test_x.py", cwd=tmp_path, new_session=True)
    wait_for_run(proc, f"http://127.0.0.1:{wait_for_port(tmp_path, proc)}", running=2)
    ((server_pid, _),) = starts(tmp_path)
    if target == "group":
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "PluggyTeardownRaisedWarning" not in output
    assert not group_alive(server_pid)
    assert not list(temp.glob("pytest-llmperf-*"))  # the run directory is gone
    assert not list((tmp_path / "cache" / "pytest-llmperf" / "servers").glob("*.json"))
    interrupted = [r for r in json.loads(out.read_text())["results"] if r["outcome"] == "interrupted"]
    assert interrupted, output  # the run in flight reached the controller's JSON
    for entry in interrupted:
        assert entry["nodeid"].startswith("test_x.py::test_long[")
        assert "the run was interrupted by" in entry["interruption"]
        assert len(entry["detail"]["ttfts"]) == entry["summary"]["completed"] + entry["summary"]["failed"]
        assert entry["runs"][-1] == entry["summary"]


def wait_for_port(tmp: Path, proc: subprocess.Popen[str]) -> int:
    """The port of the server the recording wrapper started (the last one, should a port have been taken)."""
    ports = tmp / "ports.log"
    deadline = time.monotonic() + 60
    while not (ports.exists() and ports.read_text().endswith("\n")):
        assert proc.poll() is None, "pytest ended: the server was never started"
        assert time.monotonic() < deadline, "the server was never started"
        time.sleep(0.1)
    return int(ports.read_text().split()[-1])


def test_interrupted_entry_keeps_detail_runs_and_reason(
    tmp_path: Path, spawn_pytest: Callable[..., subprocess.Popen[str]], start_sim: Any
) -> None:
    sim = start_sim("--decode-ms", "2", "--decode-ms-per-seq", "0", "--jitter", "0")
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            import os, signal, threading, time
            import httpx
            from pytest_llmperf.harness import runner

            measure, calls = runner.measure, []

            def interrupt_when_running(url):
                while httpx.get(url + "/sim/stats").json()["running"] < 2:
                    time.sleep(0.02)
                os.kill(os.getpid(), signal.SIGINT)

            def measure_then_interrupt(workload, endpoint, *args, **kwargs):
                calls.append(1)
                if len(calls) == 2:  # Ctrl-C in the second run of the test's llmperf.run() call
                    threading.Thread(target=interrupt_when_running, args=(endpoint.url,), daemon=True).start()
                return measure(workload, endpoint, *args, **kwargs)

            runner.measure = measure_then_interrupt
            """
        )
    )
    (tmp_path / "test_x.py").write_text(
        "def test_twice(llmperf):\n"
        "    llmperf.run(input_len=8, output_len=300, num_prompts=8, concurrency=2, warmup=0)\n"
    )
    out = tmp_path / "r.json"
    proc = spawn_pytest(
        f"--llmperf-endpoint={sim.url}",
        "--llmperf-update",  # every run of the budget is measured
        "--llmperf-repeats=3",
        f"--llmperf-baselines={tmp_path / 'baselines'}",
        f"--llmperf-json={out}",
        "test_x.py",
        cwd=tmp_path,
    )
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    (entry,) = json.loads(out.read_text())["results"]
    assert entry["outcome"] == "interrupted"
    assert entry["interruption"].startswith("the run was interrupted by Ctrl-C")
    assert entry["notes"] == [entry["interruption"]]
    first, second = entry["runs"]  # the complete first run and the interrupted one
    assert first["completed"] == 8
    assert second == entry["summary"]
    assert second["interrupted"]
    assert len(entry["detail"]["ttfts"]) == second["completed"] + second["failed"]  # cancelled ones included


def test_a_server_left_by_a_killed_session_is_stopped_by_the_next(
    tmp_path: Path,
    spawn_pytest: Callable[..., subprocess.Popen[str]],
    wait_for_run: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    records = tmp_path / "cache" / "pytest-llmperf" / "servers"
    profiles = recording_sim_profile(tmp_path)
    (tmp_path / "test_x.py").write_text(LONG_TESTS)
    proc = spawn_pytest("--llmperf-server=recorded", f"--llmperf-profiles={profiles}", "test_x.py", cwd=tmp_path)
    wait_for_run(proc, f"http://127.0.0.1:{wait_for_port(tmp_path, proc)}", running=2)
    ((server_pid, _),) = starts(tmp_path)
    (record,) = records.glob("*.json")
    assert json.loads(record.read_text())["pid"] == server_pid
    proc.kill()  # SIGKILL cannot be caught: the server outlives pytest
    proc.communicate(timeout=30)
    assert alive(server_pid)
    (tmp_path / "test_y.py").write_text("def test_nothing():\n    pass\n")
    output, _ = spawn_pytest("test_y.py", cwd=tmp_path).communicate(timeout=60)
    assert f"llmperf: stopped a server an earlier session left running: recorded (pid {server_pid}," in output
    assert not group_alive(server_pid)
    assert not list(records.glob("*.json"))
