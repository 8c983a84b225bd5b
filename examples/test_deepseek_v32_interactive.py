"""DeepSeek-V3.2 interactive serving on GB200 vs H200, run as the publication ran it.

Publication: ``python -m sglang.bench_serving --dataset-name sharegpt --sharegpt-output-len 1600
--sharegpt-context-len 2400 --num-prompts 500 --max-concurrency C`` for C = 1, 2, 4 … 64, judged by "median
end-to-end latency at most 15 s": GB200 NVFP4 on 4 GPUs meets it up to 8 users, H200 FP8 on 8 GPUs only at 1,
so 16× the users per GPU (``python -m pytest_llmperf.pairs gb200.json h200.json`` states that ratio from two
sessions' ``--llmperf-json``).

ShareGPT is sampled as SGLang samples it (``compat="sglang"``: shuffled with the seed, prompt + output over the
context length pruned, every output 1600 tokens). No network here: the conftest writes a small file in
ShareGPT's format; on a GPU server give ``ShareGPT_V3_unfiltered_cleaned_split.json`` instead. Shrunk ×0.05 on
the embedded engine: 25 prompts per point (at least 2 per user), outputs of 80 tokens, a context of 120 (so
only the file's short prompts pass), an E2E limit of 750 ms, and the sweep cut to 1–16 users, which holds both
published capacities. The SLO is reported, not gating: the sweep's answer is the largest concurrency that meets
it (capacity at SLO, in the HTML report).
"""

from __future__ import annotations

import pytest

SHAREGPT = ".llmperf/examples/sharegpt_v3_sample.json"  # written by conftest.py


@pytest.mark.perf(
    dataset=SHAREGPT,
    dataset_output_len=1600,
    dataset_context_len=2400,
    num_prompts=500,
    compat="sglang",
    warmup=1,  # bench_serving's --warmup-requests 1
    e2e_p50_ms=15000,
    slo_gating=False,
)
@pytest.mark.parametrize("concurrency", [1, 2, 4, 8, 16])
def test_interactive_sweep(llmperf, concurrency):
    result = llmperf.run(concurrency=concurrency)
    assert result.failed == 0
