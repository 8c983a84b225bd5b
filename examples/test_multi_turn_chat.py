"""Multi-turn chat: users in conversation, every turn carrying the earlier ones, TTFT per turn.

The shape of vLLM's ``benchmarks/multi_turn`` synthetic conversations (``num_turns``, user and assistant
message lengths, ``--max-active-conversations``): 160 conversations of 3 user turns, each user message 1024
tokens and each reply 256, 4 users talking at once with a second of think time between a reply and the next
turn. Turn k's request holds turns 1..k-1 (messages and replies) and the new message, so the prefix cache is
meant to serve the earlier turns: such hits are expected and the run still counts. The summary keeps first turns
apart from later ones (``ttft_by_turn``, ``median_ttft_turn1_ms``, ``median_ttft_later_turns_ms``). Shrunk ×0.05
on the embedded engine: 8 conversations of 51-token messages and 13-token replies, 50 ms apart.
"""

from __future__ import annotations

import pytest


@pytest.mark.perf(
    api="chat",
    turns=3,
    input_len=1024,
    output_len=256,
    num_prompts=160,  # conversations: 480 requests
    concurrency=4,  # conversations under way at once
    turn_gap_s=1.0,
)
def test_multi_turn_chat(llmperf):
    result = llmperf.run()
    assert result.failed == 0
    assert set(result.ttft_by_turn) == {"1", "2", "3"}
    # Each request holds the whole conversation so far, sized with the server's own chat template.
    assert result.validity["input_len_mismatch"] == 0
    lengths = [result.ttft_by_turn[turn]["input_len_mean"] for turn in ("1", "2", "3")]
    assert lengths == sorted(lengths)
