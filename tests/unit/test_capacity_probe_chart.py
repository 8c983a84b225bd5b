"""The HTML report's chart of a capacity search: every probe at its load with the bounds that decided it, marked by
decision, the SLO limit, the capacity found, the statement as caption, and the probe table."""

from __future__ import annotations

import html
import math
import re
from typing import Any

import pytest
from capacity_documents import capacity_document

from pytest_llmperf.judge.capacity_search import CapacitySearch, probe_prompts, search_capacity
from pytest_llmperf.report import plots
from pytest_llmperf.report.html import render_html


def concurrency_search() -> CapacitySearch:
    """c=1 … 64 against E2E p50 ≤ 15 s; c=11 stays undecided (its runs straddle the limit), c=64 measured nothing."""
    runs: dict[float, int] = {}

    def measure(at: float) -> float | None:
        runs[at] = runs.get(at, 0) + 1
        if at == 64:
            return None  # every request failed: not measured, a breach
        if at == 11:
            return (14500.0, 15800.0, 15100.0)[runs[at] - 1]
        return 1200.0 * at

    return search_capacity(
        measure,
        slo="e2e_p50_ms",
        limit=15000,
        key="median_e2el_ms",
        low=1,
        high=64,
        gpu_count=4,
        prompts_at=lambda at: probe_prompts(80, at),
        prompts_per_user=10,
    )


def rate_search() -> CapacitySearch:
    return search_capacity(
        lambda rate: 200.0 * math.exp(rate / 4),
        slo="ttft_p99_ms",
        limit=1000,
        key="p99_ttft_ms",
        vary="request_rate",
        low=0.5,
        high=16.0,
        prompts_at=lambda at: 200,
    )


def document(*searches: CapacitySearch) -> dict[str, Any]:
    return capacity_document(*searches, pair="gb200-fp4", gpu_count=4)


def _svg(page: str, kind: str) -> str:
    start = page.index(f'data-plot="{kind}"')
    return page[start : page.index("</svg>", start)]


def _texts(svg: str, role: str) -> list[str]:
    return re.findall(rf'class="{role}">(?:<[^>]*>)*?<text[^>]*>([^<]*)</text>', svg)


def test_a_concurrency_search_is_drawn_with_every_probe_marked_by_its_decision() -> None:
    search = concurrency_search()
    assert search.capacity == 10
    assert search.status == "undecided"
    page = render_html(document(search))
    assert page.count('data-plot="capacity-probes"') == 1
    assert '<h2 id="capacity-searches">Capacity searches</h2>' in page
    svg = _svg(page, "capacity-probes")
    # One series per decision, each with its bars; the probe that measured nothing is not drawn but named.
    assert _texts(svg, "legend-label") == ["meets", "breaches", "undecided"]
    assert svg.count('class="series-points"') == 3
    assert svg.count('class="errorbar"') == 3
    drawn = sorted(_texts(svg, "pt-label"), key=lambda t: int(t[1:]))
    assert drawn == ["c1", "c8", "c9", "c10", "c11", "c14", "c23"]
    assert _texts(svg, "ref-label") == ["SLO e2e_p50_ms ≤ 15000 ms"]
    assert _texts(svg, "mark-label") == ["capacity c=10"]
    caption = html.unescape(re.search(r"<figcaption>(.*?)</figcaption>", page, re.S).group(1))  # type: ignore[union-attr]
    assert caption.startswith(search.statement)
    assert "Not measured in a run, so counted as breaches and not drawn: c64." in caption
    # The probe table, in the order run, with each probe's requests per run.
    rows = re.findall(
        r'<tr class="probe (\w+)"><td>(c\d+)</td><td class="num">(\d+)</td><td class="num">(\d+)</td>', page
    )
    assert rows == [
        ("meets", "c1", "1", "80"),
        ("breaches", "c64", "1", "640"),
        ("meets", "c8", "1", "80"),
        ("breaches", "c23", "1", "230"),
        ("breaches", "c14", "2", "140"),
        ("undecided", "c11", "3", "110"),
        ("meets", "c9", "1", "90"),
        ("meets", "c10", "1", "100"),
    ]


def test_a_rate_search_and_an_older_document_without_request_counts() -> None:
    search = rate_search().as_dict()
    for probe in search["probes"]:
        del probe["num_prompts"]  # type: ignore[misc]  # documents written before the count was recorded
    doc = document(rate_search())
    doc["results"][0]["capacity_search"] = search
    page = render_html(doc)
    svg = _svg(page, "capacity-probes")
    assert "request rate (req/s)" in svg
    assert all(t.endswith("/s") for t in _texts(svg, "pt-label"))
    assert _texts(svg, "mark-label") == [f"capacity {search['capacity']:.3g} req/s"]
    assert "$" not in svg  # log-axis ticks as plain numbers, not TeX
    assert re.search(r'<td class="num">\d+</td><td class="num">—</td>', page)


def test_no_section_without_a_search() -> None:
    doc = document(concurrency_search())
    del doc["results"][0]["capacity_search"]
    page = render_html(doc)
    assert "capacity-probes" not in page
    assert "Capacity searches" not in page


def test_a_search_whose_every_probe_failed_shows_no_empty_chart() -> None:
    search = search_capacity(lambda at: None, slo="e2e_p50_ms", limit=1000, low=1, high=8)
    page = render_html(document(search))
    assert '<figure class="empty" data-plot="capacity-probes">' in page
    assert "no capacity: c=1" in page


def test_intervals_must_match_the_points() -> None:
    with pytest.raises(ValueError, match="2 intervals for 1 points"):
        plots.Series("s", (1.0,), (2.0,), y_err=((1.0, 3.0), (1.0, 3.0)))
