"""A ShareGPT file run as ``sglang.bench_serving --sharegpt-output-len`` runs it, through the plugin against the
simulator (issue 16, item 1): every request asks for the overridden output length, and the table shows the
lengths the prompts asked for, not the workload's unused ``input_len``/``output_len``."""

from __future__ import annotations

import json

import pytest

PERF_TEST = """
import pytest

@pytest.mark.perf(dataset="sharegpt.json", dataset_output_len=40, dataset_context_len=400, num_prompts=4,
                  concurrency=2, compat="sglang", repeats=1)
def test_published_workload(llmperf):
    result = llmperf.run()
    assert result.failed == 0
    assert sorted({r.output_len for r in result.run.records}) == [40]
"""


def test_a_sharegpt_file_with_an_output_override(pytester: pytest.Pytester, sim_url: str) -> None:
    words = "tell me a story about the sea and the ships that sail on it at night please"
    conversations = [
        {"conversations": [{"from": "human", "value": f"{i} {words}"}, {"from": "gpt", "value": "a short reply"}]}
        for i in range(4)
    ]
    (pytester.path / "sharegpt.json").write_text(json.dumps(conversations))
    pytester.makepyfile(PERF_TEST)
    out = pytester.path / "r.json"
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}", f"--llmperf-json={out}")
    result.assert_outcomes(passed=1)
    summary = json.loads(out.read_text())["results"][0]["summary"]
    assert summary["completed"] == 4
    assert summary["total_output_tokens"] == 4 * 40
    assert summary["dataset_lens"]["output_len_mean"] == 40
    shown = f"~{summary['dataset_lens']['input_len_mean']:.0f}/40 c2"
    result.stdout.fnmatch_lines([f"*::test_publ*{shown} *NO_BASELINE"])  # the name is shortened to fit
    assert "128/64" not in result.stdout.str()  # the workload's input_len/output_len were not used
