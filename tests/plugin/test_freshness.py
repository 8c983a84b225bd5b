"""Fresh prompts per run and prefix-cache accounting, end to end with the simulator's prefix cache (on by
default, like vLLM's): repeats and update budgets see no cached tokens, a repeated prompt set is flagged and
left out of the verdict and of baselines, and sharing that a test asks for is measured as sharing."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest

# A slow prefill, so that a cache hit would show as a large TTFT drop.
SIM_ARGS = ("--decode-ms", "2", "--decode-ms-per-seq", "0", "--prefill-tok-s", "20000", "--jitter", "0")

REPEATS = """
import pytest

@pytest.mark.perf(input_len=64, output_len=8, num_prompts=16, concurrency=4, repeats=3, warmup=2)
def test_repeat(llmperf):
    llmperf.run()
"""

# What the plugin did before fresh prompts: every run sends the same contents. Patched with monkeypatch, so the
# change ends with the inner session: pytester runs in this process, and a module-level patch would outlive it
# and make every later test of this xdist worker repeat its prompts.
SAME_PROMPTS_CONFTEST = """
import pytest
import pytest_llmperf.harness.runner as runner

@pytest.fixture(autouse=True)
def _same_prompts_every_run(monkeypatch):
    build = runner.build_prompts

    def same(workload, count, context, *, contents=""):
        return build(workload, count, context, contents="same/warmup" if contents.endswith("/warmup") else "same")

    monkeypatch.setattr(runner, "build_prompts", same)
"""


@pytest.fixture
def sim(start_sim: type) -> str:
    return str(start_sim(*SIM_ARGS).url)


def run(pytester: pytest.Pytester, sim: str, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    out = pytester.path / "r.json"
    result = pytester.runpytest(f"--llmperf-endpoint={sim}", f"--llmperf-json={out}", "--junitxml=j.xml", *args)
    return result, json.loads(out.read_text()) if out.exists() else {}


def runs_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [run for result in document["results"] for run in result["runs"]]


def test_repeats_and_an_update_budget_see_no_cached_tokens(pytester: pytest.Pytester, sim: str) -> None:
    pytester.makepyfile(REPEATS)
    for _session in range(2):  # two sessions against one long-lived server
        result, document = run(pytester, sim, "--llmperf-update")
        result.assert_outcomes(passed=1)
        runs = runs_of(document)
        assert len(runs) == 3
        for summary in runs:
            assert summary["cached_prompt_tokens"] == 0, summary["cached_prompt_source"]
            assert summary["cached_prompt_fraction"] == 0.0
            assert summary["cached_prompt_source"] == "usage"
            assert summary["invalid_reasons"] == []
        contents = {summary["prompt_contents"] for summary in runs}
        assert len(contents) == 3, contents  # one key per run, each with this session's nonce
    assert "NOT RECORDED" not in result.stdout.str()


def test_a_repeated_prompt_set_is_flagged_left_out_and_not_recorded(pytester: pytest.Pytester, sim: str) -> None:
    pytester.makepyfile(REPEATS)
    pytester.makeconftest(SAME_PROMPTS_CONFTEST)
    result, document = run(pytester, sim, "--llmperf-update")
    runs = runs_of(document)
    assert runs[0]["invalid_reasons"] == []  # the first run met a cold cache
    for summary in runs[1:]:
        assert summary["cached_prompt_fraction"] > 0.5
        assert summary["invalid_reasons"], summary
        assert "prefix cache" in summary["invalid_reasons"][0]
    output = result.stdout.str()
    assert "invalid run 2:" in output
    assert "NOT RECORDED" in output
    junit = (pytester.path / "j.xml").read_text()
    assert 'name="llmperf.invalid"' in junit
    (entry,) = (pytester.path / "baselines").rglob("*.yaml")
    assert entry.read_text().count("median_ttft_ms:") == 1  # only the cold first run was recorded


def test_cached_runs_are_inconclusive_against_a_baseline(pytester: pytest.Pytester, sim: str) -> None:
    pytester.makepyfile(REPEATS.replace("repeats=3", "repeats=2"))
    result, _ = run(pytester, sim, "--llmperf-update")
    result.assert_outcomes(passed=1)
    pytester.makeconftest(SAME_PROMPTS_CONFTEST)
    # First session with the same prompts warms the cache; the next one is served from it.
    run(pytester, sim)
    result, document = run(pytester, sim, "-W", "ignore::pytest_llmperf.LLMPerfInconclusive")
    verdict = document["results"][0]["verdict"]
    assert verdict["status"] == "INCONCLUSIVE", verdict
    assert "prefix cache" in verdict["reason"]
    assert any("left out of the verdict" in note for note in document["results"][0]["notes"])


def test_a_shared_prefix_is_measured_as_sharing(pytester: pytest.Pytester, sim: str) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perf(input_len=96, output_len=8, prefix_len=64, num_prompts=16, concurrency=2, repeats=2)
        def test_shared(llmperf):
            llmperf.run()
        """
    )
    result, document = run(pytester, sim, "--llmperf-update")
    result.assert_outcomes(passed=1)
    first, second = runs_of(document)
    for summary in (first, second):
        assert summary["prefix_sharing"] is True
        assert summary["invalid_reasons"] == []
        # Every prompt after the first of a run finds the 64 shared tokens (4 blocks of 16) in the cache.
        assert summary["cached_prompt_tokens"] >= 64 * 14, summary["cached_prompt_tokens"]
    # A new prefix per run: the second run's first prompts did not find the first run's prefix.
    assert second["cached_prompt_tokens"] <= 64 * 15


def test_unknown_cache_use_is_none_not_zero(pytester: pytest.Pytester, start_sim: type) -> None:
    url = start_sim(*SIM_ARGS, "--no-prefix-cache").url
    pytester.makepyfile(REPEATS.replace("repeats=3", "repeats=1"))
    _, document = run(pytester, url)
    summary = runs_of(document)[0]
    assert summary["cached_prompt_tokens"] is None
    assert summary["cached_prompt_fraction"] is None
    assert summary["cached_prompt_source"].startswith("unknown")


def test_scaled_runs_say_so_in_the_table(pytester: pytest.Pytester, sim: str) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perf(input_len=640, output_len=40, num_prompts=40, concurrency=1, repeats=1)
        def test_scaled(llmperf):
            result = llmperf.run()
            assert result.workload.num_prompts == 8  # at least 8 requests per run, however small the scale
            assert result.workload.input_len == 32
        """
    )
    result, _ = run(pytester, sim, "--llmperf-scale=0.05")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*scaled ×0.05 (--llmperf-scale=1 to run as written)*"])


# --- the environment guard ------------------------------------------------------------------------------------

GUARDED = """
import pytest

@pytest.mark.perf(input_len=16, output_len=24, num_prompts=16, concurrency=4, repeats=3)
def test_decode(llmperf):
    llmperf.run()
"""


@pytest.fixture
def busy_core() -> Any:
    """Start a busy loop pinned to a given core; every one started is killed after the test."""
    import subprocess
    import sys

    started: list[subprocess.Popen[bytes]] = []

    def start(core: int) -> None:
        proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        started.append(proc)
        os.sched_setaffinity(proc.pid, {core})

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores: one for the server and its neighbour")
def test_a_regression_under_a_busy_neighbour_is_inconclusive(
    pytester: pytest.Pytester, start_sim: type, busy_core: Any
) -> None:
    sim = start_sim(*SIM_ARGS)
    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(sim.proc.pid, {core})  # the server's core, as the embedded engine is pinned to one
    pytester.makepyfile(GUARDED)
    result, _ = run(pytester, sim.url, "--llmperf-update")
    result.assert_outcomes(passed=1)
    httpx.post(f"{sim.url}/sim/config", json={"slowdown_per_token_pct": 60}, timeout=10).raise_for_status()
    busy_core(core)
    result, document = run(pytester, sim.url, "--llmperf-environment-guard=on")
    result.assert_outcomes(passed=1)  # inconclusive warns by default: never a failure
    entry = document["results"][0]
    disturbance = entry["runs"][0]["disturbance"]
    assert disturbance["disturbed"] is True, disturbance
    assert disturbance["foreign_cpu_fraction"] >= 0.10
    assert disturbance["server_cpus"] == [core]
    assert entry["verdict"]["status"] == "INCONCLUSIVE", entry["verdict"]["reason"]
    assert "environment disturbed" in entry["verdict"]["reason"]
    assert "REGRESSION" not in entry["verdict"]["reason"].split(":")[0]
    result.stdout.fnmatch_lines(["*disturbed run 1: other processes used*"])
    assert 'name="llmperf.disturbed"' in (pytester.path / "j.xml").read_text()


def test_the_guard_records_figures_and_can_be_switched_off(pytester: pytest.Pytester, sim: str) -> None:
    pytester.makepyfile(GUARDED.replace("repeats=3", "repeats=1"))
    _, document = run(pytester, sim, "--llmperf-environment-guard=on")
    disturbance = document["results"][0]["runs"][0]["disturbance"]
    assert disturbance["window_s"] > 0
    assert disturbance["foreign_cpu_fraction"] is not None  # the simulator was found by its loopback port
    assert disturbance["foreign_requests"] is not None  # and its request counters were read
    assert disturbance["foreign_requests"] == 0
    _, document = run(pytester, sim)  # the suite's ini switches it off
    assert "disturbance" not in document["results"][0]["runs"][0]
    bad = pytester.runpytest("--llmperf-environment-guard=maybe")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--llmperf-environment-guard='maybe'*expected on or off*"])
