"""The largest concurrency that meets an SLO, found as ``vllm bench sweep serve_sla`` finds it.

Publication: ``vllm bench sweep serve_sla --serve-cmd "vllm serve MODEL" --bench-cmd "vllm bench serve --model
MODEL --dataset-name random --random-input-len 2048 --random-output-len 512 --num-prompts 320"
--sla-params sla.json --sla-variable max_concurrency``, with ``sla.json`` limiting p99 E2E latency: probes
of the concurrency, narrowed between the largest value that met the limit and the smallest that did not. Here
each probe is decided with an interval over its runs, up to 3 runs, and ``capacity_min`` gates the answer.
Shrunk ×0.05 on the embedded engine: 102/26 tokens, 16–32 prompts per probe, a 400 ms limit, and a narrow
range (1–16) so that the search takes seconds.
"""

from __future__ import annotations

import pytest


@pytest.mark.perf(input_len=2048, output_len=512, num_prompts=320, e2e_p99_ms=8000, capacity_min=2)
def test_capacity_at_p99_e2e(llmperf):
    search = llmperf.capacity(vary="concurrency", low=1, high=16)
    print(search.statement)
    assert search.capacity >= 2
