"""Scaling the client out as a user does: ``--llmperf-client-procs`` and ``--llmperf-ray`` against the simulator.

The same tests, the same verdicts, one merged run per test; bad values and a missing Ray are usage errors that
say what to do; Ctrl-C keeps what the processes measured and leaves none of them behind.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_llmperf.client.rayshards import ray_installed

TESTS = """
import pytest

@pytest.mark.perf(input_len=24, output_len=16, num_prompts=24, concurrency=4, repeats=2)
def test_closed(llmperf):
    result = llmperf.run()
    assert result.completed == 24 and result.failed == 0

@pytest.mark.perf(input_len=24, output_len=8, num_prompts=12, request_rate=20.0, repeats=2)
def test_open(llmperf):
    assert llmperf.run().completed == 12
"""
JUDGING = ("--llmperf-tolerance=0.6", "--llmperf-inconclusive=warn")


@pytest.fixture
def steady_sim(start_sim: Callable[..., object]) -> str:
    """10 ms decode steps and a 15 ms prefill: latencies well above a loaded machine's scheduling noise, so the
    verdicts compared below are decided ones."""
    sim = start_sim("--decode-ms", "10", "--decode-ms-per-seq", "0", "--prefill-tok-s", "1600", "--jitter", "0")
    return str(sim.url)  # type: ignore[attr-defined]


def summaries(path: Path) -> dict[str, list[dict[str, object]]]:
    document = json.loads(path.read_text())
    return {r["nodeid"].rpartition("::")[2]: r["runs"] for r in document["results"]}


def verdicts(path: Path) -> dict[str, str]:
    document = json.loads(path.read_text())
    return {r["nodeid"].rpartition("::")[2]: r["verdict"]["status"] for r in document["results"]}


def test_two_client_processes_give_the_same_counts_and_verdicts(pytester: pytest.Pytester, steady_sim: str) -> None:
    pytester.makepyfile(TESTS)
    endpoint = f"--llmperf-endpoint={steady_sim}"
    pytester.runpytest(endpoint, "--llmperf-update").assert_outcomes(passed=2)
    one, two = pytester.path / "one.json", pytester.path / "two.json"
    pytester.runpytest(endpoint, *JUDGING, f"--llmperf-json={one}").assert_outcomes(passed=2)
    result = pytester.runpytest(endpoint, *JUDGING, "--llmperf-client-procs=2", f"--llmperf-json={two}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*load sent by 2 client processes (or Ray actors) per run, merged*"])
    for name, runs in summaries(two).items():
        assert {r["client_processes"] for r in runs} == {2}, name
        assert {r["completed"] for r in runs} == {r["completed"] for r in summaries(one)[name]}
    assert verdicts(two) == verdicts(one) == {"test_closed": "PASS", "test_open": "PASS"}


def test_auto_sizes_the_client_within_the_free_cores(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(TESTS)
    out = pytester.path / "auto.json"
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}", "--llmperf-client-procs=auto", f"--llmperf-json={out}")
    result.assert_outcomes(passed=2)
    first, *_later = summaries(out)["test_closed"]
    # Nothing measured before the first run: every free core (at most the 4 slots).
    assert 1 <= int(str(first["client_processes"])) <= 4
    second = summaries(out)["test_open"][0]
    assert second["client_processes"] == 1  # then what the rate needs: a few hundred events/s, one process


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--llmperf-client-procs=0", "*--llmperf-client-procs='0': expected auto or client processes between 1*"),
        ("--llmperf-client-procs=two", "*--llmperf-client-procs='two': expected auto or client processes*"),
        ("--llmperf-ray=my cluster", "*--llmperf-ray='my cluster': expected auto*local, ray://HOST:10001*"),
    ],
)
def test_bad_values_are_usage_errors(pytester: pytest.Pytester, sim_url: str, option: str, message: str) -> None:
    pytester.makepyfile(TESTS)
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_without_ray_the_option_names_the_extra(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makeconftest("import sys\nsys.modules['ray'] = None  # as if Ray were not installed\n")
    pytester.makepyfile(TESTS)
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}", "--llmperf-ray=auto")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmperf-ray='auto': Ray is not installed: pip install 'pytest-llmperf[[]ray]'*"])


def ray_processes(tag: str) -> list[str]:
    """Ray's raylet and GCS processes that carry ``tag`` in their environment: the ones a session started with
    that tag set (they inherit it), not another xdist worker's."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if (b"raylet" in cmdline or b"gcs_server" in cmdline) and tag.encode() in (
                    entry / "environ"
                ).read_bytes():
                    found.append(entry.name)
            except OSError:
                continue
    return found


@pytest.mark.skipif(not ray_installed(), reason="Ray is not installed (extra [ray], in [dev])")
def test_ray_actors_measure_what_one_process_does(
    pytester: pytest.Pytester, steady_sim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(TESTS)
    endpoint = f"--llmperf-endpoint={steady_sim}"
    pytester.runpytest(endpoint, "--llmperf-update").assert_outcomes(passed=2)
    one, ray = pytester.path / "one.json", pytester.path / "ray.json"
    pytester.runpytest(endpoint, *JUDGING, f"--llmperf-json={one}").assert_outcomes(passed=2)
    tag = f"LLMPERF_TEST_RAY_SESSION={secrets.token_hex(8)}"
    monkeypatch.setenv(*tag.split("="))
    # A subprocess: a local Ray instance starts and stops with the session, not with this test process.
    result = pytester.runpytest_subprocess(
        endpoint, *JUDGING, "--llmperf-ray=local", "--llmperf-client-procs=2", f"--llmperf-json={ray}"
    )
    result.assert_outcomes(passed=2)
    for name, runs in summaries(ray).items():
        assert {r["client_processes"] for r in runs} == {2}, name
        assert {r["completed"] for r in runs} == {r["completed"] for r in summaries(one)[name]}
    assert verdicts(ray) == verdicts(one) == {"test_closed": "PASS", "test_open": "PASS"}
    deadline = time.monotonic() + 20
    while ray_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_processes(tag), "the session's local Ray instance is gone with it"


def tagged_processes(tag: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if tag.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_ctrl_c_keeps_what_every_process_measured_and_leaves_none_behind(
    tmp_path: Path,
    start_sim: Callable[..., object],
    spawn_pytest: Callable[..., subprocess.Popen[str]],
    wait_for_run: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = start_sim("--decode-ms", "50", "--jitter", "0")
    (tmp_path / "test_long.py").write_text(
        "def test_long(llmperf):\n    llmperf.run(input_len=8, output_len=400, num_prompts=40, concurrency=4)\n"
    )
    tag = f"LLMPERF_TEST_TAG={secrets.token_hex(8)}"
    monkeypatch.setenv(*tag.split("="))
    out = tmp_path / "r.json"
    url = sim.url  # type: ignore[attr-defined]
    proc = spawn_pytest(
        f"--llmperf-endpoint={url}", "--llmperf-client-procs=2", f"--llmperf-json={out}", "test_long.py", cwd=tmp_path
    )
    wait_for_run(proc, url, running=4)
    assert len(tagged_processes(tag)) >= 3  # pytest and its two client processes
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert "interrupted; partial results kept" in output
    (result,) = json.loads(out.read_text())["results"]
    assert result["summary"]["interrupted"] is True
    assert result["summary"]["completed"] + result["summary"]["failed"] > 0
    assert tagged_processes(tag) == []


def test_under_xdist_each_workers_runs_are_sharded(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(TESTS)
    out = pytester.path / "xdist.json"
    result = pytester.runpytest(
        f"--llmperf-endpoint={sim_url}", "-n", "2", "--llmperf-client-procs=2", f"--llmperf-json={out}"
    )
    result.assert_outcomes(passed=2)
    for name, runs in summaries(out).items():
        assert {r["client_processes"] for r in runs} == {2}, name


@pytest.mark.skipif(not ray_installed(), reason="Ray is not installed (extra [ray], in [dev])")
def test_a_ray_cluster_that_does_not_answer_is_a_usage_error_at_once(pytester: pytest.Pytester, sim_url: str) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pytester.makepyfile(TESTS)
    started = time.monotonic()
    result = pytester.runpytest_subprocess(f"--llmperf-endpoint={sim_url}", f"--llmperf-ray=127.0.0.1:{port}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--llmperf-ray=127.0.0.1:{port}: nothing answers there*"])
    assert time.monotonic() - started < 60


@pytest.mark.skipif(not ray_installed(), reason="Ray is not installed (extra [ray], in [dev])")
def test_sigterm_still_stops_a_run_with_ray_as_ctrl_c_does(
    tmp_path: Path,
    spawn_pytest: Callable[..., subprocess.Popen[str]],
    wait_for_run: Callable[..., None],
) -> None:
    # A spawned server: SIGTERM then acts as Ctrl-C (so that its teardown stops the server), and ray.init, which
    # installs a SIGTERM handler of its own, must not take that away.
    (tmp_path / "test_long.py").write_text(
        "def test_long(llmperf):\n"
        "    print('URL', llmperf.endpoint.url, flush=True)\n"
        "    llmperf.run(input_len=8, output_len=3000, num_prompts=40, concurrency=4)\n"
        "def test_next(llmperf):\n"
        "    llmperf.run(input_len=8, output_len=4, num_prompts=4, concurrency=1)\n"
    )
    out = tmp_path / "r.json"
    proc = spawn_pytest(
        "--llmperf-server=sim",
        "--llmperf-ray=local",
        "--llmperf-client-procs=2",
        f"--llmperf-json={out}",
        "-s",
        "test_long.py",
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "URL " in line:
            url = line.rsplit("URL ", 1)[1].strip()
            break
    else:
        pytest.fail("".join(seen))
    wait_for_run(proc, url, running=4, timeout_s=120)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=90)
    output = "".join(seen) + rest
    assert "interrupted; partial results kept" in output, output[-3000:]
    (result,) = json.loads(out.read_text())["results"]  # test_next never ran
    assert result["summary"]["interrupted"] is True
    assert result["summary"]["completed"] + result["summary"]["failed"] > 0
