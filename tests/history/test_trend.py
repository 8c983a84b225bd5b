"""The trend report (history/trend.py): series, change points, epochs and sweep curves built by hand with known
values, rendered to one self-contained page, read back as text, as SVG and in headless Chromium."""

from __future__ import annotations

import datetime as dt
import functools
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import pytest
from headless_chromium import Chromium, check_page, open_page

from pytest_llmperf.history.model import Change, Series, SeriesKey, SessionPoint
from pytest_llmperf.history.trend import (
    SweepCurve,
    SweepPoint,
    change_label,
    metric_label,
    metric_unit,
    render_trend,
    write_trend,
)
from pytest_llmperf.report import plots

SVG_NS = "{http://www.w3.org/2000/svg}"
T0 = dt.datetime(2025, 10, 1, 9, tzinfo=dt.timezone.utc)
WHEN = dt.datetime(2026, 2, 1, 12, tzinfo=dt.timezone.utc)
TEST_ID = "perf/test_chat.py::test_chat[<llama> & \"q\" 'x']"
OTHER_ID = "perf/test_batch.py::test_batch"
SWEEP = "perf/test_sweep.py::test_1k_1k<&>"


def points(values: Sequence[float], versions: Sequence[str | None], epochs: Sequence[str]) -> tuple[SessionPoint, ...]:
    """One session a week from ``T0``."""
    return tuple(
        SessionPoint(f"session-{i}", T0 + dt.timedelta(days=7 * i), v, 3, "abc123", "main", version, epoch)
        for i, (v, version, epoch) in enumerate(zip(values, versions, epochs, strict=True))
    )


def change(series: Series, index: int, p_value: float, *, worse: bool) -> Change:
    before = [p.value for p in series.points[:index]]
    after = [p.value for p in series.points[index:]]
    mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
    return Change(
        series.key,
        index,
        series.points[index - 1],
        series.points[index],
        mean_before,
        mean_after,
        mean_after / mean_before,
        p_value,
        worse,
        True,
    )


# TPOT: 4 sessions on vllm 0.10.2, mean 10.05 ms, then 6 on 0.11.0, mean 10.56 ms (a new epoch, +5.1%).
TPOT = Series(
    SeriesKey(TEST_ID, "h100-fp8", "0123456789abcdef", "median_tpot_ms"),
    points(
        [10.0, 10.2, 9.9, 10.1, 10.6, 10.7, 10.5, 10.4, 10.6, 10.56],
        ["0.10.2"] * 4 + ["0.11.0"] * 6,
        ["epoch-a"] * 4 + ["epoch-b"] * 6,
    ),
)
TPOT_CHANGE = change(TPOT, 4, 1.2e-6, worse=True)
# Throughput of another test: one epoch that comes back (a, b, a): only the newest run of "a" is current.
THROUGHPUT = Series(
    SeriesKey(OTHER_ID, "h100-fp8", "fedcba9876543210", "output_throughput"),
    points([1500.0, 1490.0, 1410.0, 1430.0, 1420.0, 1600.0, 1610.0], ["0.10.2"] * 7, [*"aabbbaa"]),
)
THROUGHPUT_CHANGE = change(THROUGHPUT, 5, 3e-4, worse=False)  # 1450 → 1605 tok/s
SWEEPS = {
    SWEEP: [
        SweepCurve(
            "2025-10-01 · vllm 0.10.2",
            tuple(SweepPoint(c, 1000 / (8 + 0.6 * c), 110 * c / (1 + 0.05 * c) / 8) for c in (1, 4, 16, 64)),
        ),
        SweepCurve(
            "2026-01-15 · vllm 0.11.0 & <fast>",
            tuple(SweepPoint(c, 1000 / (7 + 0.45 * c), 125 * c / (1 + 0.04 * c) / 8) for c in (64, 16, 4, 1)),
        ),
    ]
}


@functools.cache
def page() -> str:
    """The report of the values above: drawn once for the tests that only read it."""
    return render_trend([THROUGHPUT, TPOT], [TPOT_CHANGE, THROUGHPUT_CHANGE], SWEEPS, generated_at=WHEN)


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.data: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.data.append(data)


def parse(text: str) -> Collector:
    collector = Collector()
    collector.feed(text)
    return collector


def svgs(text: str) -> list[ET.Element]:
    """Every inline SVG, parsed as XML: a malformed or badly escaped one fails here."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", text, flags=re.S)]


def chart(text: str, uid: str) -> ET.Element:
    """The SVG whose ids start with ``uid``."""
    (found,) = [s for s in svgs(text) if any((g.get("id") or "").startswith(f"{uid}-") for g in s.iter())]
    return found


def groups(svg: ET.Element, role: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG_NS}g") if role in (g.get("class") or "").split()]


def texts(svg: ET.Element, role: str) -> list[str]:
    return ["".join(t.itertext()) for g in groups(svg, role) for t in g.iter(f"{SVG_NS}text")]


def xs_of_path(group: ET.Element) -> list[float]:
    return [float(x) for p in group.iter(f"{SVG_NS}path") for x in re.findall(r"[ML] (-?[\d.]+)", p.get("d", ""))]


def point_xs(svg: ET.Element) -> list[float]:
    return [float(u.get("x", "nan")) for g in groups(svg, "series-points") for u in g.iter(f"{SVG_NS}use")]


def series_div(text: str, metric: str) -> str:
    match = re.search(rf'<div class="series" id="(s\d+)" data-metric="{metric}">.*?</table></div>', text, re.S)
    assert match, metric
    return match.group(0)


# -- the page as text -------------------------------------------------------------------------------------------------


def test_every_test_id_is_shown_escaped_and_grouped() -> None:
    text = page()
    for test_id in (TEST_ID, OTHER_ID):
        assert f"<code>{html.escape(test_id, quote=True)}</code>" in text
    for raw in ("<llama>", "<fast>", "test_1k_1k<&>"):
        assert raw not in text
    collector = parse(text)
    shown = "".join(collector.data)
    assert TEST_ID in shown  # what a reader sees, verbatim
    # Tests sorted by id; each a section of its own charts.
    sections = re.findall(r'<section class="test" id="(test-\d+)"><h3><code>([^<]*)</code>', text)
    assert [html.unescape(name) for _, name in sections] == [OTHER_ID, TEST_ID]
    # The table of contents links each test and the sweep, and every link has its target.
    ids = {attrs.get("id") for _, attrs in collector.tags if attrs.get("id")}
    links = [str(attrs.get("href")) for tag, attrs in collector.tags if tag == "a"]
    assert {"#test-1", "#test-2", "#sweep-1"} <= set(links)
    assert all(link.startswith("#") and link[1:] in ids for link in links), links
    assert "<title>pytest-llmperf history</title>" in text
    assert "2026-02-01 12:00 UTC" in text


def test_a_change_point_is_drawn_labelled_and_listed() -> None:
    text = page()
    assert change_label(TPOT_CHANGE) == "+5.1% p=1e-6"
    assert change_label(THROUGHPUT_CHANGE) == "+10.7% p=3e-4"
    uid = re.search(r'id="(s\d+)" data-metric="median_tpot_ms"', text)
    assert uid
    svg = chart(text, uid.group(1))
    assert texts(svg, "ref-label") == ["+5.1% p=1e-6"]
    (line,) = groups(svg, "ref-line")
    assert plots.REF_COLOR in ET.tostring(line, encoding="unicode")  # worse: red
    # Between the last session before the change and the first after it, halfway.
    xs = point_xs(svg)
    (x_line,) = set(xs_of_path(line))
    assert x_line == pytest.approx((xs[3] + xs[4]) / 2, abs=0.2)
    # Listed in the changes table (newest first) and in the chart's table, with its direction.
    table = text[text.index('<table class="changes">') : text.index("</table>", text.index('<table class="changes">'))]
    assert table.index("2025-11-05") < table.index("2025-10-29")  # throughput's change, then TPOT's
    for shown in ("10.1 ms", "10.6 ms", "1,450 tok/s", "1,605 tok/s"):  # means before and after
        assert shown in table
    assert '<span class="badge bad">worse</span>' in table
    assert '<span class="badge good">better</span>' in table
    assert "2025-10-29: +5.1% p=1e-6 (worse)" in series_div(text, "median_tpot_ms")
    other = re.search(r'id="(s\d+)" data-metric="output_throughput"', text)
    assert other
    (better,) = groups(chart(text, other.group(1)), "ref-line")
    assert "#1b7a3a" in ET.tostring(better, encoding="unicode")  # better: green


def test_the_current_epoch_is_shaded_from_its_first_session_to_the_last() -> None:
    text = page()
    uid = re.search(r'id="(s\d+)" data-metric="median_tpot_ms"', text)
    assert uid
    svg = chart(text, uid.group(1))
    (span,) = groups(svg, "span")
    left, right = min(xs_of_path(span)), max(xs_of_path(span))
    xs = point_xs(svg)
    assert xs[3] < left < xs[4]  # the six sessions of epoch-b, not the four before
    assert right == pytest.approx(xs[-1], abs=0.2)
    assert "current epoch" in texts(svg, "legend-label")
    div = series_div(text, "median_tpot_ms")
    assert "since 2025-10-29 · 6 sessions" in div
    assert '<td class="num">10</td>' in div  # sessions
    assert "10.6 ms" in div  # the last value, 10.56, to 3 figures
    # Epoch "a" came back after "b": only its newest run is current.
    assert "since 2025-11-05 · 2 sessions" in series_div(text, "output_throughput")


def test_engine_versions_are_named_where_they_change() -> None:
    text = page()
    uid = re.search(r'id="(s\d+)" data-metric="median_tpot_ms"', text)
    assert uid
    svg = chart(text, uid.group(1))
    assert texts(svg, "mark-label") == ["0.10.2", "0.11.0"]
    assert "0.10.2 → 0.11.0" in series_div(text, "median_tpot_ms")


def test_sweep_curves_are_overlaid_labelled_and_in_a_legend() -> None:
    text = page()
    assert f"<code>{html.escape(SWEEP)}</code>" in text
    svg = chart(text, "w1")
    assert svg.get("data-plot") == "sweep-trend"
    assert texts(svg, "legend-label") == [c.label for c in SWEEPS[SWEEP]]
    assert sorted(texts(svg, "pt-label")) == sorted(["c1", "c4", "c16", "c64"] * 2)
    assert {g.get("id") for g in groups(svg, "series-line")} == {"w1-series-line-0", "w1-series-line-1"}
    for curve in SWEEPS[SWEEP]:
        assert html.escape(curve.label) in text  # in the table under the chart
    assert "1, 4, 16, 64" in text  # concurrencies in order, whatever order the points came in


def test_the_page_fetches_nothing() -> None:
    text = page()
    tags = parse(text).tags
    assert not [t for t, _ in tags if t in ("script", "img", "iframe", "object", "embed")]
    for tag, attrs in tags:
        for name in ("src", "href", "xlink:href"):
            value = attrs.get(name)
            assert value is None or value.startswith(("#", "data:")), (tag, name, value)
    assert not re.findall(r"url\((?!#)", text)
    assert "@import" not in text
    assert not re.findall(r'(?<!xmlns=")(?<!xmlns:xlink=")https?://', text)


def test_units_and_labels_of_metrics() -> None:
    assert metric_label("median_tpot_ms") == "median TPOT (ms)"
    assert metric_label("p99_ttft_ms") == "p99 TTFT (ms)"
    assert metric_label("p99.9_e2el_ms") == "p99.9 E2E latency (ms)"
    assert metric_label("median_e2e_latency_ms") == "median E2E latency (ms)"
    assert metric_label("output_throughput") == "output throughput (tok/s)"
    assert metric_label("request_throughput") == "request throughput (req/s)"
    assert metric_label("output_throughput_per_gpu") == "output throughput per GPU (tok/s/GPU)"
    assert metric_label("interactivity") == "interactivity (tok/s/user)"
    assert metric_label("median_tpot_ms", unit=False) == "median TPOT"
    assert metric_unit("error_rate") == "fraction"
    assert metric_unit("completed") == ""
    assert metric_label("completed") == "completed"


def test_an_empty_history_says_so() -> None:
    text = render_trend([], [], generated_at=WHEN)
    assert "No history to show" in text
    assert "<svg" not in text
    assert text.startswith("<!DOCTYPE html>")
    assert text.rstrip().endswith("</html>")


def test_many_tests_get_a_table_of_contents() -> None:
    """Fifty tests (series without sessions, so nothing to draw: the page structure alone)."""
    many = [
        Series(SeriesKey(f"perf/test_{k:02}.py::test_it", "cpu-fp32", "h", "median_ttft_ms"), ()) for k in range(50)
    ]
    text = render_trend(many, [], generated_at=WHEN)
    toc = text[text.index('<nav class="toc">') : text.index("</nav>")]
    assert toc.count("<li>") == 50
    assert [f"#test-{k}" for k in range(1, 51)] == re.findall(r'href="(#test-\d+)"', toc)
    assert text.count("no sessions") == 50
    assert "No change point in any series." in text


def test_one_session_and_no_engine_version() -> None:
    lone = Series(SeriesKey(OTHER_ID, "cpu-fp32", "h", "median_e2el_ms"), points([1234.5], [None], ["x"]))
    text = render_trend([lone], [], generated_at=WHEN)
    svg = chart(text, "s1")
    assert texts(svg, "mark-label") == []
    assert len(groups(svg, "span")) == 1  # no width: drawn as a narrow band
    assert "since 2025-10-01 · 1 session<" in text
    assert "1,234 ms" in text
    # A few days around the one date, not years.
    ticks = texts(svg, "x-tick")
    assert not any(re.fullmatch(r"20\d\d", t) for t in ticks), ticks


# -- the file, in a browser -------------------------------------------------------------------------------------------


def test_write_trend_and_the_page_in_chromium(browser: Chromium, tmp_path: Path) -> None:
    target = write_trend(
        tmp_path / "out" / "trend.html", [TPOT, THROUGHPUT], [TPOT_CHANGE, THROUGHPUT_CHANGE], SWEEPS, generated_at=WHEN
    )
    assert target == tmp_path / "out" / "trend.html"
    assert target.read_text(encoding="utf-8") == page()
    assert [p.name for p in target.parent.iterdir()] == ["trend.html"]  # no temporary file left
    shown = open_page(browser, target, tmp_path / "trend.png")
    check_page(shown, {"trend", "sweep-trend"})
    assert len(shown.plots) == 3
    assert shown.facts["brokenLinks"] == []
    assert shown.facts["title"] == "pytest-llmperf history"
    assert shown.screenshot.stat().st_size > 10_000


def test_an_empty_history_in_chromium(browser: Chromium, tmp_path: Path) -> None:
    target = write_trend(tmp_path / "empty.html", [], [], title="nightly <perf>")
    shown = open_page(browser, target, tmp_path / "empty.png")
    assert shown.errors == []
    assert shown.plots == []
    assert shown.facts["title"] == "nightly <perf>"
