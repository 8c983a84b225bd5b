"""Splitting a run across client shards and merging it back: known answers, no processes."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from pytest_llmperf.client import shards
from pytest_llmperf.client.loadgen import arrival_offsets
from pytest_llmperf.client.rayshards import ClockOffset, estimate_offset, shard_shift
from pytest_llmperf.spec import ClientCheck, Prompt, RequestRecord, RunRecords, Workload


def prompts(n: int, **extra: object) -> list[Prompt]:
    return [Prompt(prompt=[i], input_len=1, output_len=2, **extra) for i in range(n)]  # type: ignore[arg-type]


def check(**overrides: object) -> ClientCheck:
    base: dict[str, object] = {
        "loop_lag_p50_ms": 0.1,
        "loop_lag_p99_ms": 1.0,
        "loop_lag_max_ms": 2.0,
        "client_cpu_s": 0.5,
        "wall_s": 2.0,
        "dispatch_lag_p99_ms": 0.0,
        "client_bound": False,
    }
    return ClientCheck(**{**base, **overrides})  # type: ignore[arg-type]


def test_closed_loop_deals_the_slots_and_the_prompts_round_robin() -> None:
    w = Workload(num_prompts=10, concurrency=5)
    plans = shards.split(w, prompts(10), prompts(4), 2)
    assert [p.concurrency for p in plans] == [3, 2]
    # Slots 0..4 go to shards 0, 1, 0, 1, 0; prompt k to the owner of slot k mod 5: 6 prompts for 3 slots, 4 for 2.
    assert [p.indices for p in plans] == [(0, 2, 4, 5, 7, 9), (1, 3, 6, 8)]
    assert [p.prompts[1].prompt for p in plans] == [[2], [3]]
    assert [len(p.warmup_prompts) for p in plans] == [2, 2]
    assert all(p.offsets is None for p in plans)
    assert shards.shard_workload(w, plans[1]).concurrency == 2
    assert shards.shard_workload(w, plans[1]).replace(concurrency=5) == w  # nothing else changes


@pytest.mark.parametrize(("concurrency", "shards_asked"), [(3, 2), (10, 4), (7, 3), (64, 5)])
def test_every_shard_needs_as_many_rounds_as_one_process(concurrency: int, shards_asked: int) -> None:
    n = 10 * concurrency
    plans = shards.split(Workload(num_prompts=n, concurrency=concurrency), prompts(n), [], shards_asked)
    assert sum(p.concurrency or 0 for p in plans) == concurrency
    assert {len(p.prompts) / (p.concurrency or 1) for p in plans} == {10.0}  # no slot idles before the end


def test_no_more_shards_than_slots_or_prompts() -> None:
    assert len(shards.split(Workload(num_prompts=10, concurrency=2), prompts(10), [], 8)) == 2
    assert len(shards.split(Workload(num_prompts=3, request_rate=5.0, concurrency=None), prompts(3), [], 8)) == 3
    one_conversation = [Prompt(prompt="x", input_len=1, output_len=1, conversation=0, turn=t) for t in (1, 2, 3)]
    assert len(shards.split(Workload(num_prompts=1, concurrency=2, turns=3), one_conversation, [], 2)) == 1


def test_open_loop_shards_keep_the_runs_arrival_times() -> None:
    w = Workload(num_prompts=9, request_rate=10.0, concurrency=None, seed=7)
    schedule = shards.arrival_schedule(w, prompts(9))
    assert schedule == arrival_offsets(w, 9, random.Random(8))  # drawn as one process draws it
    plans = shards.split(w, prompts(9), [], 3, offsets=schedule)
    assert schedule is not None
    for plan in plans:
        assert plan.offsets == tuple(schedule[i] for i in plan.indices)
    assert sorted(t for p in plans for t in p.offsets or ()) == sorted(schedule)
    assert math.isclose(max(schedule), 0.9)  # the last arrival lands at count / rate
    assert [p.concurrency for p in plans] == [None, None, None]


def test_a_conversation_stays_in_one_shard() -> None:
    group = [
        Prompt(prompt=[c, t], input_len=2, output_len=2, conversation=c, turn=t) for c in range(3) for t in (1, 2, 3)
    ]
    plans = shards.split(Workload(num_prompts=9, concurrency=2), group, [], 2)
    assert [{p.conversation for p in plan.prompts} for plan in plans] == [{0, 2}, {1}]
    assert plans[0].indices == (0, 1, 2, 6, 7, 8)
    assert [p.turn for p in plans[1].prompts] == [1, 2, 3]


def run_of(indices: list[int], start: float, end: float, client: ClientCheck | None = None) -> RunRecords:
    records = [RequestRecord(index=i, arrival_s=start, input_len=1, output_len=2, start_s=start) for i in indices]
    for r in records:
        r.event_times_s.append(start + 0.5)
    return RunRecords(workload=Workload(), records=records, bench_start_s=start, bench_end_s=end, client=client)


def test_merge_gives_back_the_run_wide_indices_and_one_window() -> None:
    w = Workload(num_prompts=5, concurrency=2)
    plans = shards.split(w, prompts(5), [], 2)
    first = run_of([0, 1, 2], 10.0, 12.0, check(client_cpu_s=0.4))
    second = run_of([0, 1], 10.0, 12.5, check(client_bound=True, reasons=("event-loop lag p99 12 ms",)))
    second.notes.append("a note")
    merged = shards.merge(w, plans, [first, second])
    assert [r.index for r in merged.records] == [0, 1, 2, 3, 4]
    assert (merged.bench_start_s, merged.bench_end_s) == (10.0, 12.5)
    assert merged.workload == w
    assert merged.notes == ["a note"]
    client = merged.client
    assert client is not None
    assert client.client_bound
    assert client.processes == 2
    assert len(client.per_process) == 2
    assert client.reasons == ("client process 2: event-loop lag p99 12 ms",)
    assert client.client_cpu_s == pytest.approx(0.9)
    assert client.client_cpu_fraction == pytest.approx(0.9 / 2.0)


def test_shifting_a_shard_moves_every_time_and_nothing_else() -> None:
    run = run_of([0], 5.0, 6.0)
    run.records[0].last_line_s = 5.5
    shifted = shards.shift_times(run, 100.0)
    r = shifted.records[0]
    assert (r.arrival_s, r.start_s, r.last_line_s, list(r.event_times_s)) == (105.0, 105.0, 105.5, [105.5])
    assert (shifted.bench_start_s, shifted.bench_end_s) == (105.0, 106.0)
    assert pickle.loads(pickle.dumps(shifted)).records[0].event_times_s[0] == 105.5


def test_clock_offset_from_the_probe_with_the_shortest_round_trip() -> None:
    # The actor's clock is 3 s ahead. Slow probes would misplace it; the 2 ms one bounds it to ±1 ms.
    probes = [(100.0, 103.5, 101.0), (200.0, 203.001, 200.002), (300.0, 303.2, 300.4)]
    offset, uncertainty = estimate_offset(probes)
    assert offset == pytest.approx(3.0)
    assert uncertainty == pytest.approx(0.001)


def test_shard_times_map_onto_the_drivers_monotonic_clock() -> None:
    # Driver: wall = perf + 1000. Shard: wall = perf + 5000, and its wall clock runs 2 s ahead of the driver's.
    offset = ClockOffset(offset_s=2.0, uncertainty_s=0.0, same_node=False)
    shift = shard_shift(offset, shard_wall_minus_perf=5000.0, driver_wall_minus_perf=1000.0)
    shard_perf = 10.0  # shard wall 5010 = driver wall 5008 = driver perf 4008
    assert shard_perf + shift == pytest.approx(4008.0)
    same = ClockOffset(offset_s=0.0, uncertainty_s=0.0, same_node=True)
    assert shard_shift(same, 5000.0, 1000.0) == 0.0  # one host, one monotonic clock


def test_a_multi_turn_run_has_one_arrival_per_conversation_in_every_shard() -> None:
    w = Workload(num_prompts=4, request_rate=10.0, concurrency=None, turns=2, api="chat")
    group = [Prompt(prompt="x", input_len=1, output_len=1, conversation=c, turn=t) for c in range(4) for t in (1, 2)]
    schedule = shards.arrival_schedule(w, group)
    assert schedule is not None
    assert schedule[0::2] == schedule[1::2]  # a conversation's turns share its arrival
    assert len(set(schedule)) == 4
    plans = shards.split(w, group, [], 2, offsets=schedule)
    assert [p.indices for p in plans] == [(0, 1, 4, 5), (2, 3, 6, 7)]
    assert plans[1].offsets == (schedule[2], schedule[3], schedule[6], schedule[7])
