"""The capacity-search chart of the HTML report in headless Chromium (no console error, the chart drawn, no two
labels overlapping), for documents built here and for one a session against the simulator wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from capacity_documents import capacity_document
from headless_chromium import Chromium, check_page, open_page

from pytest_llmperf.judge.capacity_search import CapacitySearch, probe_prompts, search_capacity
from pytest_llmperf.report.html import write_html


def _searches() -> list[CapacitySearch]:
    runs: dict[float, int] = {}

    def straddling(at: float) -> float | None:
        runs[at] = runs.get(at, 0) + 1
        if at == 64:
            return None  # not measured: a breach, named in the caption
        return (14500.0, 15800.0, 15100.0)[runs[at] - 1] if at == 11 else 1200.0 * at

    undecided = search_capacity(
        straddling, slo="e2e_p50_ms", limit=15000, key="median_e2el_ms", low=1, high=64, gpu_count=8,
        prompts_at=lambda at: probe_prompts(80, at), prompts_per_user=10,
    )  # fmt: skip
    # Many probes crowded together near the limit: a rate search to a fine tolerance.
    crowded = search_capacity(
        lambda rate: 300.0 * math.exp(rate / 3), slo="ttft_p99_ms", limit=1000, key="p99_ttft_ms",
        vary="request_rate", low=0.25, high=32.0, tolerance=0.01, max_probes=14, prompts_at=lambda at: 200,
    )  # fmt: skip
    # Every probe meets: the capacity is at least the highest, marked on the last point.
    everywhere = search_capacity(
        lambda at: 40.0 + at, slo="tpot_p50_ms", limit=100, key="median_tpot_ms", low=1, high=32,
        prompts_at=lambda at: probe_prompts(64, at),
    )  # fmt: skip
    return [undecided, crowded, everywhere]


def test_capacity_charts_load_and_draw_without_overlapping_labels(browser: Chromium, tmp_path: Path) -> None:
    searches = _searches()
    assert len(searches[1].probes) >= 8
    report = write_html(tmp_path / "report.html", capacity_document(*searches, pair="h200x8-fp8", gpu_count=8))
    page = open_page(browser, report, tmp_path / "report.png")
    check_page(page, {"capacity-probes"})
    charts = [p for p in page.plots if p["plot"] == "capacity-probes"]
    assert len(charts) == 3
    # Point labels (every drawn probe), the SLO line's label and the capacity's.
    drawn = [sum(p.centre is not None for p in s.probes) for s in searches]
    assert [c["labels"] for c in charts] == [n + 2 for n in drawn]


CAPACITY_TEST = """
import pytest

@pytest.mark.perf(input_len=8, output_len=10, num_prompts=16)
def test_capacity(llmperf):
    llmperf.capacity(slo={"e2e_p50_ms": 870}, low=1, high=16, prompts_per_user=2)
"""


def test_a_session_with_a_capacity_search_reports_its_probes(
    browser: Chromium, tmp_path: Path, pytester: pytest.Pytester, start_sim: Any
) -> None:
    # E2E ≈ 20 + 100·c ms (decode steps of 2 ms + 10 ms per sequence, 10 tokens): the limit lies between c=8 and 9.
    sim = start_sim("--decode-ms", "2", "--decode-ms-per-seq", "10", "--prefill-tok-s", "200000", "--jitter", "0")
    pytester.makepyfile(CAPACITY_TEST)
    out, report = pytester.path / "r.json", pytester.path / "r.html"
    result = pytester.runpytest(f"--llmperf-endpoint={sim.url}", f"--llmperf-json={out}", f"--llmperf-report={report}")
    result.assert_outcomes(passed=1)
    (document,) = json.loads(out.read_text())["results"]
    search = document["capacity_search"]
    assert search["capacity"] == 8
    # 2 prompts per user, the marker's 16 at least.
    assert {p["at"]: p["num_prompts"] for p in search["probes"]}[16] == 32
    assert all(p["num_prompts"] == max(16, 2 * p["at"]) for p in search["probes"])
    text = report.read_text(encoding="utf-8")
    assert text.count('data-plot="capacity-probes"') == 1
    page = open_page(browser, report, tmp_path / "report.png")
    check_page(page, {"capacity-probes"})
    (chart,) = (p for p in page.plots if p["plot"] == "capacity-probes")
    assert chart["labels"] == len(search["probes"]) + 2
