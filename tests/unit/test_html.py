"""The HTML report's structure: self-contained, plots present and labelled, hostile strings escaped, missing
values shown as missing, regressions first, written atomically."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.report import html as report_html
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


def make_document(gpus: int | None = 4, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    results = [sweep_result(c, gpus) for c in CONCURRENCIES]
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


def texts(svg: ET.Element, cls: str) -> list[str]:
    return [t.text or "" for t in svg.iter(f"{SVG_NS}text") if cls in (t.get("class") or "").split()]


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
    text = render_html(make_document(), generated=WHEN)
    (latency,) = plot(text, "throughput-latency")
    (interactivity,) = plot(text, "throughput-interactivity")
    for svg in (latency, interactivity):
        labels = texts(svg, "pt-label")
        for c in CONCURRENCIES:
            assert labels.count(f"c{c}") == 2  # current and baseline
        assert int(svg.get("width", "0")) > 0
        assert int(svg.get("height", "0")) > 0
        assert svg.find(f"{SVG_NS}title") is not None
    assert "output throughput (tok/s)" in texts(latency, "axis-label")
    assert "median end-to-end latency (ms)" in texts(latency, "axis-label")
    assert "output tok/s per GPU" in texts(interactivity, "axis-label")
    fronts = [p for p in interactivity.iter(f"{SVG_NS}polyline") if p.get("data-role") == "pareto-front"]
    assert {f.get("class") for f in fronts} == {"pareto cur", "pareto base"}
    # Every point of a concurrency sweep is on its own front here (more users: more throughput, less speed).
    assert len(fronts[0].get("points", "").split()) == len(CONCURRENCIES)
    # The SLO line and the capacity marker.
    assert any("e2e_p50_ms" in t for t in texts(latency, "slo-label"))
    assert [e for e in latency.iter() if e.get("data-role") == "capacity"]
    assert "e2e_p50_ms cap. c≈12" in texts(interactivity, "capacity-label")


def test_slo_line_far_beyond_the_data_is_named_not_drawn() -> None:
    document = make_document()
    for r in document["results"]:
        r["slos"][0]["limit"] = 900000.0
    (latency,) = plot(render_html(document, generated=WHEN), "throughput-latency")
    assert texts(latency, "slo-label") == ["SLO e2e_p50_ms ≤ 900000 (off scale →)"]
    assert not [line for line in latency.iter(f"{SVG_NS}line") if line.get("class") == "slo"]
    x_ticks = [
        t.text for t in latency.iter(f"{SVG_NS}text") if t.get("class") == "tick" and t.get("text-anchor") == "middle"
    ]
    assert x_ticks[-1] == "60k"  # the axis still fits the data


def test_capacity_at_slo_is_stated() -> None:
    text = render_html(make_document(), generated=WHEN)
    assert "e2e_p50_ms ≤ 15000: up to c≈12 (c8 meets it, c16 does not) · 3 users/GPU (4 GPUs)" in text
    assert "baseline: e2e_p50_ms ≤ 15000: up to c≈" in text


def test_distributions_per_test_baseline_beside_current() -> None:
    text = render_html(make_document(), generated=WHEN)
    for metric in ("ttft", "tpot", "e2e"):
        figures = plot(text, f"ecdf-{metric}")
        assert len(figures) == len(CONCURRENCIES)
        classes = {p.get("class") for p in figures[0].iter(f"{SVG_NS}polyline")}
        assert classes == {"curve cur", "curve base"}
    # TPOT per request is (e2e - ttft) / (n_out - 1): 12 s and 0.96 s over 1599 tokens for c8's first request.
    assert report_html._per_request(detail(1, 0.96, 12.0))["tpot"] == [pytest.approx(11040 / 1599)]


def test_header_names_pair_endpoint_engine_model_and_date() -> None:
    collector = parse(render_html(make_document(), generated=WHEN))
    shown = " ".join(collector.data)
    for value in ("gb200-fp4", "http://gpu-node:8000", "vllm", "0.11.0", "deepseek-v3.2", "2026-01-02 03:04:05 UTC"):
        assert value in shown
    assert "pytest-llmperf · gb200-fp4" in shown
    assert "my title" in render_html(make_document(), title="my title")


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
    assert "@import" not in text
    assert "url(" not in text
    assert '<meta charset="utf-8">' in text


def test_hostile_unicode_and_long_ids_are_escaped_and_complete() -> None:
    document = make_document(extra=[single(HOSTILE), single(UNICODE), single(LONG)])
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
    document = make_document(gpus=None)
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
    text = render_html(make_document(extra=[failed]), generated=WHEN)
    row = re.search(r"<tr class=\"row-bad\">.*?test_all_failed.*?</tr>", text, flags=re.S)
    assert row is not None
    cells = re.findall(r'<td class="num">([^<]*)</td>', row.group(0))
    assert cells == ["1", "0/8", "—", "—", "—", "—", "—", "—"]
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
    document = make_document(extra=[regression, breach])
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
    text = render_html(make_document(extra=[r]), generated=WHEN)
    row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*test_sglang.*?</tr>", text, flags=re.S)
    assert row is not None
    assert "4,321" in row.group(0)
    assert ">50.0<" in row.group(0)  # 1000 / 20 ms


def test_pareto_front() -> None:
    points = [(10.0, 100.0), (20.0, 90.0), (15.0, 80.0), (30.0, 50.0), (5.0, 100.0), (30.0, 40.0)]
    assert pareto_front(points) == [(10.0, 100.0), (20.0, 90.0), (30.0, 50.0)]
    assert pareto_front([]) == []


def test_large_runs_are_downsampled() -> None:
    document = make_document(extra=[single("perf/test_x.py::test_big", detail=detail(20000, 0.1, 2.0))])
    text = render_html(document, generated=WHEN)
    section = text[text.index('id="test-7"') :].split("</section>")[0]
    for svg in plot(section, "ecdf-e2e"):
        for line in svg.iter(f"{SVG_NS}polyline"):
            if line.get("class") == "curve cur":
                assert len(line.get("points", "").split()) <= 2 * (ECDF_POINTS + 1)
    assert len(text) < 2_000_000


def test_axis_ticks_are_readable() -> None:
    axis = report_html._Axis.fit([3.1, 11.4], 0, 100, zero=False)
    labels = [report_html._tick_label(t, axis.ticks) for t in axis.ticks]
    assert labels == ["2", "4", "6", "8", "10", "12"]
    axis = report_html._Axis.fit([0.0, 12.0], 0, 100)
    assert [report_html._tick_label(t, axis.ticks) for t in axis.ticks] == ["0.0", "2.5", "5.0", "7.5", "10.0", "12.5"]
    axis = report_html._Axis.fit([0.0, 52000.0], 0, 100)
    assert [report_html._tick_label(t, axis.ticks) for t in axis.ticks][-1] == "60k"
    flat = report_html._Axis.fit([5.0, 5.0], 0, 100, zero=False)
    assert flat.lo < 5.0 < flat.hi
    assert all(math.isfinite(t) for t in flat.ticks)
    assert report_html._Axis.fit([5.0, 5.0], 0, 100).lo == 0.0
    assert report_html._Axis.fit([], 0, 100).hi > 0


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
    written = write_html(target, make_document())
    assert written == target
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]

    target.write_text("previous report", encoding="utf-8")

    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_html(target, make_document())
    assert target.read_text(encoding="utf-8") == "previous report"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]  # no temporary file left behind
