"""The HTML report in a real browser: headless Chromium loads it, draws every plot, and logs no console error.

Chromium is driven over the DevTools protocol through ``--remote-debugging-pipe`` (NUL-separated JSON on file
descriptors 3 and 4): standard library only, no port, no WebDriver, nothing downloaded. Chromium comes from the
system (Debian: ``apt-get install chromium``); ``LLMPERF_CHROMIUM`` names another binary. Without one the tests
fail, so a missing browser cannot go unseen, unless ``LLMPERF_SKIP_BROWSER=1`` makes them skip.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.report import plots
from pytest_llmperf.report.html import write_html

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Safety deadline for one protocol exchange, so a wedged browser cannot hang the suite (not a measurement).
DEADLINE_S = 60.0
# Chromium reads the protocol on descriptor 3 and writes on 4: put the pipe ends there, then become the browser.
TRAMPOLINE = (
    "import os, sys; i, o = int(sys.argv[1]), int(sys.argv[2]); os.dup2(i, 3); os.dup2(o, 4); "
    "os.close(i); os.close(o); os.execv(sys.argv[3], sys.argv[3:])"
)


def find_chromium() -> str | None:
    explicit = os.environ.get("LLMPERF_CHROMIUM")
    if explicit:
        return shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    binary = find_chromium()
    if binary is None:
        explicit = os.environ.get("LLMPERF_CHROMIUM")
        where = (
            f"LLMPERF_CHROMIUM={explicit!r} is not an executable" if explicit else "none of " + ", ".join(BROWSER_NAMES)
        )
        message = f"no Chromium binary found ({where} on PATH); install it with: apt-get install -y chromium"
        if os.environ.get("LLMPERF_SKIP_BROWSER"):
            pytest.skip(message)
        pytest.fail(message + " (or set LLMPERF_SKIP_BROWSER=1 to skip the browser tests)", pytrace=False)
    return binary


class ProtocolError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe pair."""

    def __init__(self, binary: str, profile_dir: Path) -> None:
        import fcntl  # POSIX only, like the pipe hand-over itself

        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Move the child's ends above 3 and 4, where the trampoline puts them, so that no dup2 clobbers the other.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 20)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 20)
        os.close(to_browser_r)
        os.close(from_browser_w)
        argv = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "--hide-scrollbars",
            f"--user-data-dir={profile_dir}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.log_path = profile_dir.parent / "chromium-stderr.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", TRAMPOLINE, str(child_in), str(child_out), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(child_in, child_out),
                start_new_session=True,
            )
        os.close(child_in)
        os.close(child_out)
        self._write = to_browser_w
        self._read = from_browser_r
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProtocolError(f"no answer from Chromium within {DEADLINE_S:.0f} s; see {self.log_path}")
            ready, _, _ = select.select([self._read], [], [], remaining)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise ProtocolError(f"Chromium closed the pipe (exit code {self.proc.poll()}); see {self.log_path}")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        decoded: dict[str, Any] = json.loads(message)
        return decoded

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + DEADLINE_S
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ProtocolError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, session: str) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE_S
        for event in self.events:
            if event["method"] == method and event.get("sessionId") == session:
                return event
        while True:
            reply = self._receive(deadline)
            if "method" in reply:
                self.events.append(reply)
                if reply["method"] == method and reply.get("sessionId") == session:
                    return reply

    def close(self) -> None:
        with contextlib.suppress(ProtocolError, OSError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        # Helpers (renderer, GPU, zygote) are in the browser's own process group: leave none behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        os.close(self._write)
        os.close(self._read)


@pytest.fixture(scope="module")
def browser(chromium_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    root = tmp_path_factory.mktemp("chromium")
    chromium = Chromium(chromium_binary, root / "profile")
    try:
        chromium.send("Browser.getVersion")
        yield chromium
    finally:
        chromium.close()


class Page:
    """What a page showed: console errors, plot sizes, and a full-page screenshot."""

    def __init__(self, errors: list[str], plots: list[dict[str, Any]], facts: dict[str, Any], screenshot: Path):
        self.errors = errors
        self.plots = plots
        self.facts = facts
        self.screenshot = screenshot


# Per plot: its size, the data drawn (line paths and point markers), and each pair of labels that overlap by more
# than a sliver, as the browser laid them out.
PAGE_FACTS = """JSON.stringify({
  title: document.title,
  plots: [...document.querySelectorAll('svg.plot')].map(s => {
    const r = s.getBoundingClientRect();
    const labels = [...s.querySelectorAll('.pt-label text, .mark-label text, .ref-label text')].map(
      t => [t.textContent, t.getBoundingClientRect()]);
    const overlaps = [];
    labels.forEach(([a, p], i) => labels.slice(i + 1).forEach(([b, q]) => {
      const w = Math.min(p.right, q.right) - Math.max(p.left, q.left);
      const h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
      if (w > 1 && h > 1 && w * h > 4) overlaps.push(a + ' / ' + b);
    }));
    return {plot: s.dataset.plot, width: r.width, height: r.height, labels: labels.length, overlaps,
            drawn: s.querySelectorAll('.series-line path, .front path, .series-points use').length};
  }),
  rows: document.querySelectorAll('table.results tbody tr').length,
  sweeps: document.querySelectorAll('section.sweep').length,
  scripts: document.scripts.length,
  pageWidth: document.documentElement.scrollWidth,
  pageHeight: document.documentElement.scrollHeight,
  tooltips: [...document.querySelectorAll('.id[title]')].map(e => e.getAttribute('title')),
})"""


def open_page(browser: Chromium, path: Path, screenshot: Path) -> Page:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    first_event = len(browser.events)
    try:
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired", session)
        value = browser.send("Runtime.evaluate", {"expression": PAGE_FACTS, "returnByValue": True}, session=session)[
            "result"
        ]["value"]
        facts = json.loads(value)
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
    errors = []
    for event in browser.events[first_event:]:
        if event.get("sessionId") != session:
            continue
        params = event.get("params", {})
        if event["method"] == "Runtime.exceptionThrown":
            errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console." + params["type"] + ": " + json.dumps(params.get("args", []))[:500])
        elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
    return Page(errors, facts["plots"], facts, screenshot)


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


def check_page(page: Page, expected_plots: set[str]) -> None:
    assert page.errors == [], page.errors
    assert page.facts["scripts"] == 0
    kinds = {p["plot"] for p in page.plots}
    assert expected_plots <= kinds, kinds
    for plot in page.plots:
        assert plot["width"] > 100, plot
        assert plot["height"] > 100, plot
        assert plot["drawn"] > 0, plot
        assert plot["overlaps"] == [], plot  # every label readable
    # Nothing overflows the window sideways (long ids are cut with an ellipsis).
    assert page.facts["pageWidth"] <= 1400, page.facts["pageWidth"]


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
