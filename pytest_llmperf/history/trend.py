"""The trend report: one self-contained HTML page (inline CSS and SVG, no scripts, nothing fetched) of the history.

A pure renderer: series, changes and sweep curves in (the command line queries the database and runs change-point
detection), HTML text out. Contents:

- a header (sessions, dates, changes) and a table of contents, one entry per test;
- the changes found, newest first, each linked to its chart;
- per test and metric (and pair and workload): the value per session on a date axis, the engine version named
  where it changes, each change point a dashed vertical line labelled with its size and p-value, and the current
  baseline epoch shaded (the newest sessions that share the last session's epoch key), with a one-row table;
- per concurrency sweep: throughput per GPU against interactivity (tok/s/user), one curve per chosen date or
  engine version, overlaid, each point labelled by its concurrency.

The charts come from :mod:`pytest_llmperf.report.plots`. Every string is escaped; a missing value renders as "—".
"""

from __future__ import annotations

import datetime as _dt
import html
import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from pytest_llmperf._files import write_text_atomic
from pytest_llmperf.history.changes import change_word
from pytest_llmperf.history.model import Change, Series, SeriesKey, SessionPoint, SweepCurve, SweepPoint
from pytest_llmperf.history.naming import metric_label, metric_unit
from pytest_llmperf.report import plots

__all__ = [
    "SweepCurve",
    "SweepPoint",
    "change_label",
    "metric_label",
    "metric_unit",
    "render_trend",
    "write_trend",
]

DASH = "—"
DEFAULT_TITLE = "pytest-llmperf history"

# Colours: the series (the session report's "current" blue), change points worse / not worse.
_LINE_COLOR = "#1f5fa8"
_WORSE_COLOR = plots.REF_COLOR
_BETTER_COLOR = "#1b7a3a"
_VERSION_COLOR = "#6a3d9a"

# Metrics in this order within a test (the verdict's gating metrics first), then the others by name.
_METRIC_ORDER = (
    "median_ttft_ms",
    "median_tpot_ms",
    "median_e2el_ms",
    "median_e2e_latency_ms",
    "output_throughput",
    "output_throughput_per_gpu",
    "request_throughput",
    "error_rate",
)


_NO_SWEEPS: Mapping[str, Sequence[SweepCurve]] = MappingProxyType({})


# -- words and numbers ----------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float) -> str:
    """3–4 significant figures, thousands separated; "—" when not finite."""
    if not math.isfinite(value):
        return DASH
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _value(value: float, metric: str) -> str:
    unit = metric_unit(metric)
    if unit == "fraction":
        return f"{value * 100:.2f}%" if math.isfinite(value) else DASH
    return f"{_num(value)} {unit}".rstrip() if math.isfinite(value) else DASH


def _utc(at: _dt.datetime) -> _dt.datetime:
    """``at`` in UTC; a naive datetime is taken as UTC already."""
    return at.replace(tzinfo=_dt.timezone.utc) if at.tzinfo is None else at.astimezone(_dt.timezone.utc)


def _day(at: _dt.datetime) -> str:
    return _utc(at).strftime("%Y-%m-%d")


def _p_text(p: float) -> str:
    """A p-value short: 0.03 → "0.03", 1.2e-06 → "1e-6", 0 (a t-test's p underflows on a large step) →
    "<1e-300", as the command line prints it."""
    if not math.isfinite(p):
        return "?"
    if p <= 0:
        return "<1e-300"
    if p >= 0.001:
        return f"{p:.2g}"
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{p:.0e}").replace("e+", "e")


def change_label(change: Change) -> str:
    """A change point in a few characters: "+5.1% p=1e-6" (the mean after against the mean before)."""
    if math.isfinite(change.ratio) and change.ratio > 0:
        size = f"{(change.ratio - 1) * 100:+.1f}%"
    else:
        size = f"{_num(change.mean_before)} → {_num(change.mean_after)}"
    return f"{size} p={_p_text(change.p_value)}"


def _midpoint(a: _dt.datetime, b: _dt.datetime) -> _dt.datetime:
    a, b = _utc(a), _utc(b)
    return a + (b - a) / 2


# -- one series -----------------------------------------------------------------------------------------------------


def _epoch_start(points: Sequence[SessionPoint]) -> int:
    """The index of the first point of the newest run of points sharing the last point's epoch key."""
    start = len(points) - 1
    while start > 0 and points[start - 1].epoch_key == points[-1].epoch_key:
        start -= 1
    return start


def _version_marks(points: Sequence[SessionPoint]) -> list[plots.Mark]:
    """A mark naming the engine version at the first point and wherever it differs from the point before."""
    marks = []
    previous: str | None = None
    for k, point in enumerate(points):
        if k == 0 and point.engine_version is None:
            continue
        if k == 0 or point.engine_version != previous:
            text = point.engine_version if point.engine_version is not None else "version unknown"
            marks.append(plots.Mark(_utc(point.at), point.value, text, color=_VERSION_COLOR))
        previous = point.engine_version
    return marks


def _series_plot(series: Series, changes: Sequence[Change]) -> plots.Plot:
    key, points = series.key, series.points
    xs = tuple(_utc(p.at) for p in points)
    ys = tuple(p.value for p in points)
    name = metric_label(key.metric, unit=False)
    spans: tuple[plots.Span, ...] = ()
    if points:
        start = _epoch_start(points)
        begin = _midpoint(points[start - 1].at, points[start].at) if start > 0 else xs[start]
        spans = (plots.Span(begin, xs[-1], "current epoch"),)
    refs = tuple(
        plots.RefLine(
            _midpoint(c.before.at, c.after.at),
            change_label(c),
            axis="x",
            color=_WORSE_COLOR if c.worse else _BETTER_COLOR,
        )
        for c in changes
    )
    return plots.Plot(
        "trend",
        metric_label(key.metric),
        "session date (UTC)",
        metric_label(key.metric),
        (plots.Series(name, xs, ys, color=_LINE_COLOR),),
        ref_lines=refs,
        marks=tuple(_version_marks(points)),
        width=660,
        height=320,
        spans=spans,
    )


def _change_cell(changes: Sequence[Change]) -> str:
    if not changes:
        return "none"
    items = []
    for c in changes:
        cls = "bad" if c.worse else "good"
        word = change_word(c)
        gating = "" if c.gating else ", advisory"
        items.append(f'<li class="{cls}">{_e(_day(c.at))}: {_e(change_label(c))} ({word}{gating})</li>')
    return f'<ul class="changes">{"".join(items)}</ul>'


def _versions(points: Sequence[SessionPoint]) -> str:
    seen: list[str] = []
    for p in points:
        if p.engine_version is not None and (not seen or seen[-1] != p.engine_version):
            seen.append(p.engine_version)
    return " → ".join(seen) if seen else DASH


def _series_table(series: Series, changes: Sequence[Change]) -> str:
    points, metric = series.points, series.key.metric
    if points:
        start = _epoch_start(points)
        epoch = f"since {_day(points[start].at)} · {len(points) - start} session{'s' * (len(points) - start != 1)}"
        first, last, value = _day(points[0].at), _day(points[-1].at), _value(points[-1].value, metric)
    else:
        epoch = first = last = value = DASH
    return (
        '<table class="series"><thead><tr><th>sessions</th><th>first</th><th>last</th><th>last value</th>'
        "<th>current epoch</th><th>engine</th><th>changes</th></tr></thead><tbody><tr>"
        f'<td class="num">{len(points)}</td><td class="date">{_e(first)}</td><td class="date">{_e(last)}</td>'
        f'<td class="num">{_e(value)}</td>'
        f"<td>{_e(epoch)}</td><td>{_e(_versions(points))}</td><td>{_change_cell(changes)}</td>"
        "</tr></tbody></table>"
    )


def _key_text(key: SeriesKey) -> str:
    return f"{key.pair} · workload {key.workload_hash[:12]}"


def _series_block(uid: str, series: Series, changes: Sequence[Change]) -> str:
    plot = _series_plot(series, changes)
    if plots.has_data(plot):
        figure = f"<figure>{plots.render_svg(plot, uid)}</figure>"
    else:
        figure = f'<figure class="empty"><div class="no-data">{_e(plot.title)}: no sessions</div></figure>'
    metric = series.key.metric
    return (
        f'<div class="series" id="{uid}" data-metric="{_e(metric)}">'
        f'<p class="key muted small">{_e(_key_text(series.key))}</p>{figure}'
        f"{_series_table(series, changes)}</div>"
    )


def _metric_rank(metric: str) -> tuple[int, str]:
    return (_METRIC_ORDER.index(metric) if metric in _METRIC_ORDER else len(_METRIC_ORDER), metric)


# -- sweeps ---------------------------------------------------------------------------------------------------------


def _finite(point: SweepPoint) -> bool:
    return all(math.isfinite(v) for v in (point.concurrency, point.interactivity, point.throughput_per_gpu))


def _sweep_plot(curves: Sequence[SweepCurve]) -> plots.Plot:
    series = []
    for curve in curves:
        points = sorted((p for p in curve.points if _finite(p)), key=lambda p: p.concurrency)
        if points:
            series.append(
                plots.Series(
                    curve.label,
                    tuple(p.interactivity for p in points),
                    tuple(p.throughput_per_gpu for p in points),
                    tuple(f"c{p.concurrency:g}" for p in points),
                )
            )
    per_gpu = all(curve.per_gpu for curve in curves)
    return plots.Plot(
        "sweep-trend",
        "Throughput per GPU vs interactivity" if per_gpu else "Throughput per server vs interactivity",
        "interactivity (tok/s/user)",
        "output throughput per GPU (tok/s/GPU)"
        if per_gpu
        else "output throughput per server (tok/s; GPU count unknown)",
        tuple(series),
        width=760,
        height=460,
    )


def _sweep_table(curves: Sequence[SweepCurve]) -> str:
    rows = []
    for curve in curves:
        points = [p for p in curve.points if _finite(p)]
        if points:
            concurrencies = sorted(p.concurrency for p in points)
            cells = (
                f"<td>{_e(', '.join(f'{c:g}' for c in concurrencies))}</td>"
                f'<td class="num">{_e(_num(max(p.throughput_per_gpu for p in points)))}</td>'
                f'<td class="num">{_e(_num(max(p.interactivity for p in points)))}</td>'
            )
        else:
            cells = '<td colspan="3" class="muted">no points</td>'
        rows.append(f"<tr><td>{_e(curve.label)}</td>{cells}</tr>")
    unit = "tok/s/GPU" if all(c.per_gpu for c in curves) else "tok/s (per server)"
    return (
        f'<table class="sweep"><thead><tr><th>curve</th><th>concurrencies</th><th>best {unit}</th>'
        f"<th>best tok/s/user</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _sweep_section(index: int, name: str, curves: Sequence[SweepCurve]) -> str:
    plot = _sweep_plot(curves)
    if plots.has_data(plot):
        figure = f"<figure>{plots.render_svg(plot, f'w{index}')}</figure>"
    else:
        figure = '<figure class="empty"><div class="no-data">no points to draw</div></figure>'
    return (
        f'<section class="sweep-trend" id="sweep-{index}"><h3><code>{_e(name)}</code></h3>'
        f"{figure}{_sweep_table(curves)}</section>"
    )


# -- the page -------------------------------------------------------------------------------------------------------


def _changes_table(changes: Sequence[Change], anchors: Mapping[SeriesKey, str]) -> str:
    rows = []
    for c in sorted(changes, key=lambda c: (_utc(c.at), c.key.test_id, c.key.metric), reverse=True):
        cls = "bad" if c.worse else "good"
        anchor = anchors.get(c.key)
        test = f"<code>{_e(c.key.test_id)}</code>"
        if anchor:
            test = f'<a href="#{anchor}">{test}</a>'
        rows.append(
            f'<tr class="row-{cls}"><td class="date">{_e(_day(c.at))}</td><td>{test}</td>'
            f"<td>{_e(metric_label(c.key.metric))}<div class='muted small'>{_e(_key_text(c.key))}</div></td>"
            f'<td class="num">{_e(_value(c.mean_before, c.key.metric))}</td>'
            f'<td class="num">{_e(_value(c.mean_after, c.key.metric))}</td>'
            f'<td class="num">{_e(change_label(c))}</td>'
            f'<td><span class="badge {cls}">{change_word(c)}</span></td>'
            f"<td>{'gating' if c.gating else 'advisory'}</td></tr>"
        )
    return (
        '<table class="changes"><thead><tr><th>date</th><th>test</th><th>metric</th><th>geometric mean before</th>'
        "<th>geometric mean after</th><th>change</th><th>direction</th><th>metric kind</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _header(title: str, series: Sequence[Series], changes: Sequence[Change], generated: _dt.datetime) -> str:
    sessions = {p.session_id for s in series for p in s.points}
    dates = [_utc(p.at) for s in series for p in s.points]
    worse = sum(c.worse for c in changes)
    fields = [
        ("generated", _utc(generated).strftime("%Y-%m-%d %H:%M UTC")),
        ("sessions", str(len(sessions))),
        ("period", f"{_day(min(dates))} – {_day(max(dates))}" if dates else DASH),
        ("series", f"{len(series)} in {len({s.key.test_id for s in series})} tests"),
        ("changes", f"{len(changes)} ({worse} worse)"),
    ]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in fields)
    return f'<header><h1>{_e(title)}</h1><dl class="meta">{items}</dl></header>'


def _contents(
    tests: Sequence[tuple[str, Sequence[Series]]],
    changes_of: Mapping[SeriesKey, Sequence[Change]],
    sweeps: Sequence[str],
) -> str:
    items = []
    for k, (test_id, group) in enumerate(tests, 1):
        found = [c for s in group for c in changes_of.get(s.key, ())]
        worse = sum(c.worse for c in found)
        badge = f' <span class="badge bad">{worse} worse</span>' if worse else ""
        note = f"{len(group)} chart{'s' * (len(group) != 1)}, {len(found)} change{'s' * (len(found) != 1)}"
        items.append(
            f'<li><a href="#test-{k}"><code>{_e(test_id)}</code></a> <span class="muted small">{note}</span>'
            f"{badge}</li>"
        )
    sweep_items = "".join(
        f'<li><a href="#sweep-{k}"><code>{_e(name)}</code></a></li>' for k, name in enumerate(sweeps, 1)
    )
    parts = ['<nav class="toc"><h2>Contents</h2>']
    if items:
        parts.append(f'<ol class="tests">{"".join(items)}</ol>')
    if sweep_items:
        parts.append(f'<p class="muted">Sweeps:</p><ol class="sweeps">{sweep_items}</ol>')
    parts.append("</nav>")
    return "".join(parts)


_CSS = (
    """
:root{--bad:#b3261e;--good:#1b7a3a;--info:#44546a;--fg:#1d232b;--muted:#5b6573;--bg:#fff;--line:#d8dde3}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;color:var(--fg);
background:var(--bg);margin:0 auto;padding:16px 24px 48px;max-width:1400px}
h1{font-size:22px;margin:4px 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--line);
overflow-wrap:anywhere}
h3{font-size:16px;margin:24px 0 4px;overflow-wrap:anywhere}
p.key{margin:12px 0 0}
td.date{white-space:nowrap}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
a{color:inherit}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0 0 8px}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0}
.muted{color:var(--muted)}.small{font-size:12px}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
th{font-weight:600;font-size:12px;color:var(--muted)}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.row-bad{background:#fdf1f0}
.badge{display:inline-block;padding:0 6px;border-radius:9px;font-size:12px;font-weight:600;color:#fff;
background:var(--info);white-space:nowrap}
.badge.bad{background:var(--bad)}.badge.good{background:var(--good)}
ul.changes{margin:0;padding-left:16px}ul.changes li.bad{color:var(--bad);font-weight:600}
ul.changes li.good{color:var(--good)}
nav.toc ol{margin:0;padding-left:24px;columns:2 36rem}nav.toc li{break-inside:avoid}
.charts{display:flex;flex-wrap:wrap;gap:16px 24px}
div.series{flex:0 1 660px;max-width:100%}
table.series{font-size:12px}
figure{margin:0;max-width:100%}
figure.empty .no-data{padding:16px;border:1px dashed var(--line);color:var(--muted)}
svg.plot{display:block;max-width:100%;height:auto}
section.sweep-trend table.sweep{width:auto}
p.empty{padding:16px;border:1px dashed var(--line);color:var(--muted)}
footer{margin-top:32px;font-size:12px;color:var(--muted)}
"""
    + plots.PAGE_CSS
)


def render_trend(
    series: Sequence[Series],
    changes: Sequence[Change],
    sweeps: Mapping[str, Sequence[SweepCurve]] = _NO_SWEEPS,
    *,
    title: str = DEFAULT_TITLE,
    generated_at: _dt.datetime | None = None,
) -> str:
    """The trend report as one self-contained HTML page.

    ``series``: one chart each, grouped by test id (sorted), then metric (gating ones first). ``changes``: drawn on
    the chart of the series with the same key, and listed newest first. ``sweeps``: sweep name (the test id without
    its parameter) → its curves at chosen dates or versions, overlaid in one chart, in the order given.
    ``generated_at`` defaults to now (UTC).
    """
    generated = generated_at or _dt.datetime.now(_dt.timezone.utc)
    changes_of: dict[SeriesKey, list[Change]] = {}
    for change in changes:
        changes_of.setdefault(change.key, []).append(change)
    for found in changes_of.values():
        found.sort(key=lambda c: _utc(c.at))
    grouped: dict[str, list[Series]] = {}
    for s in series:
        grouped.setdefault(s.key.test_id, []).append(s)
    tests = [
        (test_id, sorted(group, key=lambda s: (_metric_rank(s.key.metric), s.key.pair, s.key.workload_hash)))
        for test_id, group in sorted(grouped.items())
    ]
    # Each chart's id (also its figure's id prefix), and the first chart of each key as the changes' link target.
    numbers = itertools.count(1)
    uids = [[f"s{next(numbers)}" for _ in group] for _, group in tests]
    anchors: dict[SeriesKey, str] = {}
    for (_, group), ids in zip(tests, uids, strict=True):
        for s, uid in zip(group, ids, strict=True):
            anchors.setdefault(s.key, uid)
    sweep_items = [(name, curves) for name, curves in sweeps.items()]

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: the page fetches nothing
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        _header(title, series, changes, generated),
    ]
    if not series and not sweep_items:
        parts.append(
            '<p class="empty">No history to show: the database holds no sessions for this selection yet. Record '
            "some (run the perf tests with the history database enabled, or import session documents) and render "
            "the report again.</p>"
        )
    else:
        parts.append(_contents(tests, changes_of, [name for name, _ in sweep_items]))
        parts.append('<h2 id="changes">Changes</h2>')
        if changes:
            parts.append(_changes_table(changes, anchors))
        else:
            parts.append('<p class="muted">No change point in any series.</p>')
        if tests:
            parts.append('<h2 id="series">Per test</h2>')
        for k, ((test_id, group), ids) in enumerate(zip(tests, uids, strict=True), 1):
            blocks = "".join(_series_block(u, s, changes_of.get(s.key, ())) for u, s in zip(ids, group, strict=True))
            parts.append(
                f'<section class="test" id="test-{k}"><h3><code>{_e(test_id)}</code></h3>'
                f'<div class="charts">{blocks}</div></section>'
            )
        if sweep_items:
            parts.append('<h2 id="sweeps">Sweeps over time</h2>')
            parts.extend(_sweep_section(k, name, curves) for k, (name, curves) in enumerate(sweep_items, 1))
    parts.append(
        "<footer>Generated by pytest-llmperf. Each point is one session: the median of its valid runs. Shaded: the "
        "current baseline epoch (the newest sessions sharing the last one's engine version, server command and "
        "plugin version). Dashed vertical lines: change points, between the last session before and the first "
        "after, labelled with the change of the mean and its p-value; red when worse, green when better. Engine "
        "versions are named where they change. Dates in UTC.</footer></body></html>"
    )
    return "\n".join(parts) + "\n"


def write_trend(
    path: str | os.PathLike[str],
    series: Sequence[Series],
    changes: Sequence[Change],
    sweeps: Mapping[str, Sequence[SweepCurve]] = _NO_SWEEPS,
    *,
    title: str = DEFAULT_TITLE,
    generated_at: _dt.datetime | None = None,
) -> Path:
    """Render the report and write it to ``path`` atomically (a temporary file beside it, then a rename)."""
    target = Path(path)
    write_text_atomic(target, render_trend(series, changes, sweeps, title=title, generated_at=generated_at))
    return target
