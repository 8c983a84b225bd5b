"""Client memory: the load generator's peak RSS as streams and requests grow, per event and per request.

Each point runs ``loadgen.run`` in a fresh child process against the simulator (``python -m pytest_llmperf.sim``,
no decode delay) and reports the child's peak RSS (``ru_maxrss``) and what its records, prompts and request
bodies hold (``sys.getsizeof``, counting each shared float or int object once; small ints and bools are
interned and cost only their list slot). Two slopes:

- (a) fixed request count, output tokens varied (2,000 × 100 vs 2,000 × 1,000): peak RSS per streamed event;
- (b) fixed output tokens, request count varied (2,000 vs 20,000 × 100, the measurement of issue #17): peak
  RSS per request, and per event of those requests.

From them, the projected peak RSS of a one-hour soak at 50,000 events/s (180 M events), with 100- and with
1,000-token replies. ``--source LABEL=DIR`` measures the ``pytest_llmperf`` of another checkout too (e.g. a
``git worktree`` of an older commit), in the same session, so that before and after are compared alike.

    python benchmarks/client_memory.py                     # full run (a few minutes); writes results/client_memory.md
    python benchmarks/client_memory.py --quick             # smoke run, 10x smaller; writes no results file
    python benchmarks/client_memory.py --source before=../before-checkout
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from _common import (
    RESULTS_DIR,
    add_core_options,
    add_source_option,
    checkouts,
    machine_banner,
    machine_info,
    make_parser,
    markdown_table,
    pin_to,
    pinned_cores,
    results_path,
    simulator,
)

RESULTS_PATH = RESULTS_DIR / "client_memory.md"
SIM_ARGS = ("--decode-ms", "0", "--decode-ms-per-seq", "0", "--max-batch", "64", "--history", "64")
SOAK_EVENTS = 50_000 * 3600  # one hour at 50k events/s
TARGET_BYTES_PER_EVENT = 16.0
MB = 1e6


# --- one point (child process) -------------------------------------------------------------------------------


def _rss_bytes() -> int:
    """The current resident set, from /proc (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _objects_size(values: Iterable[object], seen: set[int]) -> int:
    """Bytes of the objects in ``values`` not counted yet; interned small ints and bools cost nothing extra."""
    total = 0
    for v in values:
        if isinstance(v, bool) or (type(v) is int and -5 <= v <= 256) or id(v) in seen:
            continue
        seen.add(id(v))
        total += sys.getsizeof(v)
    return total


def _sequence_size(values: Any, seen: set[int]) -> int:
    """A record's event sequence: the container, plus its element objects when it is a list."""
    return sys.getsizeof(values) + (_objects_size(values, seen) if isinstance(values, list) else 0)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one load episode; report peak RSS and what the records, prompts and bodies hold."""
    if spec["source"]:
        sys.path.insert(0, spec["source"])
    from pytest_llmperf.client import loadgen
    from pytest_llmperf.client.datasets import PromptContext, build_prompts
    from pytest_llmperf.spec import Endpoint, Workload

    workload = Workload(
        input_len=spec["input_len"],
        output_len=spec["output_len"],
        num_prompts=spec["num_prompts"],
        concurrency=spec["concurrency"],
        seed=1,
    )
    endpoint = Endpoint(url=spec["url"], model="llmperf-sim")
    rss_imported = _rss_bytes()
    context = PromptContext(token_pool=range(1000, 31000))
    prompts = build_prompts(workload, spec["num_prompts"], context)
    warmup = build_prompts(workload.replace(output_len=4, seed=2), spec["concurrency"], context)
    seen: set[int] = set()
    prompt_bytes = sum(
        sys.getsizeof(p) + _sequence_size(p.prompt, seen) if isinstance(p.prompt, list) else sys.getsizeof(p.prompt)
        for p in prompts
    ) + sys.getsizeof(prompts)
    # What the load generator builds up front, one body per prompt (sized one at a time, freed at once here).
    body_bytes = sum(sys.getsizeof(loadgen.request_body(workload, endpoint, p)) for p in prompts)
    rss_prompts = _rss_bytes()

    started = time.perf_counter()
    run = loadgen.run(workload, endpoint, prompts, warmup_prompts=warmup)
    wall_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    seen = set()
    events = storage = 0
    for r in run.records:
        events += len(r.event_times_s)
        storage += sum(_sequence_size(s, seen) for s in (r.event_times_s, r.event_cum_tokens, r.event_has_text))
    record_bytes = sum(sys.getsizeof(r) for r in run.records)
    return {
        "requests": len(run.records),
        "ok": sum(r.ok for r in run.records),
        "events": events,
        "wall_s": wall_s,
        "rss_imported": rss_imported,
        "rss_prompts": rss_prompts,
        "rss_end": _rss_bytes(),
        "peak_rss": peak,
        "event_storage_bytes": storage,
        "record_bytes": record_bytes,
        "prompt_bytes": prompt_bytes,
        "body_bytes": body_bytes,
        "event_types": sorted(
            {type(s).__name__ for r in run.records[:1] for s in (r.event_times_s, r.event_cum_tokens, r.event_has_text)}
        ),
    }


def run_child(spec: dict[str, Any], core: int | None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=1800,
        preexec_fn=pin_to(core),
        cwd=Path(__file__).resolve().parent,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- aggregation and reporting -------------------------------------------------------------------------------


def points(quick: bool) -> dict[str, tuple[int, int]]:
    """Name → (requests, output tokens each)."""
    scale = 10 if quick else 1
    return {"small": (2000 // scale, 100), "long": (2000 // scale, 1000), "many": (20000 // scale, 100)}


def slopes(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    small, long, many = runs["small"], runs["long"], runs["many"]
    per_event = (long["peak_rss"] - small["peak_rss"]) / (long["events"] - small["events"])
    per_request = (many["peak_rss"] - small["peak_rss"]) / (many["requests"] - small["requests"])
    per_event_b = (many["peak_rss"] - small["peak_rss"]) / (many["events"] - small["events"])
    storage = many["event_storage_bytes"] / many["events"]
    # Per request besides its events: the (b) slope less what its events cost by the (a) slope.
    request_rest = per_request - per_event * many["events"] / many["requests"]
    base = small["peak_rss"] - per_request * small["requests"]
    return {
        "per_event_a": per_event,
        "per_request_b": per_request,
        "per_event_b": per_event_b,
        "storage_per_event": storage,
        "request_rest": request_rest,
        "base": base,
        "soak_100": base + SOAK_EVENTS / 100 * per_request,
        "soak_1000": base + SOAK_EVENTS * per_event + SOAK_EVENTS / 1000 * request_rest,
    }


def source_commit(source: str | None) -> str:
    cwd = source or str(Path(__file__).resolve().parent)
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=cwd)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "pytest_llmperf"], cwd=cwd).returncode
    except OSError:
        return "unknown"
    return out.stdout.strip() + (" + uncommitted changes" if dirty else "")


def report(
    machine: dict[str, Any], results: dict[str, dict[str, dict[str, Any]]], commits: dict[str, str], args: Any
) -> str:
    names = points(args.quick)
    rows = []
    for label, runs in results.items():
        for name, (n, out) in names.items():
            r = runs[name]
            rows.append(
                [
                    label,
                    f"{n:,} × {out:,}",
                    f"{r['events']:,}",
                    f"{r['peak_rss'] / MB:.0f}",
                    f"{(r['rss_prompts'] - r['rss_imported']) / MB:.1f}",
                    f"{r['event_storage_bytes'] / r['events']:.1f}" if r["events"] else "-",
                    f"{r['record_bytes'] / r['requests']:.0f}",
                    f"{r['prompt_bytes'] / r['requests']:,.0f}",
                    f"{r['body_bytes'] / r['requests']:,.0f}",
                    f"{r['wall_s']:.1f}",
                ]
            )
    point_table = markdown_table(
        [
            "code",
            "requests × tokens",
            "events",
            "peak RSS MB",
            "prompts built, RSS MB",
            "event storage B/event",
            "record B/request",
            "prompt B/request",
            "body B/request",
            "run s",
        ],
        rows,
    )
    slope_rows = []
    for label, runs in results.items():
        s = slopes(runs)
        slope_rows.append(
            [
                label,
                f"**{s['per_event_a']:.1f}**",
                f"{s['storage_per_event']:.1f}",
                f"{s['per_request_b']:,.0f}",
                f"{s['per_event_b']:.1f}",
                f"{s['request_rest']:,.0f}",
                f"{s['soak_100'] / 1e9:.2f}",
                f"{s['soak_1000'] / 1e9:.2f}",
            ]
        )
    slope_table = markdown_table(
        [
            "code",
            "(a) peak RSS B/event",
            "event storage B/event",
            "(b) peak RSS B/request",
            "(b) B/event",
            "B/request besides events",
            "1 h at 50k ev/s, 100-token replies, GB",
            "1 h, 1,000-token replies, GB",
        ],
        slope_rows,
    )
    lines = [
        "# Client memory",
        "",
        f"{machine['date']} · {machine['cpu']} · nproc {machine['nproc']} · Python {machine['python']} · "
        f"aiohttp {machine['aiohttp']} · uvloop {machine['uvloop']} · orjson {machine['orjson']}",
        "",
        "Code measured: " + "; ".join(f"`{label}` = commit {commit}" for label, commit in commits.items()) + ".",
        f"Concurrency {args.concurrency}, input {args.input_len} tokens, simulator `{' '.join(SIM_ARGS)}`; "
        "each point in a fresh process (`python benchmarks/client_memory.py"
        + (" --quick" if args.quick else "")
        + "`).",
        "",
        point_table,
        "",
        slope_table,
        "",
        f"Target: ≤ {TARGET_BYTES_PER_EVENT:.0f} B of peak RSS per streamed event. The soak projections extrapolate "
        "the slopes linearly from the point with the fewest requests (its RSS less its requests' share is the "
        "base); with 1,000-token replies, per event by (a) plus per request by (b) less its events.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="points 10x smaller; writes no results file")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=32)
    add_source_option(parser, "also measure the pytest_llmperf of the checkout DIR, labelled LABEL")
    add_core_options(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    client_core, server_core = pinned_cores(args)
    machine = machine_info(client_core, server_core)
    print(machine_banner(machine))
    sources: dict[str, str | None] = {**checkouts(args), "this checkout": None}
    commits = {label: source_commit(directory) for label, directory in sources.items()}
    results: dict[str, dict[str, dict[str, Any]]] = {label: {} for label in sources}
    with simulator(SIM_ARGS, server_core) as (url, _pid):
        for name, (n, out) in points(args.quick).items():
            for label, directory in sources.items():  # interleaved: the same machine state for each code
                spec = {
                    "url": url,
                    "source": directory,
                    "concurrency": args.concurrency,
                    "input_len": args.input_len,
                    "output_len": out,
                    "num_prompts": n,
                }
                r = run_child(spec, client_core)
                results[label][name] = r
                print(
                    f"{label}: {n:,} × {out:,}: peak RSS {r['peak_rss'] / MB:.0f} MB, {r['events']:,} events "
                    f"({r['ok']:,}/{r['requests']:,} ok), storage {r['event_storage_bytes'] / max(r['events'], 1):.1f}"
                    f" B/event as {', '.join(r['event_types'])}, {r['wall_s']:.1f} s",
                    flush=True,
                )
    text = report(machine, results, commits, args)
    print()
    print(text)
    path = results_path(args, RESULTS_PATH)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
        print(f"\nwrote {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
