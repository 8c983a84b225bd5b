"""Refusing workloads too large for this machine, before any load is sent.

The load generator builds every prompt and request body of a run before the run starts, and keeps one socket
open per request in flight. A test with ``num_prompts=10**7`` would otherwise sit silent for minutes while the
process grows by tens of MB/s, and a concurrency above the file-descriptor limit fails its requests mid-run
with "Too many open files". These checks compare an estimate with the machine's limits and say what to change.

Pure functions of the workload and the limits (passed in), so their answers are known in unit tests;
:func:`machine_limits` reads the real ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pytest_llmperf.spec import Workload

# Memory a run holds per request, measured with tracemalloc on CPython 3.11 (token-id prompts against a
# 150k-token vocabulary) and rounded up: a list slot per prompt token plus its text in the JSON body; the
# record's timestamp, token count and flag per streamed token; the prompt, body and record objects.
BYTES_PER_INPUT_TOKEN = 16
BYTES_PER_OUTPUT_TOKEN = 80
BYTES_PER_REQUEST = 1024
# Refuse above this share of the available memory: summaries, reports and (often) the server need the rest.
MEMORY_SHARE = 0.5
# File descriptors the process needs besides the request sockets (pytest, logs, control connections).
FD_RESERVE = 64


@dataclass(frozen=True, slots=True)
class Limits:
    available_bytes: int | None  # memory available to new allocations; None: unknown, not checked
    fd_limit: int | None  # RLIMIT_NOFILE soft limit; None: unknown or unlimited, not checked
    fds_open: int = 0  # descriptors already open in this process


@dataclass(frozen=True, slots=True)
class Findings:
    refusals: tuple[str, ...] = ()  # the run cannot work: fail the test with these
    warnings: tuple[str, ...] = ()  # the run may hit a limit: say so, and run


def memory_estimate(workload: Workload, prompts: int) -> int:
    """Bytes the run's prompts, request bodies and request records take (``prompts`` includes the warmup).

    Multi-turn: ``prompts`` counts conversations, each of ``turns`` requests whose prompts carry the earlier
    turns, replies included (turn ``k`` holds ``k`` user messages and ``k - 1`` replies).
    """
    spread, turns = 1 + workload.range_ratio, workload.turns
    per_request = (
        BYTES_PER_REQUEST * turns
        + BYTES_PER_INPUT_TOKEN * workload.input_len * spread * turns * (turns + 1) / 2
        + BYTES_PER_INPUT_TOKEN * workload.output_len * spread * turns * (turns - 1) / 2
        + BYTES_PER_OUTPUT_TOKEN * workload.output_len * spread * turns
    )
    return math.ceil(prompts * per_request)


def in_flight(workload: Workload, prompts: int) -> tuple[int, bool, str]:
    """(most requests in flight at once, whether the run surely reaches that many, why, as a phrase).

    A closed loop keeps ``concurrency`` requests open; an open loop at an infinite rate sends every prompt at
    once, and the warmup is sent at once too. At a finite rate the count depends on how fast the server answers:
    if it falls behind, up to ``request_rate × request_timeout_s`` requests are open.
    """
    limit = workload.concurrency
    cap = min(prompts, limit) if limit else prompts
    if not math.isinf(workload.request_rate):
        run, certain = min(cap, math.ceil(workload.request_rate * workload.request_timeout_s)), False
        why = (
            f"request_rate={workload.request_rate:g} with request_timeout_s={workload.request_timeout_s:g} may keep "
            f"up to {run} requests in flight (if the server falls behind)"
        )
    elif limit and limit <= prompts:
        run, certain, why = limit, True, f"concurrency={limit} keeps {limit} requests in flight"
    else:
        run, certain, why = cap, True, f"sending all {cap} prompts at once keeps {cap} requests in flight"
    warmup = min(workload.warmup, limit or workload.warmup)
    if warmup > run:
        return warmup, True, f"warmup={workload.warmup} keeps {warmup} requests in flight"
    return run, certain, why


def check(workload: Workload, prompts: int, limits: Limits) -> Findings:
    """What stops ``workload`` (with ``prompts`` measured prompts) from running here, and what may."""
    refusals: list[str] = []
    warnings: list[str] = []
    memory = _memory_problem(workload, prompts, limits)
    if memory:
        refusals.append(memory)
    sockets, certain = _socket_problem(workload, prompts, limits)
    if sockets:
        (refusals if certain else warnings).append(sockets)
    return Findings(tuple(refusals), tuple(warnings))


def _memory_problem(workload: Workload, prompts: int, limits: Limits) -> str:
    if limits.available_bytes is None:
        return ""
    needed = memory_estimate(workload, prompts + workload.warmup)
    allowed = limits.available_bytes * MEMORY_SHARE
    if needed <= allowed:
        return ""
    bound = f"num_prompts={workload.num_prompts}"
    fix = "lower num_prompts, or bound the run by time with duration_s"
    if workload.num_prompts is None:
        bound, fix = f"duration_s={workload.duration_s:g} ({prompts} prompts)", "shorten duration_s or the lengths"
    return (
        f"{bound} with input_len={workload.input_len} and output_len={workload.output_len} would hold about "
        f"{_gb(needed)} of prompts, request bodies and per-request records in memory ({BYTES_PER_INPUT_TOKEN} B "
        f"per input token, {BYTES_PER_OUTPUT_TOKEN} B per output token, {BYTES_PER_REQUEST} B per request), more "
        f"than {MEMORY_SHARE:.0%} of the {_gb(limits.available_bytes)} available: {fix} (a run of a few hundred "
        "requests is usually enough)"
    )


def _socket_problem(workload: Workload, prompts: int, limits: Limits) -> tuple[str, bool]:
    if limits.fd_limit is None:
        return "", False
    count, certain, why = in_flight(workload, prompts)
    free = limits.fd_limit - limits.fds_open - FD_RESERVE
    if count <= free:
        return "", False
    return (
        f"{why}, one socket each, but this process can open only {max(free, 0)} more "
        f"files (ulimit -n is {limits.fd_limit}, {limits.fds_open} open, {FD_RESERVE} kept in reserve): lower "
        "the concurrency (or set one), or raise the limit in the shell that starts pytest (ulimit -n 65536)",
        certain,
    )


def _gb(count: float) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e8 else f"{count / 1e6:.0f} MB"


def machine_limits() -> Limits:
    """This process's limits now: available memory (psutil), RLIMIT_NOFILE and the descriptors open."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        available: int | None = int(psutil.virtual_memory().available)
    except (OSError, RuntimeError):
        available = None
    fd_limit: int | None = None
    fds_open = 0
    try:
        import resource  # POSIX only

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fd_limit = None if soft == resource.RLIM_INFINITY else soft
        fds_open = psutil.Process().num_fds()
    except (ImportError, OSError, AttributeError, psutil.Error):
        pass
    return Limits(available_bytes=available, fd_limit=fd_limit, fds_open=fds_open)
