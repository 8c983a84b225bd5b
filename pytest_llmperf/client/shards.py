"""Splitting one run across several client shards, and merging what they measured back into one run.

Pure: no processes, no clock. A shard is one load generator (an event loop with its own connection pool) in a
process of this host (:mod:`pytest_llmperf.client.procs`) or a Ray actor on any node
(:mod:`pytest_llmperf.client.rayshards`). Every shard sends its share of the run's requests from one common
start instant; their records are merged into one :class:`RunRecords` on one clock, so every metric, verdict and
report is computed exactly as for a run from one process.

How the work is split, so that the load the server sees is the one the workload asks for:

- closed loop (``concurrency``, infinite rate): the concurrency slots are dealt out as evenly as possible, and
  the prompts round-robin in dataset order. With one process the slots take prompts from one queue; split,
  each shard's slots take from their own share, so the last requests may end a little less evenly.
- open loop (``request_rate``, or a trace): the arrival schedule is drawn once, for the whole run, and each
  shard gets the arrivals of its prompts at their original times; a ``max_concurrency`` cap is dealt out as the
  slots are. The server sees the same arrivals as from one process.
- a multi-turn conversation stays in one shard (its turns depend on each other).
"""

from __future__ import annotations

import dataclasses
import math
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pytest_llmperf.spec import ClientCheck, Prompt, RequestRecord, RunRecords, Workload


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """One shard's share of a run. ``indices[i]`` is the run-wide index of the shard's ``prompts[i]``."""

    shard: int
    prompts: tuple[Prompt, ...]
    indices: tuple[int, ...]
    warmup_prompts: tuple[Prompt, ...]
    concurrency: int | None  # the shard's slots (closed loop) or its share of the max_concurrency cap
    offsets: tuple[float, ...] | None  # open loop: seconds after the common start each prompt is due


def warmup_time_s(workload: Workload, warmup: int) -> float:
    """The longest a shard's ``warmup`` requests may take: rounds of ``concurrency`` (all at once without one),
    each up to the request timeout."""
    rounds = math.ceil(warmup / (workload.concurrency or warmup)) if warmup else 0
    return rounds * workload.request_timeout_s


def nothing_measured(workload: Workload) -> RunRecords:
    """The run of an interrupt that came before any shard measured anything."""
    now = time.perf_counter()
    return RunRecords(workload=workload, records=[], bench_start_s=now, bench_end_s=now, interrupted=True)


def shard_workload(workload: Workload, plan: ShardPlan) -> Workload:
    """The workload a shard runs: the run's, with the shard's share of the concurrency."""
    if plan.concurrency == workload.concurrency:
        return workload
    return dataclasses.replace(workload, concurrency=plan.concurrency)


def _most_shards(workload: Workload, groups: int) -> int:
    """The most shards a run of ``groups`` prompts (conversations, in a multi-turn run) can be split into: each
    needs one of them and a slot of the concurrency."""
    most = max(1, groups)
    if workload.concurrency:
        most = min(most, workload.concurrency)
    return most


def split(
    workload: Workload,
    prompts: Sequence[Prompt],
    warmup_prompts: Sequence[Prompt],
    shards: int,
    *,
    offsets: Sequence[float] | None = None,
) -> list[ShardPlan]:
    """The run's requests dealt out to ``shards`` shards (fewer when the workload cannot feed that many).

    ``offsets``: the open-loop arrival schedule of ``prompts`` (see :func:`arrival_schedule`); None in closed
    loop.
    """
    groups = conversation_groups(prompts)
    count = min(shards, _most_shards(workload, len(groups)))
    owned = _deal(groups, workload.concurrency, count)
    warm = _deal(conversation_groups(warmup_prompts), workload.concurrency, count)
    plans = []
    for shard, indices in enumerate(owned):
        indices.sort()
        plans.append(
            ShardPlan(
                shard=shard,
                prompts=tuple(prompts[i] for i in indices),
                indices=tuple(indices),
                warmup_prompts=tuple(warmup_prompts[i] for i in sorted(warm[shard])),
                concurrency=_share(workload.concurrency, shard, count),
                offsets=None if offsets is None else tuple(offsets[i] for i in indices),
            )
        )
    return plans


def arrival_schedule(workload: Workload, prompts: Sequence[Prompt]) -> list[float] | None:
    """The open-loop arrival offsets of a run (None in closed loop), drawn as one process draws them (a trace's
    own times; one arrival per conversation in a multi-turn run)."""
    from pytest_llmperf.client.loadgen import prompt_offsets  # aiohttp: only where a run is made

    if workload.closed_loop:
        return None
    return prompt_offsets(workload, prompts)


def _deal(groups: Sequence[Sequence[int]], slots: int | None, count: int) -> list[list[int]]:
    """Prompt indices per shard. The concurrency slots are dealt round-robin (slot j to shard j mod count), and
    the k-th prompt (or conversation) goes to the shard that owns slot k mod concurrency: each shard gets prompts
    in proportion to its slots, so every slot stays busy to the end as from one process (c = 3 over 2 shards:
    two slots and two thirds of the prompts, one slot and one third)."""
    owned: list[list[int]] = [[] for _ in range(count)]
    for number, members in enumerate(groups):
        slot = number % slots if slots else number
        owned[slot % count].extend(members)
    return owned


def _share(total: int | None, shard: int, count: int) -> int | None:
    if total is None or total == 0:
        return total
    return total // count + (1 if shard < total % count else 0)


def conversation_groups(prompts: Sequence[Prompt]) -> list[list[int]]:
    """Prompt indices by conversation, in dataset order of their first turns: the turns of one conversation stay
    together, in order; a prompt of no conversation is a group of its own."""
    groups: list[list[int]] = []
    by_conversation: dict[object, list[int]] = {}
    for i, prompt in enumerate(prompts):
        conversation = prompt.conversation
        if conversation is None:
            groups.append([i])
            continue
        group = by_conversation.get(conversation)
        if group is None:
            group = by_conversation[conversation] = []
            groups.append(group)
        group.append(i)
    return groups


def shift_times(run: RunRecords, shift_s: float) -> RunRecords:
    """``run`` with every time moved by ``shift_s`` seconds: a shard's clock onto the driver's."""
    if shift_s == 0.0:
        return run
    for record in (*run.records, *run.warmup_records):
        record.arrival_s += shift_s
        record.start_s += shift_s
        if record.last_line_s is not None:
            record.last_line_s += shift_s
        record.event_times_s = _shifted(record.event_times_s, shift_s)
    run.bench_start_s += shift_s
    run.bench_end_s += shift_s
    return run


def _shifted(times: Sequence[float], shift_s: float) -> array[float]:
    return array("d", [t + shift_s for t in times])


def merge(workload: Workload, plans: Sequence[ShardPlan], runs: Sequence[RunRecords]) -> RunRecords:
    """The shards' runs (on one clock, in the order of ``plans``) as one run of ``workload``.

    Records get their run-wide indices back; the window runs from the common start to the last shard's end.
    """
    records: list[RequestRecord] = []
    warmup: list[RequestRecord] = []
    for plan, run in zip(plans, runs, strict=True):
        for record in run.records:
            record.index = plan.indices[record.index]
            records.append(record)
        warmup.extend(run.warmup_records)
    records.sort(key=lambda r: r.index)
    for number, record in enumerate(warmup):
        record.index = number
    notes: list[str] = []
    for run in runs:
        notes.extend(note for note in run.notes if note not in notes)
    checks = [run.client for run in runs]
    return RunRecords(
        workload=workload,
        records=records,
        bench_start_s=min(run.bench_start_s for run in runs),
        bench_end_s=max(run.bench_end_s for run in runs),
        warmup_records=warmup,
        client=merge_checks([c for c in checks if c is not None]) if any(c is not None for c in checks) else None,
        interrupted=any(run.interrupted for run in runs),
        notes=notes,
    )


def merge_checks(checks: Sequence[ClientCheck]) -> ClientCheck:
    """One self-check for a sharded client: client-bound when any shard is (its reasons named by shard).

    Lags and unread waits are the worst shard's; CPU is summed (a fraction above 1 means more than one core
    was used), the wall time is the longest.
    """
    if len(checks) == 1:
        return checks[0]
    reasons = tuple(f"client process {n + 1}: {reason}" for n, check in enumerate(checks) for reason in check.reasons)
    return ClientCheck(
        loop_lag_p50_ms=max(c.loop_lag_p50_ms for c in checks),
        loop_lag_p99_ms=max(c.loop_lag_p99_ms for c in checks),
        loop_lag_max_ms=max(c.loop_lag_max_ms for c in checks),
        client_cpu_s=sum(c.client_cpu_s for c in checks),
        wall_s=max(c.wall_s for c in checks),
        dispatch_lag_p99_ms=max(c.dispatch_lag_p99_ms for c in checks),
        client_bound=any(c.client_bound for c in checks),
        reasons=reasons,
        busy_poll=any(c.busy_poll for c in checks),
        unread_wait_mean_ms=_worst(c.unread_wait_mean_ms for c in checks),
        unread_p99_kib=_worst(c.unread_p99_kib for c in checks),
        unread_sockets=None
        if any(c.unread_sockets is None for c in checks)
        else sum(c.unread_sockets or 0 for c in checks),
        processes=len(checks),
        per_process=tuple(checks),
    )


def _worst(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None
