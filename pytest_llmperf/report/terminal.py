"""The session's terminal summary: one table, regressions and SLO breaches first, readable at 100 columns.

Returns ``(text, markup)`` lines; the terminal writer colours them only on a TTY.
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_llmperf.report.tables import render_verdict_table, server_label
from pytest_llmperf.results import (
    IMPROVEMENT,
    INCONCLUSIVE,
    NO_BASELINE,
    NOT_COMPARABLE,
    PASS,
    REGRESSION,
    SLO_BREACH,
    EndpointDict,
    RunDocument,
    RunSummary,
    WorkloadDict,
)

_ORDER = {SLO_BREACH: 0, REGRESSION: 1, INCONCLUSIVE: 2, NOT_COMPARABLE: 3, NO_BASELINE: 4}
_COLOURS = {SLO_BREACH: "red", REGRESSION: "red", INCONCLUSIVE: "yellow", IMPROVEMENT: "green", PASS: "green"}
TEST_WIDTH = 40

Line = tuple[str, dict[str, bool]]


def status(result: RunDocument) -> str:
    """The one word that decides a result's place and colour in the table."""
    if result.get("slo_breached") and result.get("slo_gating", True):
        return SLO_BREACH
    return str((result.get("verdict") or {}).get("status", "-"))


# Shortest a file or function name gets before the parameters are cut to "[…]".
_MIN_NAME = 10


def _short(nodeid: str, width: int) -> str:
    """``nodeid`` in ``width`` characters with its file and function readable: the directories go first, then
    the middle of whichever of file name, function and parameters is longest, until it fits."""
    if len(nodeid) <= width:
        return nodeid
    head, bracket, params = nodeid.partition("[")
    path, sep, function = head.partition("::")
    path = path.rpartition("/")[2]
    inner = params[:-1] if params.endswith("]") else params
    parts = [path, function, inner]
    floors = [min(len(path), _MIN_NAME), min(len(function), _MIN_NAME), min(len(inner), 1)]
    sizes = [len(part) for part in parts]
    room = width - len(sep) - (2 if bracket else 0)
    while sum(sizes) > room and any(size > floor for size, floor in zip(sizes, floors, strict=True)):
        longest = max((i for i in range(3) if sizes[i] > floors[i]), key=lambda i: sizes[i])
        sizes[longest] -= 1
    path, function, inner = (_middle(part, size) for part, size in zip(parts, sizes, strict=True))
    text = f"{path}{sep}{function}" + (f"[{inner}]" if bracket else "")
    return _middle(text, width)


def _middle(text: str, width: int) -> str:
    """``text`` in ``width`` characters, its middle replaced by "…" when it is longer."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    left = width // 2
    return text[:left] + "…" + text[len(text) - (width - 1 - left) :]


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _workload(w: WorkloadDict, s: RunSummary) -> str:
    load = f"c{w['concurrency']}" if w.get("concurrency") else f"{w.get('request_rate')}/s"
    if w.get("trace"):  # arrivals and lengths from the trace (its lengths vary too widely for a column)
        speedup = w.get("trace_speedup", 1.0)
        capped = f" c{w['concurrency']}" if w.get("concurrency") else ""
        return "trace" + (f"×{speedup:g}" if speedup != 1 else "") + capped
    turns = w.get("turns", 1)
    if turns > 1:  # later turns carry the earlier ones: the mean lengths the requests asked for, as for files
        lens = s.get("dataset_lens")
        shown = f"~{lens['input_len_mean']:.0f}/{lens['output_len_mean']:.0f}" if lens else "chat"
        return f"{turns}t{shown} {load}"
    if w.get("dataset", "random") != "random":  # a file's lengths are its own: the means its prompts asked for
        lens = s.get("dataset_lens")
        shown = f"~{lens['input_len_mean']:.0f}/{lens['output_len_mean']:.0f}" if lens else "file"
        return f"{shown} {load}"
    return f"{w.get('input_len')}/{w.get('output_len')} {load}"


def render(
    results: Sequence[RunDocument],
    *,
    pair: str,
    endpoint: EndpointDict | None,
    verbose: int,
    recording: bool = False,
) -> list[Line]:
    """The table, its notes and the lines that say what to do; ``recording``: a ``--llmperf-update`` session,
    whose runs become the baselines (no hint to record them)."""
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
            f"{_short(r['nodeid'], TEST_WIDTH):<{TEST_WIDTH}} {_short(_workload(r.get('workload') or {}, s), 12):>12} "
            f"{len(r.get('runs') or [s]):>4} {s.get('failed', 0):>4} {_ms(s.get('median_ttft_ms')):>7} "
            f"{_ms(s.get('median_tpot_ms')):>7} {_ms(s.get('median_e2el_ms', s.get('median_e2e_latency_ms'))):>8} "
            f"{_ms(s.get('output_throughput')):>7}  {word}"
        )
        colour = _COLOURS.get(status(r))
        lines.append((text, {colour: True} if colour else {}))
        lines.extend((line, {}) for line in _goodput_and_cost(s))
        search = r.get("capacity_search")
        if search:  # a capacity search has no verdict: its finding is its result
            lines.append((f"    {search['statement']}", {"red": search.get("gate_passed") is False}))
        lines.extend((line, {}) for line in _by_turn(s))
        scale = r.get("scale")
        if isinstance(scale, (int, float)) and scale != 1:
            lines.append((f"    scaled ×{scale:g} (--llmperf-scale=1 to run as written)", {}))
        shards = {run.get("client_processes", 1) for run in r.get("runs") or [s]}
        if shards - {1}:  # a scaled-out client: say so beside its figures
            counts = "/".join(str(n) for n in sorted(shards))
            lines.append((f"    load sent by {counts} client processes (or Ray actors) per run, merged", {}))
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
        if status(r) == IMPROVEMENT and not (r.get("ab") or recording or verbose > 0):  # -v: in the verdict table
            hint = (r.get("verdict") or {}).get("hint") or "re-record the baseline with --llmperf-update"
            lines.append((f"    better than its baseline: {hint}", {"green": True}))
        if verbose > 0 and r.get("verdict", {}).get("metrics"):
            lines.extend(("    " + line, {}) for line in render_verdict_table(r["verdict"]).splitlines())
    lines.append(("times in ms (p50 = median); tok/s = output tokens per second; -v shows every metric's verdict", {}))
    if not recording:
        lines.extend(_missing_baselines(results, pair))
    lines.extend(render_ab(ordered))
    return lines


def _goodput_and_cost(s: RunSummary) -> list[str]:
    """A line each for goodput (with the goodput keyword) and cost (with the GPU count and its price)."""
    out = []
    goodput = s.get("request_goodput")
    if "request_goodput" in s:
        slos = " and ".join(f"{name} <= {limit:g} ms" for name, limit in (s.get("goodput_slos_ms") or {}).items())
        value = "—" if goodput is None else f"{goodput:.3g} req/s"
        out.append(f"    goodput: {value} ({s.get('good_requests', 0)}/{s.get('completed', 0)} requests met {slos})")
    if "cost_per_million_output_tokens" in s:
        per_m_out, per_m_total = s.get("cost_per_million_output_tokens"), s.get("cost_per_million_total_tokens")
        per_dollar = s.get("output_tokens_per_dollar")
        out.append(
            f"    cost: {'—' if per_m_out is None else f'${per_m_out:.4g}'} per million output tokens, "
            f"{'—' if per_m_total is None else f'${per_m_total:.4g}'} per million total tokens, "
            f"{'—' if per_dollar is None else f'{per_dollar:,.0f}'} output tokens per $ "
            f"(${s.get('gpu_cost_per_hour', 0):g} per GPU-hour × {_gpus(s.get('gpu_count'))})"
        )
    return out


def _by_turn(s: RunSummary) -> list[str]:
    """Multi-turn runs: median TTFT and cached share of the prompt per user turn (the last run's)."""
    turns = s.get("ttft_by_turn")
    if not turns:
        return []
    ttft = ", ".join(f"{k}: {_ms(t['median_ms'])}" for k, t in turns.items())
    cached = ", ".join(f"{k}: {t['cached_fraction']:.0%}" for k, t in turns.items() if t["cached_fraction"] is not None)
    return [
        f"    multi-turn: {s.get('conversations', '?')} conversations; TTFT50 by turn {ttft} ms"
        + (f"; prompt cached by turn {cached}" if cached else "")
    ]


def _missing_baselines(results: Sequence[RunDocument], pair: str) -> list[Line]:
    """One line after the table: how many tests have no baseline, and how to record theirs."""
    tests = {r["nodeid"] for r in results if (r.get("verdict") or {}).get("status") == NO_BASELINE}
    if not tests:
        return []
    count = "1 test has" if len(tests) == 1 else f"{len(tests)} tests have"
    return [(f"{count} no baseline for pair {pair}: record with --llmperf-update, then review and commit it", {})]


_AB_METRICS = (("ttft_p50", "TTFT50"), ("tpot_p50", "TPOT50"), ("e2e_p50", "E2E50"), ("output_tok_s", "tok/s"))


def render_ab(results: Sequence[RunDocument]) -> list[Line]:
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


def _ratio(value: float | None) -> str:
    return f"{'—':>7}" if value is None else f"{value:>7.3f}"


def _gpus(count: object) -> str:
    return "1 GPU" if count == 1 else f"{count} GPUs"
