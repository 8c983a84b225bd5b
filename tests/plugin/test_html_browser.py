"""The HTML report in a real browser: headless Chromium loads it, draws every plot, and logs no console error.

The browser and what a page showed come from ``headless_chromium.py`` (its fixtures from ``conftest.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import pytest
from headless_chromium import Chromium, check_page, open_page

from pytest_llmperf.report import plots
from pytest_llmperf.report.html import write_html

# -- documents ----------------------------------------------------------------------------------------------------


def _run(e2e_ms: float, throughput: float, tpot_ms: float, gpus: int | None) -> dict[str, Any]:
    run: dict[str, Any] = {
        "completed": 40,
        "failed": 0,
        "median_ttft_ms": e2e_ms * 0.08,
        "median_tpot_ms": tpot_ms,
        "median_e2el_ms": e2e_ms,
        "p99_e2el_ms": e2e_ms * 1.3,
        "output_throughput": throughput,
        "interactivity": 1000.0 / tpot_ms,
    }
    if gpus:
        run["gpu_count"] = gpus
        run["output_throughput_per_gpu"] = throughput / gpus
    return run


def _detail(n: int, ttft_s: float, e2e_s: float, n_out: int) -> dict[str, Any]:
    ttfts = [ttft_s * (0.8 + 0.4 * math.sin(i) ** 2) for i in range(n)]
    lats = [e2e_s * (0.9 + 0.2 * math.cos(i * 1.7) ** 2) for i in range(n)]
    return {
        "ttfts": ttfts,
        "latencies": lats,
        "output_lens": [n_out] * n,
        "input_lens": [2400] * n,
        "itls": [[] for _ in range(n)],
        "start_times": [float(i) for i in range(n)],
        "errors": [""] * n,
    }


def sweep_document(*, gpus: int | None, nodeid_prefix: str = "perf/test_interactive.py::test_sweep") -> dict[str, Any]:
    """A DeepSeek-V3.2-like interactive sweep, c1..c64, with a baseline and the e2e_p50_ms=15000 SLO."""
    results = []
    e2e = {1: 5200, 2: 6400, 4: 8300, 8: 12000, 16: 18000, 32: 29000, 64: 52000}
    for c, latency in e2e.items():
        tpot = latency / 1600
        throughput = 1600 * c / (latency / 1000)
        run = _run(latency, throughput, tpot, gpus)
        base = _run(latency * 1.05, throughput * 0.96, tpot * 1.05, gpus)
        passed = latency <= 15000
        results.append(
            {
                "nodeid": f"{nodeid_prefix}[{c}]",
                "outcome": "passed",
                "workload": {"input_len": 2400, "output_len": 1600, "concurrency": c, "num_prompts": 10 * c},
                "summary": run,
                "runs": [run],
                "verdict": {"status": "PASS", "reason": "within tolerance", "metrics": []},
                "slos": [
                    {
                        "name": "e2e_p50_ms",
                        "limit": 15000.0,
                        "kind": "max",
                        "unit": "ms",
                        "key": "median_e2el_ms",
                        "measured": float(latency),
                        "passed": passed,
                    }
                ],
                "slo_breached": not passed,
                "slo_gating": False,
                "detail": _detail(60, latency * 0.08 / 1000, latency / 1000, 1600),
                "baseline": {
                    "where": "baselines/gb200-fp4/perf/test_interactive.yaml",
                    "runs": [base, base],
                    "raw": _detail(120, latency * 0.085 / 1000, latency * 1.05 / 1000, 1600),
                },
            }
        )
    endpoint: dict[str, Any] = {"url": "http://gpu-node:8000", "model": "deepseek-v3.2", "engine": "vllm"}
    endpoint.update(engine_version="0.11", gpu_count=gpus)
    return {"pair": "gb200-fp4", "endpoint": endpoint, "results": results}


def awkward_document() -> dict[str, Any]:
    """The sweep without a GPU count plus results whose ids and values are hard to render."""
    document = sweep_document(gpus=None)
    odd = dict(document["results"][0])
    odd.update(
        nodeid="perf/test_ünïcode.py::test_日本語[<script>alert('x')</script>-" + "long-param-" * 40 + "]",
        outcome="failed",
        summary={"completed": 0, "failed": 8, "median_ttft_ms": None, "median_e2el_ms": None},
        runs=[],
        verdict={"status": "REGRESSION", "reason": "TPOT p50 +12% (<b>bold</b>)", "metrics": []},
        slo_breached=True,
        slo_gating=True,
        detail={"ttfts": [0.0] * 8, "latencies": [0.0] * 8, "output_lens": [0] * 8, "errors": ["timeout"] * 8},
        baseline={"where": None, "runs": [], "raw": {}},
        slos=[{"name": "e2e_p50_ms", "limit": 15000.0, "kind": "max", "unit": "ms", "measured": None, "passed": False}],
    )
    odd["workload"] = {**odd["workload"], "concurrency": None, "request_rate": 4.0}
    document["results"].append(odd)
    return document


# -- tests --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpus", [4, None], ids=["gpus-known", "gpus-unknown"])
def test_report_loads_and_draws_every_plot(browser: Chromium, tmp_path: Path, gpus: int | None) -> None:
    report = write_html(tmp_path / "report.html", sweep_document(gpus=gpus))
    page = open_page(browser, report, tmp_path / "report.png")
    check_page(page, {"throughput-latency", "throughput-interactivity", "ecdf-ttft", "ecdf-tpot", "ecdf-e2e"})
    sweep_plots = [p for p in page.plots if not p["plot"].startswith("ecdf-")]
    assert [p["labels"] for p in sweep_plots] == [2 * 7 + 2, 2 * 7 + 1]  # cX twice; SLO and capacity, capacity
    assert page.facts["title"] == "pytest-llmperf · gb200-fp4"
    assert page.facts["rows"] == 7
    assert page.facts["sweeps"] == 1
    assert sum(p["plot"].startswith("ecdf-") for p in page.plots) == 7 * 3
    assert page.screenshot.stat().st_size > 10_000


def test_awkward_ids_and_missing_values_render_without_errors(browser: Chromium, tmp_path: Path) -> None:
    document = awkward_document()
    report = write_html(tmp_path / "report.html", document)
    page = open_page(browser, report, tmp_path / "report.png")
    check_page(page, {"throughput-latency", "throughput-interactivity"})
    assert page.facts["rows"] == 8
    # The full id, script tag and all, is the tooltip text: escaped in the file, shown verbatim by the browser.
    assert document["results"][-1]["nodeid"] in page.facts["tooltips"]


def test_report_of_a_real_session(browser: Chromium, tmp_path: Path, pytester: pytest.Pytester, start_sim: Any) -> None:
    """A document the plugin wrote (sweep against the simulator, then again against its own baseline)."""
    sim = start_sim("--decode-ms", "2", "--decode-ms-per-seq", "0.2", "--jitter", "0.02").url
    pytester.makepyfile(
        test_sweep="""
        import pytest

        @pytest.mark.perf(input_len=16, output_len=12, e2e_p50_ms=60000)
        @pytest.mark.parametrize("concurrency", [1, 2, 4])
        def test_sweep(llmperf, concurrency):
            llmperf.run(concurrency=concurrency, num_prompts=4 * concurrency)
        """
    )
    first = pytester.runpytest(f"--llmperf-endpoint={sim}", "--llmperf-update", "--llmperf-gpus=2")
    first.assert_outcomes(passed=3)
    out = pytester.path / "r.json"
    # Verdicts of one run against one baseline run may go either way; only the document matters here.
    pytester.runpytest(f"--llmperf-endpoint={sim}", f"--llmperf-json={out}", "--llmperf-gpus=2")
    document = json.loads(out.read_text())
    assert len(document["results"]) == 3
    assert all(r["baseline"]["runs"] for r in document["results"])
    report = write_html(tmp_path / "report.html", document)
    page = open_page(browser, report, tmp_path / "report.png")
    check_page(page, {"throughput-latency", "throughput-interactivity", "ecdf-ttft", "ecdf-tpot", "ecdf-e2e"})
    assert page.facts["sweeps"] == 1


def test_many_series_on_a_date_axis(browser: Chromium, tmp_path: Path) -> None:
    """The plots module alone, as the history charts will use it: five series over dates, labelled points."""
    days = [dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=d) for d in range(10)]
    series = tuple(
        plots.Series(f"engine {k}", tuple(days), tuple(900.0 + 80 * k + 30 * (d % 3) for d in range(10)),
                     labels=tuple(f"r{d}" for d in range(0, 10, 3)))
        for k in range(5)
    )  # fmt: skip
    plot = plots.Plot("history", "Throughput by day", "run date", "tok/s", series, (plots.RefLine(1000.0, "SLO", "y"),))
    page_file = tmp_path / "history.html"
    page_file.write_text(
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>history</title><style>{plots.PAGE_CSS}</style>'
        f"</head><body>{plots.render_svg(plot)}</body></html>",
        encoding="utf-8",
    )
    page = open_page(browser, page_file, tmp_path / "history.png")
    check_page(page, {"history"})
    (drawn,) = page.plots
    assert drawn["labels"] == 5 * 4 + 1


def test_the_harness_sees_console_errors(browser: Chromium, tmp_path: Path) -> None:
    """Control: a page that throws, logs an error and misses a resource is caught, so silence means something."""
    page_file = tmp_path / "broken.html"
    page_file.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title></head><body>'
        '<svg class="plot" data-plot="x" width="200" height="200"><circle cx="5" cy="5" r="3"/></svg>'
        '<img src="missing.png"><script>console.error("boom"); null.x;</script></body></html>',
        encoding="utf-8",
    )
    page = open_page(browser, page_file, tmp_path / "broken.png")
    joined = "\n".join(page.errors)
    assert "console.error" in joined
    assert "exception" in joined
    assert "missing.png" in joined
