"""The HTML report: one self-contained file (inline CSS and SVG, no scripts, nothing fetched) for people.

Contents, from a session document (``--llmperf-json``):

- a header: pair, endpoint, engine and version, model, GPU count, date;
- a results table, regressions and SLO breaches first;
- per sweep (results of one test and workload at several concurrencies, see :mod:`pytest_llmperf.judge.capacity`):
  (a) output throughput against median end-to-end latency, each point labelled ``cX`` by concurrency, and
  (b) output throughput per GPU (per server when the GPU count is unknown) against interactivity
  (tok/s/user = 1000 / median TPOT, as InferenceX plots it) with the Pareto front; the baseline's curve
  (medians of its recorded runs) beside the current one, and the capacity at each latency SLO;
- per capacity search (``llmperf.capacity()``): each probe's load against the SLO statistic with the bounds that
  decided it, marked meets / breaches / undecided, the limit, the capacity found, the search's statement as
  caption, and the probe table (runs and prompts per run);
- per test: empirical CDFs of TTFT, TPOT and E2E latency per request, baseline against current.

This module is the document; the charts come from :mod:`pytest_llmperf.report.plots` (matplotlib, inline SVG).

Every string from the document is escaped; a value that is missing renders as "—", never as 0.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmperf._files import write_text_atomic
from pytest_llmperf.judge.capacity import (
    Capacity,
    Sweep,
    capacity_at_slo,
    capacity_slo_names,
    group_sweeps,
    point_along,
    sweeps_of,
)
from pytest_llmperf.report import plots
from pytest_llmperf.report.tables import server_label
from pytest_llmperf.results import (
    FAILED,
    IMPROVEMENT,
    INCONCLUSIVE,
    INTERRUPTED,
    NO_BASELINE,
    NOT_COMPARABLE,
    PASS,
    REGRESSION,
    SLO_BREACH,
    SLO_MISSED,
    RunSummary,
)

__all__ = ["render_html", "write_html"]

DASH = "—"
# Points drawn per ECDF curve at most (quantiles of the sample), so large runs keep the file small.
ECDF_POINTS = 240
# Status → (rank in the table, CSS class). Lower ranks come first.
_RANK = {
    SLO_BREACH: (0, "bad"),
    REGRESSION: (1, "bad"),
    FAILED: (2, "bad"),
    INTERRUPTED: (2, "bad"),
    SLO_MISSED: (3, "warn"),
    INCONCLUSIVE: (4, "warn"),
    NOT_COMPARABLE: (5, "warn"),
    NO_BASELINE: (6, "info"),
    IMPROVEMENT: (7, "good"),
    PASS: (8, "good"),
}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any, unit: str = "") -> str:
    """A number for a table cell: 3–4 significant figures, thousands separated; "—" when missing."""
    v = _num(value)
    if v is None:
        return DASH
    if abs(v) >= 100:
        text = f"{v:,.0f}"
    elif abs(v) >= 10:
        text = f"{v:.1f}"
    elif abs(v) >= 1:
        text = f"{v:.2f}"
    else:
        text = f"{v:.3g}"
    return f"{text} {unit}".rstrip()


def _count(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else DASH


def _first(mapping: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if mapping.get(key) is not None:
            return mapping[key]
    return None


def _e2e(summary: Mapping[str, Any]) -> Any:
    return _first(summary, "median_e2el_ms", "median_e2e_latency_ms")


def _interactivity(summary: Mapping[str, Any]) -> float | None:
    value = _num(summary.get("interactivity"))
    if value is not None:
        return value
    tpot = _num(summary.get("median_tpot_ms"))
    return 1000.0 / tpot if tpot else None


def _gpu_count(result: Mapping[str, Any], document: Mapping[str, Any]) -> int | None:
    for source in (result.get("summary") or {}, result.get("endpoint") or {}, document.get("endpoint") or {}):
        value = source.get("gpu_count")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


# -- status and ordering ------------------------------------------------------------------------------------


def _status(result: Mapping[str, Any]) -> str:
    """The worst of: gating SLO breach, regression, failed test, advisory SLO miss, then the verdict."""
    breached = bool(result.get("slo_breached"))
    if breached and result.get("slo_gating", True):
        return SLO_BREACH
    verdict = str((result.get("verdict") or {}).get("status") or "")
    if verdict == REGRESSION:
        return verdict
    outcome = str(result.get("outcome") or "")
    if outcome in ("failed", "interrupted"):
        return outcome.upper()
    if breached:
        return SLO_MISSED
    return verdict or DASH


def _ordered(results: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    indexed = list(enumerate(results))
    return sorted(indexed, key=lambda pair: _RANK.get(_status(pair[1]), (9, ""))[0])


# -- figures --------------------------------------------------------------------------------------------------------

# The page's colours for the reference side (baseline or A) and the measured side (current or B).
_BASE_COLOR, _CUR_COLOR = "#8c8c8c", "#1f5fa8"


def _figure(plot: plots.Plot, uid: str, caption: str = "") -> str:
    if not plots.has_data(plot):
        return (
            f'<figure class="empty" data-plot="{_e(plot.kind)}"><div class="no-data">{_e(plot.title)}: no data '
            f"(no successful request measured it)</div></figure>"
        )
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{plots.render_svg(plot, uid)}{cap}</figure>"


# -- sweeps ------------------------------------------------------------------------------------------------------


def _median(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (more is better on both), in increasing x."""
    front: list[tuple[float, float]] = []
    best_y = -math.inf
    for x, y in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


@dataclass
class _SweepCurve:
    """Per-concurrency medians of one side (current or baseline) of a sweep."""

    concurrency: list[int]
    e2e_ms: list[float | None]
    throughput: list[float | None]
    per_unit: list[float | None]
    interactivity: list[float | None]


def _curve(sweep: Sweep, *, baseline: bool) -> _SweepCurve:
    gpus = sweep.gpu_count
    curve = _SweepCurve([], [], [], [], [])
    for point in sweep.points:
        runs = [run for r in point.results for run in ((r.get("baseline") or {}).get("runs") or ())]
        if not baseline:
            runs = point.run_summaries()
        runs = [r for r in runs if isinstance(r, Mapping)]
        if not runs:
            continue
        throughput = _median(_num(r.get("output_throughput")) for r in runs)
        curve.concurrency.append(point.concurrency)
        curve.e2e_ms.append(_median(_num(_e2e(r)) for r in runs))
        curve.throughput.append(throughput)
        curve.per_unit.append(None if throughput is None else throughput / (gpus or 1))
        curve.interactivity.append(_median(_interactivity(r) for r in runs))
    return curve


def _baseline_capacity(sweep: Sweep, slo: str, limit: float) -> Capacity | None:
    """The capacity the baseline runs show at the same SLO (None when no point has a baseline)."""
    shadow = []
    for point in sweep.points:
        runs = [run for r in point.results for run in ((r.get("baseline") or {}).get("runs") or ())]
        if runs:
            template = point.results[0]
            workload = {**(template.get("workload") or {}), "concurrency": point.concurrency}
            shadow.append({"nodeid": sweep.test, "workload": workload, "runs": runs, "slos": template.get("slos")})
    grouped = group_sweeps(shadow, gpu_count=sweep.gpu_count, min_points=1)
    return capacity_at_slo(grouped[0], slo, limit, gpu_count=sweep.gpu_count) if grouped else None


def _side(
    name: str,
    curve: _SweepCurve,
    xs: list[float | None],
    ys: list[float | None],
    *,
    reference: bool,
    front: bool,
    color: str | None = None,
) -> plots.Series | None:
    """One side's points labelled ``cX`` by concurrency: joined in concurrency order, or by their Pareto front.
    ``color`` overrides the side's colour (the overlay of several configurations gives each its own)."""
    points, labels = [], []
    for c, x, y in zip(curve.concurrency, xs, ys, strict=True):
        if x is not None and y is not None:
            points.append((x, y))
            labels.append(f"c{c}")
    if not points:
        return None
    on_front = pareto_front(points) if front else []
    return plots.Series(
        name,
        tuple(x for x, _ in points),
        tuple(y for _, y in points),
        tuple(labels),
        color=color or (_BASE_COLOR if reference else _CUR_COLOR),
        dashed=reference,
        join="none" if front else "line",
        front=tuple(points.index(p) for p in on_front) if front else None,
    )


def _capacity_mark(
    cap: Capacity, curve: _SweepCurve, xs: list[float | None], ys: list[float | None]
) -> plots.Mark | None:
    if cap.status == "none":
        return None
    x = point_along(list(zip(curve.concurrency, xs, strict=True)), cap.concurrency)
    y = point_along(list(zip(curve.concurrency, ys, strict=True)), cap.concurrency)
    if x is None or y is None:
        return None
    prefix = "≥" if cap.lower_bound else "≈"
    return plots.Mark(x, y, f"{cap.slo} cap. c{prefix}{cap.concurrency:.3g}")


def _capacity_text(cap: Capacity, base: Capacity | None, base_name: str = "baseline") -> str:
    cls = "bad" if cap.status == "none" else "good" if cap.status == "met" else "info"
    parts = [
        f'<li class="capacity-line {cls}" data-slo="{_e(cap.slo)}">',
        f"<b>capacity at SLO</b> {_e(cap.describe())}",
    ]
    if cap.note and cap.status != "lower_bound":  # describe() already says it is a lower bound
        parts.append(f' <span class="muted">({_e(cap.note)})</span>')
    if base is not None:
        parts.append(f'<br><span class="muted">{_e(base_name)}: {_e(base.describe())}</span>')
    parts.append("</li>")
    return "".join(parts)


def _workload_text(workload: Mapping[str, Any], *, with_load: bool = True) -> str:
    trace = workload.get("trace")
    if trace:  # the trace gives every request's lengths and arrival time
        speedup = workload.get("trace_speedup", 1.0)
        c = workload.get("concurrency")
        capped = f" · c{c}" if with_load and isinstance(c, int) and not isinstance(c, bool) else ""
        return f"trace {file_name(str(trace))}" + (f" ×{speedup:g}" if speedup != 1 else "") + capped
    bits = []
    if workload.get("input_len") is not None or workload.get("output_len") is not None:
        bits.append(f"{workload.get('input_len', '?')}→{workload.get('output_len', '?')} tok")
    if with_load:
        c = workload.get("concurrency")
        rate = workload.get("request_rate")
        if isinstance(c, int) and not isinstance(c, bool):
            bits.append(f"c{c}")
        if rate not in (None, "inf") and not (isinstance(rate, float) and math.isinf(rate)):
            bits.append(f"{rate} req/s")
        elif c is None:
            bits.append("all at once")
        if workload.get("num_prompts") is not None:
            bits.append(f"{workload['num_prompts']} prompts")
        elif workload.get("duration_s") is not None:
            bits.append(f"{workload['duration_s']} s")
    if workload.get("api") not in (None, "", "completions"):
        bits.append(str(workload["api"]))
    if workload.get("dataset") not in (None, "", "random"):
        bits.append(file_name(str(workload["dataset"])))
    turns = workload.get("turns", 1)
    if isinstance(turns, int) and turns > 1:  # num_prompts then counts conversations
        gap = workload.get("turn_gap_s") or 0
        bits.append(f"{turns} turns per conversation" + (f", {gap:g} s apart" if gap else ""))
    return " · ".join(bits) or DASH


def file_name(path: str) -> str:
    """A dataset or trace file by its name: a report is shared, and a full path names someone's directories."""
    return re.split(r"[\\/]", path.rstrip("/\\"))[-1] or path


def _sweep_section(index: int, sweep: Sweep) -> str:
    names = _side_names(any(r.get("ab") for r in sweep.results))
    cur = _curve(sweep, baseline=False)
    base = _curve(sweep, baseline=True)
    per = "per GPU" if sweep.gpu_count else "per server"
    caps = [capacity_at_slo(sweep, name) for name in capacity_slo_names(sweep)]

    sides = ((base, names[0], True), (cur, names[1], False))
    # (a) output throughput vs median E2E latency; (b) throughput per GPU vs interactivity, with Pareto fronts.
    series_a = [_side(n, c, c.e2e_ms, c.throughput, reference=r, front=False) for c, n, r in sides]
    series_b = [_side(n, c, c.interactivity, c.per_unit, reference=r, front=True) for c, n, r in sides]
    refs_a: list[plots.RefLine] = []
    refs_b: list[plots.RefLine] = []
    marks_a: list[plots.Mark] = []
    marks_b: list[plots.Mark] = []
    lines = []
    for cap in caps:
        lines.append(_capacity_text(cap, _baseline_capacity(sweep, cap.slo, cap.limit), names[0]))
        if cap.slo == "e2e_p50_ms":
            refs_a.append(plots.RefLine(cap.limit, f"SLO {cap.slo} ≤ {cap.limit:g}"))
        if cap.slo == "tok_s_per_user":
            refs_b.append(plots.RefLine(cap.limit, f"SLO ≥ {cap.limit:g} tok/s/user"))
        if cap.slo == "tpot_p50_ms":  # the x axis is 1000 / median TPOT: the limit is a minimum interactivity there
            rate = 1000.0 / cap.limit
            refs_b.append(plots.RefLine(rate, f"SLO {cap.slo} ≤ {cap.limit:g} (≥ {rate:.3g} tok/s/user)"))
        # The capacity is a concurrency: mark it along each current curve, whatever metric the SLO bounds.
        for marks, xs, ys in ((marks_a, cur.e2e_ms, cur.throughput), (marks_b, cur.interactivity, cur.per_unit)):
            mark = _capacity_mark(cap, cur, xs, ys)
            if mark:
                marks.append(mark)
    unit = "GPU" if sweep.gpu_count else "server"
    plot_a = plots.Plot(
        "throughput-latency",
        "Output throughput vs median E2E latency",
        "median end-to-end latency (ms)",
        "output throughput (tok/s)",
        tuple(s for s in series_a if s),
        tuple(refs_a),
        tuple(marks_a),
    )
    plot_b = plots.Plot(
        "throughput-interactivity",
        f"Throughput {per} vs interactivity",
        "interactivity (tok/s/user = 1000 / median TPOT)",
        f"output tok/s per {unit}" + ("" if sweep.gpu_count else " (GPU count unknown)"),
        tuple(s for s in series_b if s),
        tuple(refs_b),
        tuple(marks_b),
    )
    if not caps:
        lines.append('<li class="muted">no latency SLO on this sweep, so no capacity at SLO</li>')
    gpus = f"{sweep.gpu_count} GPUs" if sweep.gpu_count else "GPU count unknown: throughput is per server"
    test = _id_html(sweep.test)
    caption_b = f"Pareto front: the points no other point beats on both axes (solid: {names[1]}, dashed: {names[0]})."
    return (
        f'<section class="sweep" id="sweep-{index}"><h3>Sweep {index}: {test}</h3>'
        f'<p class="muted">{_e(_workload_text(sweep.workload, with_load=False))} · concurrency '
        f"{_e(', '.join(f'c{c}' for c in sweep.concurrencies))} · {_e(gpus)}</p>"
        f'<ul class="capacity">{"".join(lines)}</ul>'
        f'<div class="plots">{_figure(plot_a, f"sweep{index}-a")}'
        f"{_figure(plot_b, f'sweep{index}-b', _e(caption_b))}</div></section>"
    )


# -- capacity searches (llmperf.capacity()) -------------------------------------------------------------------------

# Decision -> legend name, colour, marker, hollow: the three differ in shape as well as colour.
_PROBE_STYLES = {
    "meets": ("meets", "#1b7a3a", "o", False),
    "breaches": ("breaches", "#b3261e", "s", False),
    "undecided": ("undecided", "#5b6573", "^", True),
}


def _probe_point(vary: str, at: float) -> str:
    return f"c{at:g}" if vary == "concurrency" else f"{at:.3g}/s"


def _capacity_search_section(index: int, result: Mapping[str, Any]) -> str:
    """One ``llmperf.capacity()`` search: each probe's load against the SLO statistic's geometric mean over its
    runs with the one-sided bounds that decided it, marked by decision; the limit as a line, the capacity
    marked, the search's statement as caption, and the probe table."""
    search = result.get("capacity_search") or {}
    vary = str(search.get("vary") or "concurrency")
    unit = str(search.get("unit") or "")
    slo = str(search.get("slo") or "SLO")
    limit = _num(search.get("limit"))
    probes = [p for p in search.get("probes") or () if isinstance(p, Mapping) and _num(p.get("at")) is not None]
    series = []
    unmeasured = []
    for decision, (name, color, marker, hollow) in _PROBE_STYLES.items():
        drawn = [p for p in probes if p.get("decision") == decision and _num(p.get("centre")) is not None]
        unmeasured += [p for p in probes if p.get("decision") == decision and _num(p.get("centre")) is None]
        if not drawn:
            continue
        centres = [float(p["centre"]) for p in drawn]
        series.append(
            plots.Series(
                name,
                tuple(float(p["at"]) for p in drawn),
                tuple(centres),
                tuple(_probe_point(vary, float(p["at"])) for p in drawn),
                color=color,
                join="none",
                marker=marker,
                hollow=hollow,
                y_err=tuple(
                    (_num(p.get("lower")) or c, _num(p.get("upper")) or c) for p, c in zip(drawn, centres, strict=True)
                ),
            )
        )
    refs = []
    if limit is not None:
        op = "≤" if search.get("kind", "max") == "max" else "≥"
        refs.append(plots.RefLine(limit, f"SLO {slo} {op} {limit:g} {unit}".rstrip(), axis="y"))
    marks = []
    capacity = _num(search.get("capacity"))
    at_capacity = next((p for p in probes if _num(p.get("at")) == capacity), None)
    if capacity and at_capacity is not None and _num(at_capacity.get("centre")) is not None:
        prefix = "≥ " if search.get("status") == "lower_bound" else ""
        load = f"c={capacity:g}" if vary == "concurrency" else f"{capacity:.3g} req/s"
        marks.append(plots.Mark(capacity, float(at_capacity["centre"]), f"capacity {prefix}{load}"))
    ends = [v for p in probes for v in (_num(p.get("lower")), _num(p.get("upper"))) if v is not None and v > 0]
    low, high = _num(search.get("low")), _num(search.get("high"))
    plot = plots.Plot(
        "capacity-probes",
        f"Capacity search: {slo} by {'concurrency' if vary == 'concurrency' else 'request rate'}",
        "concurrency (users)" if vary == "concurrency" else "request rate (req/s)",
        f"{search.get('key') or slo}, geometric mean of the runs" + (f" ({unit})" if unit else ""),
        tuple(series),
        tuple(refs),
        tuple(marks),
        x_log=bool(low and high and high / low >= 8),
        y_log=bool(ends and max(ends) / min(ends) > 10),  # the probes near the limit stay apart
    )
    level = f"{(_num(search.get('confidence')) or 0.9) * 100:g}%"
    caption = _e(search.get("statement") or "")
    caption += _e(
        f" — Bars: each probe's one-sided {level} bounds; a probe meets the SLO when its interval lies on the "
        "allowed side of the limit, breaches it when the interval lies beyond, and is undecided when the interval "
        "straddles the limit after its runs."
    )
    if unmeasured:
        caption += _e(
            " Not measured in a run, so counted as breaches and not drawn: "
            + ", ".join(_probe_point(vary, float(p["at"])) for p in unmeasured)
            + "."
        )
    rows = []
    for p in probes:
        values = ", ".join(_fmt(v) for v in p.get("values") or ())
        rows.append(
            f'<tr class="probe {_e(p.get("decision", ""))}"><td>{_e(_probe_point(vary, float(p["at"])))}</td>'
            f'<td class="num">{_count(p.get("runs"))}</td><td class="num">{_count(p.get("num_prompts"))}</td>'
            f'<td>{_e(values) or DASH}</td><td class="num">{_fmt(p.get("centre"))}</td>'
            f'<td class="num">{_fmt(p.get("lower"))} – {_fmt(p.get("upper"))}</td>'
            f"<td>{_e(p.get('decision', DASH))}</td></tr>"
        )
    table = (
        f'<table class="dist probes"><thead><tr><th>{_e(vary)}</th><th>runs</th><th>prompts/run</th>'
        f"<th>values ({_e(unit)})</th><th>geo. mean</th><th>{_e(level)} bounds</th><th>decision</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return (
        f'<section class="capacity-search" id="capacity-search-{index}"><h3>{_id_html(str(result.get("nodeid", "")))}'
        f'</h3><p class="muted">{_e(_workload_text(result.get("workload") or {}, with_load=False))}</p>'
        f'<div class="plots">{_figure(plot, f"search{index}", caption)}</div>{table}</section>'
    )


def _side_names(ab: bool) -> tuple[str, str]:
    """Legend names of the reference and the measured side: A and B in A/B mode, else baseline and current."""
    return ("A", "B") if ab else ("baseline", "current")


# -- A/B mode ---------------------------------------------------------------------------------------------------


def _ab_section(results: Sequence[Mapping[str, Any]]) -> str:
    """ "B vs A": per A/B test, each gating metric's A and B values, B/A with its 90 % interval, and the verdict."""
    ab_results = [(i, r) for i, r in _ordered(results) if r.get("ab")]
    if not ab_results:
        return ""
    first = ab_results[0][1]["ab"]
    rows = []
    for index, r in ab_results:
        verdict = r.get("verdict") or {}
        blocks = r["ab"].get("blocks") or []
        metrics = [m for m in verdict.get("metrics") or () if m.get("gating", True)]
        span = max(1, len(metrics))
        head = (
            f'<td rowspan="{span}" class="test-cell"><a href="#test-{index}">{_id_html(str(r.get("nodeid", "")))}</a>'
            f'<div class="muted small">{len(blocks)} blocks: {_e(" ".join(blocks))}</div></td>'
            f'<td rowspan="{span}">{_verdict_cell(r)}</td>'
        )
        if not metrics:
            rows.append(f'<tr>{head}<td colspan="5">{_e(verdict.get("reason") or DASH)}</td></tr>')
        for j, m in enumerate(metrics):
            unit = "" if m.get("scale") == "difference" else ("tok/s" if "throughput" in str(m.get("key")) else "ms")
            lo, hi, est = _num(m.get("lower")), _num(m.get("upper")), _num(m.get("estimate"))
            if m.get("scale") == "difference":
                a_v = DASH if _num(m.get("baseline_value")) is None else f"{m['baseline_value'] * 100:.2f}%"
                b_v = DASH if _num(m.get("candidate_value")) is None else f"{m['candidate_value'] * 100:.2f}%"
                ratio = DASH if est is None else f"{est * 100:+.2f} pp"
            else:
                a_v, b_v = _fmt(m.get("baseline_value"), unit), _fmt(m.get("candidate_value"), unit)
                ratio = DASH if est is None else f"{est:.3f}"
                if lo is not None and hi is not None:
                    ratio += f" [{lo:.3f}, {hi:.3f}]"
            cls = _RANK.get(str(m.get("status")), (9, "info"))[1]
            badge = f'<span class="badge {cls}" title="{_e(m.get("reason") or "")}">{_e(m.get("status"))}</span>'
            rows.append(
                f"<tr>{head if j == 0 else ''}<td>{_e(m.get('label') or m.get('name'))}</td>"
                f'<td class="num">{_e(a_v)}</td><td class="num">{_e(b_v)}</td><td class="num">{_e(ratio)}</td>'
                f"<td>{badge}</td></tr>"
            )
    return (
        '<h2 id="ab">B vs A</h2>'
        f"<p>A: {_e(server_label(first.get('a') or {}))}<br>B: {_e(server_label(first.get('b') or {}))}<br>"
        '<span class="muted">Each block runs A and B once with the same prompts, back to back; ratios are B/A with '
        "the paired 90% interval. A REGRESSION means B is worse than A beyond the tolerance. In the plots below, "
        "A is drawn where a baseline would be.</span></p>"
        '<table class="ab"><thead><tr><th>test</th><th>verdict</th><th>metric</th><th>A</th><th>B</th>'
        f"<th>B/A [90% CI]</th><th>metric verdict</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


# -- per-test distributions -------------------------------------------------------------------------------------


def _per_request(arrays: Mapping[str, Any]) -> dict[str, list[float]]:
    """TTFT, TPOT and E2E per successful request, in ms, from ``--save-detailed``-shaped arrays."""
    ttfts = list(arrays.get("ttfts") or ())
    lats = list(arrays.get("latencies") or ())
    outs = list(arrays.get("output_lens") or ())
    errors = list(arrays.get("errors") or ())
    out: dict[str, list[float]] = {"ttft": [], "tpot": [], "e2e": []}
    for i, (ttft, lat) in enumerate(zip(ttfts, lats, strict=False)):
        t, e = _num(ttft), _num(lat)
        if (i < len(errors) and errors[i]) or t is None or e is None or e <= 0:
            continue  # failed requests carry 0 / an error text
        out["ttft"].append(t * 1000)
        out["e2e"].append(e * 1000)
        n = _num(outs[i]) if i < len(outs) else None
        if n is not None and n > 1:
            out["tpot"].append((e - t) / (n - 1) * 1000)
    return out


def _ecdf(values: Sequence[float]) -> list[tuple[float, float]]:
    data = sorted(values)
    n = len(data)
    if n == 0:
        return []
    if n <= ECDF_POINTS:
        return [(v, (i + 1) / n) for i, v in enumerate(data)]
    picks = sorted({round(k * (n - 1) / (ECDF_POINTS - 1)) for k in range(ECDF_POINTS)})
    return [(data[i], (i + 1) / n) for i in picks]


def _quantile(values: Sequence[float], q: float) -> float | None:
    data = sorted(values)
    if not data:
        return None
    pos = q * (len(data) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


_DIST_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E latency"}


def _test_section(index: int, result: Mapping[str, Any]) -> str:
    current = _per_request(result.get("detail") or {})
    baseline = _per_request((result.get("baseline") or {}).get("raw") or {})
    names = _side_names(bool(result.get("ab")))
    figures, rows = [], []
    for metric, name in _DIST_NAMES.items():
        series = []
        for data, label, reference in ((baseline[metric], names[0], True), (current[metric], names[1], False)):
            if data:
                # Start each step curve at probability 0 so it reads as a CDF.
                curve = _ecdf(data)
                points = [(curve[0][0], 0.0), *curve]
                series.append(
                    plots.Series(
                        f"{label} (n={len(data)})",
                        tuple(x for x, _ in points),
                        tuple(y for _, y in points),
                        color=_BASE_COLOR if reference else _CUR_COLOR,
                        dashed=reference,
                        join="step",
                    )
                )
        p50b, p50c = _quantile(baseline[metric], 0.5), _quantile(current[metric], 0.5)
        p99b, p99c = _quantile(baseline[metric], 0.99), _quantile(current[metric], 0.99)
        rows.append(
            f"<tr><th>{_e(name)}</th><td>{_fmt(p50b)}</td><td>{_fmt(p50c)}</td><td>{_fmt(p99b)}</td>"
            f"<td>{_fmt(p99c)}</td></tr>"
        )
        plot = plots.Plot(
            f"ecdf-{metric}",
            f"{name} per request (ECDF)",
            f"{name} (ms)",
            "fraction of requests ≤ x",
            tuple(series),
            y_limits=(0.0, 1.02),  # the top step stays visible below the frame
            width=380,
            height=280,
        )
        figures.append(_figure(plot, f"test{index}-{metric}"))
    table = (
        f'<table class="dist"><thead><tr><th>per request, ms</th><th>{names[0]} p50</th><th>{names[1]} p50</th>'
        f"<th>{names[0]} p99</th><th>{names[1]} p99</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    status = _status(result)
    cls = _RANK.get(status, (9, "info"))[1]
    notes = _notes(result)
    return (
        f'<section class="test" id="test-{index}"><h3><span class="badge {cls}">{_e(status)}</span> '
        f"{_id_html(str(result.get('nodeid', '')))}</h3>"
        f'<p class="muted">{_e(_workload_text(result.get("workload") or {}))}</p>{notes}'
        f'<div class="plots">{"".join(figures)}</div>{table}</section>'
    )


def _turns_text(summary: Mapping[str, Any]) -> str:
    parts = []
    for turn, t in summary["ttft_by_turn"].items():
        cached = "" if t.get("cached_fraction") is None else f", {t['cached_fraction']:.0%} of the prompt cached"
        parts.append(
            f"turn {turn}: TTFT p50 {_fmt(t.get('median_ms'))} / p99 {_fmt(t.get('p99_ms'))} ms, "
            f"~{t.get('input_len_mean', 0):.0f} prompt tokens{cached}"
        )
    return "; ".join(parts)


def _notes(result: Mapping[str, Any]) -> str:
    summary = result.get("summary") or {}
    items = []
    reason = (result.get("verdict") or {}).get("reason")
    if reason:
        items.append(f"verdict: {reason}")
    if summary.get("client_bound"):
        items.append("client-bound run: " + "; ".join(str(r) for r in summary.get("client_reasons") or ()))
    items += [f"warning: {w}" for w in (summary.get("validity") or {}).get("warnings") or ()]
    if summary.get("cached_prompt_fraction") is not None:
        items.append(
            f"prefix cache: {summary.get('cached_prompt_tokens')} prompt tokens cached "
            f"({summary['cached_prompt_fraction']:.1%}, from {summary.get('cached_prompt_source')}) in the last run"
        )
    if summary.get("ttft_by_turn"):  # multi-turn: first turns apart from later ones, whose prefix may be cached
        items.append(f"multi-turn, {summary.get('conversations')} conversations, last run: " + _turns_text(summary))
    for k, run in enumerate(result.get("runs") or ()):
        disturbance = run.get("disturbance") or {}
        if disturbance.get("disturbed"):
            items.append(f"run {k + 1} disturbed: " + "; ".join(str(x) for x in disturbance.get("reasons") or ()))
    items += [str(n) for n in result.get("notes") or ()]
    if not items:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


# -- header and table ---------------------------------------------------------------------------------------------


def _id_html(nodeid: str) -> str:
    """A test id as path, function and parameters; long parameters are cut with an ellipsis, the full id is
    the tooltip."""
    path, sep, rest = nodeid.partition("::")
    if not sep:
        path, rest = "", nodeid
    name, bracket, params = rest.partition("[")
    return (
        f'<span class="id" title="{_e(nodeid)}"><span class="path">{_e(path + sep)}</span>'
        f'<span class="fn">{_e(name)}</span><span class="params">{_e(bracket + params)}</span></span>'
    )


def _slo_cell(result: Mapping[str, Any]) -> str:
    items = []
    for slo in result.get("slos") or ():
        if slo.get("implicit") and slo.get("passed"):
            continue
        ok = bool(slo.get("passed"))
        op = "≤" if slo.get("kind") == "max" else "≥"
        unit = slo.get("unit") or ""
        limit = _num(slo.get("limit"))
        if unit == "fraction":
            measured = _num(slo.get("measured"))
            shown = DASH if measured is None else f"{measured * 100:.2f}%"
            limit_text = f"{(limit or 0) * 100:.2f}%"
        else:
            shown, limit_text = _fmt(slo.get("measured"), unit), _fmt(limit, unit)
        cls = "good" if ok else "bad"
        items.append(
            f'<li class="{cls}" title="{_e(slo.get("reason") or "")}">{_e(slo.get("name"))} {op} {_e(limit_text)}: '
            f"{_e(shown)} {'✓' if ok else '✗'}</li>"
        )
    return f'<ul class="slos">{"".join(items)}</ul>' if items else DASH


def _verdict_cell(result: Mapping[str, Any]) -> str:
    status = _status(result)
    cls = _RANK.get(status, (9, "info"))[1]
    verdict = result.get("verdict") or {}
    extra = []
    for m in verdict.get("metrics") or ():
        # Gating metrics that did not pass; advisory ones (p99s) stay in the per-test section's verdict reason.
        if m.get("gating", True) and m.get("status") in (REGRESSION, IMPROVEMENT, INCONCLUSIVE):
            est = _num(m.get("estimate"))
            ratio = DASH if est is None else f"×{est:.3f}"
            extra.append(f"{m.get('label') or m.get('name')}: {m.get('status')} {ratio}")
    if verdict.get("status") and verdict["status"] != status:
        extra.insert(0, f"verdict: {verdict['status']}")
    detail = "".join(f'<div class="muted small">{_e(x)}</div>' for x in extra)
    return f'<span class="badge {cls}" title="{_e(verdict.get("reason") or "")}">{_e(status)}</span>{detail}'


# Summary keys the plugin writes (the RunSummary type), and its computed latency keys (``p99.9_ttft_ms``): any other
# numeric key is a metric a user added (in the pytest_llmperf_result hook), shown under the test's id.
_SUMMARY_KEYS = RunSummary.__required_keys__ | RunSummary.__optional_keys__
_STAT_KEY = re.compile(r"^(mean|median|std|max|p\d+(\.\d+)?)_\w+_ms$")


def _custom_html(summary: Mapping[str, Any]) -> str:
    """The numeric fields a user added to a run's summary, as ``name value`` lines ("" when there are none)."""
    custom = [
        (str(k), v)
        for k, v in summary.items()
        if k not in _SUMMARY_KEYS and not _STAT_KEY.match(str(k)) and _num(v) is not None
    ]
    if not custom:
        return ""
    items = " · ".join(f"{_e(k)} {_fmt(v)}" for k, v in custom)
    return f'<div class="muted small custom-metrics">{items}</div>'


def _table(document: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for index, r in _ordered(results):
        s = r.get("summary") or {}
        gpus = _gpu_count(r, document)
        per_gpu = s.get("output_throughput_per_gpu") if gpus else None
        per_gpu_more = (
            f'<div class="muted small">in {_fmt(s.get("input_throughput_per_gpu"))} · total '
            f"{_fmt(_first(s, 'total_token_throughput_per_gpu', 'total_throughput_per_gpu'))}</div>"
            if gpus and "input_throughput_per_gpu" in s
            else ""
        )
        runs = r.get("runs") or []
        ok = f"{_count(s.get('completed'))}/{_count(s.get('failed'))}"
        rows.append(
            f'<tr class="row-{_RANK.get(_status(r), (9, "info"))[1]}"><td class="test-cell">'
            f'<a href="#test-{index}">{_id_html(str(r.get("nodeid", "")))}</a>{_custom_html(s)}</td>'
            f"<td>{_e(_workload_text(r.get('workload') or {}))}</td><td>{_verdict_cell(r)}</td>"
            f'<td class="num">{len(runs) or 1}</td><td class="num">{_e(ok)}</td>'
            f'<td class="num">{_fmt(s.get("median_ttft_ms"))}</td><td class="num">{_fmt(s.get("median_tpot_ms"))}</td>'
            f'<td class="num">{_fmt(_e2e(s))}</td><td class="num">{_fmt(s.get("output_throughput"))}</td>'
            f'<td class="num">{_fmt(per_gpu)}{per_gpu_more}</td><td class="num">{_fmt(_interactivity(s))}</td>'
            f'<td class="num">{_goodput_cell(s)}</td><td class="num">{_cost_cell(s)}</td>'
            f"<td>{_slo_cell(r)}</td></tr>"
        )
    return (
        '<table class="results"><thead><tr><th>test</th><th>workload</th><th>verdict</th><th>runs</th>'
        "<th>ok/failed</th><th>TTFT p50 ms</th><th>TPOT p50 ms</th><th>E2E p50 ms</th><th>output tok/s</th>"
        '<th>output tok/s per GPU <span class="small">(input · total)</span></th><th>tok/s/user</th>'
        "<th>goodput req/s</th><th>$ per M output tok</th><th>SLOs</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _goodput_cell(summary: Mapping[str, Any]) -> str:
    """vLLM's request_goodput with the good requests and the SLOs that made them good (the goodput keyword)."""
    if "request_goodput" not in summary:
        return DASH
    slos = summary.get("goodput_slos_ms") or {}
    title = " and ".join(f"{name} ≤ {_fmt(limit)} ms" for name, limit in slos.items())
    good = f'<div class="muted small">{_count(summary.get("good_requests"))} good</div>'
    return f'<span title="{_e(title)}">{_fmt(summary.get("request_goodput"))}</span>{good}'


def _cost_cell(summary: Mapping[str, Any]) -> str:
    """USD per million output tokens (the total's below), when the GPU count and the GPU-hour price are known."""
    if "cost_per_million_output_tokens" not in summary:
        return DASH
    price = _num(summary.get("gpu_cost_per_hour"))
    gpus = summary.get("gpu_count")
    title = "" if price is None else f"at ${price:g} per GPU-hour × {gpus} GPU{'' if gpus == 1 else 's'}"
    total = f'<div class="muted small">total {_fmt(summary.get("cost_per_million_total_tokens"))}</div>'
    return f'<span title="{_e(title)}">{_fmt(summary.get("cost_per_million_output_tokens"))}</span>{total}'


def _header(document: Mapping[str, Any], title: str, generated: _dt.datetime) -> str:
    endpoint = document.get("endpoint") or {}
    results = document.get("results") or []
    if not endpoint and results:
        endpoint = results[0].get("endpoint") or {}
    gpus = endpoint.get("gpu_count")
    date = document.get("date") or generated.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    fields = [
        ("pair", document.get("pair")),
        ("endpoint", endpoint.get("url")),
        ("engine", endpoint.get("engine")),
        ("version", endpoint.get("engine_version")),
        ("model", endpoint.get("model")),
        ("GPUs", gpus if gpus else "unknown (throughput is per server)"),
        ("date", date),
    ]
    compare = document.get("compare")
    if isinstance(compare, Mapping):  # A/B mode: the endpoint above is A
        fields.insert(2, ("B (compared)", server_label(compare)))
    counts: dict[str, int] = {}
    for r in results:
        counts[_status(r)] = counts.get(_status(r), 0) + 1
    summary = " · ".join(
        f'<span class="badge {_RANK.get(k, (9, "info"))[1]}">{_e(k)}</span> {v}'
        for k, v in sorted(counts.items(), key=lambda kv: _RANK.get(kv[0], (9, ""))[0])
    )
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(DASH if v in (None, '') else v)}</dd>" for k, v in fields)
    return f'<header><h1>{_e(title)}</h1><dl class="meta">{items}</dl><p>{len(results)} results {summary}</p></header>'


_CSS = (
    """
:root{--bad:#b3261e;--warn:#a15c00;--good:#1b7a3a;--info:#44546a;--fg:#1d232b;--muted:#5b6573;--bg:#fff;
--line:#d8dde3}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;color:var(--fg);
background:var(--bg);margin:0 auto;padding:16px 24px 48px;max-width:1400px}
h1{font-size:22px;margin:4px 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:20px 0 4px;overflow-wrap:anywhere}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0 0 8px}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0;overflow-wrap:anywhere}
.muted{color:var(--muted)}.small{font-size:12px}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
th{font-weight:600;font-size:12px;color:var(--muted)}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.test-cell{max-width:26rem}.test-cell a{color:inherit;text-decoration:none}
.id{display:inline-block;max-width:100%;vertical-align:top}
.id .path{display:block;font-size:11px;color:var(--muted);overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.id .fn{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
.id .params{display:inline-block;vertical-align:bottom;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
overflow:hidden;text-overflow:ellipsis;white-space:nowrap;max-width:26rem}
h3 .id .params{max-width:60rem}
.badge{display:inline-block;padding:0 6px;border-radius:9px;font-size:12px;font-weight:600;color:#fff;
background:var(--info);white-space:nowrap}
.badge.bad{background:var(--bad)}.badge.warn{background:var(--warn)}.badge.good{background:var(--good)}
tr.row-bad{background:#fdf1f0}
ul.slos,ul.notes,ul.capacity{margin:0;padding-left:16px}
ul.slos li.bad{color:var(--bad);font-weight:600}ul.slos li.good{color:var(--good)}
li.capacity-line.bad{color:var(--bad)}
.plots{display:flex;flex-wrap:wrap;gap:12px;margin-top:8px}
figure{margin:0;max-width:100%}figcaption{font-size:12px;color:var(--muted);max-width:560px}
figure.empty .no-data{padding:16px;border:1px dashed var(--line);color:var(--muted)}
svg.plot{display:block;max-width:100%;height:auto}
table.dist{width:auto;margin-top:6px}table.dist td{text-align:right;font-variant-numeric:tabular-nums}
footer{margin-top:32px;font-size:12px;color:var(--muted)}
"""
    + plots.PAGE_CSS
)


def render_html(document: Mapping[str, Any], *, title: str | None = None, generated: _dt.datetime | None = None) -> str:
    """The whole report for one session document, as one self-contained HTML page.

    ``title`` defaults to "pytest-llmperf · <pair>"; ``generated`` (the date shown when the document carries
    none) defaults to now, in UTC.
    """
    generated = generated or _dt.datetime.now(_dt.timezone.utc)
    pair = document.get("pair")
    if title is None:
        title = f"pytest-llmperf · {pair}" if pair else "pytest-llmperf report"
    results = [r for r in document.get("results") or () if isinstance(r, Mapping)]
    sweeps = sweeps_of(document)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No favicon request: the report must load without fetching anything.
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        _header(document, title, generated),
    ]
    if not results:
        parts.append('<p class="muted">No perf results in this session.</p>')
    else:
        parts.append('<h2 id="results">Results</h2>')
        parts.append(_table(document, results))
        parts.append(_ab_section(results))
        parts.append('<h2 id="sweeps">Sweeps</h2>')
        if sweeps:
            parts.extend(_sweep_section(i + 1, sweep) for i, sweep in enumerate(sweeps))
        else:
            parts.append('<p class="muted">No concurrency sweep (one test and workload at several concurrencies).</p>')
        searches = [(i, r) for i, r in enumerate(results) if isinstance(r.get("capacity_search"), Mapping)]
        if searches:
            parts.append('<h2 id="capacity-searches">Capacity searches</h2>')
            parts.extend(_capacity_search_section(i, r) for i, r in searches)
        parts.append('<h2 id="tests">Per-test distributions</h2>')
        parts.extend(_test_section(index, r) for index, r in _ordered(results))
    parts.append(
        "<footer>Generated by pytest-llmperf. Latencies in ms; throughput in output tokens per second. "
        "Baseline curves are the medians of the baseline's recorded runs.</footer></body></html>"
    )
    return "\n".join(parts) + "\n"


def write_html(path: str | os.PathLike[str], document: Mapping[str, Any], *, title: str | None = None) -> Path:
    """Render ``document`` and write it to ``path`` atomically (a temporary file beside it, then a rename)."""
    target = Path(path)
    text = render_html(document, title=title)
    write_text_atomic(target, text)
    return target
