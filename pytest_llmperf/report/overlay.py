"""Several configurations on one chart: the page ``python -m pytest_llmperf.pairs --html`` writes.

One self-contained HTML file (inline CSS and SVG, no scripts, nothing fetched), from N ≥ 2 session documents
whose sweeps were matched by :mod:`pytest_llmperf.pairs`. Per sweep:

- the capacity of every configuration at each latency (or per-user rate) SLO: the largest measured concurrency
  that meets it, the interpolated crossing, users per GPU, and the ratios against the first configuration;
- (a) output throughput against median end-to-end latency and (b) output throughput per GPU against
  interactivity, one colour per configuration (legend), each with its Pareto front on (b) and a diamond at its
  capacity.

The curves, Pareto fronts and capacity marks are drawn as the session report draws them
(:mod:`pytest_llmperf.report.html`); the arithmetic is :mod:`pytest_llmperf.judge.capacity`'s.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.judge.capacity import Capacity, CapacityRatio, Sweep, compare_capacity, sweep_capacities
from pytest_llmperf.report import plots
from pytest_llmperf.report.html import _CSS, DASH, _capacity_mark, _curve, _e, _figure, _id_html, _side, _workload_text

__all__ = ["COLORS", "Configuration", "SloRow", "SweepComparison", "ratio_text", "render_overlay", "slo_rows"]

# One colour per configuration, in document order (matplotlib's tab10 without its orange, which marks capacities
# on the session report; it comes last).
COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#ff7f0e",
)


def color_of(index: int) -> str:
    return COLORS[index % len(COLORS)]


@dataclass(frozen=True, slots=True)
class Configuration:
    """One session document and its label. ``source`` is the file's name (never a whole path)."""

    label: str
    source: str
    document: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SweepComparison:
    """One sweep, matched across the configurations: ``sweeps[k]`` is configuration k's (None when it lacks it)."""

    test: str
    workload: Mapping[str, object]
    sweeps: tuple[Sweep | None, ...]


@dataclass(frozen=True, slots=True)
class SloRow:
    """One SLO of a matched sweep: each configuration's capacity (None when its sweep lacks the SLO or that
    limit) and, for k ≥ 1, the ratio of the first configuration's users per GPU to configuration k's (None
    where either capacity is missing; index 0 is always None)."""

    slo: str
    limit: float
    capacities: tuple[Capacity | None, ...]
    measured: tuple[CapacityRatio | None, ...]
    interpolated: tuple[CapacityRatio | None, ...]


def slo_rows(comparison: SweepComparison) -> list[SloRow]:
    """The SLOs any configuration of the sweep carries (the first configuration's first), one row each."""
    by_config: list[dict[tuple[str, float], Capacity]] = [
        {(c.slo, c.limit): c for c in sweep_capacities(s)} if s is not None else {} for s in comparison.sweeps
    ]
    keys: list[tuple[str, float]] = []
    for found in by_config:
        keys += [k for k in found if k not in keys]
    rows = []
    for slo, limit in keys:
        caps = tuple(c.get((slo, limit)) for c in by_config)
        first = caps[0]
        measured: list[CapacityRatio | None] = [None]
        interpolated: list[CapacityRatio | None] = [None]
        for other in caps[1:]:
            if first is None or other is None:
                measured.append(None)
                interpolated.append(None)
            else:
                measured.append(compare_capacity(first, other, basis="measured"))
                interpolated.append(compare_capacity(first, other))
        rows.append(SloRow(slo, limit, caps, tuple(measured), tuple(interpolated)))
    return rows


def ratio_text(ratio: CapacityRatio, a: str, b: str) -> str:
    """``measured: A serves 16× the users per GPU of B`` (or why there is no ratio)."""
    if ratio.ratio is None:
        return f"{ratio.basis}: no ratio ({ratio.reason})"
    qualifier = {"exact": "", "at_least": "at least ", "at_most": "at most ", "unknown": "bounds only, "}
    return f"{ratio.basis}: {a} serves {qualifier[ratio.bound]}{ratio.ratio:.3g}× the users per GPU of {b}"


# -- the page ---------------------------------------------------------------------------------------------------


def _users(value: float | None, lower_bound: bool) -> str:
    if value is None:
        return DASH
    return ("≥ " if lower_bound else "") + f"{value:.3g}"


def _capacity_cells(cap: Capacity | None) -> str:
    if cap is None:
        return f'<td colspan="4" class="muted">{DASH} (no such SLO in this document)</td>'
    if cap.status == "none":
        measured, interpolated = "none", "none"
    else:
        prefix = "≥ " if cap.lower_bound else ""
        measured = f"{prefix}c{cap.measured_concurrency}"
        interpolated = f"{prefix}c{cap.concurrency:.3g}"
    cls = "bad" if cap.status == "none" else "good" if cap.status == "met" else "info"
    return (
        f'<td class="num {cls}" title="{_e(cap.describe())}">{_e(measured)}</td>'
        f'<td class="num">{_e(interpolated)}</td>'
        f'<td class="num">{_e(_users(cap.measured_users_per_gpu, cap.lower_bound))}</td>'
        f'<td class="num">{_e(_users(cap.users_per_gpu, cap.lower_bound))}</td>'
    )


def _ratio_cell(ratio: CapacityRatio | None) -> str:
    if ratio is None:
        return f'<td class="num">{DASH}</td>'
    if ratio.ratio is None:
        return f'<td class="num muted" title="{_e(ratio.reason)}">{DASH}</td>'
    qualifier = {"exact": "", "at_least": "≥ ", "at_most": "≤ ", "unknown": "~ "}[ratio.bound]
    return f'<td class="num ratio">{_e(qualifier)}{ratio.ratio:.3g}×</td>'


def _swatch(index: int) -> str:
    return f'<span class="swatch" style="background:{color_of(index)}"></span>'


def _capacity_table(configs: Sequence[Configuration], rows: Sequence[SloRow]) -> str:
    first = _e(configs[0].label)
    body = []
    for row in rows:
        op = "≥" if row.slo == "tok_s_per_user" else "≤"
        for k, (config, cap) in enumerate(zip(configs, row.capacities, strict=True)):
            slo_cell = f'<th rowspan="{len(configs)}">{_e(row.slo)} {op} {row.limit:g}</th>' if k == 0 else ""
            body.append(
                f'<tr data-slo="{_e(row.slo)}" data-config="{k}">{slo_cell}<td>{_swatch(k)}{_e(config.label)}</td>'
                f"{_capacity_cells(cap)}{_ratio_cell(row.measured[k])}{_ratio_cell(row.interpolated[k])}</tr>"
            )
    return (
        '<table class="capacity"><thead><tr><th>SLO</th><th>configuration</th><th>meets it up to (measured)</th>'
        "<th>interpolated</th><th>users/GPU (measured)</th><th>users/GPU (interpolated)</th>"
        f"<th>{first} ÷ this, measured</th><th>interpolated</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _ratio_lines(configs: Sequence[Configuration], rows: Sequence[SloRow]) -> str:
    items = []
    a = configs[0].label
    for row in rows:
        for k in range(1, len(configs)):
            for ratio in (row.measured[k], row.interpolated[k]):
                if ratio is not None:
                    items.append(
                        f"<li>{_e(row.slo)} ≤ {row.limit:g}: {_e(ratio_text(ratio, a, configs[k].label))}</li>"
                    )
    return f'<ul class="ratios">{"".join(items)}</ul>' if items else ""


def _sweep_section(index: int, configs: Sequence[Configuration], comparison: SweepComparison) -> str:
    rows = slo_rows(comparison)
    series_a: list[plots.Series] = []
    series_b: list[plots.Series] = []
    marks_a: list[plots.Mark] = []
    marks_b: list[plots.Mark] = []
    refs_a: dict[tuple[str, float], plots.RefLine] = {}
    refs_b: dict[tuple[str, float], plots.RefLine] = {}
    present = [(k, s) for k, s in enumerate(comparison.sweeps) if s is not None]
    all_gpus = all(s.gpu_count for _, s in present)
    for k, sweep in present:
        color = color_of(k)
        name = configs[k].label + (
            "" if sweep.gpu_count or not any(s.gpu_count for _, s in present) else " (per server)"
        )
        curve = _curve(sweep, baseline=False)
        a = _side(name, curve, curve.e2e_ms, curve.throughput, reference=False, front=False, color=color)
        b = _side(name, curve, curve.interactivity, curve.per_unit, reference=False, front=True, color=color)
        series_a += [a] if a else []
        series_b += [b] if b else []
        for row in rows:
            cap = row.capacities[k]
            if cap is None:
                continue
            key = (cap.slo, cap.limit)
            if cap.slo == "e2e_p50_ms":
                refs_a.setdefault(key, plots.RefLine(cap.limit, f"SLO {cap.slo} ≤ {cap.limit:g}"))
            if cap.slo == "tok_s_per_user":
                refs_b.setdefault(key, plots.RefLine(cap.limit, f"SLO ≥ {cap.limit:g} tok/s/user"))
            if cap.slo == "tpot_p50_ms":  # the x axis is 1000 / median TPOT: the limit is a minimum interactivity
                rate = 1000.0 / cap.limit
                refs_b.setdefault(key, plots.RefLine(rate, f"SLO {cap.slo} ≤ {cap.limit:g} (≥ {rate:.3g} tok/s/user)"))
            for marks, xs, ys in (
                (marks_a, curve.e2e_ms, curve.throughput),
                (marks_b, curve.interactivity, curve.per_unit),
            ):
                mark = _capacity_mark(cap, curve, xs, ys)
                if mark:
                    marks.append(dataclasses.replace(mark, color=color))
    per = "per GPU" if all_gpus else "per GPU (per server where the GPU count is unknown)"
    plot_a = plots.Plot(
        "throughput-latency",
        "Output throughput vs median E2E latency",
        "median end-to-end latency (ms)",
        "output throughput (tok/s)",
        tuple(series_a),
        tuple(refs_a.values()),
        tuple(marks_a),
        width=640,
        height=440,
    )
    plot_b = plots.Plot(
        "throughput-interactivity",
        f"Throughput {'per GPU' if all_gpus else 'per GPU or server'} vs interactivity",
        "interactivity (tok/s/user = 1000 / median TPOT)",
        f"output tok/s {per}",
        tuple(series_b),
        tuple(refs_b.values()),
        tuple(marks_b),
        width=640,
        height=440,
    )
    members = " · ".join(
        f"{_swatch(k)}{_e(configs[k].label)}: {_e(', '.join(f'c{c}' for c in s.concurrencies))}"
        + _e(f" ({s.gpu_count} GPU{'' if s.gpu_count == 1 else 's'})" if s.gpu_count else " (GPU count unknown)")
        for k, s in present
    )
    missing = [configs[k].label for k, s in enumerate(comparison.sweeps) if s is None]
    absent = f'<p class="muted">not in: {_e(", ".join(missing))}</p>' if missing else ""
    table = _capacity_table(configs, rows) if rows else '<p class="muted">no latency SLO on this sweep</p>'
    caption_b = "Pareto front per configuration: the points no other point of it beats on both axes (filled)."
    return (
        f'<section class="sweep" id="sweep-{index}"><h3>Sweep {index}: {_id_html(comparison.test)}</h3>'
        f'<p class="muted">{_e(_workload_text(comparison.workload, with_load=False))}</p>'
        f'<p class="members">{members}</p>{absent}{table}{_ratio_lines(configs, rows)}'
        f'<div class="plots">{_figure(plot_a, f"sweep{index}-a")}'
        f"{_figure(plot_b, f'sweep{index}-b', _e(caption_b))}</div></section>"
    )


def _configurations(configs: Sequence[Configuration]) -> str:
    rows = []
    for k, config in enumerate(configs):
        document = config.document
        endpoint = document.get("endpoint") or {}
        results = [r for r in document.get("results") or () if isinstance(r, Mapping)]
        if not endpoint and results:
            endpoint = results[0].get("endpoint") or {}
        cells = [
            document.get("pair"),
            endpoint.get("engine"),
            endpoint.get("engine_version"),
            endpoint.get("model"),
            endpoint.get("gpu_count"),
        ]
        shown = "".join(f"<td>{_e(DASH if v in (None, '') else v)}</td>" for v in cells)
        rows.append(
            f'<tr data-config="{k}"><td>{_swatch(k)}<b>{_e(config.label)}</b></td><td>{_e(config.source)}</td>'
            f'{shown}<td class="num">{len(results)}</td></tr>'
        )
    return (
        '<table class="configs"><thead><tr><th>configuration</th><th>file</th><th>pair</th><th>engine</th>'
        "<th>version</th><th>model</th><th>GPUs</th><th>results</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


_OVERLAY_CSS = (
    ".swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:baseline}"
    "table.capacity{width:auto;margin:6px 0}table.capacity td.good{color:var(--good)}"
    "table.capacity td.bad{color:var(--bad)}td.ratio{font-weight:600}p.members{margin:2px 0}"
    "ul.ratios{margin:4px 0;padding-left:16px}"
)


def render_overlay(
    configs: Sequence[Configuration],
    comparisons: Sequence[SweepComparison],
    *,
    notes: Sequence[str] = (),
    title: str | None = None,
    generated: _dt.datetime | None = None,
) -> str:
    """The overlay page: the configurations, then one section per matched sweep. ``notes`` (e.g. sweeps that
    matched nothing, and why) are listed under the configurations."""
    if len(configs) < 2:
        raise ValueError("an overlay takes two configurations or more")
    generated = generated or _dt.datetime.now(_dt.timezone.utc)
    if title is None:
        title = "pytest-llmperf · " + " vs ".join(c.label for c in configs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title><style>{_CSS}{_OVERLAY_CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>{_configurations(configs)}",
        f'<p class="muted">Ratios are the first configuration ({_e(configs[0].label)}) over each other one: how many '
        "times the users per GPU it serves within the same SLO. Generated "
        f"{_e(generated.strftime('%Y-%m-%d %H:%M:%S %Z').strip())}.</p></header>",
    ]
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append('<h2 id="sweeps">Sweeps</h2>')
    if comparisons:
        parts.extend(_sweep_section(i + 1, configs, c) for i, c in enumerate(comparisons))
    else:
        parts.append('<p class="muted">No sweep is in two of these documents with the same workload.</p>')
    parts.append(
        "<footer>Generated by pytest-llmperf. Latencies in ms; throughput in output tokens per second. Each point "
        "is the median of its runs.</footer></body></html>"
    )
    return "\n".join(parts) + "\n"
