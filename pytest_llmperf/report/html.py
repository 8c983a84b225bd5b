"""The HTML report: one self-contained file (inline CSS and SVG, no scripts, nothing fetched) for people.

Contents, from a session document (``--llmperf-json``):

- a header: pair, endpoint, engine and version, model, GPU count, date;
- a results table, regressions and SLO breaches first;
- per sweep (results of one test and workload at several concurrencies, see :mod:`pytest_llmperf.judge.capacity`):
  (a) output throughput against median end-to-end latency, each point labelled ``cX`` by concurrency, and
  (b) output throughput per GPU (per server when the GPU count is unknown) against interactivity
  (tok/s/user = 1000 / median TPOT, as InferenceX plots it) with the Pareto front; the baseline's curve
  (medians of its recorded runs) beside the current one, and the capacity at each latency SLO;
- per test: empirical CDFs of TTFT, TPOT and E2E latency per request, baseline against current.

Every string from the document is escaped; a value that is missing renders as "—", never as 0.
"""

from __future__ import annotations

import datetime as _dt
import html
import itertools
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
from pytest_llmperf.report.tables import server_label

__all__ = ["render_html", "write_html"]

DASH = "—"
# Points drawn per ECDF curve at most (quantiles of the sample), so large runs keep the file small.
ECDF_POINTS = 240
# Status → (rank in the table, CSS class). Lower ranks come first.
_RANK = {
    "SLO BREACH": (0, "bad"),
    "REGRESSION": (1, "bad"),
    "FAILED": (2, "bad"),
    "INTERRUPTED": (2, "bad"),
    "SLO MISSED": (3, "warn"),
    "INCONCLUSIVE": (4, "warn"),
    "NOT_COMPARABLE": (5, "warn"),
    "NO_BASELINE": (6, "info"),
    "IMPROVEMENT": (7, "good"),
    "PASS": (8, "good"),
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
        return "SLO BREACH"
    verdict = str((result.get("verdict") or {}).get("status") or "")
    if verdict == "REGRESSION":
        return verdict
    outcome = str(result.get("outcome") or "")
    if outcome in ("failed", "interrupted"):
        return outcome.upper()
    if breached:
        return "SLO MISSED"
    return verdict or DASH


def _ordered(results: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    indexed = list(enumerate(results))
    return sorted(indexed, key=lambda pair: _RANK.get(_status(pair[1]), (9, ""))[0])


# -- SVG plotting ----------------------------------------------------------------------------------------------


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


@dataclass
class _Axis:
    """A linear axis from ``lo`` to ``hi`` (rounded out to ticks) mapped onto pixels ``p0``..``p1``."""

    lo: float
    hi: float
    p0: float
    p1: float
    ticks: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, values: Iterable[float], p0: float, p1: float, *, zero: bool = True, target: int = 5) -> _Axis:
        data = [v for v in values if math.isfinite(v)]
        lo = min(data) if data else 0.0
        hi = max(data) if data else 1.0
        if zero:
            lo = min(lo, 0.0)
            hi = max(hi, 0.0)
        elif hi > lo:
            # Zoomed to the data: a margin so that no point sits on the frame, never crossing zero.
            margin = (hi - lo) * 0.06
            lo = lo - margin if lo < 0 or lo - margin >= 0 else 0.0
            hi += margin
        if hi - lo <= 0:
            pad = abs(hi) * 0.1 or 1.0
            lo, hi = lo - pad, hi + pad
            if zero and lo < 0 <= min(data or [0.0]):
                lo = 0.0
        step = _nice_step(hi - lo, target)
        lo = math.floor(lo / step + 1e-9) * step
        hi = math.ceil(hi / step - 1e-9) * step
        if hi <= lo:
            hi = lo + step
        count = round((hi - lo) / step)
        ticks = [lo + i * step for i in range(count + 1)]
        return cls(lo, hi, p0, p1, ticks)

    def map(self, value: float) -> float:
        return self.p0 + (value - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    """Tick text with as many decimals as the step needs (2.5 → "2.5", 7.5), thousands as "k" on wide axes."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if max(abs(t) for t in ticks) >= 10000 and step >= 100:
        return f"{value / 1000:g}k" if value else "0"
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    return f"{value:,.{decimals}f}"


@dataclass
class _Series:
    """Points of one curve. ``style`` is ``cur`` or ``base``; ``labels`` align with ``points``."""

    name: str
    style: str
    points: list[tuple[float, float]]
    labels: list[str] = field(default_factory=list)
    connect: bool = True
    step: bool = False
    front: list[tuple[float, float]] | None = None


@dataclass
class _Marker:
    x: float
    y: float
    text: str


@dataclass
class _Plot:
    kind: str
    title: str
    x_label: str
    y_label: str
    series: list[_Series]
    vlines: list[tuple[float, str]] = field(default_factory=list)
    markers: list[_Marker] = field(default_factory=list)
    width: int = 560
    height: int = 380
    y_zero: bool = True
    x_zero: bool = True
    y_max: float | None = None


_CHAR_W = 6.3  # px per character of the 11px label font, for placing labels without overlaps


_Rect = tuple[float, float, float, float]


def _place_label(x: float, y: float, text: str, taken: list[_Rect], box: _Rect) -> tuple[float, float, str]:
    """Pick a spot near (x, y) for ``text`` that overlaps no label placed so far and stays inside ``box``."""
    w, h = len(text) * _CHAR_W, 11.0
    candidates = [(6, -6, "start"), (6, 14, "start"), (-6, -6, "end"), (-6, 14, "end"), (0, -12, "middle")]
    candidates += [(6, -18, "start"), (6, 26, "start"), (-6, -18, "end"), (-6, 26, "end"), (0, 24, "middle")]
    best: tuple[float, float, str] | None = None
    for dx, dy, anchor in candidates:
        left = x + dx - (w if anchor == "end" else w / 2 if anchor == "middle" else 0)
        rect = (left, y + dy - h + 2, left + w, y + dy + 2)
        inside = rect[0] >= box[0] and rect[2] <= box[2] and rect[1] >= box[1] and rect[3] <= box[3]
        clear = all(rect[2] <= t[0] or rect[0] >= t[2] or rect[3] <= t[1] or rect[1] >= t[3] for t in taken)
        if inside and clear:
            taken.append(rect)
            return x + dx, y + dy, anchor
        if best is None and inside:
            best = (x + dx, y + dy, anchor)
    chosen = best or (x + 6, y - 6, "start")
    left = chosen[0] - (w if chosen[2] == "end" else 0)
    taken.append((left, chosen[1] - h + 2, left + w, chosen[1] + 2))
    return chosen


def _pts(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def _svg(plot: _Plot) -> str:
    """An inline SVG scatter/line plot with axes, ticks, legend and point labels."""
    left, right, top, bottom = 64, 16, 44, 48
    w, h = plot.width, plot.height
    xs = [x for s in plot.series for x, _ in s.points] + [m.x for m in plot.markers]
    # An SLO line far beyond the data would squash it against the axis: it is then named at the edge instead.
    top_x = max(xs, default=0.0)
    shown_vlines = [(x, t) for x, t in plot.vlines if not xs or x <= 2 * top_x]
    off_scale = [(x, t) for x, t in plot.vlines if (x, t) not in shown_vlines]
    xs += [x for x, _ in shown_vlines]
    ys = [y for s in plot.series for _, y in s.points] + [m.y for m in plot.markers]
    if plot.y_max is not None:
        ys.append(plot.y_max)
    ax = _Axis.fit(xs, left, w - right, zero=plot.x_zero)
    ay = _Axis.fit(ys, h - bottom, top, zero=plot.y_zero)
    out = [
        f'<svg class="plot" data-plot="{_e(plot.kind)}" xmlns="http://www.w3.org/2000/svg" width="{w}" '
        f'height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{_e(plot.title)}">',
        f"<title>{_e(plot.title)}</title>",
        f'<rect class="frame" x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}"/>',
    ]
    for t in ax.ticks:
        px = ax.map(t)
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{h - bottom}"/>')
        out.append(
            f'<text class="tick" x="{px:.1f}" y="{h - bottom + 15}" text-anchor="middle">'
            f"{_tick_label(t, ax.ticks)}</text>"
        )
    for t in ay.ticks:
        py = ay.map(t)
        out.append(f'<line class="grid" x1="{left}" y1="{py:.1f}" x2="{w - right}" y2="{py:.1f}"/>')
        out.append(
            f'<text class="tick" x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{_tick_label(t, ay.ticks)}</text>'
        )
    out.append(
        f'<text class="axis-label" x="{(left + w - right) / 2:.0f}" y="{h - 10}" text-anchor="middle">'
        f"{_e(plot.x_label)}</text>"
    )
    out.append(
        f'<text class="axis-label" transform="translate(14 {(top + h - bottom) / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{_e(plot.y_label)}</text>'
    )
    box = (left, top, w - right, h - bottom)
    slo_rects: list[_Rect] = []
    for _, text in off_scale:
        note = f"{text} (off scale →)"
        out.append(f'<text class="slo-label" x="{w - right - 4}" y="{top + 12}" text-anchor="end">{_e(note)}</text>')
        slo_rects.append((w - right - 4 - len(note) * _CHAR_W, top, w - right, top + 14))
    for x, text in shown_vlines:
        px = ax.map(x)
        out.append(f'<line class="slo" x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{h - bottom}"/>')
        # Left of the line when it fits inside the frame, else right of it.
        fits_left = px - 4 - len(text) * _CHAR_W * 0.9 >= left
        lx, anchor = (px - 4, "end") if fits_left else (px + 4, "start")
        out.append(f'<text class="slo-label" x="{lx:.1f}" y="{top + 12}" text-anchor="{anchor}">{_e(text)}</text>')
        start = lx - len(text) * _CHAR_W if fits_left else lx
        slo_rects.append((start, top, start + len(text) * _CHAR_W, top + 14))
    # Labels keep clear of every point as well as of each other.
    taken: list[_Rect] = [
        (ax.map(x) - 4, ay.map(y) - 4, ax.map(x) + 4, ay.map(y) + 4)
        for s in plot.series
        if not s.step
        for x, y in s.points
    ]
    taken += slo_rects
    for s in plot.series:
        mapped = [(ax.map(x), ay.map(y)) for x, y in s.points]
        if s.front is not None and s.front:
            front = [(ax.map(x), ay.map(y)) for x, y in s.front]
            out.append(f'<polyline class="pareto {s.style}" data-role="pareto-front" points="{_pts(front)}"/>')
        elif s.connect and len(mapped) > 1:
            if s.step:
                stepped = [mapped[0]]
                for (_, y0), (x1, y1) in itertools.pairwise(mapped):
                    stepped += [(x1, y0), (x1, y1)]
                mapped_line = stepped
            else:
                mapped_line = mapped
            out.append(f'<polyline class="curve {s.style}" points="{_pts(mapped_line)}"/>')
        if not s.step:
            on_front = set(s.front or ())
            for (x, y), (px, py) in zip(s.points, mapped, strict=True):
                hollow = " off-front" if s.front is not None and (x, y) not in on_front else ""
                out.append(f'<circle class="pt {s.style}{hollow}" cx="{px:.1f}" cy="{py:.1f}" r="3.6"/>')
        for label, (px, py) in zip(s.labels, mapped, strict=False):
            lx, ly, anchor = _place_label(px, py, label, taken, box)
            out.append(
                f'<text class="pt-label {s.style}" x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}">{_e(label)}</text>'
            )
    for m in plot.markers:
        px, py = ax.map(m.x), ay.map(m.y)
        out.append(
            f'<path class="capacity" data-role="capacity" d="M{px:.1f},{py - 7:.1f} L{px + 7:.1f},{py:.1f} '
            f'L{px:.1f},{py + 7:.1f} L{px - 7:.1f},{py:.1f} Z"/>'
        )
        lx, ly, anchor = _place_label(px, py, m.text, taken, box)
        out.append(f'<text class="capacity-label" x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}">{_e(m.text)}</text>')
    # Title on the first line, legend right-aligned on the second, both above the frame.
    lx = w - right
    for s in reversed(plot.series):
        text_w = len(s.name) * _CHAR_W
        out.append(f'<text class="legend" x="{lx:.1f}" y="{top - 8}" text-anchor="end">{_e(s.name)}</text>')
        lx -= text_w + 26
        out.append(
            f'<line class="curve {s.style}" x1="{lx + 4:.1f}" y1="{top - 12}" x2="{lx + 20:.1f}" y2="{top - 12}"/>'
        )
        lx -= 8
    out.append(f'<text class="plot-title" x="{left}" y="{top - 26}">{_e(plot.title)}</text>')
    out.append("</svg>")
    return "".join(out)


def _figure(plot: _Plot, caption: str = "") -> str:
    if not any(s.points for s in plot.series):
        return (
            f'<figure class="empty" data-plot="{_e(plot.kind)}"><div class="no-data">{_e(plot.title)}: no data '
            f"(no successful request measured it)</div></figure>"
        )
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{_svg(plot)}{cap}</figure>"


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


def _labelled(curve: _SweepCurve, xs: list[float | None], ys: list[float | None]) -> tuple[list[Any], list[str]]:
    points, labels = [], []
    for c, x, y in zip(curve.concurrency, xs, ys, strict=True):
        if x is not None and y is not None:
            points.append((x, y))
            labels.append(f"c{c}")
    return points, labels


def _capacity_marker(
    cap: Capacity, curve: _SweepCurve, xs: list[float | None], ys: list[float | None]
) -> _Marker | None:
    if cap.status == "none":
        return None
    x = point_along(list(zip(curve.concurrency, xs, strict=True)), cap.concurrency)
    y = point_along(list(zip(curve.concurrency, ys, strict=True)), cap.concurrency)
    if x is None or y is None:
        return None
    prefix = "≥" if cap.lower_bound else "≈"
    return _Marker(x, y, f"{cap.slo} cap. c{prefix}{cap.concurrency:.3g}")


def _capacity_text(cap: Capacity, base: Capacity | None) -> str:
    cls = "bad" if cap.status == "none" else "good" if cap.status == "met" else "info"
    parts = [
        f'<li class="capacity-line {cls}" data-slo="{_e(cap.slo)}">',
        f"<b>capacity at SLO</b> {_e(cap.describe())}",
    ]
    if cap.note and cap.status != "lower_bound":  # describe() already says it is a lower bound
        parts.append(f' <span class="muted">({_e(cap.note)})</span>')
    if base is not None:
        parts.append(f'<br><span class="muted">baseline: {_e(base.describe())}</span>')
    parts.append("</li>")
    return "".join(parts)


def _workload_text(workload: Mapping[str, Any], *, with_load: bool = True) -> str:
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
    for key in ("api", "dataset"):
        if workload.get(key) not in (None, "", "completions", "random"):
            bits.append(str(workload[key]))
    return " · ".join(bits) or DASH


def _sweep_section(index: int, sweep: Sweep) -> str:
    names = _side_names(any(r.get("ab") for r in sweep.results))
    cur = _curve(sweep, baseline=False)
    base = _curve(sweep, baseline=True)
    per = "per GPU" if sweep.gpu_count else "per server"
    caps = [capacity_at_slo(sweep, name) for name in capacity_slo_names(sweep)]

    # (a) output throughput vs median E2E latency.
    series_a = []
    for curve, name, style in ((base, names[0], "base"), (cur, names[1], "cur")):
        points, labels = _labelled(curve, curve.e2e_ms, curve.throughput)
        if points:
            series_a.append(_Series(name, style, points, labels))
    plot_a = _Plot(
        "throughput-latency",
        "Output throughput vs median E2E latency",
        "median end-to-end latency (ms)",
        "output throughput (tok/s)",
        series_a,
        x_zero=False,
        y_zero=False,
    )
    # (b) throughput per GPU vs interactivity, with Pareto fronts.
    series_b = []
    for curve, name, style in ((base, names[0], "base"), (cur, names[1], "cur")):
        points, labels = _labelled(curve, curve.interactivity, curve.per_unit)
        if points:
            series_b.append(_Series(name, style, points, labels, front=pareto_front(points)))
    unit = "GPU" if sweep.gpu_count else "server"
    plot_b = _Plot(
        "throughput-interactivity",
        f"Throughput {per} vs interactivity",
        "interactivity (tok/s/user = 1000 / median TPOT)",
        f"output tok/s per {unit}" + ("" if sweep.gpu_count else " (GPU count unknown)"),
        series_b,
        x_zero=False,
        y_zero=False,
    )
    lines = []
    for cap in caps:
        lines.append(_capacity_text(cap, _baseline_capacity(sweep, cap.slo, cap.limit)))
        if cap.slo == "e2e_p50_ms":
            plot_a.vlines.append((cap.limit, f"SLO {cap.slo} ≤ {cap.limit:g}"))
        if cap.slo == "tok_s_per_user":
            plot_b.vlines.append((cap.limit, f"SLO ≥ {cap.limit:g} tok/s/user"))
        # The capacity is a concurrency: mark it along each current curve, whatever metric the SLO bounds.
        for plot, xs, ys in ((plot_a, cur.e2e_ms, cur.throughput), (plot_b, cur.interactivity, cur.per_unit)):
            marker = _capacity_marker(cap, cur, xs, ys)
            if marker:
                plot.markers.append(marker)
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
        f'<div class="plots">{_figure(plot_a)}{_figure(plot_b, _e(caption_b))}</div></section>'
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
        for data, label, style in ((baseline[metric], names[0], "base"), (current[metric], names[1], "cur")):
            if data:
                points = _ecdf(data)
                # Start each step curve at probability 0 so it reads as a CDF.
                series.append(_Series(f"{label} (n={len(data)})", style, [(points[0][0], 0.0), *points], step=True))
        p50b, p50c = _quantile(baseline[metric], 0.5), _quantile(current[metric], 0.5)
        p99b, p99c = _quantile(baseline[metric], 0.99), _quantile(current[metric], 0.99)
        rows.append(
            f"<tr><th>{_e(name)}</th><td>{_fmt(p50b)}</td><td>{_fmt(p50c)}</td><td>{_fmt(p99b)}</td>"
            f"<td>{_fmt(p99c)}</td></tr>"
        )
        plot = _Plot(
            f"ecdf-{metric}",
            f"{name} per request (ECDF)",
            f"{name} (ms)",
            "fraction of requests ≤ x",
            series,
            width=380,
            height=280,
            y_max=1.0,
            x_zero=False,
        )
        figures.append(_figure(plot))
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
        if m.get("gating", True) and m.get("status") in ("REGRESSION", "IMPROVEMENT", "INCONCLUSIVE"):
            est = _num(m.get("estimate"))
            ratio = DASH if est is None else f"×{est:.3f}"
            extra.append(f"{m.get('label') or m.get('name')}: {m.get('status')} {ratio}")
    if verdict.get("status") and verdict["status"] != status:
        extra.insert(0, f"verdict: {verdict['status']}")
    detail = "".join(f'<div class="muted small">{_e(x)}</div>' for x in extra)
    return f'<span class="badge {cls}" title="{_e(verdict.get("reason") or "")}">{_e(status)}</span>{detail}'


def _table(document: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for index, r in _ordered(results):
        s = r.get("summary") or {}
        gpus = _gpu_count(r, document)
        per_gpu = s.get("output_throughput_per_gpu") if gpus else None
        runs = r.get("runs") or []
        ok = f"{_count(s.get('completed'))}/{_count(s.get('failed'))}"
        rows.append(
            f'<tr class="row-{_RANK.get(_status(r), (9, "info"))[1]}"><td class="test-cell">'
            f'<a href="#test-{index}">{_id_html(str(r.get("nodeid", "")))}</a></td>'
            f"<td>{_e(_workload_text(r.get('workload') or {}))}</td><td>{_verdict_cell(r)}</td>"
            f'<td class="num">{len(runs) or 1}</td><td class="num">{_e(ok)}</td>'
            f'<td class="num">{_fmt(s.get("median_ttft_ms"))}</td><td class="num">{_fmt(s.get("median_tpot_ms"))}</td>'
            f'<td class="num">{_fmt(_e2e(s))}</td><td class="num">{_fmt(s.get("output_throughput"))}</td>'
            f'<td class="num">{_fmt(per_gpu)}</td><td class="num">{_fmt(_interactivity(s))}</td>'
            f"<td>{_slo_cell(r)}</td></tr>"
        )
    return (
        '<table class="results"><thead><tr><th>test</th><th>workload</th><th>verdict</th><th>runs</th>'
        "<th>ok/failed</th><th>TTFT p50 ms</th><th>TPOT p50 ms</th><th>E2E p50 ms</th><th>output tok/s</th>"
        "<th>output tok/s per GPU</th><th>tok/s/user</th><th>SLOs</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


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


_CSS = """
:root{--cur:#1f5fa8;--base:#8c8c8c;--bad:#b3261e;--warn:#a15c00;--good:#1b7a3a;--info:#44546a;--slo:#b3261e;
--cap:#d9730d;--fg:#1d232b;--muted:#5b6573;--bg:#fff;--line:#d8dde3}
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
svg.plot{display:block;max-width:100%;height:auto;font-family:inherit}
svg .frame{fill:none;stroke:#9aa3ad}svg .grid{stroke:#eceff2}
svg .tick{font-size:10px;fill:var(--muted)}svg .axis-label{font-size:11px;fill:var(--fg)}
svg .plot-title{font-size:12px;font-weight:600;fill:var(--fg)}svg .legend{font-size:11px;fill:var(--fg)}
svg .curve{fill:none;stroke-width:1.6}svg .curve.cur{stroke:var(--cur)}
svg .curve.base{stroke:var(--base);stroke-dasharray:5 3}
svg .pareto{fill:none;stroke-width:2.6;stroke-linejoin:round}svg .pareto.cur{stroke:var(--cur)}
svg .pareto.base{stroke:var(--base);stroke-dasharray:6 3}
svg .pt.cur{fill:var(--cur)}svg .pt.base{fill:var(--base)}
svg .pt.off-front{fill:#fff;stroke-width:1.4}svg .pt.cur.off-front{stroke:var(--cur)}
svg .pt.base.off-front{stroke:var(--base)}
svg .pt-label{font-size:11px}svg .pt-label.cur{fill:var(--cur)}svg .pt-label.base{fill:var(--base)}
svg .slo{stroke:var(--slo);stroke-dasharray:4 3;stroke-width:1.2}svg .slo-label{font-size:10px;fill:var(--slo)}
svg .capacity{fill:var(--cap);stroke:#fff;stroke-width:1}
svg .capacity-label{font-size:11px;font-weight:600;fill:var(--cap)}
table.dist{width:auto;margin-top:6px}table.dist td{text-align:right;font-variant-numeric:tabular-nums}
footer{margin-top:32px;font-size:12px;color:var(--muted)}
"""


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
