"""InferenceX (SemiAnalysis InferenceMAX): throughput per GPU vs interactivity, 8K/1K and 1K/1K, with cost.

Publication: per configuration (GPU, FP8 / FP8 with MTP / NVFP4, engine version), ``benchmark_serving.py
--dataset-name random --random-input-len ISL --random-output-len OSL --random-range-ratio 0.8 --num-prompts
$((CONC * 10)) --max-concurrency CONC --request-rate inf --ignore-eos`` for CONC = 4, 8, 16, 32, 64, drawn as
tok/s/GPU against tok/s/user with the Pareto front, and priced per million tokens from a GPU-hour's TCO. Its
range ratio 0.8 draws lengths from [0.8 L, L] (``range_rule="inferencemax"``). Shrunk ×0.05 on the embedded
engine: 410/51 and 51/51 tokens, 8–32 prompts per point, CONC = 4, 8, 16; the conftest prices its core at
$0.05 an hour.

One session per configuration, then every configuration's curves on one chart::

    pytest examples/test_throughput_per_gpu.py --llmperf-endpoint=http://b200:8000 --llmperf-gpus=8 \\
        --llmperf-gpu-cost-per-hour=2.21 --llmperf-precision=fp8 --llmperf-json=fp8.json
    # ... the same with the server in FP8 + MTP (--llmperf-precision=fp8_mtp) and in NVFP4 (nvfp4)
    python -m pytest_llmperf.pairs fp8.json fp8_mtp.json nvfp4.json \\
        --label FP8 --label "FP8 + MTP" --label NVFP4 --html overlay.html

The same command overlays engine versions (``vllm-0.10.json vllm-0.11.json --label 0.10 --label 0.11``): each
sweep's curves, Pareto fronts, capacity at each SLO and the users per GPU against the first document.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.perf(range_ratio=0.8, range_rule="inferencemax", warmup=1)


@pytest.mark.perf(input_len=8192, output_len=1024)
@pytest.mark.parametrize("concurrency", [4, 8, 16])
def test_8k_1k(llmperf, concurrency):
    result = llmperf.run(concurrency=concurrency, num_prompts=10 * concurrency)
    assert result.failed == 0
    assert result.output_throughput > 0


@pytest.mark.perf(input_len=1024, output_len=1024)
@pytest.mark.parametrize("concurrency", [4, 8, 16])
def test_1k_1k(llmperf, concurrency):
    result = llmperf.run(concurrency=concurrency, num_prompts=10 * concurrency)
    assert result.failed == 0
