"""GB300 prefill throughput per GPU: 7,360 input tok/s/GPU in prefill, 2,816 tok/s/GPU mixed.

The publication states throughput per GPU of an input-heavy load, not a client command; here that is 8K-token
prompts with a 1-token answer (prefill alone: input tokens per second per GPU, ``input_tok_s_per_gpu``) and
InferenceX's 8K/1K (prefill and decode together: input + output tokens per second per GPU,
``total_tok_s_per_gpu``, InferenceX's ``tput_per_gpu``), closed loop at 8 users with 10 requests each. The
per-GPU SLOs need the GPU count: ``--llmperf-gpus=4`` behind a GB300 endpoint (or the profile's
``gpus_per_server``); on the embedded engine the conftest counts its core as one GPU. Shrunk ×0.05 there:
410-token prompts, answers of 2 (the fewest that still give a TPOT) and 51 tokens, 16 requests (2 per user);
throughput limits are per token and stay as published. They gate on a GPU server; on the embedded engine they
are reported only: one core of the project's VMs prefills about as fast as the published GB300 GPU (≈7,500
tok/s when idle) and serves the mixed load within 2× of it, too close to decide on a machine shared with other
jobs.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.perf(concurrency=8, num_prompts=80, warmup=1)


@pytest.mark.perf(input_len=8192, output_len=1, input_tok_s_per_gpu=7360)
def test_prefill_tok_s_per_gpu(llmperf, embedded):
    result = llmperf.run(slo_gating=not embedded)
    assert result.failed == 0


@pytest.mark.perf(input_len=8192, output_len=1024, total_tok_s_per_gpu=2816)
def test_mixed_tok_s_per_gpu(llmperf, embedded):
    result = llmperf.run(slo_gating=not embedded)
    assert result.failed == 0
