"""The session's terminal summary: one table, regressions and SLO breaches first, readable at 100 columns.

Returns ``(text, markup)`` lines; the terminal writer colours them only on a TTY.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_llmperf.report.tables import render_verdict_table, server_label

_ORDER = {"SLO BREACH": 0, "REGRESSION": 1, "INCONCLUSIVE": 2, "NOT_COMPARABLE": 3, "NO_BASELINE": 4}
_COLOURS = {"SLO BREACH": "red", "REGRESSION": "red", "INCONCLUSIVE": "yellow", "IMPROVEMENT": "green", "PASS": "green"}
TEST_WIDTH = 40

Line = tuple[str, dict[str, bool]]


def status(result: Mapping[str, Any]) -> str:
    """The one word that decides a result's place and colour in the table."""
    if result.get("slo_breached") and result.get("slo_gating", True):
        return "SLO BREACH"
    return str((result.get("verdict") or {}).get("status", "-"))


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _ms(value: Any) -> str:
    return "—" if value is None else f"{value:.1f}"


def _workload(w: Mapping[str, Any]) -> str:
    load = f"c{w['concurrency']}" if w.get("concurrency") else f"{w.get('request_rate')}/s"
    return f"{w.get('input_len')}/{w.get('output_len')} {load}"


def render(
    results: Sequence[Mapping[str, Any]], *, pair: str, endpoint: Mapping[str, Any] | None, verbose: int
) -> list[Line]:
    endpoint = endpoint or {}
    lines: list[Line] = [
        (
            f"pair {pair} · {endpoint.get('engine', 'unknown')} {endpoint.get('engine_version') or ''} · "
            f"model {endpoint.get('model', '?')} · {endpoint.get('url', '?')}",
            {"bold": True},
        ),
        (
            f"{'test':<{TEST_WIDTH}} {'load':>12} {'runs':>4} {'fail':>4} {'TTFT50':>7} {'TPOT50':>7} "
            f"{'E2E50':>8} {'tok/s':>7}  verdict",
            {},
        ),
    ]
    ordered = sorted(results, key=lambda r: _ORDER.get(status(r), 5))
    for r in ordered:
        s = r.get("summary") or {}
        word = status(r)
        if r.get("slo_breached") and not r.get("slo_gating", True):
            word += " (SLO missed)"
        text = (
            f"{_short(r['nodeid'], TEST_WIDTH):<{TEST_WIDTH}} {_short(_workload(r.get('workload') or {}), 12):>12} "
            f"{len(r.get('runs') or [s]):>4} {s.get('failed', 0):>4} {_ms(s.get('median_ttft_ms')):>7} "
            f"{_ms(s.get('median_tpot_ms')):>7} {_ms(s.get('median_e2el_ms', s.get('median_e2e_latency_ms'))):>8} "
            f"{_ms(s.get('output_throughput')):>7}  {word}"
        )
        colour = _COLOURS.get(status(r))
        lines.append((text, {colour: True} if colour else {}))
        scale = r.get("scale")
        if isinstance(scale, (int, float)) and scale != 1:
            lines.append((f"    scaled ×{scale:g} (--llmperf-scale=1 to run as written)", {}))
        for k, run in enumerate(r.get("runs") or [s]):
            for why in run.get("invalid_reasons") or ():
                lines.append((f"    invalid run {k + 1}: {why}", {"yellow": True}))
            disturbance = run.get("disturbance") or {}
            if disturbance.get("disturbed"):
                why = "; ".join(disturbance.get("reasons") or ())
                lines.append((f"    disturbed run {k + 1}: {why}", {"yellow": True}))
        if s.get("client_bound"):
            lines.append((f"    warning: client-bound run: {'; '.join(s.get('client_reasons', []))}", {"yellow": True}))
        for warning in (s.get("validity") or {}).get("warnings", []):
            lines.append((f"    warning: {warning}", {"yellow": True}))
        if verbose > 0 and r.get("verdict", {}).get("metrics"):
            lines.extend(("    " + line, {}) for line in render_verdict_table(r["verdict"]).splitlines())
    lines.append(("times in ms (p50 = median); tok/s = output tokens per second; -v shows every metric's verdict", {}))
    lines.extend(render_ab(ordered))
    return lines


_AB_METRICS = (("ttft_p50", "TTFT50"), ("tpot_p50", "TPOT50"), ("e2e_p50", "E2E50"), ("output_tok_s", "tok/s"))


def render_ab(results: Sequence[Mapping[str, Any]]) -> list[Line]:
    """The "B vs A" section of an A/B session: per test, B/A ratios of the gating medians and the verdict."""
    ab_results = [r for r in results if r.get("ab")]
    if not ab_results:
        return []
    first = ab_results[0]["ab"]
    lines: list[Line] = [
        ("", {}),
        ("B vs A (ratios B/A; a REGRESSION means B is worse than A beyond the tolerance)", {"bold": True}),
        (f"A: {server_label(first.get('a') or {})}", {}),
        (f"B: {server_label(first.get('b') or {})}", {}),
        (f"{'test':<{TEST_WIDTH}} {'blocks':>6} {' '.join(f'{label:>7}' for _, label in _AB_METRICS)}  verdict", {}),
    ]
    for r in ab_results:
        verdict = r.get("verdict") or {}
        ratios = {m["name"]: m.get("estimate") for m in verdict.get("metrics", ())}
        cells = " ".join(_ratio(ratios.get(name)) for name, _ in _AB_METRICS)
        word = status(r)
        colour = _COLOURS.get(word)
        text = f"{_short(r['nodeid'], TEST_WIDTH):<{TEST_WIDTH}} {len(r['ab'].get('blocks') or ()):>6} {cells}  {word}"
        lines.append((text, {colour: True} if colour else {}))
    return lines


def _ratio(value: Any) -> str:
    return f"{'—':>7}" if value is None else f"{value:>7.3f}"
