"""Perf tests as a serving team writes them. ``pytest examples/`` runs them against the embedded llama.cpp
engine; ``--llmperf-endpoint=URL`` points them at any OpenAI-compatible server instead."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.perf(input_len=128, output_len=64, num_prompts=24, warmup=2)


@pytest.mark.parametrize("concurrency", [1, 4, 8])
def test_concurrency_sweep(llmperf, concurrency):
    """Closed loop: `concurrency` users, each sending its next request when the last one finished."""
    result = llmperf.run(concurrency=concurrency)
    assert result.failed == 0
    assert result.completed == 24
    assert result.output_throughput > 0


@pytest.mark.perf(api="chat", input_len=96, output_len=48, num_prompts=16, concurrency=4)
def test_chat_exact_lengths(llmperf):
    """Chat prompts are sized with the server's own template, so the server counts exactly what was asked."""
    result = llmperf.run()
    assert result.failed == 0
    assert result.validity["input_len_mismatch"] == 0
    assert result.total_input_tokens == 16 * 96


@pytest.mark.perf(num_prompts=40, request_rate=8.0, burstiness=1.0, seed=7)
def test_poisson_arrivals(llmperf):
    """Open loop: Poisson arrivals at 8 req/s, whatever the server's state (vLLM's request-rate semantics)."""
    result = llmperf.run()
    assert result.failed == 0
    assert result.median_ttft_ms < result.median_e2el_ms
