"""``llmperf.capacity()`` as a user writes it, against a simulator whose latency grows with the batch: the
capacity found, the ``capacity_min`` gate failing and passing, and the probes in the JSON result."""

from __future__ import annotations

import json

import pytest

# 10 output tokens, decode steps of 2 ms + 10 ms per sequence in the batch: E2E ≈ 20 + 100·c ms, so about
# 820 ms at c=8 and 920 ms at c=9; the 870 ms limit lies between them.
SIM_FLAGS = ("--decode-ms", "2", "--decode-ms-per-seq", "10", "--prefill-tok-s", "200000", "--jitter", "0")

CAPACITY_TEST = """
import pytest

@pytest.mark.perf(input_len=8, output_len=10, num_prompts=16{marker_extra})
def test_capacity(llmperf):
    search = llmperf.capacity(slo={{"e2e_p50_ms": 870}}, low=1, high=16, prompts_per_user=2{call_extra})
    print("CAPACITY", search.capacity, search.status)
    print("STATEMENT", search.statement)
"""


def test_capacity_finds_the_largest_concurrency_meeting_the_slo(pytester: pytest.Pytester, start_sim: type) -> None:
    sim = start_sim(*SIM_FLAGS)
    pytester.makepyfile(CAPACITY_TEST.format(marker_extra="", call_extra=""))
    out, report = pytester.path / "r.json", pytester.path / "r.html"
    result = pytester.runpytest(
        "-s", f"--llmperf-endpoint={sim.url}", "--llmperf-gpus=2", f"--llmperf-json={out}", f"--llmperf-report={report}"
    )
    result.assert_outcomes(passed=1)
    assert "test_capacity" in report.read_text(encoding="utf-8")  # the report takes a result without a verdict
    # The results table shows the finding under the test's row, as it shows a verdict.
    result.stdout.fnmatch_lines(["*test_capacity*", "    capacity c=8: c=8 meets e2e_p50_ms ≤ 870 ms*"])
    result.stdout.fnmatch_lines(
        [
            "*CAPACITY 8.0 met",
            "STATEMENT capacity c=8: c=8 meets e2e_p50_ms ≤ 870 ms (upper 90% bound *), c=9 breaches it "
            "(lower 90% bound *) · 4 users/GPU (2 GPUs)",
        ]
    )
    (document,) = json.loads(out.read_text())["results"]
    search = document["capacity_search"]
    assert search["capacity"] == 8
    assert search["bracket"] == [8, 9]
    assert search["users_per_gpu"] == 4
    assert [p["at"] for p in search["probes"]][:2] == [1, 16]
    assert len(search["probes"]) <= 8
    assert all(len(p["values"]) == p["runs"] for p in search["probes"])
    assert document["workload"]["concurrency"] == 8  # the document's runs are those of the capacity's probe


@pytest.mark.parametrize(
    ("marker_extra", "call_extra", "passes"),
    [
        (", capacity_min=12", "", False),  # the marker's gate
        ("", ", capacity_min=6", True),  # capacity()'s keyword
    ],
)
def test_capacity_min_gates_like_an_slo(
    pytester: pytest.Pytester, start_sim: type, marker_extra: str, call_extra: str, passes: bool
) -> None:
    sim = start_sim(*SIM_FLAGS)
    pytester.makepyfile(CAPACITY_TEST.format(marker_extra=marker_extra, call_extra=call_extra))
    out = pytester.path / "r.json"
    result = pytester.runpytest(f"--llmperf-endpoint={sim.url}", f"--llmperf-json={out}")
    (document,) = json.loads(out.read_text())["results"]
    search = document["capacity_search"]
    if passes:
        result.assert_outcomes(passed=1)
        assert search["gate_passed"] is True
        assert 6 in [p["at"] for p in search["probes"]]  # the gate's own point was probed
        return
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*capacity below capacity_min=12: capacity c=8: *c=9 breaches it*capacity_min=12 NOT met",
            "concurrency  runs  values *decision",
            "12 * breaches",
        ]
    )
    assert search["gate_passed"] is False
    assert search["capacity"] == 8


def test_a_slo_that_cannot_bound_a_capacity_is_refused(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(
        """
        def test_x(llmperf):
            llmperf.capacity(slo={"output_tok_s": 100}, low=1, high=4)
        """
    )
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*llmperf.capacity(): SLO 'output_tok_s' cannot bound a capacity*"])
