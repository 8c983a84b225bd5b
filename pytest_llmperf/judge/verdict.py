"""Relative verdicts: candidate runs against baseline runs, per metric, with honest uncertainty.

Pure: no I/O, no pytest. Inputs are run summaries as produced by :func:`pytest_llmperf.judge.metrics.summarize`
(or the reduced copies a baseline stores); outputs are frozen dataclasses whose ``as_dict()`` is made of
builtins, so they cross pytest-xdist's execnet channel, and ``from_dict()`` rebuilds them on the controller.

The rules (README, "Verdicts"; ``benchmarks/validate_verdicts.py`` measures their false alarms and power):

- Each run contributes one run-level statistic per metric (its median TTFT, its output throughput, ...);
  comparisons are in log space (:mod:`pytest_llmperf.judge.stats`), oriented so that a positive *effect* is worse:
  ``ln(c/b)`` for lower-is-better metrics, ``−ln(c/b)`` for throughput.
- A tolerance δ bounds how much worse is acceptable: latency ratio ``≤ 1 + δ``, throughput ratio
  ``≥ 1 − δ``; on the log scale the bound is ``L = ln(1 + δ)`` or ``−ln(1 − δ)``.
- **REGRESSION**: worse, significantly (one-sided p, multiplicity-adjusted across the gating family, ≤ α)
  **and** materially (point effect ≥ L). Under "no change" the rate of false regressions is ≤ α.
- **PASS**: the one-sided 95 % upper bound of the effect is ≤ L, i.e. a slowdown of δ or more is ruled out.
  PASS needs no multiplicity adjustment: "every metric within tolerance" is an intersection-union test.
- **IMPROVEMENT**: the mirror image of REGRESSION (significantly and materially better); it passes, with a
  hint to re-record the baseline so that a later regression is not hidden by an outdated one.
- **INCONCLUSIVE** otherwise, with "≈N more runs needed" (or why more candidate runs cannot decide).
- With fewer than 3 baseline runs the run-to-run spread is the noise floor (3 %), and REGRESSION (or
  IMPROVEMENT) additionally needs a *gross* effect: at least ``GROSS_FACTOR`` (3) times L on the log
  scale, e.g. ≥ +15.8 % for δ = 5 %.
- **Error rate** is often exactly 0, so it is compared as a difference of pooled proportions (failed over
  all requests of all runs), not a ratio: tolerance δ is absolute (0.5 percentage points by default);
  p-values from Fisher's exact test, bounds from Newcombe's score interval. A candidate without any failed
  request cannot be worse than its baseline and passes outright.
- Tail metrics (p99) are advisory by default: judged at unadjusted α, reported, never failing the test
  unless named in ``gating``.
- Guards (:func:`run_guards`): a ratio metric is never called a REGRESSION from runs that completed fewer
  than ``MIN_REQUESTS_PER_RUN`` (8) requests (a median of two requests is one request's luck), nor from a
  candidate run during which something else used the server's cores or GPUs (``summary["disturbance"]``):
  such a metric is INCONCLUSIVE with the guard's reason, also after the session-wide Holm step.

Multiplicity. ``judge()`` adjusts the gating regression claims with Holm within its own verdict when
``family_size`` is None. When the caller knows the size N of the session's whole family (e.g. number of
tests × gating metrics), ``judge(family_size=N)`` uses Bonferroni ``min(1, N·p)``, the first and strictest
step of Holm: anything it calls REGRESSION stays one after :func:`apply_holm` re-adjusts all claims of the
session at its end, which can only add regressions, never remove one.

Sequential stopping. :func:`needs_more_runs` says whether another candidate run could change an undecided
verdict within the budget. Looking after every run gives a false regression more chances to appear, so a
sequential caller passes ``looks=planned_looks(budget, first_runs)`` and each look tests at ``α / looks``
(Bonferroni over looks: simple and valid whatever the looks' correlation). In the simulation of
``benchmarks/validate_verdicts.py`` (report in ``benchmarks/results/``), looking after every run at the full α
gave about 1.5 % family-wise false regressions at 5 % noise; with α / looks every setting stays below 0.5 %.
PASS needs no correction for looks in that sense: stopping at the first PASS can only lower the chance of
*detecting* a regression, which the power curves in the same report include.

A/B mode. :func:`judge_paired` judges server B against server A from interleaved blocks (one run of each, same
prompts, back to back): the same metrics, tolerances, three-valued rule, multiplicity and sequential looks,
but the ratio metrics use the paired t interval of the per-block log ratios
(:func:`pytest_llmperf.judge.stats.compare_paired`), so a drift that is slower than a block cancels. Verdicts carry
``reference="A"`` and read "B vs A"; REGRESSION means B is worse than A beyond the tolerance.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, TypeGuard, cast

from pytest_llmperf.errors import SpecError
from pytest_llmperf.judge import stats
from pytest_llmperf.judge.metrics import stat_key
from pytest_llmperf.results import (
    IMPROVEMENT,
    INCONCLUSIVE,
    NO_BASELINE,
    NOT_COMPARABLE,
    PASS,
    REGRESSION,
    MetricVerdictDict,
    OverallStatus,
    Reference,
    RunFigures,
    Status,
    VerdictDict,
)

__all__ = [
    "BUDGET",
    "DEFAULT_ALPHA",
    "DEFAULT_GATING",
    "DEFAULT_TOLERANCES",
    "GROSS_FACTOR",
    "IMPROVEMENT",
    "INCONCLUSIVE",
    "METRICS",
    "MIN_REQUESTS_PER_RUN",
    "NOT_COMPARABLE",
    "NO_BASELINE",
    "PASS",
    "PASS_ALPHA",
    "REGRESSION",
    "MetricDef",
    "MetricVerdict",
    "OverallStatus",
    "Reference",
    "Status",
    "Verdict",
    "apply_holm",
    "judge",
    "judge_paired",
    "missing_baseline",
    "needs_more_runs",
    "not_comparable",
    "planned_looks",
    "resolve_tolerances",
    "run_guards",
    "run_keys",
    "without_runs",
]

# The status words (REGRESSION, PASS, ... and their types) live in pytest_llmperf.results, which the reports
# import without scipy; they are re-exported here as this module's vocabulary.

DEFAULT_ALPHA = 0.01  # family-wise, one-sided, over the gating regression claims
PASS_ALPHA = 0.05  # PASS uses the one-sided 95 % upper bound; the reported interval is the 90 % two-sided one
POWER = 0.8  # for "≈N more runs needed"
BUDGET = 5  # default maximum candidate runs per test with sequential stopping
GROSS_FACTOR = 3.0  # with < 3 baseline runs, only an effect ≥ 3·L (log scale) may be called a regression
MIN_REQUESTS_PER_RUN = 8  # fewer completed requests in a run, and its medians cannot support a regression
UPDATE_HINT = "re-record the baseline with --llmperf-update (then review and commit it)"


@dataclass(frozen=True, slots=True)
class MetricDef:
    """A metric the verdict can judge. ``scale="ratio"`` compares in log space, ``"difference"`` counts."""

    name: str
    label: str
    direction: Literal["lower", "higher"]
    tolerance: float
    gating: bool
    scale: Literal["ratio", "difference"] = "ratio"
    # Latency metrics resolve their summary key through metrics.stat_key (compat-dependent names).
    metric: str = ""
    stat: str = ""
    literal_key: str = ""

    def key(self, compat: str = "vllm") -> str:
        return self.literal_key or stat_key(self.metric, self.stat, compat)


def _latency(name: str, label: str, metric: str, stat: str, tolerance: float, gating: bool) -> MetricDef:
    return MetricDef(name, label, "lower", tolerance, gating, metric=metric, stat=stat)


METRICS: dict[str, MetricDef] = {
    m.name: m
    for m in (
        _latency("ttft_p50", "median TTFT", "ttft", "median", 0.05, True),
        _latency("tpot_p50", "median TPOT", "tpot", "median", 0.05, True),
        _latency("e2e_p50", "median E2E", "e2e", "median", 0.05, True),
        MetricDef("output_tok_s", "output throughput", "higher", 0.05, True, literal_key="output_throughput"),
        MetricDef("error_rate", "error rate", "lower", 0.005, True, scale="difference", literal_key="error_rate"),
        # A p99 rests on a few requests per run, so it moves between runs far more than a median: wider
        # tolerance, advisory.
        _latency("ttft_p99", "p99 TTFT", "ttft", "p99", 0.15, False),
        _latency("tpot_p99", "p99 TPOT", "tpot", "p99", 0.15, False),
        _latency("itl_p99", "p99 ITL", "itl", "p99", 0.15, False),
        _latency("e2e_p99", "p99 E2E", "e2e", "p99", 0.15, False),
    )
}
DEFAULT_TOLERANCES: dict[str, float] = {name: m.tolerance for name, m in METRICS.items()}
DEFAULT_GATING: tuple[str, ...] = tuple(name for name, m in METRICS.items() if m.gating)


def run_keys(compat: str = "vllm") -> tuple[str, ...]:
    """Summary keys the verdicts read from each run (what a baseline must keep per run)."""
    keys = {m.key(compat) for m in METRICS.values()} | {"completed", "failed", "error_rate"}
    return tuple(sorted(keys))


def resolve_tolerances(*layers: float | Mapping[str, float] | None) -> dict[str, float]:
    """Tolerances per metric: defaults, then each layer in order (e.g. global ini, then the test's marker).

    A number applies to every gating ratio metric (median latencies, throughput); a mapping names metrics
    individually (any of :data:`METRICS`, including ``error_rate`` in absolute terms and the tails).
    Invalid values raise :class:`SpecError` naming the metric and the accepted range.
    """
    out = dict(DEFAULT_TOLERANCES)
    for layer in layers:
        if layer is None:
            continue
        if isinstance(layer, Mapping):
            items = list(layer.items())
        else:
            items = [(name, layer) for name, m in METRICS.items() if m.gating and m.scale == "ratio"]
        for name, value in items:
            if name not in METRICS:
                raise SpecError(f"tolerance for unknown metric {name!r}; valid names: {', '.join(METRICS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                what = "absolute, e.g. 0.005 for 0.5 points" if METRICS[name].scale == "difference" else "e.g. 0.05"
                raise SpecError(f"tolerance {name}={value!r} (expected a number > 0 and < 1, {what})")
            out[name] = float(value)
    return out


@dataclass(frozen=True, slots=True)
class MetricVerdict:
    """The verdict on one metric.

    ``estimate`` is candidate/baseline (``scale="ratio"``, geometric means of the runs) or candidate minus
    baseline (``scale="difference"``, error rate); ``lower``/``upper`` bound it at 90 % two-sided (each side
    a one-sided 95 % bound, the one PASS uses). ``limit`` is the tolerated value on the bad side
    (``1 + δ`` for latency, ``1 − δ`` for throughput, ``+δ`` for error rate). ``effect*`` and
    ``min_effect`` are the same quantities on the internal test scale (positive = worse), kept so that
    :func:`apply_holm` can re-classify without the data.
    """

    name: str
    label: str
    key: str
    status: Status
    gating: bool
    direction: str
    scale: str
    tolerance: float
    limit: float
    runs_candidate: int
    runs_baseline: int
    reason: str
    baseline_value: float | None = None
    candidate_value: float | None = None
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    p_better: float | None = None
    p_better_adjusted: float | None = None
    method: str = ""
    more_runs: int | None = None
    futile: bool = False
    hint: str = ""
    effect: float | None = None
    effect_lower: float | None = None
    effect_upper: float | None = None
    bound: float = 0.0
    min_effect: float = 0.0
    sigma: float | None = None
    # Stored-baseline comparisons model runs nested in sessions (stats.compare_sessions): the baseline's session
    # count and the between-session SD used; ``session_prior`` when the documented prior stood in for it.
    sessions_baseline: int | None = None
    sigma_session: float | None = None
    session_prior: bool = False
    session_source: str | None = None  # "baseline", "history" or "prior": where sigma_session comes from
    sessions_history: int | None = None  # the history's sessions behind a "history" sigma_session
    # Pooled request counts behind an error-rate comparison (None for ratio metrics).
    requests_candidate: int | None = None
    requests_baseline: int | None = None
    reference: Reference = "baseline"
    # Why this metric may not be called a REGRESSION from these runs (see run_guards); "" when nothing stops it.
    guard: str = ""

    def as_dict(self) -> MetricVerdictDict:
        # MetricVerdictDict names exactly these fields (tests/unit/test_results.py checks it).
        return cast(MetricVerdictDict, dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: MetricVerdictDict) -> MetricVerdict:
        names = {f.name for f in dataclasses.fields(cls)}
        # Values are taken as written by as_dict(); keys of another version of this class are dropped.
        known: dict[str, Any] = {k: v for k, v in data.items() if k in names}
        return cls(**known)


@dataclass(frozen=True, slots=True)
class Verdict:
    """All relative checks of one test. ``status`` summarises the gating metrics only."""

    status: OverallStatus
    reason: str
    metrics: tuple[MetricVerdict, ...] = ()
    runs_candidate: int = 0
    runs_baseline: int = 0
    alpha: float = DEFAULT_ALPHA
    family_size: int = 0
    looks: int = 1
    hard_diffs: tuple[str, ...] = ()
    soft_diffs: tuple[str, ...] = field(default_factory=tuple)
    hint: str = ""
    reference: Reference = "baseline"

    @property
    def failed(self) -> bool:
        return self.status == REGRESSION

    @property
    def gating(self) -> tuple[MetricVerdict, ...]:
        return tuple(m for m in self.metrics if m.gating)

    def metric(self, name: str) -> MetricVerdict:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def as_dict(self) -> VerdictDict:
        return {
            "status": self.status,
            "reason": self.reason,
            "metrics": [m.as_dict() for m in self.metrics],
            "runs_candidate": self.runs_candidate,
            "runs_baseline": self.runs_baseline,
            "alpha": self.alpha,
            "family_size": self.family_size,
            "looks": self.looks,
            "hard_diffs": list(self.hard_diffs),
            "soft_diffs": list(self.soft_diffs),
            "hint": self.hint,
            "reference": self.reference,
        }

    @classmethod
    def from_dict(cls, data: VerdictDict) -> Verdict:
        return cls(
            status=data["status"],
            reason=data["reason"],
            metrics=tuple(MetricVerdict.from_dict(m) for m in data.get("metrics", ())),
            runs_candidate=data.get("runs_candidate", 0),
            runs_baseline=data.get("runs_baseline", 0),
            alpha=data.get("alpha", DEFAULT_ALPHA),
            family_size=data.get("family_size", 0),
            looks=data.get("looks", 1),
            hard_diffs=tuple(data.get("hard_diffs", ())),
            soft_diffs=tuple(data.get("soft_diffs", ())),
            hint=data.get("hint", ""),
            reference=data.get("reference", "baseline"),
        )


def missing_baseline(runs_candidate: int = 0, where: str = "") -> Verdict:
    """No baseline for this test on this hardware/precision pair: only the SLOs decide."""
    place = f" ({where})" if where else ""
    return Verdict(
        status=NO_BASELINE,
        reason=f"no baseline recorded for this test{place}; relative checks skipped, SLOs still decide",
        runs_candidate=runs_candidate,
        hint="record one with --llmperf-update (it appends these runs), then review and commit the baseline file",
    )


def not_comparable(hard_diffs: Sequence[str], soft_diffs: Sequence[str] = (), runs_candidate: int = 0) -> Verdict:
    """The baseline was recorded under different hard keys: relative checks are skipped, never a regression."""
    return Verdict(
        status=NOT_COMPARABLE,
        reason="baseline not comparable (" + "; ".join(hard_diffs) + "); relative checks skipped, SLOs still decide",
        runs_candidate=runs_candidate,
        hard_diffs=tuple(hard_diffs),
        soft_diffs=tuple(soft_diffs),
        hint="if the change is intended, re-record with the force option of --llmperf-update "
        "(--llmperf-update=force), then review and commit the baseline file",
    )


def judge(
    candidate_runs: Sequence[RunFigures],
    baseline_runs: Sequence[RunFigures] | None,
    *,
    tolerances: Mapping[str, float] | None = None,
    gating: Collection[str] | None = None,
    alpha: float = DEFAULT_ALPHA,
    family_size: int | None = None,
    looks: int = 1,
    compat: str | None = None,
    noise_floor: float = stats.DEFAULT_NOISE_FLOOR,
    session_prior: float = stats.SESSION_SD_PRIOR,
    history: Mapping[str, Sequence[Sequence[float]]] | None = None,
    hard_diffs: Sequence[str] = (),
    soft_diffs: Sequence[str] = (),
    where: str = "",
) -> Verdict:
    """Judge ``candidate_runs`` against ``baseline_runs`` (both: run summaries, one mapping per run).

    The :func:`run_guards` of both sides keep every ratio metric from being called a REGRESSION when they apply.

    ``tolerances``: δ per metric name (missing names use :data:`DEFAULT_TOLERANCES`; build it with
    :func:`resolve_tolerances`). ``gating``: metric names that can fail the test (default
    :data:`DEFAULT_GATING`). ``family_size``: the number of gating claims in the session's Holm family, if
    known (see the module doc). ``compat``: summary key flavour, default the runs' ``compat_mode``.
    ``looks``: the number of looks of a sequential loop (:func:`planned_looks`); significance is tested at
    ``alpha / looks``. ``history``: per summary key, the values of earlier sessions of this test, pair, workload
    and epoch, one list per session (the history database): the between-session spread is estimated from them
    while the baseline holds fewer than 3 sessions (see ``stats.session_spread``). ``baseline_runs=None`` (or
    empty) gives :func:`missing_baseline`; non-empty ``hard_diffs`` gives
    :func:`not_comparable`. ``where`` names the baseline for messages.
    """
    if not candidate_runs:
        raise ValueError("judge() needs at least one candidate run")
    _check_alpha_looks(alpha, looks)
    m = len(candidate_runs)
    if hard_diffs:
        return not_comparable(hard_diffs, soft_diffs, runs_candidate=m)
    if not baseline_runs:
        return missing_baseline(runs_candidate=m, where=where)
    return _judged(
        candidate_runs,
        baseline_runs,
        _Comparison(
            paired=False,
            noise_floor=noise_floor,
            session_prior=session_prior,
            soft_diffs=tuple(soft_diffs),
            history={} if history is None else dict(history),
        ),
        tolerances=tolerances,
        gating=gating,
        alpha=alpha,
        family_size=family_size,
        looks=looks,
        compat=compat,
    )


def judge_paired(
    a_runs: Sequence[RunFigures],
    b_runs: Sequence[RunFigures],
    *,
    tolerances: Mapping[str, float] | None = None,
    gating: Collection[str] | None = None,
    alpha: float = DEFAULT_ALPHA,
    family_size: int | None = None,
    looks: int = 1,
    compat: str | None = None,
) -> Verdict:
    """Judge server B against server A from interleaved blocks: ``a_runs[i]`` and ``b_runs[i]`` ran in block i.

    Same arguments and rules as :func:`judge`, with B as the candidate and A as the reference; needs at least
    two blocks. Ratio metrics use the paired t interval of ``ln(B_i / A_i)``; the error rate compares the
    pooled proportions (Fisher), as in :func:`judge`.
    """
    n = len(a_runs)
    if n != len(b_runs):
        raise ValueError(f"judge_paired() needs one A run and one B run per block (got {n} and {len(b_runs)})")
    if n < 2:
        raise ValueError(f"judge_paired() needs at least 2 blocks (got {n})")
    _check_alpha_looks(alpha, looks)
    return _judged(
        b_runs,
        a_runs,
        _Comparison(paired=True),
        tolerances=tolerances,
        gating=gating,
        alpha=alpha,
        family_size=family_size,
        looks=looks,
        compat=compat,
    )


@dataclass(frozen=True, slots=True)
class _Comparison:
    """What differs between a verdict against stored baseline runs and an A/B verdict (B against A)."""

    paired: bool  # A/B blocks: cand[i] and base[i] ran back to back, compared by their log ratio
    noise_floor: float = stats.DEFAULT_NOISE_FLOOR  # stored baselines: the spread assumed for few runs
    session_prior: float = stats.SESSION_SD_PRIOR  # stored baselines: the between-session spread assumed
    soft_diffs: tuple[str, ...] = ()  # stored baselines: fingerprint changes to show
    history: Mapping[str, Sequence[Sequence[float]]] = dataclasses.field(default_factory=dict)  # per summary key

    @property
    def reference(self) -> Reference:
        return "A" if self.paired else "baseline"

    @property
    def sides(self) -> tuple[str, str]:
        """(candidate, reference) as messages name them."""
        return ("B", "A") if self.paired else ("candidate", "baseline")


def _check_alpha_looks(alpha: float, looks: int) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} (expected 0 < alpha < 1)")
    if isinstance(looks, bool) or not isinstance(looks, int) or looks < 1:
        raise ValueError(f"looks={looks!r} (expected an int >= 1)")


def _judged(
    cand: Sequence[RunFigures],
    base: Sequence[RunFigures],
    how: _Comparison,
    *,
    tolerances: Mapping[str, float] | None,
    gating: Collection[str] | None,
    alpha: float,
    family_size: int | None,
    looks: int,
    compat: str | None,
) -> Verdict:
    """The verdict of ``cand`` against ``base`` (both non-empty), once the arguments are checked."""
    mode = compat or str(cand[0].get("compat_mode") or "vllm")
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    gating_names = set(DEFAULT_GATING if gating is None else gating)
    unknown = gating_names - set(METRICS)
    if unknown:
        raise SpecError(f"unknown gating metric(s) {sorted(unknown)}; valid names: {', '.join(METRICS)}")

    candidate, reference = how.sides
    guard = "; ".join(run_guards(cand, base, candidate=candidate, reference=reference))
    raw = [
        _guarded(_measure(d, tol[d.name], d.name in gating_names, cand, base, mode, how), guard)
        for d in METRICS.values()
    ]
    n_claims = sum(1 for r in raw if r.gating and r.p_value is not None)
    family = n_claims if family_size is None else family_size
    if family < n_claims:
        raise ValueError(f"family_size={family_size} is smaller than this verdict's {n_claims} gating claims")
    adjusted = _adjust(raw, family, holm_within=family_size is None)
    metrics = tuple(_classify(r, alpha / looks, family) for r in adjusted)
    return _assemble(metrics, len(cand), len(base), alpha, family, how.soft_diffs, looks, reference=how.reference)


def run_guards(
    candidate_runs: Sequence[RunFigures],
    reference_runs: Sequence[RunFigures] = (),
    *,
    candidate: str = "candidate",
    reference: str = "baseline",
) -> tuple[str, ...]:
    """Reasons why these runs cannot support a REGRESSION of a ratio metric (empty when none applies).

    Too few requests: a run with fewer than :data:`MIN_REQUESTS_PER_RUN` completed requests, on either side.
    Disturbance: a candidate run (either side in A/B mode, where both are measured now) whose
    ``summary["disturbance"]`` says another process used the server's cores or GPUs, or the server served load
    the plugin did not send; the figures are in that summary.
    """
    reasons: list[str] = []
    sides = ((candidate, candidate_runs), (reference, reference_runs))
    for side, runs in sides:
        completed = [(i, r.get("completed")) for i, r in enumerate(runs)]
        small = [(i, n) for i, n in completed if _is_count(n) and n < MIN_REQUESTS_PER_RUN]
        if small:
            i, n = small[0]
            reasons.append(
                f"{side} run {i + 1} completed only {n} request(s), and a regression needs at least "
                f"{MIN_REQUESTS_PER_RUN} per run (raise num_prompts)"
            )
    measured_now = sides if reference == "A" else sides[:1]
    for side, runs in measured_now:
        for i, run in enumerate(runs):
            found = run.get("disturbance")
            if isinstance(found, Mapping) and found.get("disturbed"):
                why = "; ".join(str(x) for x in found.get("reasons") or ()) or "no reason recorded"
                reasons.append(f"environment disturbed during {side} run {i + 1}: {why}; rerun on a quiet machine")
                break
    return tuple(reasons)


def without_runs(reasons: Sequence[str], runs_candidate: int, *, reference: Reference = "baseline") -> Verdict:
    """INCONCLUSIVE: every candidate run was left out of the verdict (each reason says why)."""
    return Verdict(
        status=INCONCLUSIVE,
        reason="no run could be judged: " + "; ".join(reasons),
        runs_candidate=runs_candidate,
        hint="rerun once the cause is gone",
        reference=reference,
    )


def planned_looks(budget: int = BUDGET, first_runs: int = 1) -> int:
    """How many times a sequential loop may call :func:`judge`: after ``first_runs`` runs, then after each
    added run up to ``budget``. Pass it as ``judge(looks=...)`` so that peeking stays within α."""
    if first_runs < 1 or budget < first_runs:
        raise ValueError(f"need 1 <= first_runs <= budget (got first_runs={first_runs}, budget={budget})")
    return budget - first_runs + 1


def needs_more_runs(verdict: Verdict, runs_done: int, budget: int = BUDGET) -> bool:
    """True while another candidate run could still decide an undecided gating metric within ``budget``.

    Stops at a REGRESSION (the test fails), when everything is decided, when no baseline applies, and when
    more candidate runs cannot help (a metric not measured, or a baseline too small for the tolerance).
    """
    if runs_done >= budget or verdict.status in (NO_BASELINE, NOT_COMPARABLE, REGRESSION):
        return False
    return any(m.status == INCONCLUSIVE and not m.futile for m in verdict.gating)


def apply_holm(verdicts: Sequence[Verdict], alpha: float = DEFAULT_ALPHA) -> tuple[Verdict, ...]:
    """Re-classify the gating claims of a whole session with Holm at family-wise level ``alpha``.

    Returns new verdicts in the same order; verdicts without a usable baseline are returned unchanged.
    """
    slots = [(i, j) for i, v in enumerate(verdicts) for j, m in enumerate(v.metrics) if _is_claim(v, m)]
    worse = stats.holm([_p(verdicts[i].metrics[j].p_value) for i, j in slots])
    better = stats.holm([_p(verdicts[i].metrics[j].p_better) for i, j in slots])
    family = len(slots)
    new_metrics = [list(v.metrics) for v in verdicts]
    for (i, j), pw, pb in zip(slots, worse, better, strict=True):
        old = verdicts[i].metrics[j]
        per_look = alpha / verdicts[i].looks
        new_metrics[i][j] = _classify(dataclasses.replace(old, p_adjusted=pw, p_better_adjusted=pb), per_look, family)
    out = []
    for v, ms in zip(verdicts, new_metrics, strict=True):
        if v.status in (NO_BASELINE, NOT_COMPARABLE):
            out.append(v)
        else:
            out.append(
                _assemble(
                    tuple(ms),
                    v.runs_candidate,
                    v.runs_baseline,
                    alpha,
                    family,
                    v.soft_diffs,
                    v.looks,
                    reference=v.reference,
                )
            )
    return tuple(out)


# --- internals -------------------------------------------------------------------------------------------


def _p(p: float | None) -> float:
    return 1.0 if p is None else p


def _guarded(r: MetricVerdict, guard: str) -> MetricVerdict:
    # The error rate pools requests with exact tests, so few requests already widen its interval.
    return dataclasses.replace(r, guard=guard) if guard and r.scale == "ratio" else r


def _is_claim(v: Verdict, m: MetricVerdict) -> bool:
    return v.status not in (NO_BASELINE, NOT_COMPARABLE) and m.gating and m.p_value is not None


def _values(runs: Sequence[RunFigures], key: str) -> list[float] | str:
    """The runs' values of ``key``, or why they cannot be used."""
    out = []
    for i, run in enumerate(runs):
        if key not in run:
            return f"run {i + 1} has no {key!r}"
        v = run[key]
        if v is None:
            return f"run {i + 1} has no data for {key!r}"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            return f"run {i + 1} has {key}={v!r}, which cannot be compared as a ratio"
        out.append(float(v))
    return out


class _Common(TypedDict):
    """The fields every :class:`MetricVerdict` of one metric carries, however it was measured."""

    name: str
    label: str
    key: str
    gating: bool
    direction: str
    scale: str
    tolerance: float
    limit: float
    bound: float
    min_effect: float
    runs_candidate: int
    runs_baseline: int
    reference: Reference


def _measure(
    d: MetricDef,
    delta: float,
    gating: bool,
    cand: Sequence[RunFigures],
    base: Sequence[RunFigures],
    compat: str,
    how: _Comparison,
) -> MetricVerdict:
    """Everything but the status (which needs the family-adjusted p-values)."""
    key, label = _itl_choice(d, cand, base, compat)
    m, k = len(cand), len(base)
    if d.scale == "difference":
        bound = delta
        limit = delta
    else:
        bound = math.log1p(delta) if d.direction == "lower" else -math.log1p(-delta)
        limit = 1.0 + delta if d.direction == "lower" else 1.0 - delta
    common: _Common = {
        "name": d.name,
        "label": label,
        "key": key,
        "gating": gating,
        "direction": d.direction,
        "scale": d.scale,
        "tolerance": delta,
        "limit": limit,
        "bound": bound,
        "min_effect": bound,
        "runs_candidate": m,
        "runs_baseline": k,
        "reference": how.reference,
    }
    if d.scale == "difference":
        return _measure_proportion(common, cand, base, bound)

    c_vals, b_vals = _values(cand, key), _values(base, key)
    if isinstance(c_vals, str) or isinstance(b_vals, str):
        side = "candidate" if isinstance(c_vals, str) else "baseline"
        why = c_vals if isinstance(c_vals, str) else b_vals
        return MetricVerdict(status=INCONCLUSIVE, reason=f"{d.label} not measured: {side} {why}", futile=True, **common)

    sign = 1.0 if d.direction == "lower" else -1.0
    cmp, spread = _compare(c_vals, b_vals, base, how, key)
    effect = sign * cmp.delta
    up, lo = cmp.upper(PASS_ALPHA), cmp.lower(PASS_ALPHA)
    effect_upper, effect_lower = (up, lo) if sign > 0 else (-lo, -up)
    # Raw candidate/baseline ratio and its interval, whatever the direction.
    ratio_lo, ratio_hi = math.exp(lo), math.exp(up)
    if not how.paired and k < stats.MIN_BASELINE_RUNS:
        common["min_effect"] = bound * GROSS_FACTOR
    return MetricVerdict(
        status=INCONCLUSIVE,
        reason="",
        baseline_value=math.exp(math.fsum(math.log(v) for v in b_vals) / k),
        candidate_value=math.exp(math.fsum(math.log(v) for v in c_vals) / m),
        estimate=math.exp(cmp.delta),
        lower=ratio_lo,
        upper=ratio_hi,
        p_value=cmp.p_greater() if sign > 0 else cmp.p_less(),
        p_better=cmp.p_less() if sign > 0 else cmp.p_greater(),
        method=cmp.method,
        effect=effect,
        effect_lower=effect_lower,
        effect_upper=effect_upper,
        sigma=cmp.sigma,
        sessions_baseline=None if spread is None else spread.sessions,
        sigma_session=None if spread is None else spread.sigma_session,
        session_prior=spread is not None and not spread.estimated,
        session_source=None if spread is None else spread.source,
        sessions_history=None if spread is None else spread.history_sessions,
        **common,
    )


def _compare(
    c_vals: Sequence[float], b_vals: Sequence[float], base: Sequence[RunFigures], how: _Comparison, key: str
) -> tuple[stats.LogComparison, stats.SessionSpread | None]:
    """The comparison on the log scale. A/B: paired, by the per-block log ratios, so a drift slower than a
    block cancels. Stored baseline: the candidate against baseline runs nested in their sessions, with the
    spread of those sessions (what the verdict reports about them)."""
    c_logs, b_logs = stats.log_values(c_vals), stats.log_values(b_vals)
    if how.paired:
        return stats.compare_paired([c - b for c, b in zip(c_logs, b_logs, strict=True)]), None
    past = [
        stats.log_values(positive)
        for positive in ([v for v in g if v > 0] for g in how.history.get(key, ()))
        if positive
    ]
    return stats.compare_sessions(
        c_logs, _by_session(base, b_logs), prior=how.session_prior, noise_floor=how.noise_floor, history=past
    )


def _itl_choice(d: MetricDef, cand: Sequence[RunFigures], base: Sequence[RunFigures], compat: str) -> tuple[str, str]:
    """(summary key, label) of ``d``. ITL is per token when the candidate's chunks carried more than one token on
    average (MTP, speculative decoding, llama.cpp's UTF-8 hold-back): the per-chunk gap then moves with the
    acceptance rate, not with speed (an EAGLE run showed p99 ITL 147.5 vs 83.8 ms while per-token latency
    improved). Falls back to per chunk, and says so, when a side lacks per-token figures."""
    key = d.key(compat)
    if d.metric != "itl":
        return key, d.label
    chunks = [r.get("mean_tokens_per_chunk") for r in cand]
    known = [float(x) for x in chunks if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if not known or math.fsum(known) / len(known) <= 1.0:
        return key, f"{d.label} (per chunk)"
    token_key = stat_key("itl_token", d.stat, compat)
    if all(r.get(token_key) is not None for r in (*cand, *base)):
        return token_key, f"{d.label} (per token)"
    return key, f"{d.label} (per chunk: a run lacks per-token ITL)"


def _by_session(runs: Sequence[RunFigures], values: Sequence[float]) -> list[list[float]]:
    """``values`` (aligned with ``runs``) grouped by the runs' ``session``, in order of first appearance. Runs
    recorded before sessions were kept carry none and form one group: nothing says they came from several."""
    groups: dict[str, list[float]] = {}
    for run, value in zip(runs, values, strict=True):
        groups.setdefault(str(run.get("session") or ""), []).append(value)
    return list(groups.values())


def _counts(runs: Sequence[RunFigures]) -> tuple[int, int] | str:
    """(failed, total requests) pooled over runs, from ``failed``/``completed`` (or ``n``/``error_rate``)."""
    failed = total = 0
    for i, run in enumerate(runs):
        f, c = run.get("failed"), run.get("completed")
        if _is_count(f) and _is_count(c):
            failed, total = failed + f, total + f + c
            continue
        n, rate = run.get("n"), run.get("error_rate")
        if _is_count(n) and isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate <= 1:
            # Older or reduced summaries: recover the count from the rate (exact up to rounding).
            failed, total = failed + round(rate * n), total + n
            continue
        return f"run {i + 1} has no request counts ('failed' and 'completed')"
    return (failed, total) if total > 0 else "no requests"


def _is_count(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _measure_proportion(
    common: _Common, cand: Sequence[RunFigures], base: Sequence[RunFigures], bound: float
) -> MetricVerdict:
    cc, bc = _counts(cand), _counts(base)
    if isinstance(cc, str) or isinstance(bc, str):
        side = "candidate" if isinstance(cc, str) else "baseline"
        why = cc if isinstance(cc, str) else bc
        return MetricVerdict(
            status=INCONCLUSIVE, reason=f"error rate not measured: {side} {why}", futile=True, **common
        )
    (fc, nc), (fb, nb) = cc, bc
    rate_c, rate_b = fc / nc, fb / nb
    z = stats.normal_quantile(1 - PASS_ALPHA)
    lo, hi = stats.newcombe_difference(fc, nc, fb, nb, z)
    return MetricVerdict(
        status=INCONCLUSIVE,
        reason="",
        baseline_value=rate_b,
        candidate_value=rate_c,
        estimate=rate_c - rate_b,
        lower=lo,
        upper=hi,
        p_value=stats.fisher_one_sided(fc, nc, fb, nb),
        p_better=stats.fisher_one_sided(fb, nb, fc, nc),
        method="fisher",
        effect=rate_c - rate_b,
        effect_lower=lo,
        effect_upper=hi,
        requests_candidate=nc,
        requests_baseline=nb,
        **common,
    )


def _adjust(raw: Sequence[MetricVerdict], family: int, *, holm_within: bool) -> list[MetricVerdict]:
    """Fill ``p_adjusted``/``p_better_adjusted`` for the gating claims (advisory ones keep raw p)."""
    claims = [i for i, r in enumerate(raw) if r.gating and r.p_value is not None]
    out = list(raw)
    if holm_within:
        worse = stats.holm([_p(raw[i].p_value) for i in claims])
        better = stats.holm([_p(raw[i].p_better) for i in claims])
    else:
        worse = [min(1.0, family * _p(raw[i].p_value)) for i in claims]
        better = [min(1.0, family * _p(raw[i].p_better)) for i in claims]
    for i, pw, pb in zip(claims, worse, better, strict=True):
        out[i] = dataclasses.replace(raw[i], p_adjusted=pw, p_better_adjusted=pb)
    return out


def _fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _fmt_pp(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:+.2f} pp"


def _classify(r: MetricVerdict, alpha: float, family: int) -> MetricVerdict:
    """Set status, reason, hint and the runs-needed estimate from the (adjusted) p-values and bounds."""
    if r.effect is None or r.effect_upper is None:
        return r  # not measured: INCONCLUSIVE with its reason already
    p_w = r.p_adjusted if r.p_adjusted is not None else _p(r.p_value)
    p_b = r.p_better_adjusted if r.p_better_adjusted is not None else _p(r.p_better)
    adj = "Holm-adjusted " if r.p_adjusted is not None else ""
    if r.scale == "ratio":
        est = f"{r.label} {_fmt_ratio(r.estimate)}× {r.reference} [90% CI {_fmt_ratio(r.lower)}, {_fmt_ratio(r.upper)}]"
        worse_word = "slower" if r.direction == "lower" else "lower"
        change = "slowdown" if r.direction == "lower" else "drop"
        tol = f"{r.tolerance:.1%} tolerance (limit {r.limit:.3f}×)"
    else:
        est = f"{r.label} {_fmt_pp(r.estimate)} vs {r.reference} [90% CI {_fmt_pp(r.lower)}, {_fmt_pp(r.upper)}]"
        worse_word = "higher"
        change = "rise"
        tol = f"{r.tolerance * 100:.2f}-point tolerance"
    p_txt = f"p={_p(r.p_value):.2g} ({adj}{p_w:.2g})"
    floor_txt = gross_txt = ""
    if r.min_effect > r.bound:
        floor_txt = f" (only {r.runs_baseline} baseline run(s): noise floor assumed)"
        gross_txt = (
            f" (only {r.runs_baseline} baseline run(s): gross, ≥ {math.expm1(r.min_effect):.1%} on the log scale)"
        )

    zero_failures = r.scale == "difference" and r.candidate_value == 0
    status: Status
    more: int | None = None
    futile = False
    hint = ""
    if p_w <= alpha and r.effect >= r.min_effect and r.guard:
        status = INCONCLUSIVE
        futile = True
        reason = f"{est}, {p_txt} ≤ α={alpha:g}: {worse_word} beyond the {tol}, but not a regression: {r.guard}"
    elif p_w <= alpha and r.effect >= r.min_effect:
        status = REGRESSION
        reason = f"{est}, {p_txt} ≤ α={alpha:g}: {worse_word} beyond the {tol}{gross_txt}"
    elif p_b <= alpha and -r.effect >= r.min_effect:
        status = IMPROVEMENT
        p_better_txt = f"p(better)={_p(r.p_better):.2g} ({adj}{p_b:.2g})"
        reason = f"{est}, {p_better_txt} ≤ α={alpha:g}: better beyond the {_improvement_limit(r)}{gross_txt}"
        hint = UPDATE_HINT if r.reference == "baseline" else ""
    elif zero_failures:
        status = PASS
        who = "B's" if r.reference == "A" else "the candidate"
        reason = f"{r.label}: no failed request in {who} runs ({r.reference} {_fmt_pp(r.baseline_value)[1:]})"
        if r.effect_upper > r.bound:
            # The status comes from "no failure can be worse", not from the interval: say what decides instead.
            reason += (
                f"; with {r.requests_candidate} request(s) the 90% interval [{_fmt_pp(r.lower)}, "
                f"{_fmt_pp(r.upper)}] cannot rule out a {tol.split(' tolerance')[0]} rise, so the error_rate SLO "
                "(a maximum checked on every run) governs the error rate"
            )
    elif r.effect_upper <= r.bound:
        status = PASS
        reason = f"{est}: within the {tol}{floor_txt}"
    elif not r.gating and r.effect_lower is not None and r.effect_lower > r.bound:
        status = INCONCLUSIVE
        more, futile, _ = _plan(r, alpha, family)
        reason = (
            f"{est}, {p_txt}: the whole 90% interval is beyond the {tol}, so {worse_word} at 90% confidence, "
            f"though not at α={alpha:g}; advisory (not gating), it never fails the test"
        )
    else:
        status = INCONCLUSIVE
        more, futile, why = _plan(r, alpha, family)
        reason = f"{est}, {p_txt}: a {change} beyond the {tol} is neither ruled out nor shown; {why}"
    return dataclasses.replace(r, status=status, reason=reason, hint=hint, more_runs=more, futile=futile)


def _improvement_limit(r: MetricVerdict) -> str:
    """The mirror of the tolerance: how much better an IMPROVEMENT must be (ratio, or points)."""
    if r.scale != "ratio":
        return f"{r.tolerance * 100:.2f}-point improvement limit"
    if r.direction == "lower":
        return f"{r.tolerance:.1%} improvement limit (≤ {math.exp(-r.min_effect):.3f}×)"
    return f"{r.tolerance:.1%} improvement limit (≥ {math.exp(r.min_effect):.3f}×)"


def _plan(r: MetricVerdict, alpha: float, family: int) -> tuple[int | None, bool, str]:
    """(more candidate runs, futile, explanation) for an INCONCLUSIVE metric."""
    assert r.effect is not None
    m = r.runs_candidate
    if r.min_effect > r.bound and r.effect >= r.bound:
        return None, True, f"record at least {stats.MIN_BASELINE_RUNS} baseline runs to decide"
    # Looks like a regression: runs until it would be significant. Else: runs until PASS becomes likely.
    if r.effect >= r.min_effect:
        margin, level = r.effect, alpha / max(family, 1)
    else:
        margin, level = r.bound - max(r.effect, 0.0), PASS_ALPHA
    # 80 % power is the planning target; when even infinitely many candidate runs cannot reach it, even odds
    # (power 50 %) may still be reachable, and only when that fails too is asking for more runs futile.
    note = ""
    total = _runs_needed(r, margin, level, POWER)
    if math.isinf(total):
        total, note = _runs_needed(r, margin, level, 0.5), " for even odds"
    if math.isinf(total) and r.reference == "A":
        return None, True, "more A/B blocks cannot decide it: widen the tolerance"
    if math.isinf(total) and r.method == "sessions":
        return None, True, _sessions_plan(r, margin, level)
    if math.isinf(total):
        what = "baseline runs" if r.scale == "ratio" else "baseline requests"
        return None, True, f"more candidate runs cannot decide it: record more {what} or widen the tolerance"
    more = max(1, math.ceil(total) - m)
    unit = "A/B block(s)" if r.reference == "A" else "run(s)"
    return more, False, f"≈{more} more {unit} needed{note}"


def _sessions_plan(r: MetricVerdict, margin: float, level: float) -> str:
    """Why more candidate runs cannot help under the session model, and what would."""
    assert r.sigma is not None
    assert r.sigma_session is not None
    assert r.sessions_baseline
    runs_per_session = max(r.runs_candidate, r.runs_baseline / r.sessions_baseline)
    total = stats.sessions_needed(r.sigma, r.sigma_session, runs_per_session, margin, alpha=level, power=POWER)
    spread = f"between-session spread {r.sigma_session:.1%}" + (
        " (prior)"
        if r.session_prior
        else f" (from {r.sessions_history} sessions in the history)"
        if r.session_source == "history"
        else ""
    )
    if r.session_prior:
        more = stats.MIN_SESSIONS - r.sessions_baseline
        return (
            f"more candidate runs cannot decide it: the baseline holds {r.sessions_baseline} session(s), so a "
            f"{spread} is assumed; ≈{more} more baseline session(s) would let it be measured (add one per day "
            "with --llmperf-update), or use A/B mode (--llmperf-compare), which cancels it"
        )
    if math.isinf(total):
        return (
            f"more runs cannot decide it: with a {spread}, no number of runs or baseline sessions tells this "
            "estimate from the limit; widen the tolerance or use A/B mode (--llmperf-compare), which cancels it"
        )
    more = max(1, math.ceil(total) - r.sessions_baseline)
    return (
        f"more candidate runs cannot decide it ({spread}): ≈{more} more baseline session(s) would "
        f"(it holds {r.sessions_baseline}; add one per day with --llmperf-update), or use A/B mode"
    )


def _runs_needed(r: MetricVerdict, margin: float, level: float, power: float) -> float:
    if r.method == "paired":
        assert r.sigma is not None
        return stats.blocks_needed(r.sigma, margin, alpha=level, power=power)
    if r.method == "sessions":
        assert r.sigma is not None
        assert r.sigma_session is not None
        assert r.sessions_baseline
        return stats.session_runs_needed(
            r.sigma, r.sigma_session, r.sessions_baseline, r.runs_baseline, margin, alpha=level, power=power
        )
    if r.scale == "ratio":
        assert r.sigma is not None
        return stats.runs_needed(r.sigma, r.runs_baseline, margin, alpha=level, power=power)
    return _runs_needed_proportion(r, margin, level, power)


def _runs_needed_proportion(r: MetricVerdict, margin: float, level: float, power: float) -> float:
    """Candidate runs (total) for the error-rate difference, by the normal approximation."""
    pc, pb = r.candidate_value, r.baseline_value
    nc, nb = r.requests_candidate, r.requests_baseline
    if pc is None or pb is None or not nc or not nb or pc <= 0:
        return math.inf
    z = stats.normal_quantile(1 - level) + stats.normal_quantile(power)
    if r.reference == "A":
        # A/B blocks add requests to both sides: variance per block of the difference, then blocks.
        per_block = pc * (1 - pc) / (nc / r.runs_candidate) + pb * (1 - pb) / (nb / r.runs_baseline)
        return per_block / (margin / z) ** 2
    bracket = (margin / z) ** 2 - pb * (1 - pb) / nb
    if bracket <= 0:
        return math.inf
    # Requests the candidate side needs, converted to runs at the current requests per run.
    return pc * (1 - pc) / bracket / (nc / r.runs_candidate)


def _assemble(
    metrics: tuple[MetricVerdict, ...],
    m: int,
    k: int,
    alpha: float,
    family: int,
    soft: tuple[str, ...],
    looks: int,
    *,
    reference: Reference = "baseline",
) -> Verdict:
    gating = [x for x in metrics if x.gating]
    statuses = {x.status for x in gating}
    status: OverallStatus
    if REGRESSION in statuses:
        status = REGRESSION
    elif INCONCLUSIVE in statuses:
        status = INCONCLUSIVE
    elif IMPROVEMENT in statuses:
        status = IMPROVEMENT
    else:
        status = PASS
    notable = [x for x in gating if x.status != PASS]
    ab = reference == "A"
    if status == PASS:
        runs = f"{m} A/B blocks" if ab else f"{m} candidate vs {k} baseline runs"
        reason = f"all {len(gating)} gating metrics within tolerance ({runs})"
    else:
        reason = "; ".join(f"{x.status}: {x.reason}" for x in notable)
    if not ab and k < stats.MIN_BASELINE_RUNS:
        reason += f" [baseline has only {k} run(s): noise floor used; record more with --llmperf-update]"
    sessions = next((x.sessions_baseline for x in gating if x.sessions_baseline), None)
    prior = next((x.sigma_session for x in gating if x.session_prior and x.sigma_session), stats.SESSION_SD_PRIOR)
    # Ratio metrics carry a between-session spread (the error rate pools requests instead).
    spread_metrics = [x for x in gating if x.scale == "ratio" and x.sigma_session is not None]
    borrowed = [x for x in spread_metrics if x.session_source == "history"]
    assumed = [x for x in spread_metrics if x.session_source == "prior"]
    if not ab and sessions is not None and sessions < stats.MIN_SESSIONS and borrowed:
        spreads = ", ".join(f"{x.label} {x.sigma_session:.1%}" for x in borrowed)
        most = max(x.sessions_history or 0 for x in borrowed)
        reason += (
            f" [baseline from {sessions} session(s): the between-session spread is estimated from up to {most} "
            f"earlier sessions in the history ({spreads})"
            + (f"; {prior:.0%} assumed for {', '.join(x.label for x in assumed)}" if assumed else "")
            + "]"
        )
    elif not ab and sessions is not None and sessions < stats.MIN_SESSIONS:
        reason += (
            f" [baseline from {sessions} session(s): the between-session spread cannot be estimated before "
            f"{stats.MIN_SESSIONS}, so {prior:.0%} is assumed; a baseline grows strong by "
            "--llmperf-update on several days]"
        )
    hint = UPDATE_HINT if status == IMPROVEMENT and not ab else ""
    if status == INCONCLUSIVE:
        needs = [x.more_runs for x in gating if x.status == INCONCLUSIVE and x.more_runs is not None]
        if needs:
            more = f"{max(needs)} more A/B block(s)" if ab else f"{max(needs)} more candidate run(s)"
            hint = f"≈{more} would likely decide it (raise repeats or the run budget)"
    return Verdict(
        status=status,
        reason=reason,
        metrics=metrics,
        runs_candidate=m,
        runs_baseline=k,
        alpha=alpha,
        family_size=family,
        looks=looks,
        soft_diffs=soft,
        hint=hint,
        reference=reference,
    )
