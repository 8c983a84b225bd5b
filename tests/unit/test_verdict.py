"""Unit tests of pytest_llmperf.judge.verdict: each verdict kind on run summaries whose answer is clear by design."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from pytest_llmperf.errors import SpecError
from pytest_llmperf.judge import verdict
from pytest_llmperf.judge.verdict import (
    IMPROVEMENT,
    INCONCLUSIVE,
    NO_BASELINE,
    NOT_COMPARABLE,
    PASS,
    REGRESSION,
    Verdict,
    apply_holm,
    judge,
    needs_more_runs,
    resolve_tolerances,
)


def runs(
    count: int,
    *,
    scale: float = 1.0,
    tput: float | None = None,
    noise: float = 0.01,
    seed: int = 0,
    failed: int = 0,
    completed: int = 500,
    p99: float = 1.0,
    compat: str = "vllm",
    factors: list[float] | None = None,
    sessions: int = 0,
) -> list[dict[str, Any]]:
    """Run summaries with latencies × ``scale`` (throughput ÷ scale unless given) and log-normal run noise.

    ``factors`` replaces the random run effects by given ones (and the TTFT-only jitter by none). ``sessions``:
    spread the runs round-robin over that many pytest sessions (``session`` key, as a baseline stores it); 0
    leaves them without one (one session, as a baseline recorded before sessions were kept).
    """
    rng = random.Random(seed)
    given = iter(factors) if factors is not None else None
    e2e_key = "median_e2el_ms" if compat == "vllm" else "median_e2e_latency_ms"
    p99_e2e = "p99_e2el_ms" if compat == "vllm" else "p99_e2e_latency_ms"
    out = []
    for _ in range(count):
        run_effect = next(given) if given is not None else math.exp(rng.gauss(0, noise))
        jitter = 1.0 if given is not None else math.exp(rng.gauss(0, noise / 3))
        out.append(
            {
                "compat_mode": compat,
                "median_ttft_ms": 100.0 * scale * run_effect * jitter,
                "median_tpot_ms": 20.0 * scale * run_effect,
                e2e_key: 5000.0 * scale * run_effect,
                "output_throughput": 800.0 * (1 / scale if tput is None else tput) / run_effect,
                "p99_ttft_ms": 300.0 * p99 * run_effect,
                "p99_tpot_ms": 30.0 * p99 * run_effect,
                "p99_itl_ms": 40.0 * p99 * run_effect,
                p99_e2e: 8000.0 * p99 * run_effect,
                "completed": completed,
                "failed": failed,
                "error_rate": failed / (completed + failed),
            }
        )
        if sessions:
            out[-1]["session"] = f"s{len(out) % sessions}"
    return out


# Ten runs recorded over five sessions that agree (no session offsets): the estimated between-session spread is
# near 0, shrunk towards the 3 % prior with 2 pseudo-sessions.
BASE = runs(10, seed=1, sessions=5)


def test_clear_regression() -> None:
    v = judge(runs(3, scale=1.20, seed=2), BASE)
    assert v.status == REGRESSION
    assert v.failed
    for name in ("ttft_p50", "tpot_p50", "e2e_p50", "output_tok_s"):
        m = v.metric(name)
        assert m.status == REGRESSION, m.reason
        assert m.p_adjusted is not None
        assert m.p_adjusted <= 0.01
    tpot = v.metric("tpot_p50")
    assert tpot.estimate == pytest.approx(1.20, rel=0.03)
    assert tpot.lower is not None
    assert tpot.upper is not None
    assert tpot.estimate is not None
    assert tpot.lower < tpot.estimate < tpot.upper
    assert tpot.limit == pytest.approx(1.05)
    assert "REGRESSION" in v.reason
    assert "median TPOT" in v.reason
    thr = v.metric("output_tok_s")
    assert thr.estimate == pytest.approx(1 / 1.20, rel=0.03)  # raw candidate/baseline ratio
    assert thr.limit == pytest.approx(0.95)
    assert not needs_more_runs(v, runs_done=3, budget=5)


def test_clear_pass() -> None:
    v = judge(runs(3, seed=3), BASE)
    assert v.status == PASS
    assert not v.failed
    assert all(m.status == PASS for m in v.gating)
    assert "within tolerance" in v.reason
    assert not needs_more_runs(v, runs_done=3, budget=5)


def test_inconclusive_reports_runs_needed() -> None:
    # Forty runs over twenty sessions that agree: the between-session SD is shrunk towards the prior to about
    # 0.9 %. One candidate run 2 % slower cannot rule out δ = 5 %; about ten more runs of this session could.
    spread = [math.exp(-0.03 + 0.06 * i / 39) for i in range(40)]
    base = runs(40, factors=spread, sessions=20)
    v = judge(runs(1, scale=1.02, factors=[1.0]), base)
    assert v.status == INCONCLUSIVE
    m = v.metric("tpot_p50")
    assert m.status == INCONCLUSIVE
    assert m.method == "sessions"
    assert m.sessions_baseline == 20
    assert not m.session_prior
    assert m.sigma_session == pytest.approx(0.0093, abs=0.001)
    assert m.upper is not None
    assert m.upper > m.limit
    assert m.more_runs is not None
    assert 5 <= m.more_runs <= 15
    assert not m.futile
    assert f"≈{m.more_runs} more run(s) needed" in m.reason
    assert "neither ruled out nor shown" in m.reason
    assert "more candidate run" in v.hint
    assert needs_more_runs(v, runs_done=1, budget=5)
    assert not needs_more_runs(v, runs_done=5, budget=5)


def test_a_one_session_baseline_uses_the_prior_and_says_so() -> None:
    # Ten calm runs from one session: the candidate's session may sit 3 % (the prior) away, so the interval
    # stays wide and a 2 % difference is inconclusive however many candidate runs follow.
    one_session = runs(10, seed=1)
    v = judge(runs(5, scale=1.02, seed=40), one_session)
    m = v.metric("tpot_p50")
    assert m.status == INCONCLUSIVE
    assert m.session_prior
    assert m.sigma_session == pytest.approx(0.03)
    assert m.upper is not None
    assert m.lower is not None
    assert m.upper / m.lower > 1.15  # ±7 %: no narrow interval from one session
    assert m.futile
    assert "≈2 more baseline session(s) would let it be measured" in m.reason
    assert "baseline from 1 session(s)" in v.reason
    assert "3% is assumed" in v.reason
    # A baseline of twenty sessions that agree decides it.
    assert judge(runs(5, scale=1.02, seed=40), runs(40, seed=1, sessions=20)).status == PASS


def test_a_one_session_baseline_borrows_the_spread_of_the_history_and_says_so() -> None:
    # The same one-session baseline, and twenty earlier sessions in the history that agree within 0.5 %: the
    # between-session spread is measured there, not assumed, and the 2 % difference is decided (PASS at 5 %).
    one_session = runs(10, seed=1)
    rng = random.Random(7)
    calm = [[20.0 * math.exp(rng.gauss(0, 0.005)) for _ in range(3)] for _ in range(20)]
    v = judge(runs(5, scale=1.02, seed=40), one_session, history={"median_tpot_ms": calm})
    m = v.metric("tpot_p50")
    assert not m.session_prior
    assert m.session_source == "history"
    assert m.sessions_history == 20
    assert m.sigma_session is not None
    assert m.sigma_session < 0.03  # shrunk towards the prior from a near-zero estimate
    assert m.status == PASS
    assert "estimated from up to 20 earlier sessions in the history (median TPOT" in v.reason
    # Only TPOT had a history here: the other ratio metrics are named with the prior they assumed.
    assert "; 3% assumed for median TTFT, median E2E, output throughput]" in v.reason
    everything = {key: calm for key in ("median_ttft_ms", "median_tpot_ms", "median_e2el_ms", "output_throughput")}
    full = judge(runs(5, scale=1.02, seed=40), one_session, history=everything)
    assert "assumed" not in full.reason  # the error rate has no between-session spread to assume
    # Without the history, the prior stands (the test above): the history is what decided it.
    assert judge(runs(5, scale=1.02, seed=40), one_session).metric("tpot_p50").status == INCONCLUSIVE


def test_a_spread_out_history_keeps_a_difference_open() -> None:
    # Earlier sessions that sat ±8 % apart: a 6 % slowdown on a one-session baseline is no regression.
    one_session = runs(10, seed=1)
    spread_out = [[20.0 * f] * 2 for f in (0.92, 1.0, 1.08, 0.95, 1.05, 1.0)]
    v = judge(runs(5, scale=1.06, seed=40), one_session, history={"median_tpot_ms": spread_out})
    m = v.metric("tpot_p50")
    assert m.session_source == "history"
    assert m.sigma_session is not None
    assert m.sigma_session > 0.04
    assert m.status == INCONCLUSIVE


def test_session_offsets_widen_the_interval() -> None:
    # Five sessions whose means differ by ±6 %: the estimated between-session SD dominates, and a candidate
    # 8 % slower is not called a regression (its own session could sit there).
    offsets = [0.94, 1.0, 1.06, 0.97, 1.03]
    base = runs(10, factors=[offsets[i % 5] for i in range(10)], sessions=5)
    v = judge(runs(3, scale=1.08, factors=[1.0, 1.0, 1.0]), base)
    m = v.metric("tpot_p50")
    assert m.session_prior is False
    assert m.sigma_session is not None
    assert m.sigma_session > 0.035
    assert m.status == INCONCLUSIVE
    calm = judge(runs(3, scale=1.08, factors=[1.0, 1.0, 1.0]), runs(10, factors=[1.0] * 10, sessions=5))
    assert calm.metric("tpot_p50").sigma_session < m.sigma_session


def test_baseline_too_small_for_the_tolerance_is_futile() -> None:
    # 5 runs with 5 % noise from one session cannot support δ = 5 %: more candidate runs cannot decide.
    spread = [math.exp(x) for x in (-0.07, -0.035, 0.0, 0.035, 0.07)]
    v = judge(runs(1, scale=1.02, factors=[1.0]), runs(5, factors=spread))
    m = v.metric("tpot_p50")
    assert m.status == INCONCLUSIVE
    assert m.futile
    assert m.more_runs is None
    assert "more candidate runs cannot decide it" in m.reason or "more runs cannot decide it" in m.reason
    assert not needs_more_runs(v, runs_done=1, budget=5)


def test_improvement_hints_update() -> None:
    v = judge(runs(3, scale=0.80, seed=8), BASE)
    assert v.status == IMPROVEMENT
    assert not v.failed
    assert v.metric("tpot_p50").status == IMPROVEMENT
    assert "--llmperf-update" in v.hint
    assert "--llmperf-update" in v.metric("tpot_p50").hint


def test_small_baseline_uses_noise_floor_and_needs_a_gross_effect() -> None:
    small = runs(2, seed=9)
    # +10 %: beyond δ = 5 % but not gross (< 3 × ln 1.05 ≈ +15.8 %): never a regression with 2 baseline runs.
    v = judge(runs(3, scale=1.10, seed=10), small)
    assert v.status != REGRESSION
    m = v.metric("tpot_p50")
    assert m.method == "sessions"
    assert m.status == INCONCLUSIVE
    assert m.futile
    assert "baseline run" in m.reason
    assert "noise floor" in v.reason
    # +40 % is gross: a regression even with 2 baseline runs.
    gross = judge(runs(3, scale=1.40, seed=11), small)
    assert gross.status == REGRESSION
    assert "gross" in gross.metric("tpot_p50").reason


def test_missing_baseline_says_how_to_create_one() -> None:
    v = judge(runs(2), None, where="baselines/h200-fp8/tests/perf/test_x.yaml::test_a")
    assert v.status == NO_BASELINE
    assert not v.failed
    assert "SLOs still decide" in v.reason
    assert "test_x.yaml::test_a" in v.reason
    assert "--llmperf-update" in v.hint
    assert judge(runs(1), []).status == NO_BASELINE
    assert not needs_more_runs(v, runs_done=1, budget=5)


def test_not_comparable_baseline_is_never_a_regression() -> None:
    v = judge(runs(2, scale=2.0), BASE, hard_diffs=["model: baseline 'a', now 'b'"], soft_diffs=["engine_version"])
    assert v.status == NOT_COMPARABLE
    assert not v.failed
    assert "model: baseline 'a', now 'b'" in v.reason
    assert v.metrics == ()
    assert v.soft_diffs == ("engine_version",)
    assert not needs_more_runs(v, runs_done=1, budget=5)


def test_error_rate_rules() -> None:
    base = runs(5, failed=0, completed=1000, seed=12)
    # No failed request in the candidate: cannot be worse than the baseline.
    ok = judge(runs(1, failed=0, completed=1000, seed=13), runs(5, failed=3, completed=997, seed=12))
    assert ok.metric("error_rate").status == PASS
    assert "no failed request" in ok.metric("error_rate").reason
    # 10 % failures against none: a regression of the absolute difference.
    bad = judge(runs(2, failed=100, completed=900, seed=14), base)
    er = bad.metric("error_rate")
    assert er.status == REGRESSION
    assert er.scale == "difference"
    assert er.estimate == pytest.approx(0.10)
    assert er.limit == pytest.approx(0.005)
    assert bad.status == REGRESSION
    # 1 failure in 500 against none in 5000: within noise, not shown to be within 0.5 points either.
    unsure = judge(runs(1, failed=1, completed=499, seed=15), base).metric("error_rate")
    assert unsure.status == INCONCLUSIVE
    assert unsure.more_runs is not None or unsure.futile
    # Many requests with a tiny difference: within tolerance.
    fine = judge(runs(5, failed=1, completed=9999, seed=16), runs(5, failed=1, completed=9999, seed=17))
    assert fine.metric("error_rate").status == PASS


def test_tail_metrics_are_advisory_unless_gating() -> None:
    cand = runs(3, p99=1.5, seed=18)
    v = judge(cand, BASE)
    tail = v.metric("tpot_p99")
    assert not tail.gating
    assert tail.status == REGRESSION
    assert v.status == PASS
    promoted = judge(cand, BASE, gating=[*verdict.DEFAULT_GATING, "tpot_p99"])
    assert promoted.metric("tpot_p99").gating
    assert promoted.status == REGRESSION


def test_tolerance_overrides() -> None:
    cand = runs(3, scale=1.15, seed=19)
    assert judge(cand, BASE).status == REGRESSION
    wide = judge(cand, BASE, tolerances=resolve_tolerances(None, 0.30))
    assert wide.status == PASS
    assert wide.metric("tpot_p50").tolerance == 0.30
    assert wide.metric("error_rate").tolerance == verdict.DEFAULT_TOLERANCES["error_rate"]
    per_metric = resolve_tolerances(0.15, {"tpot_p50": 0.03, "error_rate": 0.01})
    assert per_metric["tpot_p50"] == 0.03
    assert per_metric["ttft_p50"] == 0.15
    assert per_metric["error_rate"] == 0.01
    assert per_metric["ttft_p99"] == verdict.DEFAULT_TOLERANCES["ttft_p99"]


@pytest.mark.parametrize("bad", [0, 1.0, -0.1, "5%", True, {"tpot": 0.05}])
def test_invalid_tolerances(bad: Any) -> None:
    with pytest.raises(SpecError, match="tolerance"):
        resolve_tolerances(bad)


def test_sglang_keys() -> None:
    v = judge(runs(3, scale=1.2, compat="sglang", seed=20), runs(10, compat="sglang", seed=21))
    assert v.metric("e2e_p50").key == "median_e2e_latency_ms"
    assert v.metric("e2e_p50").status == REGRESSION


def test_missing_metric_is_inconclusive_and_futile() -> None:
    cand = runs(2, seed=22)
    for run in cand:
        run["median_ttft_ms"] = None
    v = judge(cand, BASE)
    m = v.metric("ttft_p50")
    assert m.status == INCONCLUSIVE
    assert m.futile
    assert "not measured" in m.reason
    assert not needs_more_runs(v, runs_done=2, budget=5) or any(
        x.status == INCONCLUSIVE and not x.futile for x in v.gating
    )


def _builtins_only(obj: Any) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert type(key) is str
            _builtins_only(value)
    elif isinstance(obj, list):
        for value in obj:
            _builtins_only(value)
    else:
        assert type(obj) in (str, int, float, bool, type(None)), (obj, type(obj))
        if type(obj) is float:
            assert math.isfinite(obj)


@pytest.mark.parametrize(
    "make",
    [
        lambda: judge(runs(3, scale=1.2, seed=23), BASE),
        lambda: judge(runs(1, seed=24), runs(2, seed=25)),
        lambda: judge(runs(1), None),
        lambda: judge(runs(1), BASE, hard_diffs=["x"]),
    ],
)
def test_as_dict_is_builtins_and_round_trips(make: Any) -> None:
    v: Verdict = make()
    data = v.as_dict()
    _builtins_only(data)
    json.dumps(data, allow_nan=False)
    assert Verdict.from_dict(data) == v


def test_apply_holm_over_a_session_only_adds_regressions() -> None:
    family = 4 * len(verdict.DEFAULT_GATING)
    session = [
        judge(runs(3, scale=1.2, seed=26), BASE, family_size=family),
        judge(runs(3, seed=27), BASE, family_size=family),
        judge(runs(3, scale=1.1, seed=28), BASE, family_size=family),
        judge(runs(1, seed=29), None),
    ]
    after = apply_holm(session)
    assert len(after) == len(session)
    assert after[3] == session[3]
    for before, now in zip(session, after, strict=True):
        if before.status == REGRESSION:
            assert now.status == REGRESSION
        for a, b in zip(before.metrics, now.metrics, strict=True):
            if a.p_adjusted is not None:
                assert b.p_adjusted is not None
                assert b.p_adjusted <= a.p_adjusted + 1e-12
    assert after[0].status == REGRESSION
    assert after[1].status == PASS


def test_family_size_smaller_than_own_claims_is_an_error() -> None:
    with pytest.raises(ValueError, match="family_size"):
        judge(runs(2), BASE, family_size=2)


def test_needs_more_runs_respects_budget() -> None:
    spread = [math.exp(-0.03 + 0.06 * i / 39) for i in range(40)]
    undecided = judge(runs(1, scale=1.02, factors=[1.0]), runs(40, factors=spread, sessions=20))
    assert undecided.status == INCONCLUSIVE
    assert needs_more_runs(undecided, runs_done=1, budget=5)
    assert needs_more_runs(undecided, runs_done=4, budget=5)
    assert not needs_more_runs(undecided, runs_done=1, budget=1)
    assert not needs_more_runs(judge(runs(3, seed=32), BASE), runs_done=3, budget=10)
    assert not needs_more_runs(judge(runs(3, scale=1.3, seed=33), BASE), runs_done=1, budget=10)


def test_sequential_looks_split_alpha() -> None:
    # One run 8.9 % slower than forty runs over twenty agreeing sessions: Holm over the four identical ratio
    # claims gives p ≈ 0.004. A regression at α = 0.01 for a single look, but not at α / 5 when the caller plans
    # five looks.
    spread = [math.exp(-0.03 + 0.06 * i / 39) for i in range(40)]
    base = runs(40, factors=spread, sessions=20)
    cand = runs(1, scale=math.exp(0.085), factors=[1.0])
    single, sequential = judge(cand, base), judge(cand, base, looks=verdict.planned_looks(5, 1))
    one, five = single.metric("tpot_p50"), sequential.metric("tpot_p50")
    assert one.p_adjusted is not None
    assert 0.002 < one.p_adjusted <= 0.01
    assert one.status == REGRESSION
    assert five.status == INCONCLUSIVE
    assert sequential.looks == 5
    assert Verdict.from_dict(sequential.as_dict()) == sequential
    assert verdict.planned_looks(5, 2) == 4
    with pytest.raises(ValueError, match="first_runs"):
        verdict.planned_looks(1, 2)
    with pytest.raises(ValueError, match="looks"):
        judge(cand, base, looks=0)


# --- guards: too few requests, a disturbed environment --------------------------------------------------------


def test_too_few_requests_per_run_cannot_make_a_regression() -> None:
    v = judge(runs(3, scale=1.20, seed=2, completed=2), BASE)
    assert v.status == INCONCLUSIVE
    tpot = v.metric("tpot_p50")
    assert tpot.status == INCONCLUSIVE
    assert "completed only 2 request(s)" in tpot.reason
    assert f"at least {verdict.MIN_REQUESTS_PER_RUN}" in tpot.reason
    assert tpot.estimate == pytest.approx(1.20, rel=0.03)  # the figures are still shown
    assert not needs_more_runs(v, runs_done=3, budget=5)  # more such runs cannot help


def test_enough_requests_keep_the_regression() -> None:
    v = judge(runs(3, scale=1.20, seed=2, completed=verdict.MIN_REQUESTS_PER_RUN), BASE)
    assert v.status == REGRESSION


def test_a_small_baseline_run_also_guards() -> None:
    base = runs(10, seed=1)
    base[4]["completed"] = 3
    v = judge(runs(3, scale=1.20, seed=2), base)
    assert v.status == INCONCLUSIVE
    assert "baseline run 5 completed only 3" in v.reason


def test_disturbed_run_turns_a_regression_into_inconclusive() -> None:
    candidate = runs(3, scale=1.20, seed=2)
    candidate[1]["disturbance"] = {
        "disturbed": True,
        "reasons": ["other processes used 38% of the server's cores (limit 10%)"],
    }
    v = judge(candidate, BASE)
    assert v.status == INCONCLUSIVE
    assert "environment disturbed during candidate run 2" in v.reason
    assert "38%" in v.reason
    assert "rerun" in v.reason


def test_undisturbed_regression_still_fails() -> None:
    candidate = runs(3, scale=1.20, seed=2)
    for run in candidate:
        run["disturbance"] = {"disturbed": False, "reasons": []}
    assert judge(candidate, BASE).status == REGRESSION


def test_disturbance_does_not_block_a_pass() -> None:
    candidate = runs(3, seed=3)
    candidate[0]["disturbance"] = {"disturbed": True, "reasons": ["steal 9% (limit 5%)"]}
    assert judge(candidate, BASE).status == PASS


def test_guard_survives_the_session_holm_step_and_the_round_trip() -> None:
    family = 2 * len(verdict.DEFAULT_GATING)
    guarded = judge(runs(3, scale=1.20, seed=2, completed=4), BASE, family_size=family)
    clear = judge(runs(3, scale=1.20, seed=5), BASE, family_size=family)
    rebuilt = Verdict.from_dict(json.loads(json.dumps(guarded.as_dict())))
    after = apply_holm([rebuilt, clear])
    assert after[0].status == INCONCLUSIVE
    assert all(m.status != REGRESSION for m in after[0].metrics)
    assert after[1].status == REGRESSION


def test_guards_in_ab_mode_cover_both_sides() -> None:
    a = runs(4, seed=40)
    b = runs(4, scale=1.20, seed=41)
    assert verdict.judge_paired(a, b).status == REGRESSION
    a[2]["disturbance"] = {"disturbed": True, "reasons": ["foreign GPU process 123 python"]}
    v = verdict.judge_paired(a, b)
    assert v.status == INCONCLUSIVE
    assert "during A run 3" in v.reason


def test_without_runs_is_inconclusive_with_every_reason() -> None:
    v = verdict.without_runs(["run 1: cached", "run 2: cached too"], 2)
    assert v.status == INCONCLUSIVE
    assert "run 1: cached" in v.reason
    assert "run 2: cached too" in v.reason
    assert not needs_more_runs(v, runs_done=2, budget=5)


# --- a status follows from the interval beside it, or the table says why --------------------------------------


def test_no_failures_in_few_requests_says_the_slo_governs() -> None:
    from pytest_llmperf.report.tables import render_verdict_table

    few = runs(2, seed=50, completed=12)
    v = judge(few, runs(10, seed=1, sessions=5, completed=12, failed=1))
    m = v.metric("error_rate")
    assert m.status == PASS
    assert m.upper is not None
    assert m.upper > m.tolerance  # the interval alone does not rule out a 0.5-point rise
    assert "error_rate SLO" in m.reason
    assert "24 request(s)" in m.reason
    table = render_verdict_table(v.as_dict())
    assert "PASS (SLO governs)" in table
    assert "error rate: " in table  # the reason is printed under the table
    many = judge(runs(3, seed=51, completed=5000), runs(10, seed=1, sessions=5, completed=5000))
    assert "SLO governs" not in render_verdict_table(many.as_dict())


def test_an_advisory_tail_wholly_beyond_its_tolerance_reads_so() -> None:
    from pytest_llmperf.report.tables import render_verdict_table

    # Two baseline runs: a regression would have to be gross (3 × the bound); p99 TPOT 30 % worse is not, but
    # its whole interval lies beyond the 15 % tolerance, and the table says so instead of a bare INCONCLUSIVE.
    v = judge(runs(3, seed=52, p99=1.3), runs(2, seed=9))
    m = v.metric("tpot_p99")
    assert not m.gating
    assert m.status == INCONCLUSIVE
    assert m.effect_lower is not None
    assert m.effect_lower > m.bound
    assert "the whole 90% interval is beyond" in m.reason
    assert "advisory" in m.reason
    table = render_verdict_table(v.as_dict())
    assert "WORSE (advisory)" in table
    assert "p99 TPOT: " in table
    assert v.status != REGRESSION


def test_improvement_shows_the_improvement_limit_and_its_p_value() -> None:
    v = judge(runs(3, scale=0.80, seed=8), BASE)
    m = v.metric("tpot_p50")
    assert m.status == IMPROVEMENT
    assert "improvement limit (≤ 0.952×)" in m.reason
    assert "p(better)=" in m.reason
    assert "p=1 " not in m.reason
    thr = v.metric("output_tok_s")
    assert "improvement limit (≥ 1.053×)" in thr.reason


# --- per-token ITL under MTP / speculative decoding --------------------------------------------------------------


def _with_chunks(summaries: list[dict[str, Any]], tokens_per_chunk: float, chunk_p99: float) -> list[dict[str, Any]]:
    for s in summaries:
        s["mean_tokens_per_chunk"] = tokens_per_chunk
        s["p99_itl_token_ms"] = s["p99_itl_ms"] / 2.5  # per-token gaps: a chunk's gap split over its tokens
        s["p99_itl_ms"] = s["p99_itl_ms"] * chunk_p99
    return summaries


def test_multi_token_chunks_are_judged_per_token() -> None:
    # Better acceptance: more tokens per chunk, so per-chunk gaps grow 76 % while per-token latency is unchanged.
    base = _with_chunks(runs(10, seed=1, sessions=5), 2.5, 1.0)
    cand = _with_chunks(runs(3, seed=60), 2.5, 1.76)
    m = verdict.judge(cand, base).metric("itl_p99")
    assert m.key == "p99_itl_token_ms"
    assert m.label == "p99 ITL (per token)"
    assert m.status != REGRESSION
    assert m.estimate == pytest.approx(1.0, abs=0.05)


def test_one_token_chunks_stay_per_chunk_and_say_so() -> None:
    m = verdict.judge(runs(3, seed=61), BASE).metric("itl_p99")
    assert m.key == "p99_itl_ms"
    assert m.label == "p99 ITL (per chunk)"
    no_token_figures = [dict(r, mean_tokens_per_chunk=2.0) for r in runs(3, seed=62)]
    fallback = verdict.judge(no_token_figures, BASE).metric("itl_p99")
    assert fallback.key == "p99_itl_ms"
    assert "lacks per-token ITL" in fallback.label


def test_junit_itl_properties_follow_the_same_rule() -> None:
    from pytest_llmperf.report.junit import properties

    summary = {"compat_mode": "vllm", "p99_itl_ms": 80.0, "p99_itl_token_ms": 30.0, "mean_tokens_per_chunk": 2.4}
    props = dict(properties({"summary": summary}))
    assert props["llmperf.itl_ms.p99"] == 30.0
    assert props["llmperf.itl_ms.source"] == "per_token"
    props = dict(properties({"summary": {**summary, "mean_tokens_per_chunk": 1.0}}))
    assert props["llmperf.itl_ms.p99"] == 80.0
    assert props["llmperf.itl_ms.source"] == "per_chunk"


def test_the_session_prior_can_be_set() -> None:
    one_session = runs(10, seed=1)
    wide = judge(runs(3, scale=1.2, seed=2), one_session, session_prior=0.10)
    m = wide.metric("tpot_p50")
    assert m.sigma_session == pytest.approx(0.10)
    assert wide.status != REGRESSION  # +20 % is within what a 10 % between-session spread can show
    assert "so 10% is assumed" in wide.reason
    assert judge(runs(3, scale=1.2, seed=2), one_session).status == REGRESSION  # the 3 % default
