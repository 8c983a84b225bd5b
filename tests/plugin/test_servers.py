"""Spawned servers as users meet them: profiles, faults, xdist sharing, the launcher hook, no leftovers."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

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
    assert time.monotonic() - started < 20
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
    assert time.monotonic() - started < 30  # far below the 120 s startup timeout
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


def test_server_killed_during_a_run_fails_the_requests_without_hanging(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, signal, threading

        def test_killed(llmperf):
            pid = llmperf.endpoint.pid
            threading.Timer(1.5, os.kill, (pid, signal.SIGKILL)).start()
            llmperf.run(input_len=8, output_len=100, num_prompts=40, concurrency=4)
        """
    )
    started = time.monotonic()
    result = pytester.runpytest("--llmperf-server=sim", "--junitxml=j.xml")
    assert time.monotonic() - started < 60
    result.assert_outcomes(failed=1)  # the default error_rate <= 0 contract fails it, in the call phase
    result.stdout.fnmatch_lines(["*SLO breached in run 1 of 1*", "*error_rate (default)*BREACH*"])
    junit = (pytester.path / "j.xml").read_text()
    assert "<failure" in junit
    assert "error_rate" in junit


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
