"""Fidelity: the load generator's TTFT, TPOT and ITL against the times the simulator intended, per concurrency.

The simulator (``python -m pytest_llmperf.sim``) plans every chunk of every request with its timing model and
serves the plan at ``GET /sim/requests``; each client record is joined with its plan by the stream ``id``.
Intended TTFT = the first chunk's intended time after the server received the request; intended ITL = the
gaps between consecutive intended chunk times; intended TPOT = (last − first intended chunk time) /
(tokens − 1). Measured values come from :func:`pytest_llmperf.judge.metrics.per_request`, exactly as a test sees
them. Statistics are pooled over the run (requests for TTFT/TPOT, gaps for ITL), linear percentiles.

The client's TTFT starts just before the request is sent and the intended one at the server's receipt, so
TTFT carries a constant offset: loopback HTTP and request parsing. Client and server read the same
CLOCK_MONOTONIC (``time.perf_counter()``), so the offset is split per request into the request path (client
send → server receipt), the server's own lateness on the first chunk (actual − intended write) and the
response path (server write → client stamp), and reported next to the errors instead of being subtracted.
The simulator runs with ``--busy-poll`` so that its own wake-up delay stays out of those paths.

    python benchmarks/fidelity.py               # concurrency 1..256, a few minutes; writes results/fidelity.md
    python benchmarks/fidelity.py --busy-poll   # the same with --llmperf-busy-poll; results/fidelity-busy-poll.md
    python benchmarks/fidelity.py --quick       # smoke run, seconds; writes no results file
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    QUIET_LIMIT,
    RESULTS_DIR,
    add_core_options,
    add_quiet_options,
    busy_fraction,
    core_busy_ticks,
    foreign_load,
    http_json,
    machine_banner,
    machine_info,
    make_parser,
    pin_to,
    pinned_cores,
    process_cpu_s,
    results_path,
    simulator,
    table_row,
    table_rule,
    wait_until_quiet,
)
from _common import percentile as pct

TABLE_HEADER = (
    "| conc | metric | n | meas p50 | intended p50 | err p50 ms | err p50 % | meas p99 | intended p99 | err p99 ms "
    "| err p99 % | target (p50 ≤ 2 % and ≤ 1 ms, conc ≤ 64) |"
)
OFFSET_HEADER = (
    "| conc | requests | TTFT meas − intended p50 ms | request path p50 ms | server late (1st chunk) p50 ms "
    "| response path p50 ms | ITL p50 meas − server-written ms | ITL p50 server-written − intended ms "
    "| paired ITL diff p50 / abs p99 ms | server slips | client-bound | loop lag p99 ms | client CPU "
    "| other load client / server core |"
)
CONCURRENCIES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_CONCURRENCIES = (1, 4, 16, 64)
TARGET_MAX_CONCURRENCY = 64
TARGET_REL = 0.02
TARGET_ABS_MS = 1.0
# Realistic simulator settings: 10 ms decode step growing by 0.1 ms per sequence, 20k tok/s prefill (no
# chunked prefill: an admission stalls the batch), 5 % lognormal step jitter, every concurrency fits a batch.
# The simulator is the instrument here, so it polls instead of sleeping (--busy-poll, on its own core): on a VM a
# sleeping core takes 0.2-0.6 ms to wake, which would land in every request path and step start and be counted
# as the client's error.
SIM_ARGS = (
    "--decode-ms", "10", "--decode-ms-per-seq", "0.1", "--prefill-tok-s", "20000", "--jitter", "0.05",
    "--max-batch", "256", "--seed", "1", "--history", "100000", "--busy-poll",
)  # fmt: skip
INPUT_LEN, OUTPUT_LEN, RANGE_RATIO = 256, 64, 0.25
METRICS = ("ttft", "tpot", "itl")


def num_prompts(concurrency: int, quick: bool) -> int:
    # At least 4 waves (32 requests at low concurrency, where each one is a sequential ~0.7 s stream).
    return max(8, concurrency) if quick else max(32, 4 * concurrency)


@dataclass
class Level:
    """Everything measured at one concurrency."""

    concurrency: int
    requests: int
    ok: int
    joined: int
    measured: dict[str, list[float]] = field(default_factory=dict)  # ms
    intended: dict[str, list[float]] = field(default_factory=dict)  # ms
    request_path_ms: list[float] = field(default_factory=list)
    server_late_ms: list[float] = field(default_factory=list)
    response_path_ms: list[float] = field(default_factory=list)
    ttft_offset_ms: list[float] = field(default_factory=list)
    itl_written_ms: list[float] = field(default_factory=list)  # gaps between the simulator's actual writes
    itl_pair_ms: list[float] = field(default_factory=list)  # measured − intended, gap by gap
    slips: int = 0
    client: dict[str, Any] = field(default_factory=dict)
    other_load: tuple[float | None, float | None] = (None, None)  # client core, simulator core
    attempts: int = 1
    summary_check: str = ""


def measure(
    url: str, server_pid: int, cores: tuple[int | None, int | None], concurrency: int, quick: bool, busy_poll: bool
) -> Level:
    from pytest_llmperf.client import loadgen
    from pytest_llmperf.client.datasets import PromptContext, build_prompts
    from pytest_llmperf.judge.metrics import per_request, summarize
    from pytest_llmperf.spec import Endpoint, Workload

    n = num_prompts(concurrency, quick)
    workload = Workload(
        input_len=INPUT_LEN,
        output_len=16 if quick else OUTPUT_LEN,
        range_ratio=RANGE_RATIO,
        num_prompts=n,
        concurrency=concurrency,
        seed=concurrency,
    )
    context = PromptContext(token_pool=range(1000, 31000))
    prompts = build_prompts(workload, n, context)
    # Warmup opens the connection pool with short prompts (a long prefill would only cost time).
    warm = workload.replace(input_len=8, output_len=2, range_ratio=0.0, seed=10_000 + concurrency)
    warmup = build_prompts(warm, concurrency, context)
    http_json(url + "/sim/requests?clear=1")
    slips0 = http_json(url + "/sim/stats")["slips"]
    busy0, server_cpu0 = [core_busy_ticks(c) for c in cores], process_cpu_s(server_pid)
    endpoint = Endpoint(url=url, model="llmperf-sim")
    run = loadgen.run(workload, endpoint, prompts, warmup_prompts=warmup, busy_poll=busy_poll)
    busy1, server_cpu1 = [core_busy_ticks(c) for c in cores], process_cpu_s(server_pid)
    slips = http_json(url + "/sim/stats")["slips"] - slips0
    entries = {e["id"]: e for e in http_json(url + "/sim/requests")["requests"]}

    ok = [r for r in run.records if r.ok]
    level = Level(concurrency, len(run.records), len(ok), 0, slips=slips)
    server_cpu = None if server_cpu0 is None or server_cpu1 is None else server_cpu1 - server_cpu0
    own = (
        run.client.client_cpu_fraction if run.client else None,
        None if server_cpu is None else server_cpu / run.duration_s,
    )
    level.other_load = (
        foreign_load(busy_fraction(busy0[0], busy1[0]), own[0]),
        foreign_load(busy_fraction(busy0[1], busy1[1]), own[1]),
    )
    level.measured = {m: [] for m in METRICS}
    level.intended = {m: [] for m in METRICS}
    for r in ok:
        entry = entries.get(r.response_id or "")
        if entry is None:
            continue
        intended = entry["intended_chunk_times_ms"]
        actual = entry["actual_chunk_times_ms"]
        tokens = sum(entry["chunk_tokens"])
        if not intended or len(intended) != len(r.event_times_s) or len(actual) != len(intended):
            continue
        level.joined += 1
        m = per_request(r)
        level.measured["ttft"].append(m.ttft_s * 1000.0)
        level.intended["ttft"].append(intended[0])
        if m.tpot_s is not None and tokens > 1:
            level.measured["tpot"].append(m.tpot_s * 1000.0)
            level.intended["tpot"].append((intended[-1] - intended[0]) / (tokens - 1))
        gaps = [b - a for a, b in itertools.pairwise(intended)]
        measured_gaps = [x * 1000.0 for x in m.itl_chunk_s]
        level.measured["itl"] += measured_gaps
        level.intended["itl"] += gaps
        level.itl_written_ms += [b - a for a, b in itertools.pairwise(actual)]
        level.itl_pair_ms += [x - y for x, y in zip(measured_gaps, gaps, strict=True)]
        received_at = entry["received_at"]
        request_path = (received_at - r.start_s) * 1000.0
        late = actual[0] - intended[0]
        response_path = (r.event_times_s[0] - received_at) * 1000.0 - actual[0]
        level.request_path_ms.append(request_path)
        level.server_late_ms.append(late)
        level.response_path_ms.append(response_path)
        level.ttft_offset_ms.append(m.ttft_s * 1000.0 - intended[0])
    check = run.client
    if check is not None:
        level.client = {
            "client_bound": check.client_bound,
            "loop_lag_p99_ms": check.loop_lag_p99_ms,
            "cpu_fraction": check.client_cpu_fraction,
            "reasons": list(check.reasons),
        }
    # The pooled statistics above must be the ones the plugin reports (same requests, same formulas).
    if level.joined == level.ok == level.requests:
        s: Mapping[str, Any] = summarize(run)  # read by computed keys
        diffs = [
            abs(s[f"{stat}_{metric}_ms"] - pct(level.measured[metric], q))
            for metric in METRICS
            for stat, q in (("median", 50), ("p99", 99))
        ]
        level.summary_check = "equal" if max(diffs) < 1e-6 else f"differs by up to {max(diffs):.3g} ms"
    else:
        level.summary_check = "not compared (failed or unjoined requests)"
    return level


def errors(level: Level, metric: str, q: float) -> tuple[float, float, float, float]:
    """(measured, intended, absolute error ms, relative error) of percentile ``q``."""
    meas, intended = pct(level.measured[metric], q), pct(level.intended[metric], q)
    return meas, intended, meas - intended, (meas - intended) / intended if intended else math.nan


def target_met(level: Level, metric: str) -> bool | None:
    if level.concurrency > TARGET_MAX_CONCURRENCY:
        return None
    _, _, abs_err, rel_err = errors(level, metric, 50)
    return abs(abs_err) <= TARGET_ABS_MS and abs(rel_err) <= TARGET_REL


def fmt(x: float, digits: int = 3) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def table(levels: Sequence[Level]) -> str:
    lines = [TABLE_HEADER, table_rule(TABLE_HEADER)]
    for level in levels:
        for metric in METRICS:
            m50, i50, a50, r50 = errors(level, metric, 50)
            m99, i99, a99, r99 = errors(level, metric, 99)
            met = target_met(level, metric)
            verdict = "–" if met is None else ("PASS" if met else "MISS")
            cells = [
                str(level.concurrency),
                metric.upper(),
                str(len(level.measured[metric])),
                fmt(m50),
                fmt(i50),
                f"{a50:+.3f}",
                f"{r50 * 100:+.2f}",
                fmt(m99),
                fmt(i99),
                f"{a99:+.3f}",
                f"{r99 * 100:+.2f}",
                verdict,
            ]
            lines.append(table_row(cells))
    return "\n".join(lines)


def offset_table(levels: Sequence[Level]) -> str:
    lines = [OFFSET_HEADER, table_rule(OFFSET_HEADER)]
    for level in levels:
        client = level.client
        other = " / ".join("–" if x is None else f"{x:.0%}" for x in level.other_load)
        itl_measured_p50, itl_written_p50 = pct(level.measured["itl"], 50), pct(level.itl_written_ms, 50)
        cells = [
            str(level.concurrency),
            f"{level.joined}/{level.requests}",
            fmt(pct(level.ttft_offset_ms, 50)),
            fmt(pct(level.request_path_ms, 50)),
            fmt(pct(level.server_late_ms, 50)),
            fmt(pct(level.response_path_ms, 50)),
            f"{itl_measured_p50 - itl_written_p50:+.3f}",
            f"{itl_written_p50 - pct(level.intended['itl'], 50):+.3f}",
            f"{pct(level.itl_pair_ms, 50):+.3f} / {fmt(pct([abs(x) for x in level.itl_pair_ms], 99))}",
            str(level.slips),
            "yes" if client.get("client_bound") else "no",
            fmt(float(client.get("loop_lag_p99_ms", math.nan)), 2),
            f"{client['cpu_fraction']:.0%}" if "cpu_fraction" in client else "–",
            other + ("" if level.attempts == 1 else f" ({level.attempts} tries)"),
        ]
        lines.append(table_row(cells))
    return "\n".join(lines)


def summary_lines(levels: Sequence[Level]) -> list[str]:
    lines = []
    in_scope = [lv for lv in levels if lv.concurrency <= TARGET_MAX_CONCURRENCY]
    for metric in METRICS:
        misses = [lv for lv in in_scope if not target_met(lv, metric)]
        text = f"- {metric.upper()} p50 error ≤ 2 % and ≤ 1 ms at concurrency ≤ {TARGET_MAX_CONCURRENCY}: "
        failed = ", ".join(str(lv.concurrency) for lv in misses)
        text += f"**MISS** at concurrency {failed}" if misses else "**PASS**"
        if in_scope:
            by_abs = max(in_scope, key=lambda lv: abs(errors(lv, metric, 50)[2]))
            by_rel = max(in_scope, key=lambda lv: abs(errors(lv, metric, 50)[3]))
            text += (
                f" (largest: {errors(by_abs, metric, 50)[2]:+.3f} ms at concurrency {by_abs.concurrency}, "
                f"{errors(by_rel, metric, 50)[3] * 100:+.2f} % at concurrency {by_rel.concurrency})"
            )
        lines.append(text)
    return lines


def span(values: Sequence[float], digits: int = 2) -> str:
    finite = [v for v in values if not math.isnan(v)]
    return f"{min(finite):+.{digits}f} … {max(finite):+.{digits}f}" if finite else "–"


def attribution_lines(levels: Sequence[Level]) -> list[str]:
    """Where the p50 errors come from, over the levels in the target's scope (figures from the tables)."""
    scope = [lv for lv in levels if lv.concurrency <= TARGET_MAX_CONCURRENCY] or list(levels)
    c_max = max(lv.concurrency for lv in scope)

    def over(f: Callable[[Level], float], digits: int = 2) -> str:
        return span([f(lv) for lv in scope], digits)

    return [
        f"Over concurrency {min(lv.concurrency for lv in scope)}–{c_max} (ranges of per-level medians, ms):",
        "",
        f"- TTFT measured − intended: {over(lambda lv: pct(lv.ttft_offset_ms, 50))}, made of the request path "
        f"(client send → server receipt) {over(lambda lv: pct(lv.request_path_ms, 50))}, the simulator's own "
        f"lateness on the first chunk {over(lambda lv: pct(lv.server_late_ms, 50))} and the response path "
        f"(server write → client stamp) {over(lambda lv: pct(lv.response_path_ms, 50))}. Intended TTFT starts at "
        "the server's receipt (its last request byte), so the request path (the client's write → that byte's "
        "arrival: loopback and waking the simulator) is in every measured TTFT and in none of the intended ones.",
        "- ITL p50 error: client part (measured − the simulator's actual write gaps) "
        f"{over(lambda lv: pct(lv.measured['itl'], 50) - pct(lv.itl_written_ms, 50))}, simulator part (actual − "
        f"intended) {over(lambda lv: pct(lv.itl_written_ms, 50) - pct(lv.intended['itl'], 50))}; gap by gap the "
        f"median signed error is {over(lambda lv: pct(lv.itl_pair_ms, 50), 3)}. With batching and prefill stalls "
        "the ITL distribution has several modes, and a quantile on the shoulder of one moves with sub-millisecond "
        "per-gap jitter even when the per-gap error has zero median.",
        "- TPOT is a per-request average over its whole decode phase, so per-chunk jitter averages out.",
    ]


def write_results(
    path: Path, machine: dict[str, Any], levels: Sequence[Level], quick: bool, retries: int, busy_poll: bool
) -> None:
    load = machine["loadavg_start"]
    checks = [f"concurrency {lv.concurrency}: {lv.summary_check}" for lv in levels if lv.summary_check != "equal"]
    lines = [
        "# Measurement fidelity",
        "",
        "Written by `python benchmarks/fidelity.py`"
        + (" --quick" if quick else "")
        + (" --busy-poll" if busy_poll else "")
        + ". Measured (the load generator + `metrics.per_request`) vs simulator-intended TTFT, TPOT and ITL, "
        "joined per request by stream id; see the script's docstring for the method.",
        "",
        "## Machine and settings",
        "",
        f"- CPU: {machine['cpu']}; `nproc` = {machine['nproc']}; kernel {machine['kernel']}",
        f"- Python {machine['python']}; aiohttp {machine['aiohttp']}; uvloop {machine['uvloop']}; "
        f"orjson {machine['orjson']} (the load generator uses uvloop and orjson when installed)",
        f"- client pinned to core {machine['client_core']}, simulator to core {machine['server_core']}; the "
        + (
            "client's event loop polls during each run (`--llmperf-busy-poll=on`)"
            if busy_poll
            else "client's event loop sleeps in the kernel between reads (the default)"
        ),
        f"- commit {machine['commit']}, {machine['date']}; load average at start "
        + (", ".join(f"{x:.2f}" for x in load) if load else "unknown"),
        f"- simulator: `{' '.join(SIM_ARGS)}`",
        f"- workload: completions, token-id prompts, input {INPUT_LEN} / output "
        f"{16 if quick else OUTPUT_LEN} tokens, range_ratio {RANGE_RATIO}, ignore_eos, closed loop; "
        f"requests per concurrency c: {'max(8, c)' if quick else 'max(32, 4c)'}; warmup: c short requests",
        "",
        "## Target",
        "",
        *summary_lines(levels),
        "",
        "## Measured vs intended (ms)",
        "",
        "Error = measured − intended (positive: the client saw it later/longer).",
        "",
        table(levels),
        "",
        "## TTFT offset and per-gap agreement",
        "",
        "Per-request medians. TTFT meas − intended = request path (client send → server receipt) + server "
        "late (the simulator's write of the first chunk − its intended time) + response path (server write → "
        "client stamp). The ITL p50 error splits into the client's part (measured − the gaps between the "
        "simulator's actual writes) and the simulator's (actual writes − intended). `paired ITL diff`: measured "
        "− intended of the same gap of the same request (median, signed; and the 99th percentile of its size). "
        "`server slips`: times the simulator's loop fell > 10 ms behind and restarted its schedule (the "
        "intended times then follow the new schedule). `other load`: busy fraction of the pinned client / "
        "simulator core during the run not explained by our own process there (other processes, interrupts); "
        f"a level with >= {QUIET_LIMIT:.0%} is repeated up to {retries} times (`tries`), the last try is kept.",
        "",
        offset_table(levels),
        "",
        "## Where the error comes from",
        "",
        *attribution_lines(levels),
        "",
        "The measured pooled statistics were cross-checked against `metrics.summarize()` of the same run: "
        + ("identical at every concurrency." if not checks else "; ".join(checks)),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run; writes no results file")
    parser.add_argument("--concurrency", default=None, help="comma-separated levels (default 1..256; quick 1,4,16,64)")
    add_core_options(parser)
    parser.add_argument("--busy-poll", action="store_true", help="measure with the load generator's busy polling")
    add_quiet_options(parser, "level")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    client_core, server_core = pinned_cores(args)
    levels_wanted = (
        [int(c) for c in args.concurrency.split(",")]
        if args.concurrency
        else list(QUICK_CONCURRENCIES if args.quick else CONCURRENCIES)
    )
    machine = machine_info(client_core, server_core)
    print(machine_banner(machine))
    levels: list[Level] = []
    if args.retries is None:
        args.retries = 0 if args.quick else 3
    with simulator(SIM_ARGS, server_core) as (url, server_pid):
        pin = pin_to(client_core)
        if pin is not None:
            pin()
        for c in levels_wanted:
            started = time.perf_counter()
            for attempt in range(args.retries + 1):
                wait_until_quiet((client_core, server_core), QUIET_LIMIT, args.wait_quiet)
                level = measure(url, server_pid, (client_core, server_core), c, args.quick, args.busy_poll)
                level.attempts = attempt + 1
                if not any(x is not None and x >= QUIET_LIMIT for x in level.other_load):
                    break
                print(f"  concurrency {c}: other processes loaded the pinned cores, " + (
                    "repeating" if attempt < args.retries else "kept, no retries left"
                ), flush=True)  # fmt: skip
            levels.append(level)
            _, _, ttft_err, _ = errors(level, "ttft", 50)
            _, _, itl_err, _ = errors(level, "itl", 50)
            print(
                f"concurrency {c}: {level.joined}/{level.requests} requests joined, TTFT p50 error {ttft_err:+.3f} ms, "
                f"ITL p50 error {itl_err:+.3f} ms ({time.perf_counter() - started:.1f} s)",
                flush=True,
            )
    print()
    print(table(levels))
    print()
    print(offset_table(levels))
    print()
    for line in summary_lines(levels):
        print(line.replace("**", ""))
    default_path = RESULTS_DIR / ("fidelity-busy-poll.md" if args.busy_poll else "fidelity.md")
    path = results_path(args, default_path)
    if path is not None:
        write_results(path, machine, levels, args.quick, args.retries, args.busy_poll)
        print(f"\nwrote {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
