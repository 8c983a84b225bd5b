"""Baselines that grow across pytest sessions, and epochs, as a user meets them (the simulator as the server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

PERF_TEST = """
import pytest

@pytest.mark.perf(input_len=16, output_len=24, num_prompts=16, concurrency=4, repeats=2)
def test_decode(llmperf):
    llmperf.run()
"""

PROFILES = """
profiles:
  sim-a:
    extends: sim
    command: "{python} -m pytest_llmperf.sim --host {host} --port {port} --model {model} --decode-ms 2 --jitter 0"
  sim-b:
    extends: sim
    command: "{python} -m pytest_llmperf.sim --host {host} --port {port} --model {model} --decode-ms 4 --jitter 0"
"""


def entry(pytester: pytest.Pytester) -> dict[str, Any]:
    (path,) = (pytester.path / "baselines").rglob("*.yaml")
    data: dict[str, Any] = yaml.safe_load(path.read_text())["entries"]["test_decode"]
    return data


def run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    out = pytester.path / "r.json"
    result = pytester.runpytest(f"--llmperf-json={out}", *args)
    return result, json.loads(out.read_text()) if out.exists() else {}


def test_an_update_grows_the_baseline_across_sessions(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(PERF_TEST)
    first, document = run(pytester, f"--llmperf-endpoint={sim_url}", "--llmperf-update")
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["*new entry with 2 run(s) from 1 session(s)*"])
    session_one = {r["session_id"] for r in document["results"][0]["runs"]}
    assert len(session_one) == 1
    second, _ = run(pytester, f"--llmperf-endpoint={sim_url}", "--llmperf-update")
    second.stdout.fnmatch_lines(["*appended 2 run(s), 4 kept from 2 session(s)*"])
    stored = entry(pytester)
    assert stored["epoch"] == 1
    assert len({r["session"] for r in stored["runs"]}) == 2
    assert session_one <= {r["session"] for r in stored["runs"]}
    # Judged against a two-session baseline, the verdict says the between-session spread was assumed.
    _, document = run(pytester, f"--llmperf-endpoint={sim_url}", "-W", "ignore::UserWarning")
    verdict = document["results"][0]["verdict"]
    assert "baseline from 2 session(s)" in verdict["reason"], verdict
    tpot = next(m for m in verdict["metrics"] if m["name"] == "tpot_p50")
    assert tpot["sessions_baseline"] == 2
    assert tpot["session_prior"] is True


def test_a_changed_server_command_starts_an_epoch(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PERF_TEST)
    profiles = pytester.path / "profiles.yaml"
    profiles.write_text(PROFILES)
    common = (f"--llmperf-profiles={profiles}", "--llmperf-update")
    first, _ = run(pytester, "--llmperf-server=sim-a", *common)
    first.assert_outcomes(passed=1)
    # The same command on another free port is the same server: no new epoch.
    again, _ = run(pytester, "--llmperf-server=sim-a", *common)
    again.stdout.fnmatch_lines(["*appended 2 run(s), 4 kept from 2 session(s)*"])
    assert "new epoch" not in again.stdout.str()
    changed, _ = run(pytester, "--llmperf-server=sim-b", *common)
    changed.stdout.fnmatch_lines(
        ["*new epoch 2 (server_command_hash: *; epoch 1's 4 run(s) kept under previous_epochs*"]
    )
    stored = entry(pytester)
    assert stored["epoch"] == 2
    assert len(stored["runs"]) == 2
    assert [e["epoch"] for e in stored["previous_epochs"]] == [1]
    assert len(stored["previous_epochs"][0]["runs"]) == 4


def test_runs_that_differ_start_an_epoch(pytester: pytest.Pytester, start_sim: type, tmp_path: Path) -> None:
    sim = start_sim("--decode-ms", "2", "--decode-ms-per-seq", "0", "--jitter", "0")
    pytester.makepyfile(PERF_TEST.replace("repeats=2", "repeats=3"))
    run(pytester, f"--llmperf-endpoint={sim.url}", "--llmperf-update")[0].assert_outcomes(passed=1)
    import httpx

    httpx.post(f"{sim.url}/sim/config", json={"tpot_scale": 3.0}, timeout=10).raise_for_status()
    result, _ = run(pytester, f"--llmperf-endpoint={sim.url}", "--llmperf-update")
    result.stdout.fnmatch_lines(["*new epoch 2 (the new runs differ from the stored ones (REGRESSION: *median TPOT*"])
    stored = entry(pytester)
    assert stored["epoch"] == 2
    assert len(stored["runs"]) == 3


def test_a_cpu_engine_pair_names_the_cpu_and_the_servers_cores(pytester: pytest.Pytester, sim_url: str) -> None:
    import os

    from pytest_llmperf.servers.hardware import cpu_hardware_id

    pytester.makeini("[pytest]\nllmperf_environment_guard = off\n")  # no fixed hardware id: detect it
    pytester.makepyfile(PERF_TEST.replace("repeats=2", "repeats=1"))
    result, document = run(pytester, f"--llmperf-endpoint={sim_url}")
    result.assert_outcomes(passed=1)
    # The simulator, found by its loopback port, may use every core this process may use.
    expected = f"{cpu_hardware_id(len(os.sched_getaffinity(0)))}-default"
    assert document["pair"] == expected
    result.stdout.fnmatch_lines([f"*baseline pair {expected}*"])
