"""SLO keyword arguments of the ``perf`` marker: parse, check against a run summary, render a breach table.

SLOs are contracts (README, "SLOs: contracts checked on every run"): limits the test's author set, not
comparisons with earlier runs, so each is checked on every candidate run with no baseline and no multiplicity
adjustment. Names:

- latency maxima ``<metric>_<stat>_ms``, metric ∈ {ttft, tpot, itl, e2e}, stat ∈ {mean, p50, p90, p95, p99};
- throughput minima ``output_tok_s``, ``total_tok_s``, ``request_s``, ``output_tok_s_per_gpu``,
  ``tok_s_per_user`` (interactivity, 1000 / median TPOT), ``input_tok_s_per_gpu`` (prefill),
  ``total_tok_s_per_gpu`` and ``goodput_req_s`` (vLLM's ``request_goodput``: needs the ``goodput`` keyword);
- ``error_rate`` maximum, a fraction in [0, 1]; 0 by default, so any failed request fails the test unless
  the test allows some.

A metric the summary cannot provide (per-GPU throughput without a GPU count, a latency with no successful
request) is "not measured" and fails: a contract the tool cannot check must not pass silently.
Pure: no I/O, no pytest; results are frozen dataclasses with ``as_dict()`` of builtins.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from pytest_llmperf.errors import SpecError

if TYPE_CHECKING:
    from pytest_llmperf.results import RunFigures, SloDict, SloResultDict

__all__ = [
    "LATENCY_METRICS",
    "LATENCY_STATS",
    "PER_GPU_SLOS",
    "SLO_NAMES",
    "THROUGHPUT_SLOS",
    "Slo",
    "SloResult",
    "check_slos",
    "parse_slos",
    "render_slo_table",
    "split_slo_kwargs",
    "summary_key",
]

LATENCY_METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2e")
LATENCY_STATS: tuple[str, ...] = ("mean", "p50", "p90", "p95", "p99")
# Throughput SLO name -> (summary key in vllm mode, key in sglang mode, unit shown in tables).
THROUGHPUT_SLOS: dict[str, tuple[str, str, str]] = {
    "output_tok_s": ("output_throughput", "output_throughput", "tok/s"),
    "total_tok_s": ("total_token_throughput", "total_throughput", "tok/s"),
    "request_s": ("request_throughput", "request_throughput", "req/s"),
    "output_tok_s_per_gpu": ("output_throughput_per_gpu", "output_throughput_per_gpu", "tok/s/GPU"),
    "tok_s_per_user": ("interactivity", "interactivity", "tok/s/user"),
    "input_tok_s_per_gpu": ("input_throughput_per_gpu", "input_throughput_per_gpu", "tok/s/GPU"),
    "total_tok_s_per_gpu": ("total_token_throughput_per_gpu", "total_throughput_per_gpu", "tok/s/GPU"),
    "goodput_req_s": ("request_goodput", "request_goodput", "req/s"),
}
# SLOs that read a per-GPU figure: not measured when the GPU count is unknown.
PER_GPU_SLOS: tuple[str, ...] = ("output_tok_s_per_gpu", "input_tok_s_per_gpu", "total_tok_s_per_gpu")
SLO_NAMES: tuple[str, ...] = (
    *(f"{m}_{s}_ms" for m in LATENCY_METRICS for s in LATENCY_STATS),
    *THROUGHPUT_SLOS,
    "error_rate",
)

Kind = Literal["max", "min"]


@dataclass(frozen=True, slots=True)
class Slo:
    """One contract: ``name`` must stay at or below (``kind="max"``) or at or above (``"min"``) ``limit``."""

    name: str
    limit: float
    kind: Kind
    unit: str
    # True for the error_rate = 0 contract added when the test did not set one.
    implicit: bool = False

    def as_dict(self) -> SloDict:
        return cast("SloDict", dataclasses.asdict(self))  # SloDict names exactly these fields


@dataclass(frozen=True, slots=True)
class SloResult:
    """One SLO checked against one run.

    ``margin`` is the headroom, positive when the SLO holds: relative to the limit for latency and throughput
    (``(limit − measured)/limit`` for maxima, ``(measured − limit)/limit`` for minima), absolute (limit −
    measured) for ``error_rate``, whose limit is often 0. ``None`` when not measured.
    """

    name: str
    limit: float
    kind: Kind
    unit: str
    key: str
    measured: float | None
    margin: float | None
    passed: bool
    reason: str
    implicit: bool = False

    def as_dict(self) -> SloResultDict:
        return cast("SloResultDict", dataclasses.asdict(self))  # SloResultDict names exactly these fields


def split_slo_kwargs(kwargs: Mapping[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """``(slo_kwargs, other_kwargs)`` of a marker's merged kwargs."""
    slos = {k: v for k, v in kwargs.items() if k in SLO_NAMES}
    rest = {k: v for k, v in kwargs.items() if k not in SLO_NAMES}
    return slos, rest


def _kind_unit(name: str) -> tuple[Kind, str]:
    if name == "error_rate":
        return "max", "fraction"
    if name in THROUGHPUT_SLOS:
        return "min", THROUGHPUT_SLOS[name][2]
    return "max", "ms"


def parse_slos(kwargs: Mapping[str, object], *, default_error_rate: float | None = 0.0) -> tuple[Slo, ...]:
    """Validated SLOs from marker kwargs (SLO names only; see :func:`split_slo_kwargs`).

    Latency and throughput limits must be finite numbers > 0; ``error_rate`` a number in [0, 1].
    ``default_error_rate`` adds an implicit ``error_rate`` SLO when none is given (``None``: no default).
    Every problem is reported at once in a :class:`SpecError` naming the kwarg and what it accepts.
    """
    problems = []
    out = []
    for name, value in kwargs.items():
        if name not in SLO_NAMES:
            close = difflib.get_close_matches(name, SLO_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown SLO {name!r}{hint}; valid SLO names: {', '.join(SLO_NAMES)}")
            continue
        kind, unit = _kind_unit(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            expected = "a number in [0, 1]" if name == "error_rate" else f"a number > 0 ({unit})"
            problems.append(f"{name}={value!r} has type {type(value).__name__}, expected {expected}")
            continue
        if name == "error_rate":
            if not 0.0 <= value <= 1.0:
                problems.append(f"error_rate={value!r} (expected a fraction in [0, 1], e.g. 0.01 for 1 %)")
                continue
        elif not (math.isfinite(value) and value > 0):
            problems.append(f"{name}={value!r} (expected a finite number > 0, in {unit})")
            continue
        out.append(Slo(name, float(value), kind, unit))
    if problems:
        raise SpecError("invalid SLO: " + "; ".join(problems))
    if default_error_rate is not None and "error_rate" not in kwargs:
        out.append(Slo("error_rate", float(default_error_rate), "max", "fraction", implicit=True))
    return tuple(out)


def summary_key(name: str, compat: str = "vllm") -> str:
    """The run-summary key an SLO reads; p50 reads the ``median_*`` key (same value, always present)."""
    if name == "error_rate":
        return "error_rate"
    if name in THROUGHPUT_SLOS:
        vllm_key, sglang_key, _ = THROUGHPUT_SLOS[name]
        return sglang_key if compat == "sglang" else vllm_key
    metric, stat, _ms = name.rsplit("_", 2)
    from pytest_llmperf.judge.metrics import stat_key  # numpy: imported only when a summary is checked

    return stat_key(metric, "median" if stat == "p50" else stat, compat)


def _not_measured_reason(name: str, key: str, summary: RunFigures) -> str:
    if name in PER_GPU_SLOS and key not in summary:
        return "not measured: the GPU count is unknown, so per-GPU throughput cannot be computed (set the GPU count)"
    if name == "goodput_req_s" and key not in summary:
        return (
            "not measured: no goodput SLOs were given, so no request_goodput was computed "
            '(add goodput={"ttft_ms": ..., "tpot_ms": ...} to the marker)'
        )
    if key not in summary:
        return f"not measured: the run summary has no {key!r}"
    if name == "tok_s_per_user":
        return "not measured: no request produced more than one output token (no TPOT, so no tok/s per user)"
    return f"not measured: no data for {key!r} (no successful request measured it)"


def check_slos(slos: Sequence[Slo], summary: RunFigures, compat: str | None = None) -> list[SloResult]:
    """Check every SLO against one run's summary (``metrics.summarize`` output), in the order given."""
    mode = compat or str(summary.get("compat_mode") or "vllm")
    results = []
    for slo in slos:
        key = summary_key(slo.name, mode)
        value = summary.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            reason = _not_measured_reason(slo.name, key, summary)
            results.append(
                SloResult(slo.name, slo.limit, slo.kind, slo.unit, key, None, None, False, reason, slo.implicit)
            )
            continue
        measured = float(value)
        if slo.name == "error_rate":
            margin = slo.limit - measured
        elif slo.kind == "max":
            margin = (slo.limit - measured) / slo.limit
        else:
            margin = (measured - slo.limit) / slo.limit
        passed = measured <= slo.limit if slo.kind == "max" else measured >= slo.limit
        op = "<=" if slo.kind == "max" else ">="
        verb = "holds" if passed else "breached"
        reason = f"{slo.name} {verb}: {_fmt(measured, slo.unit)} (limit {op} {_fmt(slo.limit, slo.unit)})"
        if slo.implicit and not passed:
            reason += "; failed requests fail the test by default, allow some with error_rate=<fraction>"
        results.append(
            SloResult(slo.name, slo.limit, slo.kind, slo.unit, key, measured, margin, passed, reason, slo.implicit)
        )
    return results


def _fmt(value: float, unit: str) -> str:
    if unit == "fraction":
        return f"{value * 100:.2f}%"
    size = abs(value)
    if size >= 1000:
        text = f"{value:.0f}"
    elif size >= 10:
        text = f"{value:.1f}"
    elif size >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}"


def _fmt_margin(r: SloResult) -> str:
    if r.margin is None:
        return "-"
    if r.name == "error_rate":
        return f"{r.margin * 100:+.2f} pp"
    return f"{r.margin * 100:+.1f}%"


def _status(r: SloResult) -> str:
    if r.measured is None:
        return "NOT MEASURED"
    return "ok" if r.passed else "BREACH"


def render_slo_table(results: Sequence[SloResult]) -> str:
    """A plain-text table (metric | limit | measured | margin | status), then one line per failure's reason.

    ASCII only, so it reads the same in a terminal and inside a JUnit ``<failure>`` element.
    """
    header = ("metric", "limit", "measured", "margin", "status")
    rows = []
    for r in results:
        op = "<=" if r.kind == "max" else ">="
        name = r.name + (" (default)" if r.implicit else "")
        measured = "-" if r.measured is None else _fmt(r.measured, r.unit)
        rows.append((name, f"{op} {_fmt(r.limit, r.unit)}", measured, _fmt_margin(r), _status(r)))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
    notes = [f"{r.name}: {r.reason}" for r in results if not r.passed and r.measured is None]
    return "\n".join(out + notes)
