"""Known-answer tests of the timing model, driven with a fake clock (plain numbers, no sleeping)."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from pytest_llmperf.errors import SpecError
from pytest_llmperf.sim.faults import parse_fault
from pytest_llmperf.sim.model import (
    CHAT_TOKENS_PER_MESSAGE,
    CHAT_TOKENS_REPLY,
    VOCAB_SIZE,
    Engine,
    Sequence,
    SimConfig,
    chat_token_ids,
    output_text,
    simulate,
    text_token_ids,
)

# A prefill rate so high that prompt cost vanishes from the arithmetic.
NO_PREFILL = {"prefill_tok_s": 1e15}


def gaps_ms(seq: Sequence) -> list[float]:
    times = [seq.received_at, *seq.chunk_times]
    return [round((b - a) * 1000, 9) for a, b in itertools.pairwise(times)]


def test_idle_ttft_is_prefill_plus_one_step_and_tpot_is_step_time() -> None:
    cfg = SimConfig(decode_ms=10, decode_ms_per_seq=0.5, prefill_tok_s=1000)
    (seq,) = simulate(cfg, [(5.0, 100, 4)])
    assert gaps_ms(seq) == pytest.approx([100 + 10.5, 10.5, 10.5, 10.5])
    assert list(seq.chunk_tokens) == [1, 1, 1, 1]
    assert seq.finish_reason == "length"


def test_step_time_grows_with_batch_size() -> None:
    cfg = SimConfig(decode_ms=10, decode_ms_per_seq=1, **NO_PREFILL)
    a, b = simulate(cfg, [(0.0, 1, 3), (0.0, 1, 3)])
    assert gaps_ms(a) == pytest.approx([12, 12, 12])
    assert b.chunk_times == a.chunk_times


def test_requests_beyond_max_batch_wait_for_a_free_slot() -> None:
    cfg = SimConfig(decode_ms=10, decode_ms_per_seq=0, max_batch=2, **NO_PREFILL)
    a, b, c = simulate(cfg, [(0.0, 1, 3), (0.0, 1, 3), (0.0, 1, 3)])
    assert list(a.chunk_times) == pytest.approx([0.010, 0.020, 0.030])
    assert b.chunk_times == a.chunk_times
    # admitted at the start of the step after a and b finish
    assert list(c.chunk_times) == pytest.approx([0.040, 0.050, 0.060])


def test_a_late_arrival_joins_at_the_next_step_and_its_prefill_slows_that_step() -> None:
    cfg = SimConfig(decode_ms=10, decode_ms_per_seq=0, prefill_tok_s=1000)
    a, b = simulate(cfg, [(0.0, 5, 4), (0.020, 20, 2)])
    # a: 15 ms first step (5 prompt tokens); b arrives in step 2 (15-25 ms), joins step 3 and pays 20 ms
    assert list(a.chunk_times) == pytest.approx([0.015, 0.025, 0.055, 0.065])
    assert list(b.chunk_times) == pytest.approx([0.055, 0.065])


def test_an_idle_engine_starts_a_step_at_the_arrival() -> None:
    cfg = SimConfig(decode_ms=10, decode_ms_per_seq=0, **NO_PREFILL)
    a, b = simulate(cfg, [(0.0, 1, 1), (1.0, 1, 1)])
    assert list(a.chunk_times) == pytest.approx([0.010])
    assert list(b.chunk_times) == pytest.approx([1.010])


def test_k_token_chunks_with_full_acceptance() -> None:
    engine = Engine(SimConfig(decode_ms=10, decode_ms_per_seq=0, tokens_per_chunk=4, **NO_PREFILL))
    seq = Sequence(number=1, received_at=0.0, prompt_tokens=1, max_tokens=10)
    engine.add(seq)
    drafts = accepted = 0
    while not engine.idle:
        start = engine.next_start()
        assert start is not None
        step = engine.step(start)
        drafts += step.draft_tokens
        accepted += step.accepted_tokens
    assert list(seq.chunk_tokens) == [1, 4, 4, 1]  # first token alone, then 1 + 3 drafts, capped at the budget
    assert drafts == 9
    assert accepted == 6


def test_partial_acceptance_is_seeded_and_has_the_binomial_mean() -> None:
    cfg = SimConfig(decode_ms=1, decode_ms_per_seq=0, tokens_per_chunk=3, accept_rate=0.5, **NO_PREFILL)
    runs = [list(simulate(cfg, [(0.0, 1, 2001)])[0].chunk_tokens) for _ in range(2)]
    assert runs[0] == runs[1]
    assert set(runs[0][1:-1]) <= {1, 2, 3}
    assert statistics.mean(runs[0][1:-1]) == pytest.approx(2.0, abs=0.1)  # 1 + 2 * 0.5
    other = list(simulate(cfg.replace(seed=1), [(0.0, 1, 2001)])[0].chunk_tokens)
    assert other != runs[0]


def test_periodic_stall_adds_to_every_nth_step() -> None:
    cfg = SimConfig(decode_ms=10, decode_ms_per_seq=0, stall_every_steps=3, stall_ms=50, **NO_PREFILL)
    (seq,) = simulate(cfg, [(0.0, 1, 7)])
    assert gaps_ms(seq) == pytest.approx([10, 10, 60, 10, 10, 60, 10])


@pytest.mark.parametrize(
    ("changes", "ttft_ms", "tpot_ms"),
    [
        ({}, 10.0, 10.0),
        ({"tpot_scale": 2.0}, 20.0, 20.0),
        ({"slowdown_per_token_pct": 10.0}, 11.0, 11.0),
        ({"ttft_add_ms": 30.0}, 40.0, 10.0),
        ({"tpot_scale": 2.0, "slowdown_per_token_pct": 50.0}, 30.0, 30.0),
    ],
)
def test_injected_slowdowns(changes: dict[str, float], ttft_ms: float, tpot_ms: float) -> None:
    cfg = SimConfig(decode_ms=10, decode_ms_per_seq=0, **NO_PREFILL).replace(**changes)
    (seq,) = simulate(cfg, [(0.0, 1, 3)])
    assert gaps_ms(seq) == pytest.approx([ttft_ms, tpot_ms, tpot_ms])


def test_slowdown_does_not_scale_prefill() -> None:
    cfg = SimConfig(decode_ms=10, decode_ms_per_seq=0, prefill_tok_s=1000, tpot_scale=2)
    (seq,) = simulate(cfg, [(0.0, 10, 2)])
    assert gaps_ms(seq) == pytest.approx([20 + 10, 20])


def test_jitter_is_lognormal_around_one_and_reproducible() -> None:
    cfg = SimConfig(decode_ms=10, decode_ms_per_seq=0, jitter=0.2, seed=7, **NO_PREFILL)
    first = simulate(cfg, [(0.0, 1, 2000)])[0]
    again = simulate(cfg, [(0.0, 1, 2000)])[0]
    assert first.chunk_times == again.chunk_times
    logs = [math.log(g / 10) for g in gaps_ms(first)]
    assert statistics.mean(logs) == pytest.approx(0.0, abs=0.03)
    assert statistics.stdev(logs) == pytest.approx(0.2, rel=0.1)
    assert simulate(cfg.replace(seed=8), [(0.0, 1, 2000)])[0].chunk_times != first.chunk_times


def test_eos_ends_requests_early_unless_ignored() -> None:
    cfg = SimConfig(decode_ms=1, eos_prob=0.2, **NO_PREFILL)
    engine = Engine(cfg)
    seqs = [
        Sequence(number=i, received_at=0.0, prompt_tokens=1, max_tokens=50, ignore_eos=i % 2 == 0) for i in range(40)
    ]
    for s in seqs:
        engine.add(s)
    while not engine.idle:
        start = engine.next_start()
        assert start is not None
        engine.step(start)
    ignored = [s for s in seqs if s.ignore_eos]
    honoured = [s for s in seqs if not s.ignore_eos]
    assert all(s.generated == 50 and s.finish_reason == "length" for s in ignored)
    assert all(s.finish_reason == "stop" and s.generated < 50 for s in honoured)


def test_abort_frees_the_slot() -> None:
    engine = Engine(SimConfig(decode_ms=10, decode_ms_per_seq=0, max_batch=1, **NO_PREFILL))
    a = Sequence(number=1, received_at=0.0, prompt_tokens=1, max_tokens=100)
    b = Sequence(number=2, received_at=0.0, prompt_tokens=1, max_tokens=1)
    engine.add(a)
    engine.add(b)
    engine.step(0.0)
    engine.abort(a)
    step = engine.step(0.010)
    assert [s.number for s in step.admitted] == [2]


def test_config_changes_apply_between_steps() -> None:
    engine = Engine(SimConfig(decode_ms=10, decode_ms_per_seq=0, **NO_PREFILL))
    engine.add(Sequence(number=1, received_at=0.0, prompt_tokens=1, max_tokens=3))
    first = engine.step(0.0)
    engine.config = engine.config.replace(decode_ms=30)
    second = engine.step(first.end)
    assert (second.end - second.start) == pytest.approx(0.030)


# --- configuration -----------------------------------------------------------------------------------------


def test_config_validation_names_every_problem() -> None:
    with pytest.raises(SpecError, match=r"max_batch=0.*accept_rate=1\.5|accept_rate=1\.5.*max_batch=0") as info:
        SimConfig(max_batch=0, accept_rate=1.5, usage_style="x")
    assert "usage_style='x'" in str(info.value)


def test_updated_takes_json_values_and_cli_style_names() -> None:
    cfg = SimConfig().updated({"decode-ms": 5, "faults": ["http_500:every=2"], "usage_style": "llamacpp"})
    assert cfg.decode_ms == 5.0
    assert isinstance(cfg.decode_ms, float)
    assert cfg.faults == (parse_fault("http_500:every=2"),)
    assert cfg.as_dict()["faults"] == ["http_500:every=2"]
    assert SimConfig().updated(cfg.as_dict()) == cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"decode_msec": 1}, "unknown simulator setting 'decode_msec'"),
        ({"max_batch": 1.5}, "must be an integer"),
        ({"decode_ms": "fast"}, "must be a number"),
        ({"decode_ms": -1}, "decode_ms=-1.0"),
        ({"uvloop": 1}, "true or false"),
        ({"faults": "nope"}, "invalid fault 'nope'"),
    ],
)
def test_updated_rejects_bad_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        SimConfig().updated(changes)


# --- tokenizer ---------------------------------------------------------------------------------------------


def test_text_tokens_are_words() -> None:
    ids = text_token_ids("  the quick\tbrown\nfox the ")
    assert len(ids) == 5
    assert ids[0] == ids[4]
    assert all(0 <= i < VOCAB_SIZE for i in ids)


def test_chat_template_overhead() -> None:
    messages = [("system", "be brief"), ("user", "hello there you")]
    ids = chat_token_ids(messages)
    assert len(ids) == 5 + 2 * CHAT_TOKENS_PER_MESSAGE + CHAT_TOKENS_REPLY
    assert CHAT_TOKENS_PER_MESSAGE == 4
    assert CHAT_TOKENS_REPLY == 3


def test_output_text_has_one_word_per_token() -> None:
    assert output_text(0, 1) == " tok0"
    assert output_text(3, 3) == " tok3 tok4 tok5"
    assert len(output_text(100, 50).split()) == 50
