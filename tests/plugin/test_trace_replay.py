"""A Mooncake-style trace replayed through the plugin against the simulator (issue 16, item 7): every line is
sent, at its time, and the prefix-cache hits its shared blocks earn do not make the run invalid (sharing is what
the trace asks for)."""

from __future__ import annotations

import json

import pytest

PERF_TEST = """
import pytest

@pytest.mark.perf(trace="trace.jsonl", trace_speedup=5.0, trace_block_size=16, repeats=1)
def test_replay(llmperf):
    result = llmperf.run()
    assert result.failed == 0
    assert [r.input_len for r in sorted(result.run.records, key=lambda r: r.index)] == [48, 40, 48, 32, 48, 20]
    assert {r.output_len for r in result.run.records} == {4}
"""


def test_a_trace_is_replayed_and_its_cache_hits_are_valid(pytester: pytest.Pytester, sim_url: str) -> None:
    # Blocks 1 and 2 are shared by most requests; each request's last block is its own.
    hash_ids = [[1, 2, 10], [1, 2, 11], [1, 2, 12], [1, 13], [1, 2, 14], [15, 16]]
    lengths = [48, 40, 48, 32, 48, 20]
    lines = [
        {"timestamp": 100 * i, "input_length": n, "output_length": 4, "hash_ids": ids}
        for i, (n, ids) in enumerate(zip(lengths, hash_ids, strict=True))
    ]
    (pytester.path / "trace.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    pytester.makepyfile(PERF_TEST)
    out = pytester.path / "r.json"
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}", f"--llmperf-json={out}")
    result.assert_outcomes(passed=1)
    entry = json.loads(out.read_text())["results"][0]
    summary = entry["summary"]
    assert summary["completed"] == 6
    assert entry["workload"]["trace"] == "trace.jsonl"
    assert summary["prefix_sharing"] is True
    # The shared blocks came from the cache, well above the limit for workloads that share nothing, and the run
    # still counts.
    assert summary["cached_prompt_fraction"] > 0.05
    assert summary["invalid_reasons"] == []
    assert summary["dataset_lens"]["input_len_mean"] == pytest.approx(sum(lengths) / 6)
    result.stdout.fnmatch_lines(["*::test_replay * trace×5 *NO_BASELINE"])
    assert "128/64" not in result.stdout.str()  # the workload's input_len/output_len were not used
