"""Per-position speculative-decoding acceptance under vLLM's result key, from the per-position counters' deltas
(``vllm bench serve``: accepted at position i during the run ÷ drafts during the run), and the simulator's
counters that feed it."""

from __future__ import annotations

import pytest

from pytest_llmperf.results import RunSummary
from pytest_llmperf.servers.engine_metrics import add_spec_decode, deltas, parse_counters
from pytest_llmperf.sim.app import Sim, render_metrics
from pytest_llmperf.sim.model import Engine, Sequence, SimConfig

# vLLM's exposition, two engines (data parallel), EAGLE with 3 speculative tokens.
BEFORE = """# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 40.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 10.0
# HELP vllm:spec_decode_num_draft_tokens_total Number of draft tokens.
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 120.0
vllm:spec_decode_num_draft_tokens_total{engine="1",model_name="m"} 30.0
# HELP vllm:spec_decode_num_accepted_tokens_total Number of accepted tokens.
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 60.0
vllm:spec_decode_num_accepted_tokens_total{engine="1",model_name="m"} 15.0
# HELP vllm:spec_decode_num_accepted_tokens_per_pos_total Accepted tokens per draft position.
# TYPE vllm:spec_decode_num_accepted_tokens_per_pos_total counter
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 32.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 20.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 8.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="0"} 8.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="1"} 5.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="2"} 2.0
"""

# During the run: 100 drafts (80 + 20), 300 draft tokens, 130 accepted: 80 at position 0 (60 + 20), 50 at 1
# (40 + 10), none at 2. So per position 0.8, 0.5, 0.0; 43.3 % of the drafts' tokens; 2.3 tokens per step.
AFTER = """# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 120.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 30.0
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 360.0
vllm:spec_decode_num_draft_tokens_total{engine="1",model_name="m"} 90.0
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 164.0
vllm:spec_decode_num_accepted_tokens_total{engine="1",model_name="m"} 41.0
# TYPE vllm:spec_decode_num_accepted_tokens_per_pos_total counter
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 92.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 60.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 8.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="0"} 28.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="1"} 15.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="2"} 2.0
"""


def test_counters_are_kept_per_position_as_well_as_summed() -> None:
    counters = parse_counters(BEFORE)
    name = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
    assert counters[name] == 75.0  # summed over every label, as before
    assert [counters[f'{name}{{position="{i}"}}'] for i in range(3)] == [40.0, 25.0, 10.0]  # over the engines
    assert not any("{" in key for key in counters if "per_pos" not in key)


def test_per_position_rates_have_a_known_answer() -> None:
    summary: RunSummary = {}
    add_spec_decode(summary, deltas(parse_counters(BEFORE), parse_counters(AFTER)))
    assert summary == {
        "spec_decode_draft_tokens": 300,
        "spec_decode_accepted_tokens": 130,
        "spec_decode_acceptance_rate": pytest.approx(130 / 300 * 100),
        "spec_decode_num_drafts": 100,
        "spec_decode_acceptance_length": pytest.approx(2.3),
        # Position 2 accepted nothing during the run: 0, listed (as vLLM lists it), not dropped.
        "spec_decode_per_position_acceptance_rates": pytest.approx([0.8, 0.5, 0.0]),
    }
    # Accepted tokens are the sum over positions, so the acceptance length is 1 + the sum of the rates.
    assert 1 + sum(summary["spec_decode_per_position_acceptance_rates"]) == pytest.approx(2.3)


def test_absent_when_the_engine_does_not_export_positions_or_drafts() -> None:
    without_positions = "\n".join(line for line in AFTER.splitlines() if "per_pos" not in line) + "\n"
    before = "\n".join(line for line in BEFORE.splitlines() if "per_pos" not in line) + "\n"
    summary: RunSummary = {}
    add_spec_decode(summary, deltas(parse_counters(before), parse_counters(without_positions)))
    assert summary["spec_decode_num_drafts"] == 100
    assert "spec_decode_per_position_acceptance_rates" not in summary
    # Positions without a drafts counter cannot be rates of anything: absent too.
    no_drafts = deltas(parse_counters(BEFORE), parse_counters(AFTER))
    counters = {k: v for k, v in no_drafts["counters"].items() if "num_drafts" not in k}
    summary = {}
    add_spec_decode(summary, {"counters": counters})
    assert "spec_decode_num_drafts" not in summary
    assert "spec_decode_per_position_acceptance_rates" not in summary
    # Nothing drafted during the run: nothing at all, never zeros.
    summary = {}
    add_spec_decode(summary, deltas(parse_counters(AFTER), parse_counters(AFTER)))
    assert summary == {}


def test_llamacpp_names_the_same_counters() -> None:
    def text(drafts: int, tokens: int, accepted: int, per_pos: tuple[int, int]) -> str:
        lines = [
            "# TYPE llamacpp:spec_decode_num_drafts_total counter",
            f"llamacpp:spec_decode_num_drafts_total {drafts}",
            "# TYPE llamacpp:spec_decode_num_draft_tokens_total counter",
            f"llamacpp:spec_decode_num_draft_tokens_total {tokens}",
            "# TYPE llamacpp:spec_decode_num_accepted_tokens_total counter",
            f"llamacpp:spec_decode_num_accepted_tokens_total {accepted}",
            "# TYPE llamacpp:spec_decode_num_accepted_tokens_per_pos_total counter",
        ]
        name = "llamacpp:spec_decode_num_accepted_tokens_per_pos_total"
        lines += [f'{name}{{position="{i}"}} {v}' for i, v in enumerate(per_pos)]
        return "\n".join(lines) + "\n"

    summary: RunSummary = {}
    add_spec_decode(summary, deltas(parse_counters(text(0, 0, 0, (0, 0))), parse_counters(text(10, 20, 9, (6, 3)))))
    assert summary["spec_decode_per_position_acceptance_rates"] == pytest.approx([0.6, 0.3])


def test_the_simulator_counts_drafts_and_accepted_positions_consistently() -> None:
    cfg = SimConfig(decode_ms=1, decode_ms_per_seq=0, prefill_tok_s=1e9, tokens_per_chunk=4, accept_rate=0.6)
    engine = Engine(cfg)
    for number in range(1, 5):
        engine.add(Sequence(number=number, received_at=0.0, prompt_tokens=1, max_tokens=400))
    drafts = draft_tokens = accepted = 0
    per_pos = [0, 0, 0]
    while not engine.idle:
        start = engine.next_start()
        assert start is not None
        step = engine.step(start)
        drafts += step.drafts
        draft_tokens += step.draft_tokens
        accepted += step.accepted_tokens
        per_pos = [a + b for a, b in zip(per_pos, step.accepted_per_pos or (0, 0, 0), strict=True)]
    assert draft_tokens == 3 * drafts
    assert sum(per_pos) == accepted  # a step's a accepted drafts are positions 0 … a-1
    assert per_pos[0] >= per_pos[1] >= per_pos[2] > 0
    # Independent draws with p = 0.6 (the simulator's model): position i needs i + 1 of them accepted.
    assert per_pos[0] / drafts == pytest.approx(1 - 0.4**3, abs=0.05)


def test_the_simulators_exposition_feeds_the_same_fields() -> None:
    sim = Sim(SimConfig())
    before = parse_counters(render_metrics(sim))
    sim.counters.update(spec_decode_num_drafts=50, spec_decode_num_draft_tokens=150, spec_decode_num_accepted_tokens=60)
    sim.accepted_per_pos = [35, 20, 5]
    summary: RunSummary = {}
    add_spec_decode(summary, deltas(before, parse_counters(render_metrics(sim))))
    assert summary["spec_decode_acceptance_length"] == pytest.approx(1 + 60 / 50)
    assert summary["spec_decode_per_position_acceptance_rates"] == pytest.approx([0.7, 0.4, 0.1])
