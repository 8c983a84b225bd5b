"""Client capacity: how much CPU the load generator spends per streamed event, and whether it keeps up.

Four scenarios against the simulator (``python -m pytest_llmperf.sim``), client and server each pinned to
their own core:

- (a) one event per read: concurrency 256, a decode step every 10 ms, so each connection receives one small
  chunk per step; target <= 25 µs of client CPU per event and no falling behind the server's schedule;
- (b) bursty: zero decode delay, concurrency 64, the server writes one event per step as fast as it can and
  each read carries as many as have queued; target <= 10 µs per event;
- (c) bursts of 400 events, the bursty shape of the issue that set the target ("64 streams, 400 tokens written
  at once"): concurrency 64, every stream's output reaches its socket
  400 decode steps (1 ms each) at a time, in one write (``--chunks-per-write 400``), so every client reads the
  same bursts whatever its speed and the CPU per event compares like with like; target <= 10 µs per event and
  <= 0.75x of `vllm bench serve`'s client;
- (d) the same bursts unpaced (zero decode delay): the server outruns the clients, so what each drains per
  second is its capacity.

Client CPU per event = process CPU time (user + system) of the client over the measured window, as the load
generator's own ``ClientCheck.client_cpu_s`` reports it, divided by the output events received. Each run
happens in a fresh child process (so a variant without uvloop or orjson can hide the module before the load
generator is imported); the child joins its records with the simulator's ``GET /sim/requests`` by id to
compare what arrived with what the server intended. Both processes read ``time.perf_counter()``
(CLOCK_MONOTONIC on Linux), so client and server times are directly comparable.

The reference is `vllm bench serve`'s own request function (``async_request_openai_completions`` of
``vllm/benchmarks/lib/endpoint_request_func.py``), timing and parsing its own way, driven as ``vllm bench serve``
drives it (its session settings, a semaphore, a frozen GC heap, asyncio's loop). That module needs only aiohttp,
tqdm and regex, so it is loaded by its path, without ``vllm/__init__`` (which needs torch): from a vLLM
installed as a distribution (``pip install vllm --no-deps`` is enough), or from a wheel given with
``--vllm-wheel`` (``pip download vllm --no-deps -d DIR``). Where neither is found, the ``vllm-style`` column,
a rewrite in this script of an older vLLM stream loop, stands in, and the output says why.

    python benchmarks/client_capacity.py            # full run (a few minutes); writes results/client_capacity.md
    python benchmarks/client_capacity.py --quick    # smoke run, seconds; writes no results file
    python benchmarks/client_capacity.py --vllm-wheel DIR/vllm-*.whl    # the real vLLM client from a wheel
    python benchmarks/client_capacity.py --source before=DIR    # also variant installed@before: DIR's package

``--source`` compares code: a ``git worktree`` of another commit, say, runs as one more variant, interleaved
with the others, so a before/after comparison sees the same machine state (a shared VM's speed drifts).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import resource
import statistics
import subprocess
import sys
import time
import zipfile
import zipimport
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from _common import (
    QUIET_LIMIT,
    RESULTS_DIR,
    add_core_options,
    add_quiet_options,
    add_source_option,
    busy_fraction,
    checkouts,
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
    usable_cores,
    wait_until_quiet,
)
from _common import percentile as pct

if TYPE_CHECKING:
    from pytest_llmperf.spec import RunRecords

RESULTS_PATH = RESULTS_DIR / "client_capacity.md"
TABLE_HEADER = (
    "| scenario | variant | runs | events | client µs/event | target | verdict | received ev/s | intended ev/s "
    "| recv/intended | ITL p50 ms meas / intended | lag p99 ms | ev/read | loop lag p50/p99 ms | client CPU "
    "| client-bound |"
)
# Variants: which optional speed-ups the child hides from the load generator before importing it.
VARIANTS: dict[str, tuple[str, ...]] = {
    "installed": (),
    "no-uvloop": ("uvloop",),
    "no-orjson": ("orjson",),
    "no-uvloop+no-orjson": ("uvloop", "orjson"),
    # Not ours: `vllm bench serve`'s own request function (see vllm_run), on asyncio's loop as vLLM runs it.
    "vllm": ("uvloop", "orjson"),
    # Not ours either: a rewrite of an older vLLM stream loop (see reference_run), where the real one is missing.
    "vllm-style": ("orjson",),
}
CLIENTS = {
    "installed": "pytest-llmperf's load generator (uvloop and orjson when installed)",
    "no-uvloop": "pytest-llmperf's load generator on asyncio's loop",
    "no-orjson": "pytest-llmperf's load generator with stdlib json",
    "no-uvloop+no-orjson": "pytest-llmperf's load generator on asyncio's loop with stdlib json",
    "vllm": "`vllm bench serve`'s own `async_request_openai_completions` (its timing, its parsing)",
    "vllm-style": "a REWRITE in this script of an older `vllm bench serve` stream loop (line iteration), "
    "not vLLM's code",
}
# Where vLLM keeps its request function, newest first; loaded by path, never through `import vllm`.
VLLM_MODULES = ("vllm/benchmarks/lib/endpoint_request_func.py", "vllm/benchmarks/endpoint_request_func.py")
VLLM_FUNCTION = "async_request_openai_completions"
# `vllm bench serve`'s own client on the machine where the targets were set, µs per event.
DESIGN_REFERENCE_US = {"a": 33.0, "b": 14.0, "c": 14.0, "d": 14.0}
# The issue's target for its bursty shape ("64 streams, 400 tokens written at once"), scenario (c).
ISSUE_BURST_RATIO = 0.75
# "No falling behind" (scenario a): the client receives the intended events at the intended rate, its ITL
# median matches the intended step, and 99% of events arrive before the next step is due.
KEEP_UP_RATE = 0.99
KEEP_UP_ITL_REL = 0.02


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    concurrency: int
    input_len: int
    output_len: int
    num_prompts: int
    target_us: float
    sim_args: tuple[str, ...]
    step_ms: float | None  # the intended decode step, when there is one
    # The most CPU per event relative to `vllm bench serve`'s client in the same runs; None: derived from
    # target_us and DESIGN_REFERENCE_US.
    relative_target: float | None = None

    def workload_text(self) -> str:
        return (
            f"concurrency {self.concurrency}, {self.num_prompts} prompts × {self.output_len} output tokens "
            f"(input {self.input_len}), simulator `{' '.join(self.sim_args)}`"
        )


def scenarios(quick: bool) -> list[Scenario]:
    a_args = ("--decode-ms", "10", "--decode-ms-per-seq", "0", "--max-batch", "256")
    b_args = ("--decode-ms", "0", "--decode-ms-per-seq", "0", "--max-batch", "64")
    # (c): every stream's 400 decode steps reach its socket in one write, one burst per 0.4 s per stream.
    c_args = ("--decode-ms", "1", "--decode-ms-per-seq", "0", "--max-batch", "64", "--chunks-per-write", "400")
    d_args = ("--decode-ms", "0", "--decode-ms-per-seq", "0", "--max-batch", "64", "--chunks-per-write", "400")
    if quick:
        return [
            Scenario("a", "one event per read", 64, 32, 50, 64, 25.0, a_args, 10.0),
            Scenario("b", "bursty", 16, 32, 200, 32, 10.0, b_args, None),
            Scenario("c", "bursts of 400 events", 16, 32, 800, 16, 10.0, c_args, None, ISSUE_BURST_RATIO),
            Scenario("d", "bursts of 400, unpaced", 16, 32, 800, 16, 10.0, d_args, None),
        ]
    # (a): two waves of 256 requests × 500 tokens at 10 ms per step ≈ 10 s; (b): 128 × 2000 = 256k events.
    return [
        Scenario("a", "one event per read", 256, 32, 500, 512, 25.0, a_args, 10.0),
        Scenario("b", "bursty", 64, 32, 2000, 128, 10.0, b_args, None),
        Scenario("c", "bursts of 400 events", 64, 32, 2000, 128, 10.0, c_args, None, ISSUE_BURST_RATIO),
        Scenario("d", "bursts of 400, unpaced", 64, 32, 2000, 128, 10.0, d_args, None),
    ]


def disturbed(result: dict[str, Any]) -> bool:
    """Did other processes load either pinned core during the run?"""
    loads = (result.get("foreign_client_core"), result.get("foreign_server_core"))
    return any(x is not None and x >= QUIET_LIMIT for x in loads)


# --- one run (child process) ---------------------------------------------------------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one load episode and measure it; ``spec`` comes from the parent as JSON."""
    if spec.get("source"):  # another checkout's package, before the installed one
        sys.path.insert(0, spec["source"])
    for name in spec["hide"]:
        sys.modules[name] = None  # type: ignore[assignment]  # documented: the next import raises ImportError
    from pytest_llmperf.client import loadgen
    from pytest_llmperf.client.datasets import PromptContext, build_prompts
    from pytest_llmperf.judge.metrics import per_request
    from pytest_llmperf.spec import Endpoint, Workload

    def importable(name: str) -> bool:
        try:
            __import__(name)
        except ImportError:
            return False
        return True

    url, c = spec["url"], spec["concurrency"]
    workload = Workload(
        input_len=spec["input_len"],
        output_len=spec["output_len"],
        num_prompts=spec["num_prompts"],
        concurrency=c,
        seed=spec["seed"],
    )
    endpoint = Endpoint(url=url, model="llmperf-sim")
    context = PromptContext(token_pool=range(1000, 31000))
    prompts = build_prompts(workload, spec["num_prompts"], context)
    warmup = build_prompts(workload.replace(output_len=4, seed=spec["seed"] + 1), c, context)
    http_json(url + "/sim/requests?clear=1")

    server_cpu0 = process_cpu_s(spec["server_pid"])
    busy0 = core_busy_ticks(spec["client_core"]), core_busy_ticks(spec["server_core"])
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    if spec["variant"] == "vllm-style":
        run = reference_run(workload, endpoint, prompts, warmup)
    elif spec["variant"] == "vllm":
        run = vllm_run(VllmClient(**spec["vllm"]), workload, endpoint, prompts, warmup)
    else:
        run = loadgen.run(workload, endpoint, prompts, warmup_prompts=warmup)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    busy1 = core_busy_ticks(spec["client_core"]), core_busy_ticks(spec["server_core"])
    server_cpu1 = process_cpu_s(spec["server_pid"])

    received = http_json(url + "/sim/requests")["requests"]
    join_in_send_order(run.records, received, since=run.bench_start_s)
    entries = {e["id"]: e for e in received}
    check = run.client
    assert check is not None
    ok = [r for r in run.records if r.ok]
    events = sum(len(r.event_times_s) for r in run.records)
    reads = sum(len(set(r.event_times_s)) for r in run.records)
    client_times: list[float] = []
    intended_times: list[float] = []
    actual_times: list[float] = []
    itl_meas: list[float] = []
    itl_intended: list[float] = []
    mismatched = unmatched = 0
    for r in ok:
        entry = entries.get(r.response_id or "")
        if entry is None:
            unmatched += 1
            continue
        t0 = entry["received_at"]
        intended = [t0 + ms / 1000.0 for ms in entry["intended_chunk_times_ms"]]
        actual = [t0 + ms / 1000.0 for ms in entry["actual_chunk_times_ms"]]
        if not (len(intended) == len(actual) == len(r.event_times_s)):
            mismatched += 1
            continue
        client_times += r.event_times_s
        intended_times += intended
        actual_times += actual
        itl_meas += [x * 1000.0 for x in per_request(r).itl_chunk_s]
        itl_intended += [(b - a) * 1000.0 for a, b in itertools.pairwise(intended)]
    lag_ms = [(t - i) * 1000.0 for t, i in zip(client_times, intended_times, strict=True)]
    delivery_ms = [(t - a) * 1000.0 for t, a in zip(client_times, actual_times, strict=True)]
    server_late_ms = [(a - i) * 1000.0 for a, i in zip(actual_times, intended_times, strict=True)]
    matched_events = len(client_times)
    recv_span = max(client_times) - min(client_times) if client_times else math.nan
    intended_span = max(intended_times) - min(intended_times) if intended_times else math.nan
    server_cpu = None if server_cpu0 is None or server_cpu1 is None else server_cpu1 - server_cpu0
    result: dict[str, Any] = {
        "variant": spec["variant"],
        "uvloop": importable("uvloop"),
        "orjson": importable("orjson"),
        "affinity": usable_cores(),
        "requests": len(run.records),
        "ok": len(ok),
        "errors": sorted({r.error_kind for r in run.records if not r.ok}),
        "events": events,
        "events_per_read": events / reads if reads else math.nan,
        "wall_s": run.duration_s,
        "cpu_s": check.client_cpu_s,
        "cpu_call_user_s": ru1.ru_utime - ru0.ru_utime,
        "cpu_call_sys_s": ru1.ru_stime - ru0.ru_stime,
        "us_per_event": check.client_cpu_s / events * 1e6 if events else math.nan,
        "received_ev_s": (matched_events - 1) / recv_span if matched_events > 1 else math.nan,
        "intended_ev_s": (matched_events - 1) / intended_span if matched_events > 1 else math.nan,
        "ev_s_over_run": events / run.duration_s if run.duration_s > 0 else math.nan,
        "matched_events": matched_events,
        "mismatched_requests": mismatched,
        "unmatched_requests": unmatched,
        "itl_p50_ms": pct(itl_meas, 50),
        "itl_p50_intended_ms": pct(itl_intended, 50),
        "itl_p99_ms": pct(itl_meas, 99),
        "itl_p99_intended_ms": pct(itl_intended, 99),
        "lag_p50_ms": pct(lag_ms, 50),
        "lag_p99_ms": pct(lag_ms, 99),
        "lag_max_ms": max(lag_ms) if lag_ms else math.nan,
        "delivery_p50_ms": pct(delivery_ms, 50),
        "delivery_p99_ms": pct(delivery_ms, 99),
        "server_late_p50_ms": pct(server_late_ms, 50),
        "server_late_p99_ms": pct(server_late_ms, 99),
        "loop_lag_p50_ms": check.loop_lag_p50_ms,
        "loop_lag_p99_ms": check.loop_lag_p99_ms,
        "loop_lag_max_ms": check.loop_lag_max_ms,
        "cpu_fraction": check.client_cpu_fraction,
        "client_bound": check.client_bound,
        "client_reasons": list(check.reasons),
        "unread_wait_mean_ms": check.unread_wait_mean_ms,
        "unread_p99_kib": check.unread_p99_kib,
        "client_core_busy": busy_fraction(busy0[0], busy1[0]),
        "server_core_busy": busy_fraction(busy0[1], busy1[1]),
        "server_cpu_fraction": None if server_cpu is None else server_cpu / run.duration_s,
    }
    result["foreign_client_core"] = foreign_load(result["client_core_busy"], check.client_cpu_fraction)
    result["foreign_server_core"] = foreign_load(result["server_core_busy"], result["server_cpu_fraction"])
    return result


def reference_run(workload: Any, endpoint: Any, prompts: Sequence[Any], warmup: Sequence[Any]) -> Any:
    """A rewrite, in this script, of an older `vllm bench serve` stream loop: the stand-in where the real
    one (:func:`vllm_run`) cannot be loaded. Not vLLM's code, and not its current loop (which reads with
    ``iter_any()`` and splits messages itself).

    As that vLLM did it: one aiohttp session, ``st`` before ``session.post``, the body iterated line by
    line (``async for line in response.content``), each non-empty line stripped of ``data: ``, ``[DONE]`` ends
    it, every other payload goes through ``json.loads`` and is stamped with ``perf_counter()`` when its
    line is handled. uvloop when installed, stdlib json (vLLM's choice). Records come back in the load
    generator's shape so that the rest of the worker measures both alike.
    """
    import asyncio

    import aiohttp

    from pytest_llmperf.client.loadgen import _loop_factory, request_body
    from pytest_llmperf.spec import RequestRecord

    async def one(session: aiohttp.ClientSession, url: str, record: RequestRecord, body: bytes) -> None:
        record.start_s = time.perf_counter()
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            record.status = response.status
            async for raw in response.content:
                line = raw.strip()
                if not line:
                    continue
                data = line.removeprefix(b"data: ")
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                now = time.perf_counter()
                if chunk.get("choices"):
                    record.event_times_s.append(now)
                    record.response_id = record.response_id or chunk.get("id")
                if chunk.get("usage"):
                    record.completion_tokens = chunk["usage"].get("completion_tokens")

    async def main() -> RunRecords:
        url = endpoint.base_url + "/v1/completions"
        limit = workload.concurrency
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session:
            semaphore = asyncio.Semaphore(limit)

            async def bounded(record: RequestRecord, body: bytes) -> None:
                async with semaphore:
                    await one(session, url, record, body)

            def records(batch: Sequence[Any]) -> list[RequestRecord]:
                now = time.perf_counter()
                return [RequestRecord(i, now, p.input_len, p.output_len) for i, p in enumerate(batch)]

            warm = records(warmup)
            warm_bodies = [request_body(workload, endpoint, p) for p in warmup]
            await asyncio.gather(*(bounded(r, b) for r, b in zip(warm, warm_bodies, strict=True)))
            measured = records(prompts)
            bodies = [request_body(workload, endpoint, p) for p in prompts]
            cpu0, start = time.process_time(), time.perf_counter()
            await asyncio.gather(*(bounded(r, b) for r, b in zip(measured, bodies, strict=True)))
            end, cpu = time.perf_counter(), time.process_time() - cpu0
        return _unchecked_run(workload, measured, start, end, cpu)

    loop = _loop_factory()()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


# --- the real `vllm bench serve` client ----------------------------------------------------------------------


@dataclass(frozen=True)
class VllmClient:
    """Where vLLM's request function is, or why it cannot be used (``problem``)."""

    origin: str  # a wheel file or an installed file; "" when none was found
    member: str  # its path inside the wheel or the distribution
    version: str
    problem: str = ""

    def describe(self) -> str:
        where = f"wheel {Path(self.origin).name}" if self.origin.endswith(".whl") else "the installed distribution"
        return f"vllm {self.version}, `{self.member}` from {where}"


def find_vllm(wheel: Path | None) -> VllmClient:
    """The request function's module in ``wheel`` (a file, or a directory holding one), else in an installed
    vLLM distribution; found by its file, without importing ``vllm``."""
    if wheel is not None:
        wheels = sorted(wheel.glob("vllm-*.whl")) if wheel.is_dir() else [wheel]
        if not wheels or not wheels[-1].is_file():
            return VllmClient("", "", "?", f"no vLLM wheel at {wheel}")
        try:
            names = set(zipfile.ZipFile(wheels[-1]).namelist())
        except (OSError, zipfile.BadZipFile) as exc:
            return VllmClient(str(wheels[-1]), "", "?", f"cannot read {wheels[-1].name}: {exc}")
        version = wheels[-1].name.split("-")[1]
        member = next((m for m in VLLM_MODULES if m in names), "")
        problem = "" if member else f"{wheels[-1].name} holds none of {', '.join(VLLM_MODULES)}"
        return VllmClient(str(wheels[-1]), member, version, problem)
    from importlib import metadata

    try:
        dist = metadata.distribution("vllm")
    except metadata.PackageNotFoundError:
        return VllmClient(
            "", "", "?", "vllm is not installed and no --vllm-wheel was given (`pip download vllm --no-deps -d DIR`)"
        )
    for member in VLLM_MODULES:
        path = Path(str(dist.locate_file(member)))
        if path.is_file():
            return VllmClient(str(path), member, dist.version)
    return VllmClient("", "", dist.version, f"vllm {dist.version} has none of {', '.join(VLLM_MODULES)}")


def load_vllm(client: VllmClient) -> ModuleType:
    """vLLM's request-function module, executed on its own: its imports are the stdlib, aiohttp, tqdm, regex."""
    name = Path(client.member).stem
    if client.origin.endswith(".whl"):
        spec = zipimport.zipimporter(str(Path(client.origin, Path(client.member).parent))).find_spec(name)
    else:
        spec = importlib.util.spec_from_file_location(name, client.origin)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {client.member} from {client.origin}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    if not callable(getattr(module, VLLM_FUNCTION, None)) or not hasattr(module, "RequestFuncInput"):
        raise ImportError(f"{client.member} has no {VLLM_FUNCTION} / RequestFuncInput")
    return module


def usable_vllm(wheel: Path | None) -> VllmClient:
    """``find_vllm``, checked by loading the module here (a missing dependency shows now, not in a child)."""
    client = find_vllm(wheel)
    if client.problem:
        return client
    try:
        load_vllm(client)
    except Exception as exc:  # anything the module's import raises
        return VllmClient(client.origin, client.member, client.version, f"loading it failed: {exc!r}")
    return client


def vllm_run(client: VllmClient, workload: Any, endpoint: Any, prompts: Sequence[Any], warmup: Sequence[Any]) -> Any:
    """`vllm bench serve`'s request function on the same prompts, as its ``benchmark()`` drives it.

    vLLM's own: the request function (its ``st``, its parsing, its ``perf_counter`` per message); copied from
    its ``benchmark()``: the session's settings, the concurrency semaphore around each call, the frozen GC heap
    and ``asyncio.run`` (no uvloop). Its outputs keep no per-event times, so they are rebuilt from its ``ttft``
    and ``itl`` (``st + ttft``, then each gap), and no response id: the worker joins them with the simulator's
    records in send order.
    """
    import asyncio
    import gc

    import aiohttp

    vllm = load_vllm(client)
    request_func = getattr(vllm, VLLM_FUNCTION)
    url = endpoint.base_url + "/v1/completions"

    def inputs(batch: Sequence[Any]) -> list[Any]:
        return [
            vllm.RequestFuncInput(
                prompt=p.prompt,
                api_url=url,
                prompt_len=p.input_len,
                output_len=p.output_len,
                model=endpoint.model,
                ignore_eos=workload.ignore_eos,
            )
            for p in batch
        ]

    async def main() -> tuple[list[Any], float, float, float]:
        limit = workload.concurrency
        connector = aiohttp.TCPConnector(
            limit=limit,
            limit_per_host=limit,
            ttl_dns_cache=300,
            use_dns_cache=True,
            keepalive_timeout=60,
            enable_cleanup_closed=True,
            force_close=False,
            ssl=False,
        )
        timeout = aiohttp.ClientTimeout(total=6 * 60 * 60)
        async with aiohttp.ClientSession(connector=connector, trust_env=True, timeout=timeout) as session:
            semaphore = asyncio.Semaphore(limit)

            async def limited(request: Any) -> Any:
                async with semaphore:
                    return await request_func(request_func_input=request, session=session, pbar=None)

            await asyncio.gather(*(limited(r) for r in inputs(warmup)))
            measured = inputs(prompts)
            gc.collect()
            gc.freeze()
            cpu0, start = time.process_time(), time.perf_counter()
            outputs = await asyncio.gather(*(asyncio.create_task(limited(r)) for r in measured))
            end, cpu = time.perf_counter(), time.process_time() - cpu0
            gc.unfreeze()
        return list(outputs), start, end, cpu

    outputs, start, end, cpu = asyncio.run(main())
    records = [vllm_record(i, p, o, start) for i, (p, o) in enumerate(zip(prompts, outputs, strict=True))]
    return _unchecked_run(workload, records, start, end, cpu)


def _unchecked_run(workload: Any, records: Any, start: float, end: float, cpu: float) -> RunRecords:
    """The records of a comparison client, which has no self-check: only its CPU and window are known."""
    from pytest_llmperf.spec import ClientCheck, RunRecords

    check = ClientCheck(
        loop_lag_p50_ms=math.nan,
        loop_lag_p99_ms=math.nan,
        loop_lag_max_ms=math.nan,
        client_cpu_s=cpu,
        wall_s=end - start,
        dispatch_lag_p99_ms=0.0,
        client_bound=False,
    )
    return RunRecords(workload=workload, records=records, bench_start_s=start, bench_end_s=end, client=check)


def vllm_record(index: int, prompt: Any, output: Any, arrival_s: float) -> Any:
    """A vLLM ``RequestFuncOutput`` in the load generator's shape."""
    from pytest_llmperf.spec import RequestRecord

    record = RequestRecord(index, arrival_s, prompt.input_len, prompt.output_len)
    record.start_s = output.start_time
    if not output.success:
        record.error_kind, record.error = "vllm", str(output.error)[-300:] or "failed"
        return record
    record.status = 200
    t = output.start_time + output.ttft
    record.event_times_s.append(t)
    for gap in output.itl:
        t += gap
        record.event_times_s.append(t)
    record.completion_tokens = output.output_tokens or None
    return record


def join_in_send_order(records: Sequence[Any], entries: Sequence[dict[str, Any]], since: float) -> None:
    """Give records without a response id the simulator's ids: the n-th request sent is the n-th it received.

    The simulator keeps no client-side id and vLLM's outputs keep no response id. A pair the clocks contradict
    (received before it was sent) is left unjoined and counted as unmatched.
    """
    waiting = sorted((r for r in records if r.ok and not r.response_id), key=lambda r: r.start_s)
    received = sorted((e for e in entries if e["received_at"] >= since), key=lambda e: e["received_at"])
    for record, entry in zip(waiting, received, strict=False):
        if record.start_s <= entry["received_at"] <= record.event_times_s[0]:
            record.response_id = entry["id"]


def run_child(spec: dict[str, Any], core: int | None, timeout_s: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        preexec_fn=pin_to(core),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- aggregation and reporting -------------------------------------------------------------------------------


def median_of(runs: Sequence[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in runs if r.get(key) is not None and not math.isnan(float(r[key]))]
    return statistics.median(values) if values else math.nan


def keeps_up(s: Scenario, runs: Sequence[dict[str, Any]]) -> tuple[bool, list[str]]:
    """Scenario (a)'s "no falling behind": per-criterion reasons when it falls behind."""
    problems: list[str] = []
    ratio = median_of(runs, "received_ev_s") / median_of(runs, "intended_ev_s")
    if not ratio >= KEEP_UP_RATE:
        problems.append(f"received/intended event rate {ratio:.3f} < {KEEP_UP_RATE}")
    itl, itl_intended = median_of(runs, "itl_p50_ms"), median_of(runs, "itl_p50_intended_ms")
    if not abs(itl - itl_intended) <= KEEP_UP_ITL_REL * itl_intended:
        problems.append(f"ITL p50 {itl:.3f} ms vs intended {itl_intended:.3f} ms (> {KEEP_UP_ITL_REL:.0%} apart)")
    if s.step_ms is not None and not median_of(runs, "lag_p99_ms") < s.step_ms:
        problems.append(f"p99 lag behind the intended time {median_of(runs, 'lag_p99_ms'):.2f} ms >= one step")
    if any(r["ok"] != r["requests"] for r in runs):
        problems.append("failed requests: " + ", ".join(sorted({e for r in runs for e in r["errors"]})))
    return not problems, problems


def verdict(s: Scenario, runs: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    us = median_of(runs, "us_per_event")
    notes = [] if us <= s.target_us else [f"{us:.1f} µs/event > {s.target_us:g}"]
    if s.key == "a":
        notes += keeps_up(s, runs)[1]
    return ("PASS" if not notes else "MISS"), notes


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def variant_text(variant: str, runs: Sequence[dict[str, Any]]) -> str:
    """The variant's name and what its runs actually used."""
    loop = "uvloop" if all(r["uvloop"] for r in runs) else "asyncio"
    parser = "orjson" if all(r["orjson"] for r in runs) else "json"
    return f"{variant} ({loop}, {parser})"


def row(s: Scenario, variant: str, runs: Sequence[dict[str, Any]]) -> str:
    us = [float(r["us_per_event"]) for r in runs]
    spread = f" ({min(us):.1f}–{max(us):.1f})" if len(us) > 1 else ""
    recv, intended = median_of(runs, "received_ev_s"), median_of(runs, "intended_ev_s")
    verdict_text, _ = verdict(s, runs)
    cells = [
        f"({s.key}) {s.title}",
        variant_text(variant, runs),
        str(len(runs)),
        f"{int(median_of(runs, 'events')):,}",
        f"{statistics.median(us):.1f}{spread}",
        f"≤ {s.target_us:g}",
        verdict_text,
        fmt(recv, 0),
        fmt(intended, 0),
        fmt(recv / intended, 3),
        f"{fmt(median_of(runs, 'itl_p50_ms'), 3)} / {fmt(median_of(runs, 'itl_p50_intended_ms'), 3)}",
        fmt(median_of(runs, "lag_p99_ms"), 2),
        fmt(median_of(runs, "events_per_read"), 2),
        f"{fmt(median_of(runs, 'loop_lag_p50_ms'), 2)} / {fmt(median_of(runs, 'loop_lag_p99_ms'), 2)}",
        f"{median_of(runs, 'cpu_fraction'):.0%}",
        "yes" if any(r["client_bound"] for r in runs) else "no",
    ]
    return table_row(cells)


def table(results: Sequence[tuple[Scenario, str, list[dict[str, Any]]]]) -> str:
    return "\n".join([TABLE_HEADER, table_rule(TABLE_HEADER), *(row(s, v, runs) for s, v, runs in results)])


DETAIL_HEADER = (
    "| scenario | variant | delivery p50/p99 ms | server late p50/p99 ms | lag p50/max ms | ITL p99 ms meas / intended "
    "| user+sys s (whole call) | client core busy | server CPU | server core busy | other load client / server core "
    "| disturbed runs | loop lag max ms | unread wait mean ms / p99 KiB | reasons |"
)


def detail_row(s: Scenario, variant: str, runs: Sequence[dict[str, Any]]) -> str:
    def frac(key: str) -> str:
        value = median_of(runs, key)
        return "–" if math.isnan(value) else f"{value:.0%}"

    reasons = sorted({reason for r in runs for reason in r["client_reasons"]})
    cells = [
        f"({s.key})",
        variant_text(variant, runs),
        f"{fmt(median_of(runs, 'delivery_p50_ms'), 2)} / {fmt(median_of(runs, 'delivery_p99_ms'), 2)}",
        f"{fmt(median_of(runs, 'server_late_p50_ms'), 2)} / {fmt(median_of(runs, 'server_late_p99_ms'), 2)}",
        f"{fmt(median_of(runs, 'lag_p50_ms'), 2)} / {fmt(median_of(runs, 'lag_max_ms'), 1)}",
        f"{fmt(median_of(runs, 'itl_p99_ms'), 3)} / {fmt(median_of(runs, 'itl_p99_intended_ms'), 3)}",
        f"{fmt(median_of(runs, 'cpu_call_user_s'), 2)} + {fmt(median_of(runs, 'cpu_call_sys_s'), 2)}",
        frac("client_core_busy"),
        frac("server_cpu_fraction"),
        frac("server_core_busy"),
        f"{frac('foreign_client_core')} / {frac('foreign_server_core')}",
        f"{sum(disturbed(r) for r in runs)}/{len(runs)}",
        fmt(median_of(runs, "loop_lag_max_ms"), 1),
        f"{fmt(median_of(runs, 'unread_wait_mean_ms'), 2)} / {fmt(median_of(runs, 'unread_p99_kib'), 0)}",
        "; ".join(reasons) or "–",
    ]
    return table_row(cells)


def detail_table(results: Sequence[tuple[Scenario, str, list[dict[str, Any]]]]) -> str:
    rule = table_rule(DETAIL_HEADER)
    return "\n".join([DETAIL_HEADER, rule, *(detail_row(s, v, runs) for s, v, runs in results)])


def reference_variant(results: Sequence[tuple[Scenario, str, list[dict[str, Any]]]]) -> str | None:
    """The vLLM client the others are compared with: the real one when it ran, else the rewrite."""
    ran = {variant for _, variant, _ in results}
    return next((v for v in ("vllm", "vllm-style") if v in ran), None)


def summary_lines(results: Sequence[tuple[Scenario, str, list[dict[str, Any]]]]) -> list[str]:
    lines = []
    name = reference_variant(results)
    for s, variant, runs in results:
        if variant != "installed" and not variant.startswith("installed@"):
            continue
        verdict_text, notes = verdict(s, runs)
        us = median_of(runs, "us_per_event")
        line = f"- ({s.key}) {s.title}{'' if variant == 'installed' else f' [{variant}]'}: {us:.1f} µs/event "
        line += f"(target ≤ {s.target_us:g})"
        if s.key == "a":
            ok, _ = keeps_up(s, runs)
            line += f", {'keeps up with' if ok else 'falls behind'} the server's schedule"
        line += f" → **{verdict_text}**" + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(line)
        reference = next((r for t, v, r in results if t is s and v == name), None)
        if name and reference:
            lines.append(f"  - {relative_line(s, runs, name, reference)}")
    return lines


def relative_line(s: Scenario, runs: Sequence[dict[str, Any]], name: str, reference: Sequence[dict[str, Any]]) -> str:
    """Ours against the vLLM client ``name`` of the same, interleaved runs: what holds across machines.

    The issue's absolute targets were set on a machine where `vllm bench serve`'s client needed
    DESIGN_REFERENCE_US per event; the same fraction of the reference measured here is the target's
    equivalent on this machine.
    """
    ratios = [float(a["us_per_event"]) / float(b["us_per_event"]) for a, b in zip(runs, reference, strict=False)]
    ratio = statistics.median(ratios)
    ref_us = median_of(reference, "us_per_event")
    drained = median_of(runs, "received_ev_s") / median_of(reference, "received_ev_s")
    if s.relative_target is not None:
        wanted = s.relative_target
        target = f"the target is ≤ {wanted:.2f}× of it, {wanted * ref_us:.1f} µs here"
    else:
        wanted = s.target_us / DESIGN_REFERENCE_US[s.key]
        target = (
            f"the target is {s.target_us:g} of {DESIGN_REFERENCE_US[s.key]:g} µs = {wanted:.2f}× on the machine the "
            f"targets were set on, {wanted * ref_us:.1f} µs here"
        )
    return (
        f"vs the {name} client in the same runs ({ref_us:.1f} µs/event): {ratio:.2f}× its CPU per event, "
        f"{drained:.2f}× its received events/s (per-repeat {min(ratios):.2f}–{max(ratios):.2f}); {target} "
        f"→ **{'PASS' if ratio <= wanted else 'MISS'}** relative"
    )


def client_lines(variants: Sequence[str], vllm: VllmClient | None) -> list[str]:
    """Which client each variant is, and whether the real vLLM one could be loaded (and if not, why)."""
    lines = [f"- `{v}`: {CLIENTS[v]}" + (f"; {vllm.describe()}" if v == "vllm" and vllm else "") for v in variants]
    if vllm is not None and vllm.problem:
        lines.append(
            f"- the real `vllm bench serve` client was not used: {vllm.problem}. Tried: find "
            f"`{VLLM_MODULES[0]}` (or `{VLLM_MODULES[1]}`) in the wheel given with --vllm-wheel or in an installed "
            "`vllm` distribution, and load it by path (needs aiohttp, tqdm, regex; never `import vllm`)"
        )
    return lines


def write_results(path: Path, machine: dict[str, Any], results: Sequence[tuple[Scenario, str, list[dict[str, Any]]]],
                  repeats: int, retries: int, quick: bool, clients: Sequence[str],
                  notes: Sequence[str]) -> None:  # fmt: skip
    used = results[0][2][0] if results else {}
    load = machine["loadavg_start"]
    lines = [
        "# Client capacity",
        "",
        f"Written by `python benchmarks/client_capacity.py{' --quick' if quick else ''}`. Client CPU per streamed "
        "event and "
        "whether the load generator keeps up with the simulator's schedule; see the script's docstring for "
        "the method.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}; `nproc` = {machine['nproc']}; kernel {machine['kernel']}",
        f"- Python {machine['python']}; aiohttp {machine['aiohttp']}; uvloop {machine['uvloop']}; "
        f"orjson {machine['orjson']}",
        f"- installed variant used uvloop: {'yes' if used.get('uvloop') else 'no'}, orjson: "
        f"{'yes' if used.get('orjson') else 'no'}",
        f"- client pinned to core {machine['client_core']}, simulator to core {machine['server_core']}",
        f"- commit {machine['commit']}, {machine['date']}; load average at start "
        + (", ".join(f"{x:.2f}" for x in load) if load else "unknown"),
        *(f"- {note}" for note in notes),
        "",
        "## Clients compared",
        "",
        *clients,
        "",
        "## Targets (installed configuration)",
        "",
        *summary_lines(results),
        "",
        "## Figures",
        "",
        f"Median over {repeats} run(s) per row, each in a fresh client process (min–max of µs/event in "
        "brackets). `received ev/s` and `intended ev/s` count the same events, over the span between the first "
        "and the last one as the client stamped them and as the simulator intended them. `lag` = client stamp "
        "− intended time of each event.",
        "",
        table(results),
        "",
        "Workloads:",
        "",
        *sorted({f"- ({s.key}) {s.workload_text()}" for s, _, _ in results}),
        "",
        "Reading the figures: in (a) every connection gets one chunk per 10 ms step, so each read carries one "
        "event (`ev/read`); keeping up means the received rate equals the intended one, the ITL median equals "
        "the intended step and 99 % of events are stamped less than one step after their intended time. In (b) "
        "the simulator writes as fast as it can without waiting for the client (`--decode-ms 0`), so some part "
        "of the pipeline is always the bottleneck. Where the client is slower than the simulator, events queue in "
        "its socket buffers, a read carries many of them, and the lag, loop-lag, `unread wait` and client-bound "
        "columns measure that queue, not a measurement error; where the simulator is slower (its `server CPU` "
        "near a full core, `delivery` well under a millisecond), the client keeps up. The target there is CPU per "
        "event only, and a client that falls behind pays less per event (fewer, larger reads), so compare it "
        "together with `recv/intended` and `delivery`; the `vllm` and `vllm-style` clients stamp each event "
        "with its own clock reading, so their `ev/read` is 1 whatever their reads carry. The intended times of "
        "(b) are the simulator's own schedule, which restarts from 'now' whenever its loop falls 10 ms behind. "
        "In (c) each stream's 400 events arrive in one write every 0.4 s and both clients drain a burst well "
        "before the next, so both read the same bursts and their CPU per event compares the code, not the "
        "reads; the lag and loop-lag columns there are the time to drain a burst of 64 × 400 events, and "
        "`intended` times are per decode step, up to 0.4 s before the burst that carries them. In (d) the same "
        "bursts come as fast as the simulator can write them, so `received ev/s` is what each client drains.",
        "",
        "## Where the time goes",
        "",
        "`delivery` = client stamp − the simulator's actual write; `server late` = actual write − intended "
        "time; `user+sys` = the whole `loadgen.run()` call including warmup and set-up; `busy` = the "
        "pinned core's busy fraction from `/proc/stat` during the run (everything on that core, not only our "
        "process); `other load` = busy minus our own process on that core (other processes, interrupts); a run "
        f"with >= {QUIET_LIMIT:.0%} other load on either core counts as disturbed and is repeated (up to {retries} "
        "times) "
        "— `disturbed runs` counts those kept anyway.",
        "",
        detail_table(results),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


# --- main ------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run; writes no results file")
    parser.add_argument("--repeats", type=int, default=None, help="runs per scenario and variant (default 3; 1 quick)")
    parser.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated, from {', '.join(VARIANTS)} (default: all; quick: installed)",
    )
    parser.add_argument("--scenarios", default="a,b,c,d", help="comma-separated, from a, b, c, d")
    add_core_options(parser)
    add_quiet_options(parser, "run")
    parser.add_argument(
        "--vllm-wheel",
        type=Path,
        default=None,
        metavar="PATH",
        help="a vLLM wheel, or a directory holding one (`pip download vllm --no-deps -d DIR`), to take "
        "`vllm bench serve`'s request function from (default: an installed vllm distribution, if any)",
    )
    parser.add_argument("--note", action="append", default=[], help="a line for the results' machine section")
    add_source_option(parser, "also run the load generator of the checkout DIR as variant installed@LABEL")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    sources: dict[str, str] = {}
    for label, directory in checkouts(args).items():
        name = f"installed@{label}"
        sources[name] = directory
        VARIANTS[name] = ()
        CLIENTS[name] = f"pytest-llmperf's load generator from another checkout, `{label}`"
    client_core, server_core = pinned_cores(args)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.retries is None:
        args.retries = 0 if args.quick else 3
    variants = (args.variants or ("installed" if args.quick else ",".join(VARIANTS))).split(",")
    variants += [name for name in sources if name not in variants]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    vllm = usable_vllm(args.vllm_wheel) if {"vllm", "vllm-style"} & set(variants) else None
    if vllm is not None and args.variants is None:  # the rewrite stands in only for a missing real client
        variants.remove("vllm-style" if not vllm.problem else "vllm")
    if vllm is not None and vllm.problem and "vllm" in variants:
        print(f"the real vLLM client cannot be used: {vllm.problem}", file=sys.stderr)
        return 2
    clients = client_lines(variants, vllm)
    wanted = set(args.scenarios.split(","))
    machine = machine_info(client_core, server_core)
    print(machine_banner(machine))
    print("clients:", *clients, sep="\n")

    results: list[tuple[Scenario, str, list[dict[str, Any]]]] = []
    for s in scenarios(args.quick):
        if s.key not in wanted:
            continue
        with simulator(s.sim_args, server_core) as (url, pid):
            # Interleaved (each repeat runs every variant once, back to back): a shared VM's speed drifts by
            # tens of percent over minutes, and the variants are compared with each other.
            runs_of: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
            for i in range(repeats):
                for variant in variants:
                    spec = {
                        "url": url,
                        "server_pid": pid,
                        "client_core": client_core,
                        "server_core": server_core,
                        "variant": variant,
                        "hide": VARIANTS[variant],
                        "concurrency": s.concurrency,
                        "input_len": s.input_len,
                        "output_len": s.output_len,
                        "num_prompts": s.num_prompts,
                        "seed": i,
                        "vllm": asdict(vllm) if vllm is not None else None,
                        "source": sources.get(variant),
                    }
                    for attempt in range(args.retries + 1):
                        wait_until_quiet((client_core, server_core), QUIET_LIMIT, args.wait_quiet)
                        started = time.perf_counter()
                        result = run_child(spec, client_core, timeout_s=300)
                        result["attempts"] = attempt + 1
                        print(
                            f"({s.key}) {variant} run {i + 1}/{repeats}: {result['us_per_event']:.1f} µs/event, "
                            f"{result['events']:,} events, {result['received_ev_s']:,.0f} ev/s received vs "
                            f"{result['intended_ev_s']:,.0f} intended ({time.perf_counter() - started:.1f} s)",
                            flush=True,
                        )
                        if not disturbed(result):
                            break
                        print(
                            f"  other processes loaded the pinned cores (client core +"
                            f"{result['foreign_client_core'] or 0:.0%}, simulator core +"
                            f"{result['foreign_server_core'] or 0:.0%})"
                            + (": repeating" if attempt < args.retries else ": kept, no retries left"),
                            flush=True,
                        )
                    runs_of[variant].append(result)
            results.extend((s, variant, runs_of[variant]) for variant in variants)

    print()
    print(table(results))
    print()
    print(detail_table(results))
    print()
    for line in summary_lines(results):
        print(line.replace("**", ""))
    path = results_path(args, RESULTS_PATH)
    if path is not None:
        write_results(path, machine, results, repeats, args.retries, args.quick, clients, args.note)
        print(f"\nwrote {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
