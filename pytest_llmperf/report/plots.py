"""Charts for the HTML report: typed plot specifications in, inline SVG text out, drawn with matplotlib.

matplotlib is imported on the first render only, so loading the plugin costs other pytest runs nothing. The
output is meant to be pasted into an HTML page: no XML prolog, no DOCTYPE, no metadata, text kept as ``<text>``
(``svg.fonttype = none``: small, searchable, drawn with the reader's fonts), nothing fetched. Ids are prefixed
per figure so that several figures in one page never share one, and hashed ids use a fixed salt, so the same
data gives the same bytes.

Roles a reader (or a test) can select: every group this module names carries ``class="<role>"``, one of
:data:`ROLES`; groups of a series end in the series' index (``id="<uid>-series-line-1"``). Each tick of the axes
is a group of class ``x-tick`` or ``y-tick``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import itertools
import math
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "PAGE_CSS",
    "ROLES",
    "Mark",
    "Plot",
    "RefLine",
    "Series",
    "Span",
    "has_data",
    "render_svg",
    "tick_labels",
]

XValue = float | _dt.datetime

# Colours of the page's palette (report/html.py uses the same values in its CSS).
REF_COLOR = "#b3261e"
MARK_COLOR = "#d9730d"
SPAN_COLOR = "#1f5fa8"
_SPAN_ALPHA = 0.1
_FG, _MUTED, _FRAME, _GRID = "#1d232b", "#5b6573", "#9aa3ad", "#eceff2"

ROLES = (
    "series-line",
    "series-points",
    "errorbar",
    "front",
    "pt-label",
    "ref-line",
    "ref-label",
    "mark",
    "mark-label",
    "span",
    "legend-label",
    "axis-label",
    "title",
)
# matplotlib puts this style inside every SVG; inline, it would apply to the whole page, so the page states it once.
PAGE_CSS = "svg.plot *{stroke-linejoin:round;stroke-linecap:butt}"

# Keys typed loosely: the stubs of older matplotlib releases have no Literal of rcParams names.
_RC: dict[Any, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "pytest-llmperf",  # clip-path and marker ids from content, not uuid4: same data, same bytes
    "text.parse_math": False,  # a "$" in a name is text, not TeX
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # the metrics labels are placed with; the SVG root names it for browsers
    "font.size": 10,
    "figure.titlesize": 12,
    "figure.titleweight": "bold",
    "axes.labelsize": 11,
    "axes.edgecolor": _FRAME,
    "axes.labelcolor": _FG,
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.formatter.useoffset": False,
    "grid.color": _GRID,
    "grid.linewidth": 1.0,
    "xtick.color": _FRAME,
    "ytick.color": _FRAME,
    "xtick.labelcolor": _MUTED,
    "ytick.labelcolor": _MUTED,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 11,
    "legend.frameon": False,
    "text.color": _FG,
}
# rcParams are process-global: one render at a time, so concurrent reports cannot mix their settings.
_LOCK = threading.Lock()
_LABEL_SIZE = 10.0
_POINT_RADIUS = 4.0  # px kept free around each plotted point, so that labels never hide one
# The same around a mark: its diamond (scatter size 90: corners √90·√2/2 ≈ 6.7 px out) and its white edge reach
# 7.4 px from the centre.
_MARK_RADIUS = 7.5


@dataclass(frozen=True)
class Series:
    """One named curve. ``x`` holds numbers or datetimes (a date axis); ``labels`` align with the points.

    ``join`` links the points in the given order (``step``: a step curve, e.g. an ECDF; no point markers).
    ``front`` holds indices of points joined by a thick line (e.g. a Pareto front); points off it are hollow.
    ``color`` None takes the next colour of matplotlib's cycle, for plots of many series.
    ``marker`` is the points' matplotlib marker (a filled one: "o", "s", "^", "v", …), ``hollow`` draws them
    white inside, so that series can differ by more than colour. ``y_err`` holds a (low, high) interval per
    point, drawn as a vertical bar with caps (a confidence interval).
    """

    name: str
    x: tuple[XValue, ...]
    y: tuple[float, ...]
    labels: tuple[str, ...] = ()
    color: str | None = None
    dashed: bool = False
    join: Literal["line", "step", "none"] = "line"
    front: tuple[int, ...] | None = None
    marker: str = "o"
    hollow: bool = False
    y_err: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.name!r}: {len(self.x)} x values but {len(self.y)} y values")
        if len(self.labels) > len(self.x):
            raise ValueError(f"series {self.name!r}: more labels than points")
        if self.y_err and len(self.y_err) != len(self.y):
            raise ValueError(f"series {self.name!r}: {len(self.y_err)} intervals for {len(self.y)} points")


@dataclass(frozen=True)
class RefLine:
    """A reference line (an SLO limit) across the plot at ``value`` on ``axis``, named by ``label``.

    A line so far from the data that drawing it would squash the data is named at the plot's edge instead.
    """

    value: XValue
    label: str
    axis: Literal["x", "y"] = "x"
    color: str = REF_COLOR


@dataclass(frozen=True)
class Mark:
    """A highlighted point with a label (a capacity at an SLO)."""

    x: XValue
    y: float
    label: str
    color: str = MARK_COLOR


@dataclass(frozen=True)
class Span:
    """A shaded band across the plot from ``start`` to ``end`` on the x axis (an epoch, a period), behind the data.
    ``label`` names it in the legend. A band of no width (``start == end``) is drawn as a narrow one."""

    start: XValue
    end: XValue
    label: str = ""
    color: str = SPAN_COLOR


@dataclass(frozen=True)
class Plot:
    """A whole chart. ``kind`` becomes the ``data-plot`` attribute; sizes are CSS pixels."""

    kind: str
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    ref_lines: tuple[RefLine, ...] = ()
    marks: tuple[Mark, ...] = ()
    x_log: bool = False
    y_log: bool = False
    y_limits: tuple[float, float] | None = None
    width: int = 560
    height: int = 380
    spans: tuple[Span, ...] = ()


def has_data(plot: Plot) -> bool:
    return any(s.x for s in plot.series)


def tick_labels(values: Sequence[float]) -> list[str]:
    """Tick text with as many decimals as the step needs (2.5 → "2.5", 7.5), thousands as "k" on wide axes."""
    if not values:
        return []
    step = abs(values[1] - values[0]) if len(values) > 1 else 1.0
    if max(abs(v) for v in values) >= 10000 and step >= 100:
        return [f"{v / 1000:g}k" if v else "0" for v in values]
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    return [f"{v:,.{decimals}f}" for v in values]


def render_svg(plot: Plot, uid: str | None = None) -> str:
    """``plot`` as an ``<svg class="plot">`` element to inline in HTML. ``uid`` (default: from the content)
    prefixes every id inside, so it must differ between the figures of one page."""
    if uid is None:
        uid = "p" + hashlib.sha256(repr(plot).encode()).hexdigest()[:10]
    if not re.fullmatch(r"[A-Za-z][\w-]*", uid):
        raise ValueError(f"uid {uid!r}: letters, digits, '-' and '_' only, starting with a letter")
    import importlib
    import io

    with _LOCK, warnings.catch_warnings():
        # The first import of matplotlib and its dependencies (dateutil, pyparsing, PIL) may warn, e.g. of a
        # deprecation: under a user's `-W error` that must not abort the report, so the modules a render loads are
        # imported here with every warning ignored.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for module in (
                "matplotlib",
                "matplotlib.figure",
                "matplotlib.style.core",
                "matplotlib.backends.backend_svg",
            ):
                importlib.import_module(module)
        import matplotlib as mpl  # imported above

        with mpl.rc_context():
            # matplotlib's own defaults, not a matplotlibrc of the user's: the same report on every machine.
            mpl.rcdefaults()
            mpl.rcParams.update(_RC)
            # A glyph missing from the font or a cramped layout must not fail a test session that only wanted a
            # report (pytest's "error" warning filters are active at session end, when the report is written).
            warnings.simplefilter("ignore", UserWarning)
            figure = _draw(plot)
            buffer = io.StringIO()
            # A bare Figure (no pyplot, no global figure registry) saved through the SVG backend.
            figure.savefig(buffer, format="svg", metadata={"Date": None})
    return _inline(buffer.getvalue(), plot, uid)


# -- drawing ----------------------------------------------------------------------------------------------------------


def _is_date(value: XValue) -> bool:
    return isinstance(value, _dt.datetime)


def _x_numbers(plot: Plot) -> tuple[bool, list[list[float]], list[float], list[float], list[tuple[float, float]]]:
    """Whether x is a date axis, and every x value (series, marks, x reference lines, spans) as a plain number."""
    mdates = _dates()
    values: list[XValue] = [x for s in plot.series for x in s.x] + [m.x for m in plot.marks]
    values += [r.value for r in plot.ref_lines if r.axis == "x"]
    values += [x for span in plot.spans for x in (span.start, span.end)]
    dates = {_is_date(v) for v in values}
    if len(dates) > 1:
        raise ValueError(f"plot {plot.kind!r} mixes datetimes and numbers on its x axis")
    is_date = dates == {True}

    def number(v: XValue) -> float:
        return float(mdates.date2num(v)) if isinstance(v, _dt.datetime) else float(v)

    series_x = [[number(v) for v in s.x] for s in plot.series]
    spans = [(number(span.start), number(span.end)) for span in plot.spans]
    return is_date, series_x, [number(m.x) for m in plot.marks], [number(r.value) for r in plot.ref_lines], spans


def _shown(value: float, data: Sequence[float], scale: Literal["linear", "log", "date"]) -> int:
    """0 when a reference line at ``value`` fits beside the data, 1 when it is far above it, -1 far below."""
    finite = [v for v in data if math.isfinite(v) and (v > 0 or scale != "log")]
    if not finite:
        return 0
    lo, hi, v = min(finite), max(finite), value
    if scale == "log":
        if value <= 0:
            return -1
        lo, hi, v = math.log10(lo), math.log10(hi), math.log10(value)
        span = max(hi - lo, 1.0)
    elif scale == "date":
        span = hi - lo or 1.0  # a day
    else:
        # Numbers measured from zero: twice the top of positive data (as far below) still leaves the data half of
        # the plot.
        span = max(hi - lo, abs(hi), abs(lo)) or 1.0
    return 1 if v > hi + span else -1 if v < lo - span else 0


def _draw(plot: Plot) -> Figure:
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import Formatter

    class Readable(Formatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            values = sorted({*self.locs, x})
            return tick_labels(values)[values.index(x)]

        def format_ticks(self, values: Sequence[float]) -> list[str]:
            self.set_locs(list(values))
            return tick_labels(list(values))

    figure = Figure(figsize=(plot.width / 72, plot.height / 72), dpi=72, layout="constrained")
    ax = figure.add_subplot()
    is_date, series_x, marks_x, refs_value, spans_x = _x_numbers(plot)
    if plot.x_log:
        ax.set_xscale("log")
    if plot.y_log:
        ax.set_yscale("log")
    handles: list[Artist] = []
    cycle = iter(_default_colors())
    colors = [s.color or next(cycle) for s in plot.series]
    for k, (s, xs, color) in enumerate(zip(plot.series, series_x, colors, strict=True)):
        style: tuple[float, tuple[float, ...]] = (0, (5, 3)) if s.dashed else (0, ())
        markers = s.join != "step"
        if s.join in ("line", "step") and len(xs) > 1:
            (line,) = ax.plot(xs, s.y, color=color, linestyle=style, linewidth=1.6, drawstyle=_drawstyle(s))
            line.set_gid(f"series-line-{k}")
        if s.front:
            (front,) = ax.plot(
                [xs[i] for i in s.front], [s.y[i] for i in s.front], color=color, linestyle=style, linewidth=2.6
            )
            front.set_gid(f"front-{k}")
        if s.y_err and xs:
            low = [max(y - lo, 0.0) for y, (lo, _) in zip(s.y, s.y_err, strict=True)]
            high = [max(hi - y, 0.0) for y, (_, hi) in zip(s.y, s.y_err, strict=True)]
            bars = ax.errorbar(xs, s.y, yerr=[low, high], fmt="none", ecolor=color, elinewidth=1.4, capsize=4)
            # One group of bars per series carries the role; the caps get ids of their own (ids are unique).
            for j, artist in enumerate((*bars.lines[2], *bars.lines[1])):
                artist.set_gid(f"errorbar-{k}" if j == 0 else f"errorcap-{k}-{j}")
        if markers and xs:
            on_front = set(s.front) if s.front is not None else set(range(len(xs)))
            face = [color if i in on_front and not s.hollow else "white" for i in range(len(xs))]
            points = ax.scatter(xs, s.y, s=36, c=face, marker=s.marker, edgecolors=color, linewidths=1.4, zorder=3)
            points.set_gid(f"series-points-{k}")
        handles.append(
            Line2D(
                [], [], color=color, linestyle=style if s.join != "none" or s.front else "none", linewidth=1.6,
                marker=s.marker if markers else None, markersize=5, markerfacecolor="white" if s.hollow else color,
            )
        )  # fmt: skip
    span_names: list[str] = []
    for k, (span, (x0, x1)) in enumerate(zip(plot.spans, spans_x, strict=True)):
        lo, hi = sorted((x0, x1))
        band: Artist
        if hi > lo:
            band = ax.axvspan(lo, hi, facecolor=span.color, alpha=_SPAN_ALPHA, linewidth=0, zorder=0)
        else:  # no width: a narrow band, as wide as a point marker
            band = ax.axvline(lo, color=span.color, alpha=_SPAN_ALPHA, linewidth=2 * _POINT_RADIUS, zorder=0)
        band.set_gid(f"span-{k}")
        if span.label:
            handles.append(Patch(facecolor=span.color, alpha=_SPAN_ALPHA * 2, linewidth=0))
            span_names.append(span.label)
    for k, (m, mx) in enumerate(zip(plot.marks, marks_x, strict=True)):
        mark = ax.scatter([mx], [m.y], s=90, marker="D", c=m.color, edgecolors="white", linewidths=1, zorder=4)
        mark.set_gid(f"mark-{k}")
    off_scale: list[tuple[RefLine, int]] = []
    data_x = [x for xs in series_x for x in xs] + marks_x
    data_y = [y for s in plot.series for y in s.y] + [m.y for m in plot.marks]
    data_y += [v for s in plot.series for interval in s.y_err for v in interval]
    shown_refs: list[tuple[RefLine, float]] = []
    for k, (ref, value) in enumerate(zip(plot.ref_lines, refs_value, strict=True)):
        if ref.axis == "x":
            side = _shown(value, data_x, "log" if plot.x_log else "date" if is_date else "linear")
        else:
            side = _shown(value, data_y, "log" if plot.y_log else "linear")
        if side:
            off_scale.append((ref, side))
            continue
        draw = ax.axvline if ref.axis == "x" else ax.axhline
        line = draw(value, color=ref.color, linestyle=(0, (4, 3)), linewidth=1.2, zorder=2)
        line.set_gid(f"ref-line-{k}")
        shown_refs.append((ref, value))
    if plot.y_limits is not None:
        ax.set_ylim(*plot.y_limits)
    if is_date:
        every_x = [x for xs in series_x for x in xs] + marks_x + [x for span in spans_x for x in span]
        if every_x and min(every_x) == max(every_x):  # one date: a few days around it, not years
            ax.set_xlim(every_x[0] - 3, every_x[0] + 3)
        mdates = _dates()
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    elif not plot.x_log:
        ax.xaxis.set_major_formatter(Readable())
    else:
        every_x = [x for xs in series_x for x in xs] + marks_x
        _log_ticks(ax, "x", every_x, powers_of_two=all(float(x).is_integer() for x in every_x))
    if not plot.y_log:
        ax.yaxis.set_major_formatter(Readable())
    else:
        _log_ticks(ax, "y", data_y, powers_of_two=False)
    # The title on the first line, left; the legend (few series) under it, right; constrained layout keeps both
    # clear of the axes.
    figure.suptitle(plot.title, x=0.01, ha="left").set_gid("title-0")
    ax.xaxis.label.set_gid("axis-label-0")
    ax.yaxis.label.set_gid("axis-label-1")
    ax.set_xlabel(plot.x_label)
    ax.set_ylabel(plot.y_label)
    if handles:
        names = [s.name for s in plot.series] + span_names
        if len(handles) <= 3:
            # Few series: one line above the plot, right-aligned under the title.
            legend = ax.legend(handles, names, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=len(handles))
        else:
            # Many series: in columns below the plot, where the width of the figure is free.
            legend = figure.legend(handles, names, loc="outside lower center", ncols=min(len(handles), 4))
        for k, text in enumerate(legend.get_texts()):
            text.set_gid(f"legend-label-{k}")
    # Fix the layout now, so that the labels placed below (in pixels) stay where they were placed. Running the
    # layout engine alone is enough for that, and cheaper than a full draw.
    engine = figure.get_layout_engine()
    assert engine is not None
    engine.execute(figure)
    figure.set_layout_engine(None)  # None, not "none": that placeholder would make savefig draw twice
    _label(ax, plot, colors, series_x, marks_x, shown_refs, off_scale)
    return figure


def _log_ticks(ax: Axes, which: Literal["x", "y"], data: Sequence[float], *, powers_of_two: bool) -> None:
    """Plain numbers on a log axis (matplotlib's default labels there are TeX, which text.parse_math=False would
    print raw): powers of two for whole numbers (concurrencies), else steps of 1, 2 and 5 over up to 2.5 decades
    and powers of ten beyond, each tick as short as it can be (thousands as "k", millions as "M"); minor ticks
    unlabelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = [v for v in data if v > 0 and math.isfinite(v)]
    decades = math.log10(max(positive) / min(positive)) if positive else 0.0
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(base=2) if powers_of_two else LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _short_number(v)))
    axis.set_minor_formatter(NullFormatter())


def _short_number(v: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= size:
            return f"{v / size:.4g}{suffix}"
    return f"{v:.4g}"


def _dates() -> Any:
    """matplotlib.dates, which ships without type annotations (the rest of matplotlib has them)."""
    import importlib

    return importlib.import_module("matplotlib.dates")


def _drawstyle(s: Series) -> Literal["default", "steps-post"]:
    return "steps-post" if s.join == "step" else "default"


def _default_colors() -> Iterator[str]:
    import matplotlib as mpl
    from matplotlib.colors import to_hex

    colors = [to_hex(c) for c in mpl.rcParams["axes.prop_cycle"].by_key().get("color", ["#1f77b4"])]
    while True:
        yield from colors


# -- labels that keep clear of points and of each other --------------------------------------------------------------

_Rect = tuple[float, float, float, float]  # left, bottom, right, top in figure pixels
_Spot = tuple[float, float, str, str]  # x, y in figure pixels (or an offset), horizontal and vertical alignment
# Offsets (px) from a point drawn _POINT_RADIUS wide and alignments to try for its label, nearest first.
_NEAR: list[_Spot] = [
    (6, 3, "left", "bottom"),
    (6, -3, "left", "top"),
    (-6, 3, "right", "bottom"),
    (-6, -3, "right", "top"),
    (0, 7, "center", "bottom"),
    (0, -7, "center", "top"),
    (8, 0, "left", "center"),
    (-8, 0, "right", "center"),
]
# Then rings farther out, for crowded data (points close together along a curve, two sides that measured the
# same): this many times the near distance, at these angles (degrees; up and right first, like _NEAR).
_RINGS = (2, 3, 4, 5, 6)
_ANGLES = (22.5, -22.5, 157.5, -157.5, 67.5, -67.5, 112.5, -112.5, 45, -45, 135, -135, 90, -90, 0, 180)


def _around(px: float, py: float, radius: float) -> list[_Spot]:
    """Spots for the label of a point at (px, py) drawn ``radius`` px wide: the near ones, then the rings. Each
    ring spot is aligned so that the label extends away from the point."""
    scale = (radius + 2) / (_POINT_RADIUS + 2)  # _NEAR starts a label 2 px beyond a point's edge
    spots = [(px + dx * scale, py + dy * scale, ha, va) for dx, dy, ha, va in _NEAR]
    for ring in _RINGS:
        distance = 7 * scale * ring
        for angle in _ANGLES:
            c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            ha = "left" if c > 0.3 else "right" if c < -0.3 else "center"
            va = "bottom" if s > 0.3 else "top" if s < -0.3 else "center"
            spots.append((px + distance * c, py + distance * s, ha, va))
    return spots


@functools.lru_cache(maxsize=1024)
def _text_size(text: str, weight: str = "normal") -> tuple[float, float]:
    """Width and height of a label's box, as matplotlib lays it out: a line is at least as tall as "lp"."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop = FontProperties(size=_LABEL_SIZE, weight=weight)
    width, height, _ = TextToPath().get_text_width_height_descent(text, prop, False)
    _, line, _ = TextToPath().get_text_width_height_descent("lp", prop, False)
    return float(width), max(float(height), float(line))


def _rect(x: float, y: float, w: float, h: float, ha: str, va: str) -> _Rect:
    """The box of a ``w`` × ``h`` text anchored at (x, y), with a margin: a browser draws each glyph's whole
    em box, about a fifth taller than matplotlib's box, and labels should not touch anyway."""
    left = x - (w if ha == "right" else w / 2 if ha == "center" else 0.0)
    bottom = y - (h if va == "top" else h / 2 if va == "center" else 0.0)
    return (left - 1.5, bottom - 2.0, left + w + 1.5, bottom + h + 2.0)


def _overlap(a: _Rect, b: _Rect) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


_Segment = tuple[float, float, float, float]  # x0, y0, x1, y1 in figure pixels


def _crossing(seg: _Segment, rect: _Rect) -> float:
    """Length of the part of ``seg`` inside ``rect`` (Liang–Barsky clipping)."""
    x0, y0, x1, y1 = seg
    dx, dy = x1 - x0, y1 - y0
    lo, hi = 0.0, 1.0
    for p, q in ((-dx, x0 - rect[0]), (dx, rect[2] - x0), (-dy, y0 - rect[1]), (dy, rect[3] - y0)):
        if p == 0:
            if q < 0:
                return 0.0
        elif p < 0:
            lo = max(lo, q / p)
        else:
            hi = min(hi, q / p)
    return max(0.0, hi - lo) * math.hypot(dx, dy)


def _along(lo: float, hi: float, ends: tuple[str, str]) -> list[tuple[float, str]]:
    """Places along an edge or a line for a label, from the ``hi`` end, with the alignment that keeps the label
    inside: ``ends`` at ``lo`` and at ``hi``, centred between."""
    fractions = (1.0, 0.0, 0.5, 0.75, 0.25)
    return [(lo + f * (hi - lo), ends[1] if f == 1 else ends[0] if f == 0 else "center") for f in fractions]


def _place(
    spots: Sequence[_Spot], text: str, taken: list[_Rect], lines: list[_Segment], box: _Rect, weight: str = "normal"
) -> _Spot:
    """The first of ``spots`` where ``text`` stays inside ``box``, overlaps no label or point taken and crosses no
    line, else the least bad one. Its rectangle is then taken."""
    w, h = _text_size(text, weight)
    best: tuple[tuple[float, float, float], _Rect, _Spot] | None = None
    for x, y, ha, va in spots:
        rect = _rect(x, y, w, h, ha, va)
        outside = max(box[0] - rect[0], rect[2] - box[2], box[1] - rect[1], rect[3] - box[3], 0.0)
        # Outside the axes a label may be cut off or cover the ticks; covering a point or a label hides it;
        # crossing a line only blurs the text: each is worse than any amount of the next.
        cost = (outside, sum(_overlap(rect, t) for t in taken), sum(_crossing(g, rect) for g in lines))
        if best is None or cost < best[0]:
            best = (cost, rect, (x, y, ha, va))
        if not any(cost):
            break
    assert best is not None
    taken.append(best[1])
    return best[2]


def _label(
    ax: Axes,
    plot: Plot,
    colors: list[str],
    series_x: list[list[float]],
    marks_x: list[float],
    shown_refs: list[tuple[RefLine, float]],
    off_scale: list[tuple[RefLine, int]],
) -> None:
    """Label points, marks and reference lines, each where it hides no point, label or line if it can."""
    frame = ax.get_window_extent()
    box: _Rect = (frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)

    def to_px(x: float, y: float) -> tuple[float, float]:
        px, py = ax.transData.transform((x, y))
        return float(px), float(py)

    taken: list[_Rect] = []
    for s, xs in zip(plot.series, series_x, strict=True):
        if s.join != "step":
            for x, y in zip(xs, s.y, strict=True):
                px, py = to_px(x, y)
                taken.append((px - _POINT_RADIUS, py - _POINT_RADIUS, px + _POINT_RADIUS, py + _POINT_RADIUS))
    for mx, m in zip(marks_x, plot.marks, strict=True):
        px, py = to_px(mx, m.y)
        taken.append((px - _MARK_RADIUS, py - _MARK_RADIUS, px + _MARK_RADIUS, py + _MARK_RADIUS))
    lines: list[_Segment] = []
    for s, xs in zip(plot.series, series_x, strict=True):
        paths = [(list(s.front), False)] if s.front else []
        if s.join != "none":
            paths.append((list(range(len(xs))), s.join == "step"))
        for order, step in paths:
            pixels = [to_px(xs[i], s.y[i]) for i in order]
            if step:
                pixels = [q for a, b in itertools.pairwise(pixels) for q in (a, (b[0], a[1]))] + pixels[-1:]
            lines += [(a[0], a[1], b[0], b[1]) for a, b in itertools.pairwise(pixels)]
        for x, (lo, hi) in zip(xs, s.y_err, strict=False):  # interval bars: labels keep off them if they can
            (px, py0), (_, py1) = to_px(x, lo), to_px(x, hi)
            lines.append((px, py0, px, py1))
    ref_px = [to_px(v, 0.0)[0] if ref.axis == "x" else to_px(0.0, v)[1] for ref, v in shown_refs]
    for (ref, _), p in zip(shown_refs, ref_px, strict=True):
        lines.append((p, box[1], p, box[3]) if ref.axis == "x" else (box[0], p, box[2], p))
    count = 0

    def put(text: str, spot: _Spot, role: str, color: str, weight: str = "normal") -> None:
        nonlocal count
        x, y, ha, va = spot
        annotation = ax.annotate(
            text, (x, y), xycoords="figure pixels", ha=ha, va=va, fontsize=_LABEL_SIZE, annotation_clip=False,
            color=color, fontweight=weight,
        )  # fmt: skip
        annotation.set_gid(f"{role}-{count}")
        count += 1

    # Reference-line labels first, beside their lines; point labels then go around them.
    spots: list[_Spot]
    for ref, side in off_scale:
        arrow = ("→" if side > 0 else "←") if ref.axis == "x" else ("↑" if side > 0 else "↓")
        text = f"{ref.label} (off scale {arrow})"
        # At the edge the line lies beyond, wherever along it the data leave room.
        if ref.axis == "x":
            x, ha = (box[2], "right") if side > 0 else (box[0], "left")
            spots = [(x, y, ha, va) for y, va in _along(box[1], box[3], ("bottom", "top"))]
        else:
            y, va = (box[3], "top") if side > 0 else (box[1], "bottom")
            spots = [(x, y, ha, va) for x, ha in _along(box[0], box[2], ("left", "right"))]
        put(text, _place(spots, text, taken, lines, box), "ref-label", ref.color)
    for (ref, _), p in zip(shown_refs, ref_px, strict=True):
        if ref.axis == "x":  # beside the line, left of it first
            sides = ((-4.0, "right"), (4.0, "left"))
            spots = [(p + d, y, ha, va) for y, va in _along(box[1], box[3], ("bottom", "top")) for d, ha in sides]
        else:  # on the line, above it first
            sides = ((3.0, "bottom"), (-3.0, "top"))
            spots = [(x, p + d, ha, va) for x, ha in _along(box[0], box[2], ("left", "right")) for d, va in sides]
        put(ref.label, _place(spots, ref.label, taken, lines, box), "ref-label", ref.color)
    # Mark labels (a capacity) before the points': the capacity's label gets the free spot next to its mark, and
    # the point labels, which many spots suit, go around it.
    for mx, m in zip(marks_x, plot.marks, strict=True):
        spots = _around(*to_px(mx, m.y), _MARK_RADIUS)
        put(m.label, _place(spots, m.label, taken, lines, box, "bold"), "mark-label", m.color, "bold")
    for s, xs, color in zip(plot.series, series_x, colors, strict=True):
        for text, x, y in zip(s.labels, xs, s.y, strict=False):
            spots = _around(*to_px(x, y), _POINT_RADIUS)
            put(text, _place(spots, text, taken, lines, box), "pt-label", color)


# -- SVG text for an HTML page ---------------------------------------------------------------------------------------


_FONT = "font-family: 'DejaVu Sans', sans-serif; "
# Groups matplotlib names by artist type ("line2d_7"): meaningless in a page, so their ids go.
_AUTO_GROUP = re.compile(r'<g id="(?:figure|patch|axes|matplotlib\.axis|line2d|text|legend|PathCollection)_\d+">')
_BARE_GROUP = re.compile(r"<g>(<(?:path|use)\b[^>]*/>|<text\b[^>]*>[^<]*</text>)</g>")
_GEOMETRY = re.compile(r'\b(d|x|y|transform)="([^"]*)"')
_DECIMALS = re.compile(r"-?\d+\.\d{2,}")


def _short(match: re.Match[str]) -> str:
    """Numbers in geometry to 0.1 px (matplotlib writes six decimals), paths on one line."""
    text = _DECIMALS.sub(lambda m: f"{float(m.group()):.1f}".removesuffix(".0"), match.group(2))
    return f'{match.group(1)}="{" ".join(text.split())}"'


def _inline(svg: str, plot: Plot, uid: str) -> str:
    """matplotlib's SVG document as an element for an HTML page (see the module docstring)."""
    from html import escape

    start = svg.index("<svg")
    body_start = svg.index(">", start) + 1
    view_box = re.search(r'viewBox="([^"]*)"', svg[start:body_start])
    body = svg[body_start:]
    body = re.sub(r"<metadata>.*?</metadata>", "", body, count=1, flags=re.S)
    body = re.sub(r'<defs>\s*<style type="text/css">[^<]*</style>\s*</defs>', "", body, count=1)
    body = re.sub(r">\s+<", "><", body).strip()
    body = _GEOMETRY.sub(_short, body)
    body = re.sub(r' transform="rotate\(-?0 [^")]*\)"', "", body)
    body = body.replace(_FONT, "")  # stated once, on the root element
    body = _AUTO_GROUP.sub("<g>", body)
    # A group without attributes around one element is only nesting.
    while True:
        body, unwrapped = _BARE_GROUP.subn(r"\1", body)
        if not unwrapped:
            break
    body = re.sub(r'<g id="([xy])tick_\d+">', r'<g class="\1-tick">', body)
    # Ids unique in the page: prefix each one and every reference to it.
    body = re.sub(r'\bid="([^"]+)"', rf'id="{uid}-\1"', body)
    body = re.sub(r'href="#([^"]+)"', rf'href="#{uid}-\1"', body)
    body = re.sub(r"url\(#([^)]+)\)", rf"url(#{uid}-\1)", body)
    body = re.sub(r'<g id="(' + re.escape(uid) + r"-(" + "|".join(ROLES) + r')-\d+)"', r'<g id="\1" class="\2"', body)
    title = escape(plot.title, quote=True)
    head = (
        f'<svg class="plot" data-plot="{escape(plot.kind, quote=True)}" xmlns="http://www.w3.org/2000/svg" '
        f'xmlns:xlink="http://www.w3.org/1999/xlink" width="{plot.width}" height="{plot.height}" '
        f'viewBox="{view_box.group(1) if view_box else f"0 0 {plot.width} {plot.height}"}" role="img" '
        f'aria-label="{title}" font-family="DejaVu Sans, sans-serif"><title>{title}</title>'
    )
    return head + body
