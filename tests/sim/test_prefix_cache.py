"""The simulator's prefix cache: known answers on the pure model, then what a client sees over HTTP."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmperf.errors import SpecError
from pytest_llmperf.sim.model import VOCAB_SIZE, Engine, PrefixCache, Sequence, SimConfig, simulate

if TYPE_CHECKING:
    from conftest import Client, Sse

B = 16
# 10 ms steps, 1 ms per prompt token: TTFT in ms is 10 + uncached prompt tokens.
SLOW_PREFILL = SimConfig(decode_ms=10, decode_ms_per_seq=0, prefill_tok_s=1000)


def fresh(n: int) -> list[int]:
    """``n`` token ids no earlier prompt began with (the HTTP tests share one server and its cache)."""
    return [random.randrange(VOCAB_SIZE) for _ in range(n)]


def ttft_ms(seq: Sequence) -> float:
    return round((seq.chunk_times[0] - seq.received_at) * 1000, 9)


# --- the pure model ----------------------------------------------------------------------------------------


def cache_holding(*prompts: list[int], capacity: int = 8192) -> PrefixCache:
    cache = PrefixCache(B, capacity)
    for ids in prompts:
        cache.insert(ids)
    return cache


@pytest.mark.parametrize(
    ("length", "cached"),
    [(100, 96), (64, 48), (65, 64), (17, 16), (16, 0), (10, 0), (1, 0)],
)
def test_a_repeated_prompt_hits_its_whole_blocks_but_always_computes_its_last_token(length: int, cached: int) -> None:
    ids = fresh(length)
    assert PrefixCache(B, 8192).lookup(ids) == 0
    assert cache_holding(ids).lookup(ids) == cached == B * ((length - 1) // B)


def test_a_shared_prefix_hits_up_to_where_the_prompts_differ() -> None:
    prefix = fresh(64)
    cache = cache_holding(prefix + fresh(20))
    assert cache.lookup(prefix + fresh(20)) == 64
    assert cache.lookup(prefix[:40] + fresh(60)) == 32  # the block holding the difference is a miss
    assert cache.lookup(fresh(100)) == 0


def test_a_block_is_keyed_by_everything_before_it() -> None:
    shared_tail = fresh(32)
    cache = cache_holding(fresh(32) + shared_tail)
    assert cache.lookup(fresh(32) + shared_tail + fresh(1)) == 0
    assert len(cache.block_keys(shared_tail)) == 2
    assert cache.block_keys(fresh(15)) == []


def test_least_recently_used_blocks_are_evicted_tail_first() -> None:
    a, b = fresh(65), fresh(33)  # 4 and 2 full blocks
    cache = cache_holding(a, b, capacity=4)
    assert len(cache) == 4
    # b evicted a's last two blocks, not its first: a still hits its head.
    assert cache.lookup(a) == 32
    assert cache.lookup(b) == 32
    cache.insert(a)  # a is most recent again, and b is evicted to make room
    assert cache.lookup(a) == 64
    assert cache.lookup(b) == 0


def test_a_prompt_longer_than_the_cache_keeps_its_head() -> None:
    ids = fresh(200)
    assert cache_holding(ids, capacity=3).lookup(ids) == 48


def test_zero_capacity_caches_nothing() -> None:
    ids = fresh(100)
    assert cache_holding(ids, capacity=0).lookup(ids) == 0
    first, again = simulate(SLOW_PREFILL.replace(prefix_cache_blocks=0), [(0.0, ids, 1), (1.0, ids, 1)])
    assert (first.cached_tokens, again.cached_tokens) == (0, 0)  # configured: a known 0, not unknown


def test_admitting_step_pays_prefill_only_for_uncached_tokens() -> None:
    ids = fresh(100)
    first, again, other = simulate(SLOW_PREFILL, [(0.0, ids, 2), (1.0, ids, 2), (2.0, fresh(100), 2)])
    assert [s.cached_tokens for s in (first, again, other)] == [0, 96, 0]
    assert [ttft_ms(s) for s in (first, again, other)] == pytest.approx([10 + 100, 10 + 4, 10 + 100])
    assert first.token_ids is None  # dropped at admission


def test_a_request_admitted_in_the_same_step_sees_the_blocks_of_those_before_it() -> None:
    ids = fresh(100)
    a, b = simulate(SLOW_PREFILL, [(0.0, ids, 1), (0.0, ids, 1)])
    assert (a.cached_tokens, b.cached_tokens) == (0, 96)
    assert ttft_ms(a) == ttft_ms(b) == pytest.approx(10 + 100 + 4)  # one step prefills both


def test_lookup_happens_at_admission_not_receipt() -> None:
    ids = fresh(100)
    cfg = SLOW_PREFILL.replace(max_batch=1)
    # b and c arrive together while a runs; c, queued behind b, is admitted after b and finds its blocks.
    a, b, c = simulate(cfg, [(0.0, 1, 3), (0.001, ids, 1), (0.002, ids, 1)])
    assert (a.cached_tokens, b.cached_tokens, c.cached_tokens) == (0, 0, 96)
    # a: steps end at 11, 21, 31 ms; then b alone (10 + 100 ms), then c alone (10 + 4 ms).
    assert list(b.chunk_times) == pytest.approx([0.141])
    assert list(c.chunk_times) == pytest.approx([0.155])


def test_prompts_given_as_lengths_are_never_cached() -> None:
    first, again = simulate(SLOW_PREFILL, [(0.0, 100, 1), (1.0, 100, 1)])
    assert (first.cached_tokens, again.cached_tokens) == (0, 0)
    assert ttft_ms(again) == pytest.approx(110)


def test_off_means_unknown_and_full_prefill() -> None:
    ids = fresh(100)
    first, again = simulate(SLOW_PREFILL.replace(prefix_cache=False), [(0.0, ids, 1), (1.0, ids, 1)])
    assert (first.cached_tokens, again.cached_tokens) == (None, None)
    assert ttft_ms(again) == pytest.approx(110)


def test_block_size_is_configurable() -> None:
    ids = fresh(100)
    _, again = simulate(SLOW_PREFILL.replace(prefix_cache_block=1), [(0.0, ids, 1), (1.0, ids, 1)])
    assert again.cached_tokens == 99


def run_one(engine: Engine, ids: list[int], at: float) -> Sequence:
    seq = Sequence(number=1, received_at=at, prompt_tokens=len(ids), max_tokens=1, token_ids=ids)
    engine.add(seq)
    engine.step(at)
    return seq


def test_config_changes_resize_or_empty_the_cache() -> None:
    ids, other = fresh(65), fresh(65)
    engine = Engine(SLOW_PREFILL)
    run_one(engine, ids, 0.0)
    run_one(engine, other, 1.0)
    engine.config = engine.config.replace(prefix_cache_blocks=4)  # shrinking evicts ids' blocks, kept other's
    assert run_one(engine, ids, 2.0).cached_tokens == 0
    engine.config = engine.config.replace(prefix_cache=False)
    assert run_one(engine, ids, 3.0).cached_tokens is None
    engine.config = engine.config.replace(prefix_cache=True)  # back on: empty
    assert run_one(engine, ids, 4.0).cached_tokens == 0
    assert run_one(engine, ids, 5.0).cached_tokens == 64
    engine.config = engine.config.replace(prefix_cache_block=8)  # other keys: empty
    assert run_one(engine, ids, 6.0).cached_tokens == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prefix_cache_block": 0}, "prefix_cache_block=0"),
        ({"prefix_cache_blocks": -1}, "prefix_cache_blocks=-1"),
        ({"prefix_cache": "no"}, "true or false"),
        ({"prefix_cache_block": 1.5}, "must be an integer"),
    ],
)
def test_bad_cache_settings_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        SimConfig().updated(changes)


def test_defaults_are_vllms() -> None:
    cfg = SimConfig()
    assert (cfg.prefix_cache, cfg.prefix_cache_block, cfg.prefix_cache_blocks) == (True, 16, 8192)


# --- over HTTP ---------------------------------------------------------------------------------------------

USAGE = {"include_usage": True}
CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}


def details(sse: Sse) -> list[Any]:
    """``prompt_tokens_details`` of every usage the stream carried (``None`` where absent)."""
    return [c["usage"].get("prompt_tokens_details") for c in sse.chunks if c.get("usage")]


def cached(sse: Sse) -> int:
    value: int = sse.chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"]
    return value


def metric(sim: Client, name: str) -> float:
    for line in sim.http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_repeated_prompt_is_served_from_the_cache_with_a_shorter_ttft(sim: Client) -> None:
    sim.configure(prefill_tok_s=1000)  # 1 ms per uncached token: 400 vs 16 ms of prefill
    ids = fresh(400)
    first = sim.completion(ids, max_tokens=2, stream_options=USAGE)
    again = sim.completion(ids, max_tokens=2, stream_options=USAGE)
    assert cached(first) == 0
    assert cached(again) == 384
    assert details(again) == [{"cached_tokens": 384}]
    a, b = sim.record(first.chunks[0]["id"]), sim.record(again.chunks[0]["id"])
    assert (a["cached_tokens"], b["cached_tokens"]) == (0, 384)
    # Intended: 2 ms step + 400 (then 16) ms prefill; a loaded machine may only start a schedule late.
    assert a["intended_ttft_ms"] == pytest.approx(402, abs=20)
    assert b["intended_ttft_ms"] == pytest.approx(18, abs=20)
    client_ttft_ms = [(s.times[0] - s.sent_at) * 1000 for s in (first, again)]
    assert client_ttft_ms[0] - client_ttft_ms[1] > 384 - 150


def test_different_prompts_share_nothing(sim: Client) -> None:
    one = sim.completion(fresh(100), max_tokens=1, stream_options=USAGE)
    two = sim.completion(fresh(100), max_tokens=1, stream_options=USAGE)
    assert (cached(one), cached(two)) == (0, 0)


def test_text_and_chat_prompts_are_cached_by_their_token_ids(sim: Client) -> None:
    words = " ".join(f"w{random.randrange(10**9)}" for _ in range(40))
    first = sim.completion(words, max_tokens=1, stream_options=USAGE)
    again = sim.completion(words, max_tokens=1, stream_options=USAGE)
    assert (cached(first), cached(again)) == (0, 32)
    sim.chat(words, max_tokens=1)
    chat = sim.chat(words, max_tokens=1, stream_options=USAGE)
    prompt_tokens = chat.chunks[-1]["usage"]["prompt_tokens"]  # 40 words + 4 per message + 3 for the reply
    assert cached(chat) == B * ((prompt_tokens - 1) // B) == 32


def test_every_usage_carries_the_details(sim: Client) -> None:
    ids = fresh(50)
    sim.completion(ids, max_tokens=1)
    streamed = sim.completion(ids, max_tokens=3, stream_options=CONTINUOUS)
    assert details(streamed) == [{"cached_tokens": 48}] * 4  # 3 token chunks, then the usage chunk
    body = sim.http.post("/v1/completions", json={"prompt": ids, "max_tokens": 2}).json()
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 48}
    sim.configure(usage_style="llamacpp")
    last = sim.completion(ids, max_tokens=2, stream_options=USAGE).chunks[-1]
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["usage"]["prompt_tokens_details"] == {"cached_tokens": 48}


def test_the_chat_role_chunk_precedes_the_lookup(sim: Client) -> None:
    sse = sim.chat("x " * 30, max_tokens=1, stream_options=CONTINUOUS)
    role, *rest = details(sse)
    assert role is None  # sent at receipt, before admission: unknown, so left out
    assert all(d is not None for d in rest)


def test_metrics_count_tokens_looked_up_and_found(sim: Client) -> None:
    queries, hits = metric(sim, "sim:prefix_cache_queries_total"), metric(sim, "sim:prefix_cache_hits_total")
    ids = fresh(100)
    sim.completion(ids, max_tokens=1)
    sim.completion(ids, max_tokens=1)
    assert metric(sim, "sim:prefix_cache_queries_total") - queries == 200
    assert metric(sim, "sim:prefix_cache_hits_total") - hits == 96
    text = sim.http.get("/metrics").text
    assert "# TYPE sim:prefix_cache_hits_total counter" in text


def test_turning_the_cache_off_at_run_time(sim: Client) -> None:
    ids = fresh(100)
    sim.completion(ids, max_tokens=1)
    assert sim.configure(prefix_cache=False)["prefix_cache"] is False
    queries = metric(sim, "sim:prefix_cache_queries_total")
    sse = sim.completion(ids, max_tokens=2, stream_options=CONTINUOUS)
    assert details(sse) == [None] * 3  # no made-up 0: the client cannot tell
    body = sim.http.post("/v1/completions", json={"prompt": ids, "max_tokens": 1}).json()
    assert "prompt_tokens_details" not in body["usage"]
    assert sim.record(sse.chunks[0]["id"])["cached_tokens"] is None
    assert metric(sim, "sim:prefix_cache_queries_total") == queries
    sim.configure(prefix_cache=True)  # back on, and empty
    assert cached(sim.completion(ids, max_tokens=1, stream_options=USAGE)) == 0


def test_block_size_and_capacity_over_http(sim: Client) -> None:
    sim.configure(prefix_cache_block=4, prefix_cache_blocks=2)
    ids = fresh(20)
    sim.completion(ids, max_tokens=1)
    assert cached(sim.completion(ids, max_tokens=1, stream_options=USAGE)) == 8


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_llmperf.sim.__main__ import build_parser, main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--no-prefix-cache", "--prefix-cache-block N", "--prefix-cache-blocks N"):
        assert flag in out
    parser = build_parser()
    assert vars(parser.parse_args([]))["prefix_cache"] is True
    args = vars(parser.parse_args(["--no-prefix-cache", "--prefix-cache-block", "32", "--prefix-cache-blocks", "0"]))
    assert (args["prefix_cache"], args["prefix_cache_block"], args["prefix_cache_blocks"]) == (False, 32, 0)
