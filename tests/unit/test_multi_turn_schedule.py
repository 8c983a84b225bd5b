"""Multi-turn scheduling against the simulator: a conversation's turns go in order, each after the previous reply
(and the think time), a concurrency slot holds a conversation, conversations arrive at the rate, a failed turn
ends its conversation; and on the simulator's prefix cache later turns skip the prefill of what they share."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import httpx
import pytest

from pytest_llmperf.client import loadgen, tokenizer
from pytest_llmperf.client.datasets import build_prompts
from pytest_llmperf.harness.runner import planned_prompts
from pytest_llmperf.spec import Endpoint, RequestRecord, RunRecords, Workload


@pytest.fixture
def sim(start_sim: type) -> str:
    return start_sim("--decode-ms", "1", "--decode-ms-per-seq", "0", "--jitter", "0").url


def run(url: str, workload: Workload, contents: str = "run0") -> RunRecords:
    endpoint = Endpoint(url=url, model="llmperf-sim")
    with tokenizer.control_client(endpoint) as client:
        context = tokenizer.prompt_context(workload, endpoint, client)
        prompts = build_prompts(workload, planned_prompts(workload), context, contents=contents)
    return loadgen.run(workload, endpoint, prompts)


def by_conversation(records: list[RequestRecord]) -> dict[int | None, list[RequestRecord]]:
    out: dict[int | None, list[RequestRecord]] = {}
    for r in sorted(records, key=lambda r: r.index):
        out.setdefault(r.conversation, []).append(r)
    return out


def test_a_turn_is_sent_only_after_the_previous_reply_ended_and_the_gap(sim: str) -> None:
    w = Workload(api="chat", input_len=16, output_len=4, num_prompts=4, turns=3, concurrency=2, turn_gap_s=0.02)
    records = run(sim, w).records
    assert all(r.ok for r in records)
    assert len(records) == 12
    conversations = by_conversation(records)
    assert sorted(conversations) == [0, 1, 2, 3]
    for turns in conversations.values():
        assert [r.turn for r in turns] == [1, 2, 3]
        for before, after in itertools.pairwise(turns):
            assert after.arrival_s >= before.event_times_s[-1] + 0.02  # due once the reply ended, plus the gap
            assert after.start_s >= after.arrival_s
            assert after.prompt_tokens is not None
            assert before.prompt_tokens is not None
            assert after.prompt_tokens > before.prompt_tokens  # the history grows


def test_a_concurrency_slot_holds_a_conversation_for_all_its_turns(sim: str) -> None:
    w = Workload(input_len=8, output_len=3, num_prompts=6, turns=3, concurrency=2)
    conversations = by_conversation(run(sim, w).records)
    spans = [(turns[0].start_s, turns[-1].event_times_s[-1]) for turns in conversations.values()]
    for start, _ in spans:  # at no conversation's start are more than 2 conversations under way
        assert sum(a <= start <= b for a, b in spans) <= 2


def test_in_open_loop_conversations_arrive_at_the_rate(sim: str) -> None:
    w = Workload(input_len=8, output_len=2, num_prompts=5, turns=2, request_rate=50.0)
    records = run(sim, w).records
    firsts = [turns[0] for turns in by_conversation(records).values()]
    start = min(r.arrival_s for r in firsts)
    offsets = loadgen.arrival_offsets(w, 5, random.Random(w.seed + 1))  # one arrival per conversation
    assert [round(r.arrival_s - start, 6) for r in firsts] == [round(o - offsets[0], 6) for o in offsets]


def test_a_failed_turn_ends_its_conversation(start_sim: type) -> None:
    url = start_sim("--decode-ms", "1", "--jitter", "0", "--fault", "http_500:every=4").url
    w = Workload(input_len=8, output_len=2, num_prompts=4, turns=3, concurrency=1)
    records = run(url, w).records
    failed = [r for r in records if not r.ok]
    assert failed
    for r in failed:
        later = [x for x in records if x.conversation == r.conversation and x.turn > r.turn]
        assert later == []


def test_prompts_per_turn_are_what_the_simulator_saw(sim: str) -> None:
    w = Workload(api="chat", input_len=20, output_len=3, num_prompts=2, turns=3, concurrency=2)
    records = run(sim, w).records
    assert all(r.prompt_tokens == r.input_len for r in records)  # exact lengths, the history included


def long_first_turn(path: Path) -> Path:
    """Conversations as chat usually goes: a long first message (a document), then short follow-ups."""
    rng = random.Random(7)

    def text(n: int) -> str:
        return " ".join(rng.choice(("river", "stone", "bridge", "mill", "grain")) for _ in range(n))

    data = [
        {
            "conversations": [
                {"from": "human" if i % 2 == 0 else "gpt", "value": text(300 if i == 0 else 8)} for i in range(6)
            ]
        }
        for _ in range(4)
    ]
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("cache", [True, False])
def test_later_turns_skip_the_prefill_of_what_the_prefix_cache_holds(
    start_sim: type, tmp_path: Path, cache: bool
) -> None:
    # Prefill-bound: 1 ms per prompt token, 1 ms steps. The simulator's intended TTFT is its model's answer,
    # not a measured time.
    args = ["--decode-ms", "1", "--decode-ms-per-seq", "0", "--prefill-tok-s", "1000", "--jitter", "0"]
    url = start_sim(*args, *(() if cache else ("--no-prefix-cache",))).url
    w = Workload(
        api="chat",
        dataset=str(long_first_turn(tmp_path / "chats.json")),
        dataset_output_len=4,
        num_prompts=2,
        turns=3,
        concurrency=1,  # one request at a time: no prefill of another request inside a TTFT
        compat="sglang",
    )
    records = run(url, w).records
    assert all(r.ok for r in records)
    intended = {s["id"]: s["intended_ttft_ms"] for s in httpx.get(f"{url}/sim/requests", timeout=10).json()["requests"]}
    for turns in by_conversation(records).values():
        first, *later = (intended[r.response_id] for r in turns)
        if cache:
            assert all(t < first / 4 for t in later)  # only the new turn (and the last reply) is computed
            assert all((r.cached_tokens or 0) > 0 for r in turns[1:])
        else:
            assert all(t > first for t in later)  # the whole, longer history is prefilled again
