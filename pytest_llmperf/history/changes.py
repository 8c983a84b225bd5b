"""Persistent shifts in the per-session series: Apache Otava's E-Divisive, on the log of the values.

Pure functions over :class:`~pytest_llmperf.history.model.Series`; ``python -m pytest_llmperf.history changes``
prints :func:`format_changes` of :func:`find_changes` over every series and exits 1 when :func:`should_fail`
names any change (the nightly CI gate). Otava (the ``history`` extra) is imported when a series is analysed.

How a series is analysed (:func:`find_changes`):

- **Log scale.** Performance is multiplicative (a slower kernel adds a percentage, not milliseconds, and a
  session's noise is a percentage of its level), so the detector sees ``ln(value)``: a 5 % step is the same step
  at 10 ms and at 1000 ms, and log-normal session noise becomes normal, as the t-test below assumes. The means a
  :class:`Change` reports are therefore geometric means, and ``ratio = exp(mean ln after − mean ln before)`` is
  their quotient. A non-positive value has no logarithm and on these metrics means a failed session (a
  throughput of 0: nothing completed), so such sessions are left out of the series (the error rate shows them).
- **Own scale** for counts and fractions of requests (``error_rate``, ``failed``, ``connection_retries``,
  ``good_requests``, ``request_goodput``, ``slo_attainment``): 0 is their ordinary value, so they are analysed
  as they are, with arithmetic means; ``ratio`` is still after over before, ``inf`` when the mean before is 0.
- **Split** (Otava): E-Divisive in sliding windows of ``window_len`` sessions proposes weak change points at
  10 × ``max_pvalue``. **Merge**: Otava's merge step, redone here, because Otava 0.8's
  ``compute_change_points`` does not recompute the left neighbour of a change point it drops: the survivor keeps
  the statistics of a segment that no longer exists, and may be dropped for them or kept with them (a test
  holds a seeded 5 % step it loses). Weak points are dropped, weakest first and with both neighbours
  recomputed each time, while any has a p-value ≥ ``max_pvalue`` (Otava's two-sided t-test between the
  segments either side), fewer than ``min_sessions`` sessions on a side, or a magnitude below
  ``min_magnitude``. **Refine**: E-Divisive places a step it first sees near a window's edge a few sessions off
  (it also maximises over the right end of the window); each surviving change moves to the least-squares split
  between its neighbours (at least ``min_sessions`` from them), then the merge runs again.
- **Why the defaults** (``benchmarks/history_changes.py``; figures in ``benchmarks/results/history_changes.md``,
  2 % session noise): the p-value of a split chosen to maximise the difference is far smaller than its nominal
  level suggests, and a database holds one series per test, metric, pair and workload. Otava as is (p 0.001)
  found a change in 16.5 % of flat 200-session series and 38 % of 1000-session ones; ``MAX_PVALUE = 1e-5``
  in 0 of 1000 (200 sessions) and 1 of 100 (1000 sessions), where 1e-4 still had 0.7 % and 4 %. The price:
  a 3 % step (1.5 noise SDs) is found in 73 % of series, not 81 %; a 5 % step in 98 % (at 40 ± 2 after
  session 40 of 100). ``MIN_SESSIONS = 3``: one session 5 noise SDs high at the end of a series (a loaded CI
  machine) was a change in 55 % of series with 1 and in none with 3; a 5 % step with five sessions after it is
  found in 78 % (5: 67 %). ``window_len`` stays Otava's 50: at 100 both ends of a 20-session 5 % bump were
  found in 11.5 % of series (50: 96 %), at 30 the 3 % steps in 38 %. ``min_magnitude`` stays 0: every
  significant persistent shift is reported, its size beside it. The refinement puts a 5 % step at 40 ± 2 in
  98 % of series instead of 96.5 %. A 10,000-session series takes about 0.2 s, 1000 series of 100 about 1.5 s.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np

from pytest_llmperf.history.model import Acknowledgement, Change, Series, SessionPoint
from pytest_llmperf.history.naming import metric_unit
from pytest_llmperf.judge.verdict import DEFAULT_GATING, METRICS
from pytest_llmperf.spec import COMPAT_MODES

__all__ = [
    "MAX_PVALUE",
    "MIN_MAGNITUDE",
    "MIN_SESSIONS",
    "WINDOW_LEN",
    "acknowledge",
    "change_word",
    "find_changes",
    "format_changes",
    "is_gating",
    "metric_direction",
    "should_fail",
    "unacknowledged",
]

MAX_PVALUE = 1e-5
MIN_MAGNITUDE = 0.0
WINDOW_LEN = 50
MIN_SESSIONS = 3
# How far (in sessions) an acknowledged change may move and stay acknowledged: its place is re-estimated as
# sessions arrive (the tests saw it move by one or two); a change further on is another change.
ACK_SLACK = 2

# Counts and fractions of requests, where 0 is an ordinary value: analysed on their own scale, not in logs.
_OWN_SCALE = frozenset(
    {"error_rate", "failed", "connection_retries", "good_requests", "request_goodput", "slo_attainment"}
) | {m.key() for m in METRICS.values() if m.scale == "difference"}
_LOWER = frozenset({"error_rate", "failed", "connection_retries"})
_HIGHER = frozenset({"interactivity", "slo_attainment", "good_requests"})
_KNOWN: dict[str, Literal["lower", "higher"]] = {
    m.key(compat): m.direction for m in METRICS.values() for compat in COMPAT_MODES
}
_GATING = frozenset(METRICS[name].key(compat) for name in DEFAULT_GATING for compat in COMPAT_MODES)


def metric_direction(metric_key: str) -> Literal["lower", "higher"] | None:
    """Which way is better for a summary key: the verdict's metric definitions, else the key's shape
    (``*_ms``, ``error_rate``, ``failed``, ``connection_retries``, ``cost_per_*``: lower; ``*throughput*``,
    ``*goodput*``, ``*_per_s``, ``*_per_dollar``, ``interactivity``, ``slo_attainment``, ``good_requests``:
    higher). None for keys that are neither (``duration``, ``completed``, ``concurrency``, token totals, ...):
    their changes are never *worse*."""
    if metric_key in _KNOWN:
        return _KNOWN[metric_key]
    if metric_key.endswith("_ms") or metric_key in _LOWER or metric_key.startswith("cost_per_"):
        return "lower"
    if (
        "throughput" in metric_key
        or "goodput" in metric_key
        or metric_key.endswith(("_per_s", "_per_dollar"))
        or metric_key in _HIGHER
    ):
        return "higher"
    return None


def is_gating(metric_key: str) -> bool:
    """Whether the summary key is that of a metric that gates verdicts by default (``DEFAULT_GATING``), in the
    vLLM or the SGLang spelling: median TTFT, TPOT and E2E, output throughput, error rate."""
    return metric_key in _GATING


def _log_scale(metric_key: str) -> bool:
    return metric_key not in _OWN_SCALE


def find_changes(
    series: Series,
    *,
    max_pvalue: float = MAX_PVALUE,
    min_magnitude: float = MIN_MAGNITUDE,
    window_len: int = WINDOW_LEN,
    min_sessions: int = MIN_SESSIONS,
    gating: bool | None = None,
) -> list[Change]:
    """The persistent shifts in ``series``, oldest first (the module docstring says how they are found).

    ``gating``: whether the series' metric gates its test (the test's stored verdict says); None: whether it
    gates by default (:func:`is_gating`).

    A change needs ``min_sessions`` sessions on each side of it, so a series of fewer than ``2 × min_sessions``
    usable sessions (6 by default) has none: with fewer, one odd session could not be told from a shift.
    Sessions whose value is not finite, or on the log scale not positive, are left out; ``Change.index`` still
    indexes ``series.points`` and ``before``/``after`` are the nearest sessions used on either side.
    ``min_magnitude`` is relative, Otava's measure: ``max(after/before, before/after) − 1`` of the means
    (0.02 drops changes under 2 %). ``p_value`` is the nominal p of Otava's t-test between the segments either
    side; being the p of the best split found, it understates the real false-change rate, which the defaults
    are chosen for (see the module docstring).
    """
    if not 0 < max_pvalue < 1:
        raise ValueError(f"max_pvalue={max_pvalue!r} (expected 0 < max_pvalue < 1)")
    if not min_magnitude >= 0:
        raise ValueError(f"min_magnitude={min_magnitude!r} (expected >= 0)")
    if window_len < 2:
        raise ValueError(f"window_len={window_len!r} (expected >= 2)")
    if min_sessions < 1:
        raise ValueError(f"min_sessions={min_sessions!r} (expected >= 1)")
    metric = series.key.metric
    log_scale = _log_scale(metric)
    used = [
        i for i, point in enumerate(series.points) if math.isfinite(point.value) and (point.value > 0 or not log_scale)
    ]
    if len(used) < 2 * min_sessions:
        return []
    values = [math.log(series.points[i].value) if log_scale else float(series.points[i].value) for i in used]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # Segments of identical values (a constant error rate of 0) make the t-test divide by a zero spread.
        warnings.simplefilter("ignore", RuntimeWarning)
        found = _detect(values, log_scale, max_pvalue, min_magnitude, window_len, min_sessions)
    direction = metric_direction(metric)
    gates = is_gating(metric) if gating is None else gating
    changes = []
    for index, mean_1, mean_2, p_value in found:
        if log_scale:
            mean_before, mean_after, ratio = math.exp(mean_1), math.exp(mean_2), math.exp(mean_2 - mean_1)
        else:
            mean_before, mean_after = mean_1, mean_2
            ratio = mean_2 / mean_1 if mean_1 != 0 else math.copysign(math.inf, mean_2)
        worse = (direction == "lower" and mean_2 > mean_1) or (direction == "higher" and mean_2 < mean_1)
        changes.append(
            Change(
                key=series.key,
                index=used[index],
                before=series.points[used[index - 1]],
                after=series.points[used[index]],
                mean_before=mean_before,
                mean_after=mean_after,
                ratio=ratio,
                p_value=p_value,
                worse=worse,
                gating=gates,
                nearby=tuple(
                    p.session_id for p in series.points[max(0, used[index] - ACK_SLACK) : used[index] + ACK_SLACK + 1]
                ),
            )
        )
    return changes


def _detect(
    values: list[float], log_scale: bool, max_pvalue: float, min_magnitude: float, window_len: int, min_sessions: int
) -> list[tuple[int, float, float, float]]:
    """(index into ``values``, mean before, mean after, p) of each change: Otava's split, then merge, refine,
    merge. ``values`` must be a list: Otava 0.8's detector ignores its window on a numpy array."""
    try:
        from otava.analysis import TTestSignificanceTester, split
    except ImportError as exc:  # pragma: no cover - the history extra is a dev dependency
        raise ImportError(
            'change points need Apache Otava, which is not installed; pip install "pytest-llmperf[history]"'
        ) from exc
    tester = TTestSignificanceTester(max_pvalue)
    # Otava's own first-pass threshold for the weak change points (compute_change_points).
    first_pass = max_pvalue * 10 if max_pvalue < 0.05 else (max_pvalue * 2 if max_pvalue < 0.5 else max_pvalue)
    points = _merge(split(values, window_len, first_pass), values, tester, log_scale, min_magnitude, min_sessions)
    if points:
        _refine(points, values, min_sessions)
        points = _merge(points, values, tester, log_scale, min_magnitude, min_sessions)
    return [(int(p.index), float(p.stats.mean_1), float(p.stats.mean_2), _pvalue(p.stats.pvalue)) for p in points]


def _pvalue(p: Any) -> float:
    """A NaN p-value (two constant segments of the same value) is no evidence at all."""
    value = float(p)
    return 1.0 if math.isnan(value) else value


def _magnitude(stats: Any, log_scale: bool) -> float:
    """Otava's change magnitude, ``max(after/before, before/after) − 1``, of the geometric means in log scale."""
    if log_scale:
        return math.expm1(abs(float(stats.mean_2) - float(stats.mean_1)))
    return float(stats.change_magnitude())


def _merge(
    points: list[Any], values: list[float], tester: Any, log_scale: bool, min_magnitude: float, min_sessions: int
) -> list[Any]:
    """Otava's merge step with both neighbours of a dropped point recomputed, and a minimum segment length."""
    points = sorted(points, key=lambda p: p.index)

    def recompute(indices: Sequence[int]) -> None:
        intervals = tester.get_intervals(points)
        for i in indices:
            if 0 <= i < len(points):
                points[i] = tester.change_point(points[i].to_candidate(), values, intervals)

    recompute(range(len(points)))
    while points:
        bounds = [0, *(int(p.index) for p in points), len(values)]
        shortest = [min(bounds[i + 1] - bounds[i], bounds[i + 2] - bounds[i + 1]) for i in range(len(points))]
        pvalues = [_pvalue(p.stats.pvalue) for p in points]
        drop = max(range(len(points)), key=lambda i: pvalues[i])
        if pvalues[drop] < tester.max_pvalue:
            drop = min(range(len(points)), key=lambda i: (shortest[i], -pvalues[i]))
            if shortest[drop] >= min_sessions:
                magnitudes = [_magnitude(p.stats, log_scale) for p in points]
                drop = min(range(len(points)), key=lambda i: magnitudes[i])
                if magnitudes[drop] >= min_magnitude:
                    return points
        del points[drop]
        recompute((drop - 1, drop))
    return points


def _refine(points: list[Any], values: list[float], min_sessions: int) -> None:
    """Move each change point to the least-squares split between its neighbours, in place, in order."""
    x = np.asarray(values, dtype=np.float64)
    for i, point in enumerate(points):
        lo = int(points[i - 1].index) if i > 0 else 0
        hi = int(points[i + 1].index) if i + 1 < len(points) else len(values)
        splits = np.arange(lo + min_sessions, hi - min_sessions + 1)
        if splits.size == 0:
            continue
        segment = x[lo:hi] - np.mean(x[lo:hi])  # centred: the sums below stay exact enough
        cumsum = np.concatenate(([0.0], np.cumsum(segment)))
        left = cumsum[splits - lo]
        right = cumsum[-1] - left
        # Maximising the between-segment sum of squares minimises the within-segment one.
        between = left**2 / (splits - lo) + right**2 / (hi - splits)
        point.index = int(splits[int(np.argmax(between))])


def unacknowledged(changes: Sequence[Change], acks: Sequence[Acknowledgement]) -> list[Change]:
    """The changes no acknowledgement covers. An acknowledgement covers a change of its series whose first
    session after it is the acknowledged one or within :data:`ACK_SLACK` sessions of it: a change found later,
    elsewhere in the series, is new, however old its date."""
    return [change for change in changes if _ack_for(change, acks) is None]


def acknowledge(change: Change, *, by: str | None, reason: str, now: datetime) -> Acknowledgement:
    """The acknowledgement of ``change``, as ``history ack`` stores it."""
    return Acknowledgement(
        key=change.key, session_id=change.after.session_id, at=change.at, by=by, reason=reason, recorded_at=now
    )


def _ack_for(change: Change, acks: Sequence[Acknowledgement]) -> Acknowledgement | None:
    for ack in acks:
        if ack.key == change.key and ack.session_id in (change.nearby or (change.after.session_id,)):
            return ack
    return None


def should_fail(
    changes: Sequence[Change], acks: Sequence[Acknowledgement], *, fail_on: Literal["worse", "any"] = "worse"
) -> list[Change]:
    """The changes that make ``history changes`` exit 1: on a gating metric, unacknowledged, and (with
    ``fail_on="worse"``, the default) worse; ``fail_on="any"`` fails on improvements too (a baseline to
    re-record)."""
    if fail_on not in ("worse", "any"):
        raise ValueError(f"fail_on={fail_on!r} (expected 'worse' or 'any')")
    return [c for c in unacknowledged(changes, acks) if c.gating and (c.worse or fail_on == "any")]


def format_changes(changes: Sequence[Change], acks: Sequence[Acknowledgement] = ()) -> list[str]:
    """The printed lines, a block of three (four when acknowledged) per change::

        tests/test_serve.py::test_decode · median_tpot_ms (gating) · pair h100-fp8 · workload 3f2a1b9c0d
          2026-05-04 02:13 UTC: session s41 (commit 0123456789, engine 0.9.1) → session s42 (commit ...)
          +5.1% (worse): geometric mean 12.3 ms → 12.93 ms, p = 2e-20
          acknowledged by alice on 2026-05-10 09:00 UTC: new engine version

    The word in brackets follows from the sign of the change and the metric's direction ("worse", "better",
    or "change" for a metric without one)."""
    lines: list[str] = []
    for change in changes:
        key = change.key
        unit = "" if metric_unit(key.metric) == "fraction" else metric_unit(key.metric)
        gating = " (gating)" if change.gating else ""
        lines.append(f"{key.test_id} · {key.metric}{gating} · pair {key.pair} · workload {key.workload_hash[:10]}")
        lines.append(f"  {_when(change.at)}: {_session(change.before)} → {_session(change.after)}")
        before, after = _value(change.mean_before, unit), _value(change.mean_after, unit)
        mean = "geometric mean" if _log_scale(key.metric) else "mean"
        size, word, p = _size(change), change_word(change), _p(change.p_value)
        lines.append(f"  {size} ({word}): {mean} {before} → {after}, {p}")
        ack = _ack_for(change, acks)
        if ack is not None:
            by = f" by {ack.by}" if ack.by else ""
            reason = f": {ack.reason}" if ack.reason else ""
            lines.append(f"  acknowledged{by} on {_when(ack.recorded_at)}{reason}")
    return lines


def change_word(change: Change) -> str:
    """ "worse", "better", or "change" for a metric without a direction: what the printed lines and the trend
    report call a change."""
    if change.worse:
        return "worse"
    return "better" if metric_direction(change.key.metric) is not None else "change"


def _size(change: Change) -> str:
    """The relative change in percent; the difference when there was nothing before (an error rate of 0)."""
    if not math.isfinite(change.ratio):
        return f"{change.mean_after - change.mean_before:+.3g}"
    percent = (change.ratio - 1) * 100
    return f"{percent:+.1f}%" if abs(percent) >= 0.1 else f"{percent:+.2g}%"


def _value(value: float, unit: str) -> str:
    text = f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return f"{text} {unit}" if unit else text


def _p(p: float) -> str:
    return f"p = {p:.2g}" if p > 0 else "p < 1e-300"  # a t-test's p underflows to 0 on a large step


def _when(at: datetime) -> str:
    utc = at.astimezone(timezone.utc) if at.tzinfo is not None else at
    return f"{utc:%Y-%m-%d %H:%M} UTC"


def _session(point: SessionPoint) -> str:
    known = []
    if point.git_commit:
        known.append(f"commit {point.git_commit[:10]}")
    if point.engine_version:
        known.append(f"engine {point.engine_version}")
    return f"session {point.session_id}" + (f" ({', '.join(known)})" if known else "")
