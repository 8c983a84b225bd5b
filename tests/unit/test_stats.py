"""Unit tests of pytest_llmperf.judge.stats against hand computations, scipy and textbook values."""

from __future__ import annotations

import math

import pytest
import scipy.stats as sst  # type: ignore[import-untyped]

from pytest_llmperf.judge import stats


def _mean_var(xs: list[float]) -> tuple[float, float]:
    mean = sum(xs) / len(xs)
    return mean, sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)


def test_welch_interval_matches_hand_computation_and_scipy() -> None:
    base = [0.00, 0.01, -0.01, 0.005, -0.005]  # var 6.25e-5
    cand = [0.06, 0.10, 0.02]  # noisier than the baseline: the Welch branch
    cmp = stats.compare_log(cand, base)
    assert cmp.method == "welch"

    mb, vb = _mean_var(base)
    mc, vc = _mean_var(cand)
    se = math.sqrt(vb / 5 + vc / 3)
    df = (vb / 5 + vc / 3) ** 2 / ((vb / 5) ** 2 / 4 + (vc / 3) ** 2 / 2)
    assert cmp.delta == pytest.approx(mc - mb)
    assert cmp.se == pytest.approx(se)
    assert cmp.df == pytest.approx(df)
    t95 = sst.t.ppf(0.95, df)
    assert cmp.upper(0.05) == pytest.approx(mc - mb + t95 * se)
    assert cmp.lower(0.05) == pytest.approx(mc - mb - t95 * se)

    ref = sst.ttest_ind(cand, base, equal_var=False, alternative="greater")
    assert cmp.p_greater() == pytest.approx(ref.pvalue)
    lo, hi = sst.ttest_ind(cand, base, equal_var=False).confidence_interval(0.90)
    assert (cmp.lower(0.05), cmp.upper(0.05)) == pytest.approx((lo, hi))
    assert cmp.p_less() == pytest.approx(1 - ref.pvalue)


def test_quiet_candidate_uses_pooled_student_interval() -> None:
    base = [0.0, 0.04, -0.04, 0.02, -0.02, 0.01]
    cand = [0.03, 0.031]
    cmp = stats.compare_log(cand, base)
    assert cmp.method == "pooled"
    ref = sst.ttest_ind(cand, base, equal_var=True, alternative="greater")
    assert cmp.p_greater() == pytest.approx(ref.pvalue)
    assert cmp.df == 6


def test_prediction_interval_for_one_candidate_run() -> None:
    base = [0.0, 0.02, -0.02, 0.01, -0.01]  # mean 0, var 2.5e-4
    cmp = stats.compare_log([0.05], base)
    assert cmp.method == "prediction"
    se = math.sqrt(2.5e-4 * (1 + 1 / 5))
    assert cmp.se == pytest.approx(se)
    assert cmp.df == 4
    assert cmp.p_greater() == pytest.approx(sst.t.sf(0.05 / se, 4))
    assert cmp.upper(0.05) == pytest.approx(0.05 + sst.t.ppf(0.95, 4) * se)


def test_noise_floor_below_three_baseline_runs() -> None:
    quiet = stats.compare_log([0.0], [0.001, -0.001])
    assert quiet.method == "noise_floor"
    assert quiet.sigma == stats.DEFAULT_NOISE_FLOOR
    assert math.isinf(quiet.df)
    assert quiet.se == pytest.approx(0.03 * math.sqrt(1 / 2 + 1))
    single = stats.compare_log([0.1, 0.1], [0.0], noise_floor=0.05)
    assert single.sigma == 0.05
    noisy = stats.compare_log([0.0, 0.2], [0.1, -0.1])  # data noisier than the floor: their own df
    assert noisy.sigma > 0.03
    assert noisy.df == 2


def test_identical_values_do_not_divide_by_zero() -> None:
    cmp = stats.compare_log([0.0, 0.0], [0.0, 0.0, 0.0])
    assert cmp.se > 0
    assert cmp.p_greater() == pytest.approx(0.5)


def test_log_values_rejects_non_positive() -> None:
    assert stats.log_values([1.0, math.e]) == pytest.approx([0.0, 1.0])
    with pytest.raises(ValueError, match="log space"):
        stats.log_values([1.0, 0.0])


def test_holm_textbook_example() -> None:
    # Four hypotheses: sorted p 0.005, 0.01, 0.03, 0.04 are multiplied by 4, 3, 2, 1 and made monotone.
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rejected = [p <= 0.05 for p in adjusted]
    assert rejected == [True, False, False, True]


def test_holm_caps_at_one_and_handles_empty() -> None:
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]
    assert stats.holm([]) == []


def test_clopper_pearson_known_values() -> None:
    lo, hi = stats.clopper_pearson(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(1 - 0.025 ** (1 / 10))  # 0.3085
    lo, hi = stats.clopper_pearson(10, 10)
    assert lo == pytest.approx(0.025 ** (1 / 10))
    assert hi == 1.0
    assert stats.clopper_pearson(5, 10) == pytest.approx((0.187086, 0.812914), abs=1e-6)
    ref = sst.binomtest(7, 200).proportion_ci(confidence_level=0.95, method="exact")
    assert stats.clopper_pearson(7, 200) == pytest.approx((ref.low, ref.high))


def test_newcombe_difference_published_example() -> None:
    # Newcombe (1998), method 10: 56/70 − 48/80, 95 % interval 0.0524 to 0.3339.
    lo, hi = stats.newcombe_difference(56, 70, 48, 80, 1.959964)
    assert (lo, hi) == pytest.approx((0.0524, 0.3339), abs=5e-4)


def test_fisher_one_sided_matches_scipy() -> None:
    ref = sst.fisher_exact([[5, 495], [1, 999]], alternative="greater").pvalue
    assert stats.fisher_one_sided(5, 500, 1, 1000) == pytest.approx(ref)
    assert stats.fisher_one_sided(0, 500, 3, 500) == 1.0


def test_runs_needed_known_value_and_monotonic_in_spread() -> None:
    # σ = 3 %, δ = 5 %, k = 10, α = 0.01, power 80 %: 1 / (ln(1.05)² / ((z.99 + z.8)² σ²) − 1/10) ≈ 6.1
    assert stats.runs_needed(0.03, 10, math.log(1.05), alpha=0.01) == pytest.approx(6.11, abs=0.02)
    spreads = [0.005, 0.01, 0.015, 0.02, 0.025, 0.03]
    needed = [stats.runs_needed(s, 10, math.log(1.05), alpha=0.01) for s in spreads]
    assert needed == sorted(needed)
    assert needed[0] < needed[-1]
    # A 5-run baseline with 5 % noise cannot support a 5 % tolerance at any candidate run count.
    assert math.isinf(stats.runs_needed(0.05, 5, math.log(1.05), alpha=0.01))
    assert math.isinf(stats.runs_needed(0.01, 10, 0.0, alpha=0.01))


def test_results_are_builtin_floats() -> None:
    cmp = stats.compare_log([0.01, 0.02], [0.0, 0.01, 0.02])
    for value in (cmp.p_greater(), cmp.upper(0.05), cmp.se, cmp.df, *stats.clopper_pearson(3, 9)):
        assert type(value) is float
    assert all(type(v) in (float, int, str) for v in cmp.as_dict().values())


# --- runs nested in sessions --------------------------------------------------------------------------------------


def test_sessions_known_answer_with_an_estimated_spread() -> None:
    # Three baseline sessions that agree exactly: the estimate is 0, shrunk towards the 3 % prior with 2
    # pseudo-sessions: σ_s² = (2·0.03² + 2·0) / 4 = 0.00045. se² = σ_s²(1 + 1/3) + (tiny within-session part).
    cmp, spread = stats.compare_sessions([0.1, 0.1], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    assert spread.estimated
    assert spread.sessions == 3
    assert spread.sigma_session_estimate == 0.0
    assert spread.sigma_session == pytest.approx(math.sqrt(0.00045))
    assert cmp.method == "sessions"
    assert cmp.delta == pytest.approx(0.1)
    assert cmp.se == pytest.approx(math.sqrt(0.00045 * 4 / 3), rel=1e-4)
    assert cmp.df == pytest.approx(4.0, rel=1e-3)  # PRIOR_SESSIONS + S − 1: the between-session part dominates


def test_sessions_known_answer_with_the_prior() -> None:
    # One session of two runs (< 3 baseline runs: the within-session spread is floored at 3 %), one candidate
    # run: se² = σ_s²(1 + 1) + σ_e²(1 + ½) = 0.0009·2 + 0.0009·1.5, both taken as known (df = ∞).
    cmp, spread = stats.compare_sessions([0.05], [[0.0, 0.02]])
    assert not spread.estimated
    assert spread.sigma_session_estimate is None
    assert spread.sigma_session == pytest.approx(0.03)
    assert cmp.delta == pytest.approx(0.04)
    assert cmp.se == pytest.approx(math.sqrt(0.0009 * 2 + 0.0009 * 1.5))
    assert math.isinf(cmp.df)


def test_sessions_known_answer_with_the_spread_of_the_history() -> None:
    # One baseline session (the prior would stand in), four earlier sessions in the history whose runs agree
    # within each session (σ_e of the history ≈ 0) and whose means are 0, 0.1, −0.1, 0: their variance is
    # 0.02/3, shrunk towards the 3 % prior with 2 pseudo-sessions: σ_s² = (2·0.0009 + 3·0.02/3) / 5 = 0.00436.
    history = [[0.0, 0.0], [0.1, 0.1], [-0.1, -0.1], [0.0, 0.0]]
    cmp, spread = stats.compare_sessions([0.05], [[0.0, 0.02]], history=history)
    assert spread.source == "history"
    assert spread.history_sessions == 4
    assert spread.estimated
    assert spread.sessions == 1
    assert spread.sigma_session_estimate == pytest.approx(math.sqrt(0.02 / 3), rel=1e-6)
    assert spread.sigma_session == pytest.approx(math.sqrt(0.00436), rel=1e-6)
    # The candidate and baseline keep their own run-to-run spread (floored at 3 % below 3 baseline runs).
    assert spread.sigma_run == pytest.approx(0.03)
    assert cmp.se == pytest.approx(math.sqrt(0.00436 * 2 + 0.0009 * 1.5), rel=1e-6)
    assert cmp.df < 50  # the between-session part has 5 df now, not taken as known


def test_the_history_is_not_used_with_too_few_sessions_nor_when_the_baseline_has_enough() -> None:
    _, few = stats.compare_sessions([0.05], [[0.0, 0.02]], history=[[0.0], [0.2]])
    assert few.source == "prior"
    assert few.sigma_session == pytest.approx(0.03)
    baseline = [[0.0, 0.01], [0.02, 0.03], [0.01, 0.0]]
    _, own = stats.compare_sessions([0.05], baseline, history=[[0.0], [0.5], [-0.5], [0.3]])
    _, alone = stats.compare_sessions([0.05], baseline)
    assert own.source == "baseline"
    assert own == alone


def test_sessions_mean_weighs_each_session_alike() -> None:
    # A session of ten runs at 0 and one of a single run at 0.2: the baseline mean is 0.1, not 0.018.
    cmp, _ = stats.compare_sessions([0.1], [[0.0] * 10, [0.2]])
    assert cmp.delta == pytest.approx(0.0)


def test_a_spread_between_sessions_is_estimated_and_widens_the_interval() -> None:
    calm, _ = stats.compare_sessions([0.0, 0.01], [[0.0, 0.01]] * 6)
    offsets = [[o, o + 0.01] for o in (-0.1, 0.05, 0.1, -0.05, 0.0, 0.02)]
    spread_out, spread = stats.compare_sessions([0.0, 0.01], offsets)
    assert spread.sigma_session_estimate is not None
    assert spread.sigma_session_estimate > 0.05
    assert spread_out.se > 2 * calm.se


def test_session_runs_and_sessions_needed() -> None:
    # Between-session part alone too wide: no number of candidate runs helps, and the sessions needed are finite
    # only when the margin exceeds what one new session's offset can show.
    assert math.isinf(stats.session_runs_needed(0.02, 0.05, 3, 15, 0.05, alpha=0.05))
    assert stats.session_runs_needed(0.02, 0.005, 10, 50, 0.05, alpha=0.05) < 5
    assert math.isinf(stats.sessions_needed(0.02, 0.05, 5, 0.05, alpha=0.05))
    # per session 0.005² + 0.02²/5 = 1.05e-4; room (0.05 / (z_.95 + z_.8))² − 1.05e-4 ≈ 2.98e-4: ≈ 0.35 sessions.
    assert stats.sessions_needed(0.02, 0.005, 5, 0.05, alpha=0.05) == pytest.approx(0.3507, rel=1e-3)
