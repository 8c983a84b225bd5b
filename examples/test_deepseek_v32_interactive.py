"""DeepSeek-V3.2 interactive serving, as the published GB200-vs-H200 comparisons measure it.

2400 input and 1600 output tokens, 1 to 64 concurrent users with ten requests each, and the interactive SLO
"median end-to-end latency at most 15 s". The SLO is reported for every point rather than gating: the point of
the sweep is the largest concurrency that still meets it (capacity at SLO, in the HTML report).
"""

from __future__ import annotations

import pytest


@pytest.mark.perf(input_len=2400, output_len=1600, e2e_p50_ms=15000, slo_gating=False, warmup=1)
@pytest.mark.parametrize("concurrency", [1, 2, 4, 8, 16, 32, 64])
def test_interactive_sweep(llmperf, concurrency):
    result = llmperf.run(concurrency=concurrency, num_prompts=10 * concurrency)
    assert result.failed == 0
