"""The HTML report's structure: self-contained, plots present and labelled, hostile strings escaped, missing
values shown as missing, regressions first, written atomically; and the plots module on its own (several series,
a date axis, deterministic output, matplotlib loaded only when a report is drawn)."""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.report import html as report_html
from pytest_llmperf.report import plots
from pytest_llmperf.report.html import ECDF_POINTS, pareto_front, render_html, write_html

CONCURRENCIES = (1, 2, 4, 8, 16, 32, 64)
E2E_MS = {1: 5200.0, 2: 6400.0, 4: 8300.0, 8: 12000.0, 16: 18000.0, 32: 29000.0, 64: 52000.0}
SVG_NS = "{http://www.w3.org/2000/svg}"
WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
HOSTILE = "perf/test_x.py::test_<script>alert('pwned')</script>[&\"quoted\"]"
UNICODE = "perf/test_ünï.py::test_日本語[größe-🚀]"
LONG = "perf/test_long.py::test_long[" + "-".join(f"parameter{i}=value{i}" for i in range(60)) + "]"


def run_summary(c: int, gpus: int | None, scale: float = 1.0) -> dict[str, Any]:
    e2e = E2E_MS[c] * scale
    tpot = e2e / 1600
    throughput = 1600 * c / (e2e / 1000)
    s: dict[str, Any] = {
        "completed": 10 * c,
        "failed": 0,
        "median_ttft_ms": e2e * 0.08,
        "median_tpot_ms": tpot,
        "median_e2el_ms": e2e,
        "output_throughput": throughput,
        "interactivity": 1000 / tpot,
    }
    if gpus is not None:
        s["gpu_count"] = gpus
        s["output_throughput_per_gpu"] = throughput / gpus
    return s


def detail(n: int, ttft_s: float, e2e_s: float, n_out: int = 1600) -> dict[str, Any]:
    return {
        "ttfts": [ttft_s * (1 + 0.01 * i) for i in range(n)],
        "latencies": [e2e_s * (1 + 0.01 * i) for i in range(n)],
        "output_lens": [n_out] * n,
        "input_lens": [2400] * n,
        "itls": [[] for _ in range(n)],
        "start_times": [float(i) for i in range(n)],
        "errors": [""] * n,
    }


def sweep_result(c: int, gpus: int | None, *, nodeid: str | None = None) -> dict[str, Any]:
    current = run_summary(c, gpus)
    base = run_summary(c, gpus, scale=1.05)
    e2e = current["median_e2el_ms"]
    return {
        "nodeid": nodeid or f"perf/test_dsv32.py::test_interactive[{c}]",
        "outcome": "passed",
        "workload": {"input_len": 2400, "output_len": 1600, "concurrency": c, "num_prompts": 10 * c},
        "summary": current,
        "runs": [current],
        "verdict": {"status": "PASS", "reason": "all within tolerance", "metrics": []},
        "slos": [
            {
                "name": "e2e_p50_ms",
                "limit": 15000.0,
                "kind": "max",
                "unit": "ms",
                "key": "median_e2el_ms",
                "measured": e2e,
                "passed": e2e <= 15000,
                "reason": "",
            }
        ],
        "slo_breached": e2e > 15000,
        "slo_gating": False,
        "detail": detail(20, e2e * 0.08 / 1000, e2e / 1000),
        "baseline": {"where": "baselines/x.yaml", "runs": [base, base], "raw": detail(30, 0.5, e2e * 1.05 / 1000)},
    }


def make_document(
    gpus: int | None = 4, extra: list[dict[str, Any]] | None = None, *, per_request: bool = True
) -> dict[str, Any]:
    """The sweep, plus ``extra`` results. Without ``per_request`` arrays the sweep's 21 ECDF plots are "no data"
    notes: tests of the table and the sweep plots then skip drawing them (each plot costs tens of ms)."""
    results = [sweep_result(c, gpus) for c in CONCURRENCIES]
    if not per_request:
        for r in results:
            r["detail"] = {}
            r["baseline"]["raw"] = {}
    endpoint = {
        "url": "http://gpu-node:8000",
        "model": "deepseek-v3.2",
        "engine": "vllm",
        "engine_version": "0.11.0",
        "gpu_count": gpus,
    }
    return {"pair": "gb200-fp4", "endpoint": endpoint, "results": results + (extra or [])}


def single(nodeid: str, **changes: Any) -> dict[str, Any]:
    r = sweep_result(1, None, nodeid=nodeid)
    r["workload"] = {"input_len": 128, "output_len": 64, "concurrency": None, "request_rate": 8.0, "num_prompts": 40}
    r.update(changes)
    return r


def svgs(text: str) -> list[ET.Element]:
    """Every inline SVG, parsed as XML: a malformed or badly escaped one fails here."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", text, flags=re.S)]


def plot(text: str, kind: str) -> list[ET.Element]:
    return [s for s in svgs(text) if s.get("data-plot") == kind]


def groups(svg: ET.Element, role: str) -> list[ET.Element]:
    """The groups of one role (see ``plots.ROLES``), in drawing order."""
    return [g for g in svg.iter(f"{SVG_NS}g") if role in (g.get("class") or "").split()]


def texts(svg: ET.Element, role: str) -> list[str]:
    return ["".join(t.itertext()) for g in groups(svg, role) for t in g.iter(f"{SVG_NS}text")]


def series_of(group: ET.Element) -> int:
    """The index of the series a group draws (its id ends in it)."""
    return int((group.get("id") or "").rsplit("-", 1)[1])


def vertices(group: ET.Element) -> int:
    """Points of the lines drawn in a group."""
    return sum(len(re.findall(r"[ML]", p.get("d", ""))) for p in group.iter(f"{SVG_NS}path"))


@functools.cache
def default_report() -> str:
    """The report of ``make_document()``: drawn once for the tests that only read it."""
    return render_html(make_document(), generated=WHEN)


class Collector(HTMLParser):
    """Tags, attributes and text of a page, to check what a browser would see."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.data: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.data.append(data)


def parse(text: str) -> Collector:
    collector = Collector()
    collector.feed(text)
    return collector


# -- tests ------------------------------------------------------------------------------------------------------------


def test_sweep_plots_are_drawn_and_labelled_by_concurrency() -> None:
    text = default_report()
    (latency,) = plot(text, "throughput-latency")
    (interactivity,) = plot(text, "throughput-interactivity")
    for svg in (latency, interactivity):
        labels = texts(svg, "pt-label")
        for c in CONCURRENCIES:
            assert labels.count(f"c{c}") == 2  # current and baseline
        assert int(svg.get("width", "0")) > 0
        assert int(svg.get("height", "0")) > 0
        assert svg.find(f"{SVG_NS}title") is not None
        assert texts(svg, "legend-label") == ["baseline", "current"]
        assert {series_of(g) for g in groups(svg, "series-points")} == {0, 1}
    assert "output throughput (tok/s)" in texts(latency, "axis-label")
    assert "median end-to-end latency (ms)" in texts(latency, "axis-label")
    assert "output tok/s per GPU" in texts(interactivity, "axis-label")
    assert {series_of(g) for g in groups(latency, "series-line")} == {0, 1}  # each side joined by concurrency
    fronts = groups(interactivity, "front")
    assert {series_of(f) for f in fronts} == {0, 1}  # a Pareto front for baseline and current
    assert not groups(interactivity, "series-line")  # the front replaces the concurrency order there
    # Every point of a concurrency sweep is on its own front here (more users: more throughput, less speed).
    assert vertices(fronts[0]) == len(CONCURRENCIES)
    # The SLO line and the capacity marker.
    assert any("e2e_p50_ms" in t for t in texts(latency, "ref-label"))
    assert groups(latency, "ref-line")
    assert groups(latency, "mark")
    assert "e2e_p50_ms cap. c≈12" in texts(interactivity, "mark-label")


def test_slo_line_far_beyond_the_data_is_named_not_drawn() -> None:
    document = make_document(per_request=False)
    for r in document["results"]:
        r["slos"][0]["limit"] = 900000.0
    (latency,) = plot(render_html(document, generated=WHEN), "throughput-latency")
    assert texts(latency, "ref-label") == ["SLO e2e_p50_ms ≤ 900000 (off scale →)"]
    assert not groups(latency, "ref-line")
    x_ticks = texts(latency, "x-tick")
    assert x_ticks[-1] in ("50k", "60k")  # the axis still fits the data (it ends at 52000)


def test_capacity_at_slo_is_stated() -> None:
    text = default_report()
    assert "e2e_p50_ms ≤ 15000: up to c≈12 (c8 meets it, c16 does not) · 3 users/GPU (4 GPUs)" in text
    assert "baseline: e2e_p50_ms ≤ 15000: up to c≈" in text


def test_tpot_slo_is_drawn_on_the_interactivity_chart() -> None:
    # tpot_p50_ms ≤ 5 ms is interactivity ≥ 1000/5 = 200 tok/s/user on the x axis (1000 / median TPOT).
    document = make_document(per_request=False)
    for r in document["results"]:
        tpot = r["summary"]["median_tpot_ms"]
        r["slos"] = [
            {"name": "tpot_p50_ms", "limit": 5.0, "kind": "max", "unit": "ms", "key": "median_tpot_ms",
             "measured": tpot, "passed": tpot <= 5.0, "reason": ""}
        ]  # fmt: skip
    text = render_html(document, generated=WHEN)
    (interactivity,) = plot(text, "throughput-interactivity")
    assert texts(interactivity, "ref-label") == ["SLO tpot_p50_ms ≤ 5 (≥ 200 tok/s/user)"]
    assert groups(interactivity, "ref-line")
    (latency,) = plot(text, "throughput-latency")
    assert not texts(latency, "ref-label")  # not an E2E limit


def test_ab_capacity_names_a_not_baseline() -> None:
    document = make_document(per_request=False)
    for r in document["results"]:
        r["ab"] = {"order": "AB", "blocks": ["AB"]}
    text = render_html(document, generated=WHEN)
    lines = re.findall(r'<li class="capacity-line.*?</li>', text, flags=re.S)
    assert lines
    for line in lines:
        assert '<span class="muted">A: e2e_p50_ms ≤ 15000' in line
        assert "baseline:" not in line


def test_distributions_per_test_baseline_beside_current() -> None:
    text = default_report()
    for metric in ("ttft", "tpot", "e2e"):
        figures = plot(text, f"ecdf-{metric}")
        assert len(figures) == len(CONCURRENCIES)
        assert {series_of(g) for g in groups(figures[0], "series-line")} == {0, 1}
        baseline, current = texts(figures[0], "legend-label")
        assert baseline.startswith("baseline (n=30")
        assert current.startswith("current (n=20")
    # TPOT per request is (e2e - ttft) / (n_out - 1): 12 s and 0.96 s over 1599 tokens for c8's first request.
    assert report_html._per_request(detail(1, 0.96, 12.0))["tpot"] == [pytest.approx(11040 / 1599)]


def test_header_names_pair_endpoint_engine_model_and_date() -> None:
    collector = parse(default_report())
    shown = " ".join(collector.data)
    for value in ("gb200-fp4", "http://gpu-node:8000", "vllm", "0.11.0", "deepseek-v3.2", "2026-01-02 03:04:05 UTC"):
        assert value in shown
    assert "pytest-llmperf · gb200-fp4" in shown
    assert "my title" in render_html({"pair": "x", "endpoint": None, "results": []}, title="my title")


def test_self_contained_no_scripts_no_fetches() -> None:
    text = render_html(make_document(extra=[single(HOSTILE)]), generated=WHEN)
    collector = parse(text)
    tags = {tag for tag, _ in collector.tags}
    assert "script" not in tags
    assert "img" not in tags
    for tag, attrs in collector.tags:
        assert "src" not in attrs, tag
        if tag == "link":
            assert attrs.get("href", "").startswith("data:"), attrs  # type: ignore[union-attr]
        for name in ("href", "xlink:href"):
            if name in attrs and tag != "a":
                assert (attrs[name] or "").startswith(("#", "data:")), (tag, attrs)
    assert "@import" not in text
    # Plots refer to their own clip paths and markers only.
    assert all(ref.startswith("#") for ref in re.findall(r"url\(([^)]*)\)", text))
    # The only addresses are the endpoint (text in the header) and the SVG namespace names, which nothing fetches.
    addresses = set(re.findall(r"https?://[^\s\"'<>]+", text))
    assert addresses == {"http://gpu-node:8000", "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert '<meta charset="utf-8">' in text


def test_hostile_unicode_and_long_ids_are_escaped_and_complete() -> None:
    document = make_document(extra=[single(HOSTILE), single(UNICODE), single(LONG)], per_request=False)
    document["pair"] = "<b>pair</b>"
    text = render_html(document, generated=WHEN)
    assert "<script" not in text
    assert "<b>pair</b>" not in text
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in text
    assert "&lt;b&gt;pair&lt;/b&gt;" in text
    collector = parse(text)
    tooltips = [attrs.get("title") for tag, attrs in collector.tags if "id" in (attrs.get("class") or "").split()]
    for nodeid in (HOSTILE, UNICODE, LONG):
        assert nodeid in tooltips  # the full id, decoded exactly as a browser shows it
    assert "test_日本語" in text
    assert "größe-🚀" in text
    # Long parametrizations sit in an element that cuts them with an ellipsis.
    assert re.search(r"\.id \.params\{[^}]*text-overflow:ellipsis", text)
    svgs(text)  # still well-formed


def test_unknown_gpu_count_plots_per_server_and_never_zero() -> None:
    document = make_document(gpus=None, per_request=False)
    for r in document["results"]:
        assert "output_throughput_per_gpu" not in r["summary"]
    text = render_html(document, generated=WHEN)
    (interactivity,) = plot(text, "throughput-interactivity")
    axis = texts(interactivity, "axis-label")
    assert "output tok/s per server (GPU count unknown)" in axis
    assert not any("per GPU" in a for a in axis)
    assert "users/GPU unknown (no GPU count)" in text
    assert "unknown (throughput is per server)" in text
    per_gpu_cells = re.findall(r'<td class="num">([^<]*)</td><td class="num">[^<]*</td><td><ul class="slos">', text)
    assert per_gpu_cells == ["—"] * len(CONCURRENCIES)


def test_missing_metrics_render_as_dash_not_zero() -> None:
    failed = single(
        "perf/test_x.py::test_all_failed",
        outcome="failed",
        summary={
            "completed": 0,
            "failed": 8,
            "median_ttft_ms": None,
            "median_tpot_ms": None,
            "output_throughput": None,
        },
        runs=[],
        detail={"ttfts": [0.0] * 8, "latencies": [0.0] * 8, "output_lens": [0] * 8, "errors": ["timeout"] * 8},
        baseline={"where": None, "runs": [], "raw": {}},
        verdict={"status": "NO_BASELINE", "reason": "", "metrics": []},
        slos=[{"name": "ttft_p99_ms", "limit": 500.0, "kind": "max", "unit": "ms", "measured": None, "passed": False}],
        slo_breached=True,
        slo_gating=True,
    )
    text = render_html(make_document(extra=[failed], per_request=False), generated=WHEN)
    row = re.search(r"<tr class=\"row-bad\">.*?test_all_failed.*?</tr>", text, flags=re.S)
    assert row is not None
    cells = re.findall(r'<td class="num">([^<]*)</td>', row.group(0))
    # ... output tok/s, per GPU, tok/s/user, goodput, cost: none measured, so a dash each
    assert cells == ["1", "0/8", "—", "—", "—", "—", "—", "—", "—", "—"]
    assert "ttft_p99_ms ≤ 500 ms: — ✗" in row.group(0)
    section = text[text.index('id="test-7"') :]
    assert "TTFT per request (ECDF): no data" in section.split("</section>")[0]


def test_regressions_and_breaches_come_first() -> None:
    regression = single("perf/test_x.py::test_regressed")
    regression["verdict"] = {
        "status": "REGRESSION",
        "reason": "TPOT p50 +12%",
        "metrics": [{"name": "tpot", "label": "median TPOT", "status": "REGRESSION", "gating": True, "estimate": 1.12}],
    }
    breach = single("perf/test_x.py::test_breached", slo_breached=True, slo_gating=True)
    document = make_document(extra=[regression, breach], per_request=False)
    text = render_html(document, generated=WHEN)
    table = text[text.index('<table class="results">') : text.index("</table>")]
    order = [m for m in re.findall(r'title="([^"]+)"><span class="path">', table)]
    assert order[0] == "perf/test_x.py::test_breached"
    assert order[1] == "perf/test_x.py::test_regressed"
    assert order[2:5] == [f"perf/test_dsv32.py::test_interactive[{c}]" for c in (16, 32, 64)]  # advisory misses
    assert "median TPOT: REGRESSION ×1.120" in table


def test_sglang_keys_and_derived_interactivity() -> None:
    r = single("perf/test_x.py::test_sglang")
    r["summary"] = {"median_e2e_latency_ms": 4321.0, "median_tpot_ms": 20.0, "completed": 3, "failed": 0}
    text = render_html(make_document(extra=[r], per_request=False), generated=WHEN)
    row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*test_sglang.*?</tr>", text, flags=re.S)
    assert row is not None
    assert "4,321" in row.group(0)
    assert ">50.0<" in row.group(0)  # 1000 / 20 ms


def test_pareto_front() -> None:
    points = [(10.0, 100.0), (20.0, 90.0), (15.0, 80.0), (30.0, 50.0), (5.0, 100.0), (30.0, 40.0)]
    assert pareto_front(points) == [(10.0, 100.0), (20.0, 90.0), (30.0, 50.0)]
    assert pareto_front([]) == []


def test_large_runs_are_downsampled() -> None:
    big = single("perf/test_x.py::test_big", detail=detail(20000, 0.1, 2.0))
    document = make_document(extra=[big], per_request=False)
    text = render_html(document, generated=WHEN)
    section = text[text.index('id="test-7"') :].split("</section>")[0]
    for svg in plot(section, "ecdf-e2e"):
        current = [g for g in groups(svg, "series-line") if series_of(g) == 1]
        assert current
        assert vertices(current[0]) <= 2 * (ECDF_POINTS + 1)
    assert len(text) < 2_000_000


def test_axis_ticks_are_readable() -> None:
    assert plots.tick_labels([2.0, 4.0, 6.0, 8.0, 10.0, 12.0]) == ["2", "4", "6", "8", "10", "12"]
    assert plots.tick_labels([0.0, 2.5, 5.0, 7.5, 10.0, 12.5]) == ["0.0", "2.5", "5.0", "7.5", "10.0", "12.5"]
    assert plots.tick_labels([0.0, 20000.0, 40000.0, 60000.0])[-1] == "60k"
    assert plots.tick_labels([0.0, 0.2, 0.4]) == ["0.0", "0.2", "0.4"]
    assert plots.tick_labels([1000.0, 1200.0]) == ["1,000", "1,200"]
    # The report's axes use them: latency in thousands of ms reads "10k", "20k", ...
    (latency,) = plot(default_report(), "throughput-latency")
    assert all(t.endswith("k") or t == "0" for t in texts(latency, "x-tick"))
    # One point (a flat axis) still gets finite, readable ticks.
    flat = ET.fromstring(
        plots.render_svg(plots.Plot("flat", "one point", "x", "y", (plots.Series("s", (5.0,), (5.0,)),)))
    )
    ticks = texts(flat, "x-tick") + texts(flat, "y-tick")
    assert ticks
    assert not [t for t in ticks if not t or "nan" in t or "inf" in t]


def test_empty_document() -> None:
    text = render_html({"pair": "x", "endpoint": None, "results": []}, generated=WHEN)
    assert "No perf results in this session." in text
    assert svgs(text) == []


def test_no_sweep_without_several_concurrencies() -> None:
    text = render_html({"pair": "x", "endpoint": None, "results": [single("a.py::test_one")]}, generated=WHEN)
    assert "No concurrency sweep" in text
    assert plot(text, "throughput-latency") == []
    assert len(plot(text, "ecdf-ttft")) == 1


def test_write_html_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out" / "report.html"
    small = {"pair": "x", "endpoint": None, "results": [single("a.py::test_one")]}
    written = write_html(target, small)
    assert written == target
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]

    target.write_text("previous report", encoding="utf-8")

    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_html(target, small)
    assert target.read_text(encoding="utf-8") == "previous report"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]  # no temporary file left behind


# -- the plots module -------------------------------------------------------------------------------------------------

DAYS = tuple(dt.datetime(2026, 3, d, 12, tzinfo=dt.timezone.utc) for d in range(1, 15))


def history_plot() -> plots.Plot:
    """What a history chart will need: many series over dates, point labels, a reference line on y, a mark."""
    engines = ("vllm 0.10", "vllm 0.11", "sglang 0.5", "trt-llm 1.1")
    series = tuple(
        plots.Series(
            name,
            DAYS,
            tuple(1000.0 + 90 * k + 25 * (d % 4) for d in range(len(DAYS))),
            labels=tuple(f"r{d}" for d in range(len(DAYS))),
            dashed=k == 0,
        )
        for k, name in enumerate(engines)
    )
    return plots.Plot(
        "history",
        "Output throughput by day",
        "run date",
        "output tok/s",
        series,
        ref_lines=(plots.RefLine(1100.0, "SLO ≥ 1100 tok/s", axis="y"),),
        marks=(plots.Mark(DAYS[6], 1400.0, "upgrade"),),
    )


def test_many_series_on_a_date_axis() -> None:
    text = plots.render_svg(history_plot(), "history")
    svg = ET.fromstring(text)
    assert texts(svg, "legend-label") == ["vllm 0.10", "vllm 0.11", "sglang 0.5", "trt-llm 1.1"]
    assert {series_of(g) for g in groups(svg, "series-line")} == {0, 1, 2, 3}
    assert len(texts(svg, "pt-label")) == 4 * len(DAYS)
    assert texts(svg, "ref-label") == ["SLO ≥ 1100 tok/s"]
    assert texts(svg, "mark-label") == ["upgrade"]
    # Dates, not day numbers since 1970: ConciseDateFormatter names the month once and the days after it.
    ticks = texts(svg, "x-tick")
    assert any("Mar" in t for t in ticks), ticks
    assert all(re.fullmatch(r"\d{2}|Mar|2026-Mar|Mar \d{2}", t) for t in ticks), ticks
    # Every series got its own colour from the cycle.
    strokes = [
        re.findall(r"stroke: (#[0-9a-f]{6})", ET.tostring(g, encoding="unicode")) for g in groups(svg, "series-line")
    ]
    assert len({found[0] for found in strokes}) == 4


def test_labels_of_crowded_points_keep_clear_of_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight concurrencies bunched at low latency (one far point sets the scale), baseline and current almost on
    top of each other, the capacity mark and the SLO line among them: every label still finds a free spot."""
    placed: list[tuple[str, tuple[float, ...], list[tuple[float, ...]], tuple[float, ...]]] = []
    place = plots._place

    def spy(spots: Any, text: str, taken: list[Any], lines: Any, box: Any, weight: str = "normal") -> Any:
        before = list(taken)
        spot = place(spots, text, taken, lines, box, weight)
        placed.append((text, taken[-1], before, box))
        return spot

    monkeypatch.setattr(plots, "_place", spy)
    n = 8
    e2e = [20 + 15 * (k / (n - 1)) ** 2 for k in range(n)] + [120.0]
    throughput = [100 + 150 * (k / (n - 1)) ** 0.5 for k in range(n)] + [1200.0]
    names = tuple(f"c{2**k}" for k in range(n + 1))
    cap = n // 2
    crowded = plots.Plot(
        "throughput-latency",
        "Output throughput vs median E2E latency",
        "median end-to-end latency (ms)",
        "output throughput (tok/s)",
        (
            plots.Series(
                "baseline", tuple(x * 1.04 for x in e2e), tuple(y * 0.98 for y in throughput), names, dashed=True
            ),
            plots.Series("current", tuple(e2e), tuple(throughput), names),
        ),
        ref_lines=(plots.RefLine(e2e[cap] + 1, f"SLO e2e_p50_ms ≤ {e2e[cap] + 1:.0f}"),),
        marks=(plots.Mark(e2e[cap], throughput[cap], f"e2e_p50_ms cap. c≈{2**cap}"),),
    )
    svg = ET.fromstring(plots.render_svg(crowded))
    assert len(texts(svg, "pt-label")) == 2 * (n + 1)
    assert len(placed) == 2 * (n + 1) + 2  # and the SLO line's and the mark's
    for text, rect, taken_before, box in placed:
        # Inside the axes, and clear of every point, mark and label placed before it (so of every other label).
        assert box[0] <= rect[0] < rect[2] <= box[2], text
        assert box[1] <= rect[1] < rect[3] <= box[3], text
        clashes = [t for t in taken_before if plots._overlap(rect, t) > 0]
        assert not clashes, (text, rect, clashes)


@pytest.mark.parametrize("cap", range(7))
def test_the_capacity_label_sits_by_its_mark_and_no_label_covers_the_mark(
    monkeypatch: pytest.MonkeyPatch, cap: int
) -> None:
    """Crowded points around the capacity mark: its label still gets a spot next to it (it used to be pushed
    60–80 px away, points' labels having taken every spot near it), and no label covers the diamond."""
    placed: list[tuple[str, tuple[float, ...]]] = []
    centres: list[tuple[float, float]] = []
    place, around = plots._place, plots._around

    def spy_place(spots: Any, text: str, taken: list[Any], lines: Any, box: Any, weight: str = "normal") -> Any:
        spot = place(spots, text, taken, lines, box, weight)
        placed.append((text, taken[-1]))
        return spot

    def spy_around(px: float, py: float, radius: float) -> Any:
        if radius == plots._MARK_RADIUS:
            centres.append((px, py))
        return around(px, py, radius)

    monkeypatch.setattr(plots, "_place", spy_place)
    monkeypatch.setattr(plots, "_around", spy_around)
    n = 8
    e2e = [20 + 15 * (k / (n - 1)) ** 2 for k in range(n)] + [120.0]
    throughput = [100 + 150 * (k / (n - 1)) ** 0.5 for k in range(n)] + [1200.0]
    names = tuple(f"c{2**k}" for k in range(n + 1))
    label = f"e2e_p50_ms cap. c≈{2**cap}"
    crowded = plots.Plot(
        "throughput-latency",
        "Output throughput vs median E2E latency",
        "median end-to-end latency (ms)",
        "output throughput (tok/s)",
        (
            plots.Series(
                "baseline", tuple(x * 1.04 for x in e2e), tuple(y * 0.98 for y in throughput), names, dashed=True
            ),
            plots.Series("current", tuple(e2e), tuple(throughput), names),
        ),
        ref_lines=(plots.RefLine(e2e[cap] + 1, "SLO"),),
        marks=(plots.Mark((e2e[cap] + e2e[cap + 1]) / 2, (throughput[cap] + throughput[cap + 1]) / 2, label),),
    )
    plots.render_svg(crowded)
    ((mx, my),) = centres
    for text, (left, bottom, right, top) in placed:
        dx = max(left - mx, mx - right, 0.0)
        dy = max(bottom - my, my - top, 0.0)
        if text == label:
            assert dx + dy < 30, (dx, dy)  # the near spots or the first rings
        else:
            assert dx + dy > 7.4, text  # the diamond reaches 7.4 px from its centre (|dx| + |dy|)


def test_output_is_deterministic_and_ids_are_unique_per_figure() -> None:
    first = plots.render_svg(history_plot(), "a")
    assert plots.render_svg(history_plot(), "a") == first
    other = plots.render_svg(history_plot(), "b")
    ids_a = set(re.findall(r'\bid="([^"]+)"', first))
    ids_b = set(re.findall(r'\bid="([^"]+)"', other))
    assert ids_a
    assert not ids_a & ids_b
    assert all(i.startswith("a-") for i in ids_a)
    assert render_html(make_document(), generated=WHEN) == default_report()
    for unwanted in ("<?xml", "<!DOCTYPE", "<metadata", "matplotlib.org", "<style"):
        assert unwanted not in first


def test_plot_text_is_text_and_is_escaped() -> None:
    name = "<script>&$\\alpha$"
    svg = plots.render_svg(plots.Plot("k", "a <b> title", "x", "y", (plots.Series(name, (1.0, 2.0), (3.0, 4.0)),)))
    assert "<script>" not in svg
    assert texts(ET.fromstring(svg), "legend-label") == [name]  # verbatim: no TeX, no path outlines
    assert texts(ET.fromstring(svg), "title") == ["a <b> title"]


def test_inconsistent_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="2 x values but 1 y values"):
        plots.Series("s", (1.0, 2.0), (1.0,))
    mixed = plots.Plot("k", "t", "x", "y", (plots.Series("a", (1.0,), (1.0,)), plots.Series("b", DAYS[:1], (1.0,))))
    with pytest.raises(ValueError, match="mixes datetimes and numbers"):
        plots.render_svg(mixed)
    with pytest.raises(ValueError, match="uid"):
        plots.render_svg(history_plot(), "1 bad")


def test_matplotlib_is_imported_only_to_draw() -> None:
    code = (
        "import sys; import pytest_llmperf.plugin, pytest_llmperf.report.html, pytest_llmperf.report.plots; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_warning_on_importing_matplotlib_does_not_abort_the_report() -> None:
    """Under a user's ``-W error``, a deprecation warned by matplotlib or a dependency on its first import."""
    code = (
        "import importlib.abc, sys, warnings\n"
        "class Warns(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('matplotlib', 'PIL', 'dateutil', 'pyparsing'):\n"
        "            warnings.warn(f'importing {name} is deprecated', DeprecationWarning)\n"
        "sys.meta_path.insert(0, Warns())\n"
        "from pytest_llmperf.report import plots\n"
        "print(plots.render_svg(plots.Plot('k', 't', 'x', 'y', (plots.Series('a', (1.0, 2.0), (3.0, 4.0)),)))[:4])\n"
    )
    run = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "<svg"
