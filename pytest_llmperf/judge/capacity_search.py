"""Capacity search: the largest concurrency (or request rate) that meets one SLO, found by bisection.

``vllm bench sweep serve_sla`` finds the largest rate or concurrency meeting an SLA by bisection on single runs;
here each *probe* (one concurrency or rate) is decided with an interval. A probe's runs give run-level values of
the SLO's statistic (e.g. each run's median E2E latency); on the log scale, as the verdicts work
(:mod:`pytest_llmperf.judge.stats`), their mean gets a one-sided ``confidence`` bound: a latency maximum is met
when the upper bound is at or below the limit, breached when the lower bound is above it, and otherwise the probe
is undecided and runs again, up to ``max_runs`` runs. With one or two runs the run-to-run spread cannot be
estimated and the plugin's noise floor (3 % in log units) stands in for it when the runs spread less (as in
``compare_log`` with a short baseline); from three runs on their own spread is used.

The search probes ``low``, then ``high``, then bisects between the largest probe that met the SLO and the
smallest that did not (a breach, or a probe still undecided after its runs: not shown to meet it), at geometric
midpoints: over integers for concurrency until the two are adjacent, over a relative ``tolerance`` for rates
(their ratio at most ``1 + tolerance``). ``max_probes`` bounds the probes, so the search ends by itself. With
``capacity_min`` the gate's own point is probed as soon as it lies inside the bracket, so the gate is decided by a
probe there rather than by a wide bracket.

Each probe of a concurrency search sends ``max(num_prompts, ceil(prompts_per_user × concurrency))`` requests per
run (:func:`probe_prompts`; 10 per user by default, as the published sweeps size their runs: InferenceMAX sends
10 × CONC prompts). With the count fixed for the lowest concurrency, as ``serve_sla`` keeps its ``--num-prompts``,
a run at c=64 would be mostly ramp-up and tail, not the steady batch the SLO is about. ``prompts_per_user=None``
keeps ``num_prompts`` at every probe; a rate search, a run bounded by ``duration_s`` and a trace replay keep
theirs too (no per-user count applies).

The capacity is the largest probe decided to meet the SLO: no interpolation, since a probe between two decided
ones could be undecided itself. Users per GPU = capacity / GPU count for a concurrency search, when the GPU count
is known. Pure: the probe function is given; no I/O, no pytest.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from pytest_llmperf.judge.stats import DEFAULT_NOISE_FLOOR, MIN_BASELINE_RUNS, MIN_SIGMA, t_quantile

if TYPE_CHECKING:
    from pytest_llmperf.results import CapacitySearchDict, ProbeDict

__all__ = [
    "MAX_PROBES",
    "MAX_RUNS",
    "PROMPTS_PER_USER",
    "VARIES",
    "CapacitySearch",
    "Probe",
    "decide_probe",
    "probe_prompts",
    "render_probe_table",
    "search_capacity",
]

MAX_PROBES = 8
MAX_RUNS = 3
PROMPTS_PER_USER = 10.0  # requests per concurrent user and run, as published sweeps send (10 × CONC prompts)
VARIES: tuple[str, ...] = ("concurrency", "request_rate")

Decision = Literal["meets", "breaches", "undecided"]
Vary = Literal["concurrency", "request_rate"]
SearchStatus = Literal["met", "lower_bound", "none", "undecided"]


SINGLE_RUN_FACTOR = 3.0  # see decide_probe


@dataclass(frozen=True, slots=True)
class Probe:
    """One concurrency or rate, its runs' values of the SLO's statistic, and the decision their interval gives.

    ``centre`` is the geometric mean of the values; ``lower`` and ``upper`` the one-sided ``confidence`` bounds
    on it (each one-sided: the one on the limit's side decides). A run that did not measure the statistic (no
    successful request, or more failed requests than the test allows) is a breach: ``values`` holds None for it.
    """

    at: float
    values: tuple[float | None, ...]
    decision: Decision
    centre: float | None
    lower: float | None
    upper: float | None
    reason: str = ""
    num_prompts: int | None = None  # requests per run at this probe (None: bounded by time or by a trace)

    @property
    def runs(self) -> int:
        return len(self.values)

    @property
    def meets(self) -> bool:
        return self.decision == "meets"

    def as_dict(self) -> ProbeDict:
        return {
            "at": self.at,
            "values": list(self.values),
            "runs": self.runs,
            "decision": self.decision,
            "centre": self.centre,
            "lower": self.lower,
            "upper": self.upper,
            "reason": self.reason,
            "num_prompts": self.num_prompts,
        }


def probe_prompts(
    num_prompts: int | None, at: float, *, vary: str = "concurrency", prompts_per_user: float | None = PROMPTS_PER_USER
) -> int | None:
    """Requests per run at probe ``at``: ``max(num_prompts, ceil(prompts_per_user × at))`` for a concurrency
    search, else ``num_prompts`` as given (a rate search, ``prompts_per_user`` None or 0, or no count: a run
    bounded by time or a trace)."""
    if num_prompts is None or vary != "concurrency" or not prompts_per_user:
        return num_prompts
    return max(num_prompts, math.ceil(prompts_per_user * at))


def decide_probe(
    at: float, values: Sequence[float | None], limit: float, kind: Literal["max", "min"], confidence: float
) -> Probe:
    """The decision of one probe's runs so far (see the module doc)."""
    if any(v is None for v in values) or not values:
        return Probe(at, tuple(values), "breaches", None, None, None, "not measured in a run (counts as a breach)")
    logs = [math.log(max(cast(float, v), 1e-12)) for v in values]
    n = len(logs)
    mean = math.fsum(logs) / n
    sd = statistics.stdev(logs) if n > 1 else 0.0
    if n == 1:
        # One run shows nothing of its own spread: it decides only at a gross distance from the limit (three
        # noise floors, as a verdict against a single baseline run), else the probe runs again.
        sigma, df = SINGLE_RUN_FACTOR * DEFAULT_NOISE_FLOOR, math.inf
    elif n < MIN_BASELINE_RUNS and sd <= DEFAULT_NOISE_FLOOR:
        sigma, df = DEFAULT_NOISE_FLOOR, math.inf
    else:
        sigma, df = max(sd, MIN_SIGMA), float(n - 1)
    half = t_quantile(confidence, df) * sigma / math.sqrt(n)
    lower, upper = math.exp(mean - half), math.exp(mean + half)
    if kind == "max":
        decision: Decision = "meets" if upper <= limit else "breaches" if lower > limit else "undecided"
    else:
        decision = "meets" if lower >= limit else "breaches" if upper < limit else "undecided"
    return Probe(at, tuple(values), decision, math.exp(mean), lower, upper)


@dataclass(frozen=True, slots=True)
class CapacitySearch:
    """The outcome of :func:`search_capacity`.

    ``capacity`` is the largest probe decided to meet the SLO (0 when none did); ``bracket`` is (that probe,
    the smallest probe above it not shown to meet it) when both exist. ``status``: ``met`` (the probe above
    breaches), ``lower_bound`` (``high`` itself meets: the capacity is at least that), ``none`` (``low``
    breaches), ``undecided`` (the probe above the capacity, or ``low`` itself, stayed undecided). ``resolved``:
    the bracket is as narrow as the search asks (adjacent concurrencies, rates within the tolerance); False when
    the probe budget ran out first. ``gate_passed`` is None without ``capacity_min``.
    """

    slo: str
    key: str
    limit: float
    kind: Literal["max", "min"]
    unit: str
    vary: Vary
    low: float
    high: float
    confidence: float
    probes: tuple[Probe, ...]
    capacity: float
    bracket: tuple[float, float] | None
    status: SearchStatus
    resolved: bool
    gpu_count: int | None
    capacity_min: float | None
    gate_passed: bool | None
    statement: str
    prompts_per_user: float | None = None  # the probes' request-count rule, as given (see probe_prompts)

    @property
    def users_per_gpu(self) -> float | None:
        """Concurrent users per GPU at the capacity (a concurrency search with a known GPU count)."""
        if self.vary != "concurrency" or self.gpu_count is None:
            return None
        return self.capacity / self.gpu_count

    def probe_at(self, at: float) -> Probe | None:
        return next((p for p in self.probes if p.at == at), None)

    def as_dict(self) -> CapacitySearchDict:
        return {
            "slo": self.slo,
            "key": self.key,
            "limit": self.limit,
            "kind": self.kind,
            "unit": self.unit,
            "vary": self.vary,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "probes": [p.as_dict() for p in self.probes],
            "capacity": self.capacity,
            "bracket": list(self.bracket) if self.bracket else None,
            "status": self.status,
            "resolved": self.resolved,
            "gpu_count": self.gpu_count,
            "users_per_gpu": self.users_per_gpu,
            "capacity_min": self.capacity_min,
            "gate_passed": self.gate_passed,
            "statement": self.statement,
            "prompts_per_user": self.prompts_per_user,
        }


def _point(vary: str, at: float) -> str:
    return f"c={at:g}" if vary == "concurrency" else f"rate={at:.4g} req/s"


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value / 1000:.3g} s" if value >= 1000 else f"{value:.3g} ms"
    return f"{value:.3g} {unit}"


def _bound(probe: Probe, kind: str, unit: str, level: str, *, full: bool = False) -> str:
    """The bound that decided ``probe`` (the one on the limit's side), or its interval when undecided."""
    if probe.decision == "undecided" or full:
        return f"{level} interval {_value(probe.lower, unit)}–{_value(probe.upper, unit)} after {probe.runs} runs"
    if probe.centre is None:
        return probe.reason
    upper_side = (probe.decision == "meets") == (kind == "max")
    which, value = ("upper", probe.upper) if upper_side else ("lower", probe.lower)
    return f"{which} {level} bound {_value(value, unit)}"


def search_capacity(
    measure: Callable[[float], float | None],
    *,
    slo: str,
    limit: float,
    kind: Literal["max", "min"] = "max",
    unit: str = "ms",
    key: str = "",
    vary: Vary = "concurrency",
    low: float,
    high: float,
    max_probes: int = MAX_PROBES,
    max_runs: int = MAX_RUNS,
    tolerance: float = 0.1,
    confidence: float = 0.9,
    gpu_count: int | None = None,
    capacity_min: float | None = None,
    prompts_at: Callable[[float], int | None] | None = None,
    prompts_per_user: float | None = None,
) -> CapacitySearch:
    """Bisect for the largest ``vary`` value whose runs meet ``slo`` (see the module doc).

    ``measure(at)`` runs the workload once at concurrency or rate ``at`` and returns the run's value of the SLO's
    statistic (None: not measured, a breach). ``prompts_at(at)``, when given, is the request count of ``at``'s
    runs, recorded with the probe, and ``prompts_per_user`` the rule it follows (see :func:`probe_prompts`).
    Raises ValueError for a range or budget it cannot search.
    """
    if vary not in VARIES:
        raise ValueError(f"vary={vary!r}: expected one of {', '.join(VARIES)}")
    concurrency = vary == "concurrency"
    if concurrency and not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise ValueError(f"a concurrency search needs int bounds (got low={low!r}, high={high!r})")
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"need 0 < low < high, finite (got low={low!r}, high={high!r})")
    if max_probes < 2 or max_runs < 1:
        raise ValueError(f"need max_probes >= 2 and max_runs >= 1 (got {max_probes}, {max_runs})")
    if not concurrency and not tolerance > 0:
        raise ValueError(f"tolerance={tolerance!r}: expected a relative resolution > 0 for a rate search")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}: expected a number in (0.5, 1)")
    probes: list[Probe] = []

    def probe(at: float) -> Probe:
        values: list[float | None] = []
        while True:
            values.append(measure(at))
            decided = decide_probe(at, values, limit, kind, confidence)
            if decided.decision != "undecided" or len(values) >= max_runs:
                if prompts_at is not None:
                    decided = dataclasses.replace(decided, num_prompts=prompts_at(at))
                probes.append(decided)
                return decided

    def close(ok: float, bad: float) -> bool:
        return bad - ok <= 1 if concurrency else bad / ok <= 1 + tolerance

    def midpoint(ok: float, bad: float) -> float:
        if capacity_min is not None and ok < capacity_min < bad:
            return capacity_min if not concurrency else max(ok + 1, min(bad - 1, math.ceil(capacity_min)))
        middle = math.sqrt(ok * bad)
        return middle if not concurrency else max(ok + 1, min(bad - 1, round(middle)))

    ok: float | None = None
    bad: float | None = None
    for at in (low, high):
        if probe(at).meets:
            ok = at
        else:
            bad = at
            break
    while ok is not None and bad is not None and not close(ok, bad) and len(probes) < max_probes:
        at = midpoint(ok, bad)
        if probe(at).meets:
            ok = at
        else:
            bad = at
    above = next((p for p in probes if p.at == bad), None)
    status: SearchStatus
    if ok is None:
        status = "none" if probes[0].decision == "breaches" else "undecided"
    elif above is None:
        status = "lower_bound"
    else:
        status = "met" if above.decision == "breaches" else "undecided"
    resolved = ok is None or bad is None or close(ok, bad)
    capacity = 0.0 if ok is None else float(ok)
    gate = None if capacity_min is None else ok is not None and ok >= capacity_min
    search = CapacitySearch(
        slo=slo,
        key=key,
        limit=float(limit),
        kind=kind,
        unit=unit,
        vary=vary,
        low=float(low),
        high=float(high),
        confidence=confidence,
        probes=tuple(probes),
        capacity=capacity,
        bracket=None if ok is None or bad is None else (float(ok), float(bad)),
        status=status,
        resolved=resolved,
        gpu_count=gpu_count,
        capacity_min=None if capacity_min is None else float(capacity_min),
        gate_passed=gate,
        statement="",
        prompts_per_user=prompts_per_user,
    )
    return _with_statement(search)


def _with_statement(s: CapacitySearch) -> CapacitySearch:
    op = "≤" if s.kind == "max" else "≥"
    contract = f"{s.slo} {op} {_value(s.limit, s.unit)}"
    level = f"{s.confidence * 100:g}%"
    first = s.probes[0]
    met = s.probe_at(s.capacity)
    above = s.probe_at(s.bracket[1]) if s.bracket else None
    if met is None:  # nothing met: the lowest probe breached or stayed undecided
        verb = "breaches it" if first.decision == "breaches" else "neither meets nor breaches it"
        text = (
            f"no capacity: {_point(s.vary, first.at)}, the lowest probed, {verb} "
            f"({_bound(first, s.kind, s.unit, level)}) for {contract}"
        )
    else:
        head = "capacity at least" if s.status == "lower_bound" else "capacity"
        text = (
            f"{head} {_point(s.vary, s.capacity)}: {_point(s.vary, met.at)} meets {contract} "
            f"({_bound(met, s.kind, s.unit, level)})"
        )
        if above is None:
            text += ", the highest probed"
        elif above.decision == "breaches":
            text += f", {_point(s.vary, above.at)} breaches it ({_bound(above, s.kind, s.unit, level)})"
        else:
            text += (
                f"; undecided above it: {_point(s.vary, above.at)} neither meets nor breaches it "
                f"({_bound(above, s.kind, s.unit, level)})"
            )
        if not s.resolved and s.bracket is not None:
            text += (
                f"; the search stopped after {len(s.probes)} probes, the capacity lies between "
                f"{_point(s.vary, s.bracket[0])} and {_point(s.vary, s.bracket[1])}"
            )
    if s.users_per_gpu is not None:
        text += f" · {s.users_per_gpu:.3g} users/GPU ({s.gpu_count} GPU{'' if s.gpu_count == 1 else 's'})"
    if s.capacity_min is not None:
        word = "met" if s.gate_passed else "NOT met"
        text += f" · capacity_min={s.capacity_min:g} {word}"
    return dataclasses.replace(s, statement=text)


def render_probe_table(search: CapacitySearch) -> str:
    """Plain-text table of the probes in the order run: point | runs | values | prompts per run (when known) |
    mean | interval | decision."""
    level = f"{search.confidence * 100:g}%"
    counted = any(p.num_prompts is not None for p in search.probes)
    header: tuple[str, ...] = (search.vary, "runs", "values", "geo. mean", f"{level} bounds", "decision")
    if counted:
        header = (*header[:3], "prompts/run", *header[3:])
    rows = []
    for p in search.probes:
        values = ", ".join(_value(v, search.unit) for v in p.values)
        bounds = f"{_value(p.lower, search.unit)} – {_value(p.upper, search.unit)}"
        row: tuple[str, ...] = (f"{p.at:g}", str(p.runs), values, _value(p.centre, search.unit), bounds, p.decision)
        if counted:
            row = (*row[:3], "-" if p.num_prompts is None else str(p.num_prompts), *row[3:])
        rows.append(row)
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
