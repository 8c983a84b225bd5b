"""InferenceX-style throughput sweeps: 8K/1K (long prompts) and 1K/1K, throughput per GPU vs interactivity.

Each point is one concurrency; the HTML report draws throughput per GPU against tokens/s per user with the
Pareto front. Pass ``--llmperf-gpus=N`` when attaching to a server so per-GPU figures can be computed.
"""

from __future__ import annotations

import pytest


@pytest.mark.perf(input_len=8192, output_len=1024, range_ratio=0.2, warmup=1)
@pytest.mark.parametrize("concurrency", [4, 8, 16, 32, 64])
def test_8k_1k(llmperf, concurrency):
    result = llmperf.run(concurrency=concurrency, num_prompts=10 * concurrency)
    assert result.failed == 0
    assert result.output_throughput > 0


@pytest.mark.perf(input_len=1024, output_len=1024, range_ratio=0.2, warmup=1)
@pytest.mark.parametrize("concurrency", [4, 8, 16, 32, 64])
def test_1k_1k(llmperf, concurrency):
    result = llmperf.run(concurrency=concurrency, num_prompts=10 * concurrency)
    assert result.failed == 0
