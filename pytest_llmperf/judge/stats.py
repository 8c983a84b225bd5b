"""Statistics behind the verdicts: run-level comparisons in log space, Holm, planning, binomial intervals.

Pure functions, no I/O, no pytest. scipy is imported at module level because the plugin imports this module
lazily. Every function returns builtins (``float``, ``int``, tuples of them), never numpy scalars, because the
results cross pytest-xdist's execnet channel.

The unit of replication is the run: each input value is one run-level statistic (e.g. a run's median TPOT),
and the comparison works on ``y = ln(value)``. Requests inside one run are not independent replicates: they
share the run's conditions (server start, node, heat), so a test on pooled per-request samples takes a run's
offset for a change and raises more false alarms the more runs differ. Nothing here looks at per-request samples.

Three ways to get the standard error of ``Δ = mean(y_candidate) − mean(y_baseline)``:

``welch``
    m ≥ 2 candidate runs, k ≥ 3 baseline runs, and the candidate runs spread more than the baseline's:
    ``se² = s_b²/k + s_c²/m`` with Welch–Satterthwaite df, so a candidate that became erratic is not judged
    with the baseline's calm spread.
``pooled``
    m ≥ 2, k ≥ 3, and the candidate spreads no more than the baseline: Student's interval with the pooled
    variance, ``se² = s_p²·(1/k + 1/m)``, ``df = k + m − 2``. It is exact when both sides share one spread
    (the prediction interval below is its m = 1 case). Under that assumption this choice only ever widens
    the interval relative to always pooling (Welch's se is the larger one when m < k and the candidate is
    noisier), so false-alarm control holds; it avoids Welch's 1–2 df candidate variance from 2–3 runs,
    whose df swing the interval's width from run to run (measured in benchmarks/validate_verdicts.py).
``prediction``
    m = 1 candidate run and k ≥ 3 baseline runs: the Student-t prediction interval for one new run,
    ``se² = s_b²·(1 + 1/k)``, ``df = k − 1``; it assumes the new run has the baseline's run-to-run spread.
``paired``
    A/B mode (:func:`compare_paired`): each block ran A and B back to back with the same prompts, and the
    input is the blocks' log ratios ``d_i = ln(B_i) − ln(A_i)``; ``se = s_d / sqrt(n)``, ``df = n − 1``
    (paired t). Whatever drifts more slowly than a block (the day, the node, a thermal state) cancels in
    ``d_i``, which a stored baseline cannot do.
``sessions``
    the baseline's runs carry the pytest session (server start, day) they came from (:func:`compare_sessions`).
    Runs of one session agree more with each other than with the next session's (on the embedded llama.cpp
    engine the between-session spread of log TPOT was 5–16 % against 3–11 % within a session), so the
    candidate's own session offset is unknown and counts against it: a one-way random-effects model in log
    space, runs nested in sessions. ``se² = σ_s²·(1 + 1/S) + σ_e²·(1/m + h/S)`` with S baseline sessions, m
    candidate runs, h the mean of 1/runs over the baseline's sessions, σ_e² the within-session variance
    (pooled over every session with two or more runs, the candidate's included) and σ_s² the between-session
    variance. With fewer than ``MIN_SESSIONS`` (3) baseline sessions σ_s² cannot be estimated and the documented
    prior ``SESSION_SD_PRIOR`` (3 % in log units, the top of the 1–3 % day-to-day offsets seen on GPU servers)
    stands in for it, treated as known; from 3 sessions on the method-of-moments estimate from the spread of the
    session means is shrunk towards the prior with ``PRIOR_SESSIONS`` (2) pseudo-sessions, so three lucky
    sessions cannot make the interval narrow. df by Welch–Satterthwaite over the two parts.
``noise_floor``
    fewer than 3 baseline runs: one or two runs say nothing trustworthy about run-to-run spread, so the spread
    is ``max(s_pooled, noise_floor)`` (pooled over whatever both sides provide) with
    ``se² = σ²·(1/k + 1/m)``. When the floor binds it is treated as a known σ (normal quantiles); when the
    data are noisier than the floor their own pooled df is used. The verdict layer additionally demands a
    gross effect before it calls such a comparison a regression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import scipy.special as sps  # type: ignore[import-untyped]
import scipy.stats as sst  # type: ignore[import-untyped]

__all__ = [
    "DEFAULT_NOISE_FLOOR",
    "MIN_BASELINE_RUNS",
    "MIN_SESSIONS",
    "MIN_SIGMA",
    "PRIOR_SESSIONS",
    "SESSION_SD_PRIOR",
    "LogComparison",
    "SessionSpread",
    "blocks_needed",
    "clopper_pearson",
    "compare_log",
    "compare_paired",
    "compare_sessions",
    "fisher_one_sided",
    "holm",
    "log_values",
    "newcombe_difference",
    "normal_quantile",
    "runs_needed",
    "session_runs_needed",
    "sessions_needed",
    "t_quantile",
    "wilson_interval",
]

Method = Literal["welch", "pooled", "prediction", "noise_floor", "paired", "sessions"]

# Run-to-run spread assumed when the baseline has fewer than MIN_BASELINE_RUNS runs: 3 % in log units is the
# middle of the 2–5 % run-to-run spread usual on shared GPU servers and CI machines, i.e. deliberately not
# optimistic.
DEFAULT_NOISE_FLOOR = 0.03
MIN_BASELINE_RUNS = 3
# Between-session spread (log units) assumed while the baseline holds fewer than MIN_SESSIONS sessions, and the
# weight (in sessions) of that prior once the spread can be estimated. See ``sessions`` in the module doc.
SESSION_SD_PRIOR = 0.03
MIN_SESSIONS = 3
PRIOR_SESSIONS = 2
# Identical run-level values (a deterministic test double, rounded storage) would make se = 0 and every
# difference infinitely significant. 1e-4 in log units (0.01 %) is far below any real run-to-run noise.
MIN_SIGMA = 1e-4


def t_quantile(prob: float, df: float) -> float:
    """Quantile of Student's t; ``df = inf`` gives the normal quantile."""
    return float(sps.stdtrit(df, prob))


def normal_quantile(prob: float) -> float:
    return float(sps.ndtri(prob))


def _t_sf(x: float, df: float) -> float:
    # stdtr is the CDF; 1 − CDF loses precision far in the upper tail, the CDF of −x does not.
    return float(sps.stdtr(df, -x))


def log_values(values: Sequence[float]) -> list[float]:
    """``ln`` of positive run-level statistics; a non-positive or non-finite value raises ``ValueError``."""
    out = []
    for v in values:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"run-level value {v!r} cannot be compared in log space (expected a finite number > 0)")
        out.append(math.log(v))
    return out


def _mean_var(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return mean, var


@dataclass(frozen=True, slots=True)
class LogComparison:
    """Candidate vs baseline on the log scale. ``delta > 0`` means the candidate's values are larger.

    ``sigma`` is the run-to-run standard deviation (log units) used for planning more runs; ``df`` is
    ``math.inf`` when a normal approximation is used.
    """

    delta: float
    se: float
    df: float
    method: Method
    sigma: float
    k: int
    m: int

    def p_greater(self) -> float:
        """One-sided p-value of H0 ``Δ ≤ 0`` against ``Δ > 0``."""
        return _t_sf(self.delta / self.se, self.df)

    def p_less(self) -> float:
        """One-sided p-value of H0 ``Δ ≥ 0`` against ``Δ < 0``."""
        return _t_sf(-self.delta / self.se, self.df)

    def upper(self, alpha: float) -> float:
        """One-sided (1 − alpha) upper confidence bound on Δ."""
        return self.delta + t_quantile(1.0 - alpha, self.df) * self.se

    def lower(self, alpha: float) -> float:
        """One-sided (1 − alpha) lower confidence bound on Δ."""
        return self.delta - t_quantile(1.0 - alpha, self.df) * self.se

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def compare_log(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    noise_floor: float = DEFAULT_NOISE_FLOOR,
    min_baseline_runs: int = MIN_BASELINE_RUNS,
) -> LogComparison:
    """Compare log run-level values ``candidate`` (m ≥ 1) with ``baseline`` (k ≥ 1); see the module doc."""
    m, k = len(candidate), len(baseline)
    if m < 1 or k < 1:
        raise ValueError(f"need at least one candidate and one baseline run (got m={m}, k={k})")
    mean_c, var_c = _mean_var(candidate)
    mean_b, var_b = _mean_var(baseline)
    delta = mean_c - mean_b
    pooled_df = (k - 1) + (m - 1)
    pooled_var = ((k - 1) * var_b + (m - 1) * var_c) / pooled_df if pooled_df > 0 else 0.0
    sigma = max(math.sqrt(pooled_var), MIN_SIGMA)

    if k < min_baseline_runs:
        if sigma <= noise_floor:
            sigma, df = max(noise_floor, MIN_SIGMA), math.inf
        else:
            df = float(pooled_df)
        return LogComparison(delta, sigma * math.sqrt(1 / k + 1 / m), df, "noise_floor", sigma, k, m)

    if m == 1:
        s_b = max(math.sqrt(var_b), MIN_SIGMA)
        return LogComparison(delta, s_b * math.sqrt(1 + 1 / k), float(k - 1), "prediction", s_b, k, m)

    var_b = max(var_b, MIN_SIGMA**2)
    if var_c <= var_b:
        # Pooled (Student) interval: exact when both sides share one run-to-run spread, the assumption the
        # m = 1 prediction interval already makes (it is this formula with m = 1). Welch here would lean on a
        # candidate variance with 1–2 df from 2–3 runs, whose df then swing the width from run to run.
        se = sigma * math.sqrt(1 / k + 1 / m)
        return LogComparison(delta, se, float(pooled_df), "pooled", sigma, k, m)
    vb, vc = var_b / k, var_c / m
    se = math.sqrt(vb + vc)
    df = (vb + vc) ** 2 / (vb**2 / (k - 1) + vc**2 / (m - 1))
    return LogComparison(delta, se, float(df), "welch", sigma, k, m)


@dataclass(frozen=True, slots=True)
class SessionSpread:
    """The variance components behind a :func:`compare_sessions` comparison (log units)."""

    sessions: int  # baseline sessions
    sigma_session: float  # between-session SD used (prior, or estimate shrunk towards it)
    sigma_run: float  # within-session SD used
    estimated: bool  # False: the prior stood in for the between-session SD
    sigma_session_estimate: float | None  # the data's own estimate (None with fewer than MIN_SESSIONS)
    # Where the between-session SD comes from: the baseline's sessions, the history's (sessions of the same test,
    # pair, workload and epoch, when the baseline holds fewer than MIN_SESSIONS), or the prior.
    source: Literal["baseline", "history", "prior"] = "baseline"
    history_sessions: int | None = None  # sessions of the history behind a "history" estimate


def session_spread(
    candidate: Sequence[float],
    baseline_sessions: Sequence[Sequence[float]],
    *,
    prior: float = SESSION_SD_PRIOR,
    noise_floor: float = DEFAULT_NOISE_FLOOR,
    history: Sequence[Sequence[float]] = (),
) -> tuple[SessionSpread, float, float]:
    """(spread, df of σ_s², df of σ_e²) for :func:`compare_sessions`; ``math.inf`` df marks a value taken as known.

    ``history``: log values per session of earlier sessions of the same test, pair, workload and epoch (the
    history database). Below :data:`MIN_SESSIONS` baseline sessions the between-session SD is estimated from
    them, when there are at least as many, instead of assumed: the same estimate, shrunk towards the prior alike.
    """
    groups = [list(g) for g in baseline_sessions if len(g) > 0]
    within_ss = math.fsum(_mean_var(g)[1] * (len(g) - 1) for g in [*groups, list(candidate)] if len(g) > 1)
    within_df = sum(len(g) - 1 for g in [*groups, list(candidate)] if len(g) > 1)
    if within_df > 0:
        sigma_e, df_e = max(math.sqrt(within_ss / within_df), MIN_SIGMA), float(within_df)
    else:  # every session has one run: no run-to-run spread to be seen, the noise floor stands in
        sigma_e, df_e = max(noise_floor, MIN_SIGMA), math.inf
    if sum(len(g) for g in groups) < MIN_BASELINE_RUNS and sigma_e < noise_floor:
        # One or two baseline runs say nothing trustworthy about run-to-run spread (as in compare_log).
        sigma_e, df_e = noise_floor, math.inf
    s = len(groups)
    if s >= MIN_SESSIONS:
        sigma_s, estimate, df_s = _between_sessions(groups, sigma_e, prior)
        return SessionSpread(s, sigma_s, sigma_e, True, estimate), df_s, df_e
    past = [list(g) for g in history if len(g) > 0]
    if len(past) >= MIN_SESSIONS:
        # The history's own run-to-run spread separates its session means from its runs' noise (the candidate's
        # and baseline's stay the sigma_run of this comparison).
        past_df = sum(len(g) - 1 for g in past if len(g) > 1)
        past_ss = math.fsum(_mean_var(g)[1] * (len(g) - 1) for g in past if len(g) > 1)
        sigma_past = max(math.sqrt(past_ss / past_df), MIN_SIGMA) if past_df > 0 else sigma_e
        sigma_s, estimate, df_s = _between_sessions(past, sigma_past, prior)
        spread = SessionSpread(s, sigma_s, sigma_e, True, estimate, source="history", history_sessions=len(past))
        return spread, df_s, df_e
    return SessionSpread(s, max(prior, MIN_SIGMA), sigma_e, False, None, source="prior"), math.inf, df_e


def _between_sessions(groups: Sequence[Sequence[float]], sigma_run: float, prior: float) -> tuple[float, float, float]:
    """(σ_s used, the data's own estimate, df of σ_s²) from the session means of ``groups`` (≥ MIN_SESSIONS):
    their variance less the part the runs' noise explains, shrunk towards ``prior`` with PRIOR_SESSIONS weight."""
    s = len(groups)
    means = [math.fsum(g) / len(g) for g in groups]
    _, var_means = _mean_var(means)
    h = math.fsum(1 / len(g) for g in groups) / s
    estimate = max(0.0, var_means - sigma_run**2 * h)
    shrunk = (PRIOR_SESSIONS * prior**2 + (s - 1) * estimate) / (PRIOR_SESSIONS + s - 1)
    return max(math.sqrt(shrunk), MIN_SIGMA), math.sqrt(estimate), float(PRIOR_SESSIONS + s - 1)


def compare_sessions(
    candidate: Sequence[float],
    baseline_sessions: Sequence[Sequence[float]],
    *,
    prior: float = SESSION_SD_PRIOR,
    noise_floor: float = DEFAULT_NOISE_FLOOR,
    history: Sequence[Sequence[float]] = (),
) -> tuple[LogComparison, SessionSpread]:
    """Candidate runs of one (new) session against baseline runs grouped by their session; see ``sessions`` in
    the module doc. The baseline mean is the mean of its session means, so a session with many runs does not
    outweigh the others."""
    groups = [list(g) for g in baseline_sessions if len(g) > 0]
    m = len(candidate)
    if m < 1 or not groups:
        raise ValueError(f"need at least one candidate run and one baseline session (got m={m}, S={len(groups)})")
    spread, df_s, df_e = session_spread(candidate, groups, prior=prior, noise_floor=noise_floor, history=history)
    s = len(groups)
    h = math.fsum(1 / len(g) for g in groups) / s
    mean_b = math.fsum(math.fsum(g) / len(g) for g in groups) / s
    delta = math.fsum(candidate) / m - mean_b
    part_s = spread.sigma_session**2 * (1 + 1 / s)
    part_e = spread.sigma_run**2 * (1 / m + h / s)
    se = math.sqrt(part_s + part_e)
    denominator = (part_s**2 / df_s if math.isfinite(df_s) else 0.0) + (
        part_e**2 / df_e if math.isfinite(df_e) else 0.0
    )
    df = (part_s + part_e) ** 2 / denominator if denominator > 0 else math.inf
    k = sum(len(g) for g in groups)
    return LogComparison(delta, se, df, "sessions", spread.sigma_run, k, m), spread


def compare_paired(log_ratios: Sequence[float]) -> LogComparison:
    """Paired comparison of B with A from per-block log ratios ``ln(B_i / A_i)`` (n ≥ 2 blocks): paired t.

    ``delta > 0`` means B's values are larger. ``sigma`` is the spread of the block differences (what
    :func:`blocks_needed` plans with); ``k = m = n``.

    Why t and not Wilcoxon's signed-rank test: with n blocks the smallest one-sided p Wilcoxon can reach is
    ``2**-n`` (1/32 at five blocks), above α = 0.01, so within a typical run budget it could never report a
    regression. The t interval needs approximate normality of log ratios of run-level medians, which holds
    well for run statistics (each is itself an average-like summary of hundreds of requests).
    """
    n = len(log_ratios)
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 blocks (got {n})")
    mean, var = _mean_var(log_ratios)
    sigma = max(math.sqrt(var), MIN_SIGMA)
    return LogComparison(mean, sigma / math.sqrt(n), float(n - 1), "paired", sigma, n, n)


def blocks_needed(sigma: float, margin: float, *, alpha: float, power: float = 0.8) -> float:
    """A/B blocks n (in total, fractional) so that a distance ``margin`` (log units) gets decided.

    Normal approximation of ``(z_{1−α} + z_{power}) · σ_d / sqrt(n) ≤ margin`` with σ_d the spread of the
    per-block log ratios. Unlike :func:`runs_needed` there is no fixed reference side, so more blocks always
    help; ``math.inf`` only for a non-positive margin.
    """
    if margin <= 0:
        return math.inf
    z = normal_quantile(1.0 - alpha) + normal_quantile(power)
    return (z * max(sigma, MIN_SIGMA) / margin) ** 2


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order.

    Reject hypothesis i at family-wise level α iff ``adjusted[i] ≤ α``. Valid under any dependence between
    the tests, which matters because TTFT, TPOT and E2E from the same runs are correlated.
    """
    n = len(p_values)
    order = sorted(range(n), key=lambda i: p_values[i])
    adjusted = [0.0] * n
    running = 0.0
    for rank, i in enumerate(order):
        # max() keeps the adjusted values monotone in the raw ones (the step-down "no later rejection" rule).
        running = max(running, min(1.0, (n - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def runs_needed(sigma: float, k: int, margin: float, *, alpha: float, power: float = 0.8) -> float:
    """Candidate runs m (in total, fractional) so that a distance ``margin`` (log units) gets decided.

    Normal approximation of ``(z_{1−α} + z_{power}) · σ · sqrt(1/m + 1/k) ≤ margin``. Returns ``math.inf``
    when no number of candidate runs suffices (the baseline's own uncertainty already exceeds the margin):
    then the baseline needs more runs or the tolerance must be wider. Small-df t quantiles make the true
    figure somewhat larger, so this is a lower estimate, good for "≈N more runs".
    """
    if margin <= 0:
        return math.inf
    z = normal_quantile(1.0 - alpha) + normal_quantile(power)
    bracket = (margin / (z * max(sigma, MIN_SIGMA))) ** 2 - 1.0 / k
    return 1.0 / bracket if bracket > 0 else math.inf


def session_runs_needed(
    sigma_run: float,
    sigma_session: float,
    sessions: int,
    baseline_runs: int,
    margin: float,
    *,
    alpha: float,
    power: float = 0.8,
) -> float:
    """Candidate runs m (in total) of one new session so that ``margin`` gets decided under the session model.

    ``(z_{1−α} + z_{power})² · (σ_s²(1 + 1/S) + σ_e²(1/m + h/S)) ≤ margin²`` with h ≈ S / runs. More runs only
    shrink the within-session part: ``math.inf`` when the between-session part alone is too wide, and then
    only more baseline sessions (see :func:`sessions_needed`), a wider tolerance or A/B mode can decide.
    """
    if margin <= 0 or sessions < 1:
        return math.inf
    z = normal_quantile(1.0 - alpha) + normal_quantile(power)
    h = sessions / max(baseline_runs, 1)
    room = (margin / z) ** 2 - sigma_session**2 * (1 + 1 / sessions) - sigma_run**2 * h / sessions
    return sigma_run**2 / room if room > 0 else math.inf


def sessions_needed(
    sigma_run: float, sigma_session: float, runs_per_session: float, margin: float, *, alpha: float, power: float = 0.8
) -> float:
    """Baseline sessions S (in total) so that a candidate session of ``runs_per_session`` runs could decide
    ``margin``, if the between-session SD stays ``sigma_session``; ``math.inf`` when even infinitely many
    cannot (the candidate's own session offset is then wider than the margin: use A/B mode)."""
    if margin <= 0:
        return math.inf
    z = normal_quantile(1.0 - alpha) + normal_quantile(power)
    per_session = sigma_session**2 + sigma_run**2 / max(runs_per_session, 1.0)
    room = (margin / z) ** 2 - per_session
    return per_session / room if room > 0 else math.inf


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided interval for a binomial proportion."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1 (got {successes}/{n})")
    tail = (1.0 - confidence) / 2
    lo = 0.0 if successes == 0 else float(sps.betaincinv(successes, n - successes + 1, tail))
    hi = 1.0 if successes == n else float(sps.betaincinv(successes + 1, n - successes, 1.0 - tail))
    return lo, hi


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval with normal quantile ``z``; well behaved at 0 and n, unlike the Wald interval."""
    if n < 1:
        raise ValueError("wilson_interval needs n >= 1")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_difference(x1: int, n1: int, x2: int, n2: int, z: float) -> tuple[float, float]:
    """Interval for ``x1/n1 − x2/n2`` from two Wilson intervals (Newcombe's hybrid score method)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, z)
    l2, u2 = wilson_interval(x2, n2, z)
    diff = p1 - p2
    lower = diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    upper = diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return lower, upper


def fisher_one_sided(x1: int, n1: int, x2: int, n2: int) -> float:
    """Fisher's exact p-value for "proportion 1 is larger than proportion 2" (one-sided)."""
    if x1 == 0:
        return 1.0  # P(X >= 0) under any null
    total, hits = n1 + n2, x1 + x2
    # Under H0 the number of hits that land in group 1 is hypergeometric; P(X >= x1) = sf(x1 − 1).
    return float(min(1.0, sst.hypergeom.sf(x1 - 1, total, hits, n1)))
