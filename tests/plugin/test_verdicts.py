"""SLOs, baselines and verdicts end to end, as a user meets them, with the simulator as the server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

# TTFT of a few milliseconds on a shared CI machine varies by several percent from run to run: it gets a
# tolerance to match, as the README advises (δ ≈ 2.5 × noise); the other metrics keep the 5 % default.
PERF_TEST = """
import pytest

@pytest.mark.perf(input_len=16, output_len=24, num_prompts=16, concurrency=4, repeats=5, e2e_p50_ms=60000,
                  tolerance={"ttft_p50": 0.15})
def test_decode(llmperf):
    llmperf.run()
"""


@pytest.fixture
def sim(start_sim: type) -> str:
    return start_sim("--decode-ms", "5", "--decode-ms-per-seq", "0", "--jitter", "0.01").url


def run(pytester: pytest.Pytester, sim: str, *args: str) -> tuple[pytest.RunResult, dict]:
    out = pytester.path / "r.json"
    result = pytester.runpytest(f"--llmperf-endpoint={sim}", f"--llmperf-json={out}", "--junitxml=j.xml", *args)
    return result, json.loads(out.read_text()) if out.exists() else {}


def baseline_file(pytester: pytest.Pytester) -> Path:
    return pytester.path / "baselines" / "cpu-default" / "test_decode.yaml"


def test_markers_shows_the_signature(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.perf(*input_len=*concurrency=*repeats=*<metric>_<stat>_ms=*error_rate=*"]
    )


def test_slo_breach_fails_in_the_call_phase_with_a_table(pytester: pytest.Pytester, sim: str) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perf(input_len=8, output_len=20, num_prompts=4, tpot_p50_ms=1, output_tok_s=1)
        def test_tight(llmperf):
            llmperf.run()
        """
    )
    result, _ = run(pytester, sim, "--llmperf-hardware=cpu")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*SLO breached in run 1 of 1*", "*metric*limit*measured*margin*status*", "*tpot_p50_ms*<= 1.00 ms*BREACH*"]
    )
    junit = (pytester.path / "j.xml").read_text()
    assert "tpot_p50_ms" in junit
    assert "BREACH" in junit


def test_ill_typed_slo_fails_with_the_expected_type(pytester: pytest.Pytester, sim: str) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perf(e2e_p50_ms="fast")
        def test_bad(llmperf):
            llmperf.run()
        """
    )
    result, _ = run(pytester, sim)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*e2e_p50_ms*fast*"])


def test_missing_baseline_says_how_to_create_one(pytester: pytest.Pytester, sim: str) -> None:
    pytester.makepyfile(test_decode=PERF_TEST)
    result, document = run(pytester, sim)
    result.assert_outcomes(passed=1)
    assert document["results"][0]["verdict"]["status"] == "NO_BASELINE"
    assert len(document["results"][0]["runs"]) == 1  # nothing to decide: one run


def test_update_then_clean_rerun_passes_then_slowdown_is_a_regression(pytester: pytest.Pytester, sim: str) -> None:
    pytester.makepyfile(test_decode=PERF_TEST)

    result, _ = run(pytester, sim, "--llmperf-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*llmperf baselines updated (cpu-default)*"])
    text = baseline_file(pytester).read_text()
    assert "test_decode" in text
    assert text.count("run_id") == 5  # the whole budget is recorded on update
    # A baseline grows strong across sessions: three more updates, so the between-session spread is measured.
    for _ in range(3):
        run(pytester, sim, "--llmperf-update")[0].assert_outcomes(passed=1)
    assert baseline_file(pytester).read_text().count("run_id") == 20

    result, document = run(pytester, sim)  # A/A: the same server again
    result.assert_outcomes(passed=1)
    verdict = document["results"][0]["verdict"]
    # Never a false alarm. A TTFT of a few milliseconds moves with whatever else the CI machine runs, and even
    # TPOT, from the simulator's clock, may drift by a percent under load: either may honestly stay open.
    assert verdict["status"] in ("PASS", "INCONCLUSIVE"), verdict["reason"]
    tpot = next(m for m in verdict["metrics"] if m["name"] == "tpot_p50")
    assert tpot["status"] in ("PASS", "INCONCLUSIVE")
    assert tpot["sessions_baseline"] == 4
    assert 0.97 < tpot["estimate"] < 1.03

    # +25 % per-token time, injected into the running simulator. (Against four sessions whose spread is shrunk
    # towards the 3 % prior, +10 % is not yet beyond what another session could show at α = 0.01.)
    httpx.post(f"{sim}/sim/config", json={"slowdown_per_token_pct": 25}, timeout=10).raise_for_status()
    result, document = run(pytester, sim)
    result.assert_outcomes(failed=1)
    verdict = document["results"][0]["verdict"]
    assert verdict["status"] == "REGRESSION"
    tpot = next(m for m in verdict["metrics"] if m["name"] == "tpot_p50")
    assert tpot["status"] == "REGRESSION"
    assert 1.15 < tpot["estimate"] < 1.35
    result.stdout.fnmatch_lines(["*performance regression*", "*metric*baseline*measured*ratio*verdict*"])
    junit = (pytester.path / "j.xml").read_text()
    assert "performance regression" in junit
    assert 'name="llmperf.verdict" value="REGRESSION"' in junit


def test_changed_workload_is_not_comparable_and_update_refuses_without_force(
    pytester: pytest.Pytester, sim: str
) -> None:
    pytester.makepyfile(test_decode=PERF_TEST)
    run(pytester, sim, "--llmperf-update", "--llmperf-repeats=2")[0].assert_outcomes(passed=1)

    pytester.makepyfile(test_decode=PERF_TEST.replace("input_len=16", "input_len=32"))
    result, document = run(pytester, sim)
    result.assert_outcomes(passed=1)
    verdict = document["results"][0]["verdict"]
    assert verdict["status"] == "NOT_COMPARABLE"
    assert any("input_len" in diff for diff in verdict["hard_diffs"])

    before = baseline_file(pytester).read_text()
    result, _ = run(pytester, sim, "--llmperf-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*refusing to update across a hard-key change*--llmperf-update=force*"])
    assert baseline_file(pytester).read_text() == before

    run(pytester, sim, "--llmperf-update=force", "--llmperf-repeats=2")[0].assert_outcomes(passed=1)
    assert "input_len: 32" in baseline_file(pytester).read_text()


def test_corrupt_baseline_names_file_and_entry_and_is_left_alone(pytester: pytest.Pytester, sim: str) -> None:
    pytester.makepyfile(test_decode=PERF_TEST)
    path = baseline_file(pytester)
    path.parent.mkdir(parents=True)
    path.write_text("entries:\n  test_decode:\n    runs: [oops\n")
    result, _ = run(pytester, sim)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{path}*test_decode*"])
    assert path.read_text() == "entries:\n  test_decode:\n    runs: [oops\n"


@pytest.mark.parametrize(("policy", "outcome"), [("fail", "failed"), ("skip", "skipped"), ("warn", "passed")])
def test_inconclusive_policy(pytester: pytest.Pytester, sim: str, policy: str, outcome: str) -> None:
    # One baseline run and one candidate run, 15 % slower per token with δ = 10 %: too slow to pass, not the
    # gross effect (≥ 3 × δ on the log scale) that a single baseline run would need for a regression. The
    # slowdown is per token; TTFT (≈ 10 ms) is not under test and on a loaded CI machine moved 37 % between two
    # single runs, a gross effect at δ = 10 %: it gets a tolerance it cannot reach by noise.
    pytester.makepyfile(
        test_decode=PERF_TEST.replace("repeats=5", "repeats=1").replace(
            'tolerance={"ttft_p50": 0.15}',
            'tolerance={"ttft_p50": 0.9, "tpot_p50": 0.1, "e2e_p50": 0.1, "output_tok_s": 0.1}',
        )
    )
    run(pytester, sim, "--llmperf-update")[0].assert_outcomes(passed=1)
    httpx.post(f"{sim}/sim/config", json={"slowdown_per_token_pct": 15}, timeout=10).raise_for_status()
    # The suite turns warnings into errors; let this one through as a user's run would.
    result, document = run(pytester, sim, f"--llmperf-inconclusive={policy}", "-W", "default::UserWarning")
    result.assert_outcomes(**{outcome: 1})
    assert document["results"][0]["verdict"]["status"] == "INCONCLUSIVE"
    if policy == "warn":
        result.stdout.fnmatch_lines(["*LLMPerfInconclusive*"])


def test_summary_puts_regressions_first_and_writes_the_step_summary(
    pytester: pytest.Pytester, sim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_decode=PERF_TEST
        + """

@pytest.mark.perf(input_len=8, output_len=4, num_prompts=4, tpot_p50_ms=0.001)
def test_breach(llmperf):
    llmperf.run()
"""
    )
    step_summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    result, _ = run(pytester, sim, "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*llmperf results*",
            "pair cpu-default*",
            "test*load*runs*verdict",
            "*test_breach*SLO BREACH",
            "*test_decode*NO_BASELINE",
        ]
    )
    text = step_summary.read_text()
    assert "| test | runs |" in text
    assert "`test_decode.py::test_breach` | 1 |" in text
    assert "**SLO BREACH**" in text


def test_update_into_an_unwritable_baselines_directory_is_refused_at_start_up(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_decode=PERF_TEST)
    (pytester.path / "a-file").write_text("")  # no directory can be made under a file, even by root
    result = pytester.runpytest(
        "--llmperf-endpoint=http://127.0.0.1:9", "--llmperf-update", "--llmperf-baselines=a-file/baselines"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--llmperf-update: cannot write baselines to *a-file/baselines*--llmperf-baselines=DIR*"]
    )
    assert "collected" not in result.stdout.str()  # before any load


def test_a_failed_baseline_write_is_reported_and_the_reports_are_still_written(
    pytester: pytest.Pytester, sim: str
) -> None:
    pytester.makepyfile(test_decode=PERF_TEST)
    (pytester.path / "baselines").mkdir()
    (pytester.path / "baselines" / "cpu-default").write_text("")  # the pair's directory cannot be made
    report = pytester.path / "r.html"
    result, document = run(
        pytester, sim, "--llmperf-update", "--llmperf-repeats=1", "--llmperf-hardware=cpu", f"--llmperf-report={report}"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*llmperf results*",
            "*test_decode*",
            "*NOT WRITTEN: baselines/cpu-default: File exists; the runs of test_decode were not recorded. Make *"
            "baselines writable*--llmperf-update",
            "*llmperf JSON results written to *r.json*",
            "*llmperf HTML report written to *r.html*",
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert document["results"][0]["nodeid"] == "test_decode.py::test_decode"
    assert report.read_text().startswith("<!DOCTYPE html>")
