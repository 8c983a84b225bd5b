"""vLLM's serving benchmark: random 2048-token prompts, 512-token answers, p99 TTFT / TPOT / ITL limits.

Publication: ``vllm bench serve --dataset-name random --random-input-len 2048 --random-output-len 512
--random-range-ratio 0 --num-prompts 200 --max-concurrency 16 --ignore-eos --percentile-metrics ttft,tpot,itl
--metric-percentiles 99`` (and ``--backend openai-chat --endpoint /v1/chat/completions`` for chat), the
p99s held to limits. The SLOs gate: a run whose p99 TTFT, TPOT or ITL exceeds its limit fails, with a table of
every limit. Shrunk ×0.05 on the embedded engine: 102/26 tokens, 32 and 16 prompts, a 1 s TTFT limit (TPOT and
ITL limits are per token and stay). There half of the 16 users wait for one of the engine's 8 slots, so the p99
TTFT holds a whole request's wait: 250–330 ms on an idle 2-vCPU VM, twice that while other jobs ran.
"""

from __future__ import annotations

import pytest


@pytest.mark.perf(
    input_len=2048,
    output_len=512,
    num_prompts=200,
    concurrency=16,
    ttft_p99_ms=20000,
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
