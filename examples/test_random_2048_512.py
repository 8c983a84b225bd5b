"""vLLM's serving benchmark shape: random 2048-token prompts, 512-token answers, tail-latency SLOs.

The SLOs gate: a run whose p99 TTFT, TPOT or ITL exceeds its limit fails, with a table of every limit.
"""

from __future__ import annotations

import pytest


@pytest.mark.perf(
    input_len=2048,
    output_len=512,
    num_prompts=200,
    concurrency=16,
    ttft_p99_ms=10000,
    tpot_p99_ms=100,
    itl_p99_ms=200,
)
def test_random_2048_512(llmperf):
    result = llmperf.run()
    assert result.validity["output_len_mismatch"] == 0  # ignore_eos honoured: exactly 512 tokens each


@pytest.mark.perf(api="chat", input_len=2048, output_len=512, num_prompts=64, concurrency=8, tpot_p99_ms=100)
def test_chat_2048_512(llmperf):
    """Chat prompts sized with the server's own template: the server counts exactly the tokens asked for."""
    result = llmperf.run()
    assert result.validity["input_len_mismatch"] == 0
