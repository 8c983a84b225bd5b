"""Scaling the load generator out: events/s and client CPU per event from 1, 2, … client processes on this host
(``--llmperf-client-procs``) and from Ray actors of a local Ray instance (``--llmperf-ray=local``), against a
simulator that is not the bottleneck.

Each configuration runs the same workload from shards started the way the plugin starts them
(``pytest_llmperf.client.procs.run`` and ``pytest_llmperf.client.rayshards.RayClients``; one process is
``procs.run`` with one shard, so it pays the same start-up and measures its CPU the same way). Client CPU is each
shard's own CPU over its measured window (its self-check), summed over the shards; µs/event divides it by the
events streamed. The **sharding overhead** is µs/event with N shards over µs/event with one, measured in the same
repeat; **correctness** compares the merged run's request count and TTFT/TPOT/ITL medians with one process's.

On a machine with fewer cores than shards + 1 (the simulator needs one) the shards share cores and events/s
cannot grow; what this measures there is the overhead per event and the correctness, and the scaling curve is
put on paper from the per-event cost: with the self-check's CPU limit (85 % of a core) a process reads at most
0.85 × 10⁶ / (µs/event × overhead) events per second, so a target rate needs ⌈target / that⌉ client cores.

Usage: ``python benchmarks/client_scaling.py [--quick] [--procs 1,2] [--repeats N] [--no-ray] [--results PATH]``.
The full run takes about 3 minutes on 2 cores and writes ``benchmarks/results/client_scaling.md``; ``--quick``
is a smoke run that writes nothing.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    git_commit,
    machine_line,
    make_parser,
    markdown_table,
    module_version,
    publish_report,
    simulator,
    usable_cores,
)

from pytest_llmperf.client import procs
from pytest_llmperf.client.datasets import PromptContext, build_prompts
from pytest_llmperf.judge import metrics
from pytest_llmperf.spec import Endpoint, RunRecords, Workload

COMMITTED = Path(__file__).resolve().parent / "results" / "client_scaling.md"
POOL = PromptContext(token_pool=list(range(1000, 30000)))
CPU_LIMIT = 0.85  # the self-check's client-bound limit (client/selfcheck.py)
TARGETS = (50_000, 100_000, 300_000)  # events/s: one process today, and the rack-scale rates of the issue
OVERHEAD_TARGET = 1.1


@dataclass
class Measured:
    config: str
    shards: int
    events: int
    requests: int
    duration_s: float
    cpu_s: float
    ttft_ms: float
    tpot_ms: float
    itl_ms: float
    client_bound: bool

    @property
    def us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6 if self.events else math.nan

    @property
    def events_per_s(self) -> float:
        return self.events / self.duration_s if self.duration_s else math.nan


def measure(config: str, run: RunRecords) -> Measured:
    summary: Any = metrics.summarize(run)
    client = run.client
    return Measured(
        config=config,
        shards=client.processes if client else 1,
        events=sum(len(r.event_times_s) for r in run.records),
        requests=int(summary["completed"]),
        duration_s=run.duration_s,
        cpu_s=client.client_cpu_s if client else math.nan,
        ttft_ms=float(summary["median_ttft_ms"]),
        tpot_ms=float(summary["median_tpot_ms"]),
        itl_ms=float(summary["median_itl_ms"]),
        client_bound=bool(client and client.client_bound),
    )


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small, one repeat, writes nothing")
    parser.add_argument("--procs", default="1,2", help="client process counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per configuration (default 3; quick 1)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray configurations")
    parser.add_argument(
        "--spread",
        action="store_true",
        help="give each client process a core of its own, the simulator's included (on a machine with fewer cores "
        "than processes + 1: the per-event cost without two shards on one core, at the price of sharing one with "
        "the simulator)",
    )
    parser.add_argument("--results", type=Path, default=None, help="results file (default: results/ on full runs)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    counts = [int(n) for n in args.procs.split(",")]
    concurrency, prompts_n, output_len = (32, 64, 50) if args.quick else (256, 512, 200)
    workload = Workload(input_len=16, output_len=output_len, num_prompts=prompts_n, concurrency=concurrency)
    cores = usable_cores()
    server_core = cores[-1] if len(cores) > 1 else None
    client_cores = cores if args.spread else [c for c in cores if c != server_core] or cores
    ray_clients = None
    if not args.no_ray:
        from pytest_llmperf.client.rayshards import RayClients, ray_installed

        if ray_installed():
            ray_clients = RayClients("local", max(counts), local_cpus=max(len(client_cores), max(counts)))
        else:
            print("Ray is not installed: the Ray rows are left out (pip install 'pytest-llmperf[ray]')")
    results: list[list[Measured]] = []
    sim_args = ["--decode-ms", "10", "--decode-ms-per-seq", "0", "--prefill-tok-s", "1000000", "--jitter", "0"]
    sim_args += ["--max-batch", str(concurrency)]  # every request decodes at once: the client sees the full rate
    with simulator(sim_args, server_core) as (url, _pid):
        endpoint = Endpoint(url=url, model="llmperf-sim")
        prompts = build_prompts(workload, prompts_n, POOL)
        warmup = build_prompts(workload.replace(seed=99), 4, POOL)
        procs.run(workload, endpoint, prompts[:8], processes=1, warmup_prompts=warmup)  # the simulator warms up
        for _ in range(repeats):
            row: list[Measured] = []
            for n in counts:
                run = procs.run(workload, endpoint, prompts, processes=n, warmup_prompts=warmup, cores=client_cores)
                row.append(measure(f"{n} process{'es' if n > 1 else ''}", run))
            if ray_clients is not None:
                for n in counts:
                    ray_clients.shards_wanted = n  # one Ray instance, N of its actors
                    run = ray_clients.run(workload, endpoint, prompts, warmup_prompts=warmup)
                    row.append(measure(f"Ray, {n} actor{'s' if n > 1 else ''}", run))
            results.append(row)
            time.sleep(0.5)
    if ray_clients is not None:
        ray_clients.close()
    report = render(results, workload, client_cores, server_core, args.quick)
    out = args.results or COMMITTED
    publish_report(report, out, quick=args.quick, committed=COMMITTED)


def same_answers(results: list[list[Measured]], workload: Workload) -> bool:
    for row in results:
        one = row[0]
        for m in row:
            if m.requests != workload.num_prompts:
                return False
            if abs(m.tpot_ms / one.tpot_ms - 1) > 0.05 or abs(m.itl_ms / one.itl_ms - 1) > 0.05:
                return False
    return True


def render(
    results: list[list[Measured]], workload: Workload, client_cores: list[int], server_core: int | None, quick: bool
) -> str:
    configs = [m.config for m in results[0]]
    base = [row[0] for row in results]  # one process, in each repeat
    lines = [
        "# Client scaling",
        "",
        "Written by `python benchmarks/client_scaling.py`; method in its docstring.",
        "",
        f"- {machine_line()}; aiohttp {module_version('aiohttp')}, uvloop {module_version('uvloop')}, "
        f"orjson {module_version('orjson')}, ray {module_version('ray') or '-'}",
        f"- commit {git_commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- client cores {client_cores}, simulator core {server_core}; {len(results)} repeat(s)",
        f"- workload: concurrency {workload.concurrency}, {workload.num_prompts} requests × {workload.output_len} "
        "tokens, one event per read (simulator: 10 ms decode steps, instant prefill)",
        "",
        "## Figures",
        "",
        "Median over the repeats (min–max in brackets). `overhead` = µs/event ÷ one process's in the same repeat.",
        "",
    ]
    rows = []
    overheads: dict[str, float] = {}
    for i, config in enumerate(configs):
        ms = [row[i] for row in results]
        ratio = [m.us_per_event / b.us_per_event for m, b in zip(ms, base, strict=True)]
        overheads[config] = statistics.median(ratio)
        us = [m.us_per_event for m in ms]
        rows.append(
            [
                config,
                str(ms[0].shards),
                f"{statistics.median(m.requests for m in ms):.0f}",
                f"{statistics.median(m.events for m in ms):,.0f}",
                f"{statistics.median(m.events_per_s for m in ms):,.0f}",
                f"{statistics.median(us):.1f} ({min(us):.1f}–{max(us):.1f})",
                f"{statistics.median(ratio):.2f}",
                f"{statistics.median(m.ttft_ms for m in ms):.2f}",
                f"{statistics.median(m.tpot_ms for m in ms):.3f}",
                f"{statistics.median(m.itl_ms for m in ms):.3f}",
                "yes" if any(m.client_bound for m in ms) else "no",
            ]
        )
    header = (
        "configuration",
        "shards",
        "requests",
        "events",
        "events/s",
        "client µs/event",
        "overhead",
        "TTFT p50 ms",
        "TPOT p50 ms",
        "ITL p50 ms",
        "client-bound",
    )
    lines += [markdown_table(header, rows), ""]
    one_us = statistics.median(m.us_per_event for m in base)
    # The curve is the local processes' (what --llmperf-client-procs runs); Ray's overhead is its own line.
    worst = max((v for k, v in overheads.items() if k != configs[0] and not k.startswith("Ray")), default=1.0)
    ray_worst = max((v for k, v in overheads.items() if k.startswith("Ray")), default=None)
    lines += [
        "## The N-core curve on paper",
        "",
        f"One process at {one_us:.1f} µs/event reads at most {CPU_LIMIT * 1e6 / one_us:,.0f} events/s within the "
        f"self-check's {CPU_LIMIT:.0%} CPU limit. With N client processes each pays the measured overhead "
        f"(worst here {worst:.2f}×), so N cores read N × {CPU_LIMIT * 1e6 / (one_us * worst):,.0f} events/s: "
        f"{1 / worst:.2f} of linear per added core."
        + ("" if ray_worst is None else f" Ray actors on this host cost up to {ray_worst:.2f}× one process."),
        "",
    ]
    sizing = []
    for target in TARGETS:
        per_core = CPU_LIMIT * 1e6 / (one_us * worst)
        sizing.append([f"{target:,}", f"{math.ceil(target / per_core)}", f"{math.ceil(target / per_core * 2)}"])
    lines += [
        markdown_table(("events/s", "client cores at the limit", "client cores at half load (auto's plan)"), sizing),
        "",
        "## Targets",
        "",
        f"- sharding overhead per event ≤ {OVERHEAD_TARGET}× of one process (client processes): "
        f"{'MET' if worst <= OVERHEAD_TARGET else 'MISSED'} (worst {worst:.2f}×)",
        f"- ≥ 0.8× linear scaling per added core (on paper, from the overhead): "
        f"{'MET' if 1 / worst >= 0.8 else 'MISSED'} ({1 / worst:.2f}×)",
        "- every configuration completed every request, with TPOT and ITL medians within 5 % of one process's: "
        + ("MET" if same_answers(results, workload) else "MISSED"),
    ]
    if quick:
        lines += ["", "QUICK run: too small and too few repeats for these figures to mean anything"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
