"""Capacity at an SLO: the largest concurrency a sweep serves within a latency contract, and users per GPU.

A *sweep* is a set of results that differ only in how many users load the server: the same test function
(the node id without its parametrization) and the same workload once the concurrency and the fields that
only size the sample (``num_prompts``, ``warmup``, ``duration_s``, ``seed``, ``repeats``, ``tolerance``)
are left out. Published sweeps send ten requests per user (``num_prompts = 10·concurrency``), so keeping
``num_prompts`` in the key would split every such sweep into single points.

For an SLO such as ``e2e_p50_ms=15000`` the capacity is read off the measured curve of that statistic
against concurrency, in order of increasing concurrency: the points up to the first one that breaches the
limit meet it, and the capacity is interpolated linearly between the last point that meets it and the first
that does not. A point's value is the median of its runs' values (the run is the unit of replication, as in
the verdicts). When every point meets the limit the capacity is the largest measured concurrency and is only
a lower bound; when the smallest measured concurrency already breaches it the capacity is 0 ("none"). Each run
is read under the keys of its own compatibility mode (``p90_e2el_ms`` in vllm mode, ``p90_e2e_latency_ms`` in
sglang mode), and ``tok_s_per_user`` falls back on 1000 / median TPOT where a run has no ``interactivity``.

Users per GPU = capacity / GPU count; it is omitted (``None``) when the GPU count is unknown, never 0.
Between two pairs (say GB200 NVFP4 and H200 FP8) the per-GPU ratio says how many more users each GPU of the
first serves within the same SLO.

Pure: no I/O, no pytest, no numpy; inputs are the JSON result documents (``--llmperf-json``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypedDict, TypeGuard

__all__ = [
    "SAMPLE_SIZE_FIELDS",
    "Capacity",
    "CapacityRatio",
    "PairComparison",
    "Sweep",
    "SweepPoint",
    "base_nodeid",
    "capacity_at_slo",
    "capacity_slo_names",
    "compare_capacity",
    "compare_documents",
    "group_sweeps",
    "point_along",
    "sweep_capacities",
    "sweeps_of",
]

# Workload fields that change how large the sample is, not what load the server sees.
SAMPLE_SIZE_FIELDS: frozenset[str] = frozenset(
    {"concurrency", "seed", "num_prompts", "warmup", "duration_s", "repeats", "tolerance"}
)

_LATENCY_SLO = re.compile(r"^(ttft|tpot|itl|e2e)_(mean|p\d+(?:\.\d+)?)_ms$")
# SLOs whose measured value degrades as users are added: latency maxima and the per-user token rate minimum.
_PER_USER_SLOS: dict[str, str] = {"tok_s_per_user": "interactivity"}

Status = Literal["met", "lower_bound", "none"]
Basis = Literal["interpolated", "measured"]
Bound = Literal["exact", "at_least", "at_most", "unknown"]


def base_nodeid(nodeid: str) -> str:
    """The node id without its parametrization: ``a.py::test_x[8-fp8]`` → ``a.py::test_x``.

    Class and function names are identifiers, so the first ``[`` after the file path starts the parameters.
    """
    path, sep, rest = nodeid.partition("::")
    if not sep:
        return nodeid.partition("[")[0]
    return path + sep + rest.partition("[")[0]


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Documents are JSON read back from files (or built like them), so every part is checked where it is read.
def _mapping(value: object) -> Mapping[str, object]:
    """``value`` if it is a mapping (a JSON object), else an empty one."""
    return value if isinstance(value, Mapping) else {}


def _items(value: object) -> Sequence[object]:
    """``value`` if it is a list or tuple (a JSON array), else an empty one."""
    return value if isinstance(value, (list, tuple)) else ()


def _concurrency(result: Mapping[str, object]) -> int | None:
    value = _mapping(result.get("workload")).get("concurrency")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _gpu_count(result: Mapping[str, object]) -> int | None:
    for source in (_mapping(result.get("summary")), _mapping(result.get("endpoint"))):
        value = source.get("gpu_count")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One measured concurrency of a sweep; ``results`` holds more than one result when a test measured the
    same concurrency twice (their runs are pooled)."""

    concurrency: int
    # Result documents as found (reports read further into them).
    results: tuple[Mapping[str, Any], ...]

    @property
    def nodeids(self) -> tuple[str, ...]:
        return tuple(str(r.get("nodeid", "")) for r in self.results)

    def run_summaries(self) -> list[Mapping[str, object]]:
        """Every run of every result at this point (the result's ``summary`` when it lists no runs)."""
        runs: list[Mapping[str, object]] = []
        for result in self.results:
            listed = [r for r in result.get("runs") or () if isinstance(r, Mapping)]
            runs.extend(listed or [result.get("summary") or {}])
        return runs

    def value(self, key: str) -> float | None:
        """Median over the runs of summary ``key``; ``None`` when no run measured it."""
        values = [float(v) for run in self.run_summaries() if _is_number(v := run.get(key))]
        return statistics.median(values) if values else None

    def slo_value(self, slo: str) -> float | None:
        """Median over the runs of the figure SLO ``slo`` bounds, each run read with the keys of its own
        compatibility mode (``median_e2el_ms`` in vllm mode, ``median_e2e_latency_ms`` in sglang mode);
        ``tok_s_per_user`` falls back on 1000 / median TPOT where a run has no ``interactivity``."""
        values = []
        for result in self.results:
            listed = [r for r in result.get("runs") or () if isinstance(r, Mapping)]
            for run in listed or [result.get("summary") or {}]:
                value = _run_slo_value(run, slo, _result_mode(result))
                if value is not None:
                    values.append(value)
        return statistics.median(values) if values else None

    def baseline_value(self, key: str) -> float | None:
        """Median over the baseline runs recorded for this point; ``None`` without a baseline."""
        values = []
        for result in self.results:
            for run in (result.get("baseline") or {}).get("runs") or ():
                if isinstance(run, Mapping) and _is_number(run.get(key)):
                    values.append(float(run[key]))
        return statistics.median(values) if values else None


@dataclass(frozen=True, slots=True)
class Sweep:
    """Results of one test function and workload at several concurrencies, in increasing concurrency."""

    test: str
    workload: Mapping[str, object]
    points: tuple[SweepPoint, ...]
    gpu_count: int | None
    key: str = field(default="")

    @property
    def concurrencies(self) -> tuple[int, ...]:
        return tuple(p.concurrency for p in self.points)

    @property
    def results(self) -> tuple[Mapping[str, object], ...]:
        return tuple(r for p in self.points for r in p.results)


def _workload_key(workload: Mapping[str, object]) -> str:
    kept = {k: v for k, v in workload.items() if k not in SAMPLE_SIZE_FIELDS}
    return json.dumps(kept, sort_keys=True, default=str, ensure_ascii=True)


def group_sweeps(
    results: Iterable[Mapping[str, object]], *, gpu_count: int | None = None, min_points: int = 2
) -> list[Sweep]:
    """Group results into sweeps (see the module docstring), in the order their first result appears.

    Only results with a concurrency (closed-loop load) take part; interrupted results are left out, since
    they measured a partial run. Groups with fewer than ``min_points`` distinct concurrencies are dropped.
    ``gpu_count`` is the fallback when the results themselves do not say (e.g. the document's endpoint); a
    sweep whose points disagree on it has an unknown GPU count.
    """
    groups: dict[str, tuple[str, Mapping[str, object], dict[int, list[Mapping[str, object]]]]] = {}
    for result in results:
        concurrency = _concurrency(result)
        if concurrency is None or result.get("outcome") == "interrupted":
            continue
        test = base_nodeid(str(result.get("nodeid", "")))
        workload = _mapping(result.get("workload"))
        key = test + "\x00" + _workload_key(workload)
        if key not in groups:
            shown = {k: v for k, v in workload.items() if k not in SAMPLE_SIZE_FIELDS}
            groups[key] = (test, shown, {})
        groups[key][2].setdefault(concurrency, []).append(result)
    sweeps = []
    for key, (test, workload, by_concurrency) in groups.items():
        if len(by_concurrency) < min_points:
            continue
        points = tuple(SweepPoint(c, tuple(by_concurrency[c])) for c in sorted(by_concurrency))
        counts = {n for p in points for r in p.results if (n := _gpu_count(r)) is not None}
        gpus = counts.pop() if len(counts) == 1 else (gpu_count if not counts else None)
        sweeps.append(Sweep(test, workload, points, gpus, key))
    return sweeps


def sweeps_of(document: Mapping[str, object], *, min_points: int = 2) -> list[Sweep]:
    """The sweeps of a session document (``--llmperf-json``), with the endpoint's GPU count as the fallback."""
    fallback = _mapping(document.get("endpoint")).get("gpu_count")
    gpus = fallback if isinstance(fallback, int) and not isinstance(fallback, bool) and fallback >= 1 else None
    results = [r for r in _items(document.get("results")) if isinstance(r, Mapping)]
    return group_sweeps(results, gpu_count=gpus, min_points=min_points)


# The end-to-end latency's name in each compatibility mode (as judge.metrics.stat_key spells it).
_E2E_NAME: dict[str, str] = {"vllm": "e2el", "sglang": "e2e_latency"}


def _summary_key(name: str, compat: str = "vllm") -> str | None:
    """The summary key an SLO reads in ``compat`` mode (``e2e_p50_ms`` → ``median_e2el_ms`` in vllm mode,
    ``median_e2e_latency_ms`` in sglang mode), as :func:`pytest_llmperf.judge.slo.summary_key` gives it;
    None if the SLO is not capacity-like."""
    if name in _PER_USER_SLOS:
        return _PER_USER_SLOS[name]
    match = _LATENCY_SLO.match(name)
    if match is None:
        return None
    metric, stat = match.groups()
    e2e = _E2E_NAME.get(compat, _E2E_NAME["vllm"])
    return f"{'median' if stat == 'p50' else stat}_{e2e if metric == 'e2e' else metric}_ms"


def _result_mode(result: Mapping[str, object]) -> str | None:
    """The compatibility mode a result's workload names (None when it does not say)."""
    mode = _mapping(result.get("workload")).get("compat")
    return mode if mode in _E2E_NAME else None


def _run_mode(run: Mapping[str, object], fallback: str | None) -> str:
    """A run's compatibility mode: its ``compat_mode``, else its result's, else what its keys say."""
    mode = run.get("compat_mode")
    if isinstance(mode, str) and mode in _E2E_NAME:
        return mode
    if fallback is not None:
        return fallback
    return "sglang" if any(str(k).endswith("_e2e_latency_ms") for k in run) else "vllm"


def _run_slo_value(run: Mapping[str, object], slo: str, fallback_mode: str | None) -> float | None:
    key = _summary_key(slo, _run_mode(run, fallback_mode))
    if key is None:
        return None
    value = run.get(key)
    if _is_number(value):
        return float(value)
    if slo == "tok_s_per_user":  # documents without ``interactivity``: 1000 / median TPOT, as the HTML plots it
        tpot = run.get("median_tpot_ms")
        if _is_number(tpot) and tpot > 0:
            return 1000.0 / float(tpot)
    return None


def _sweep_key(sweep: Sweep, slo: str) -> str:
    """The summary key(s) ``slo`` reads in the modes of the sweep's runs (``a / b`` when they differ)."""
    keys: list[str] = []
    for point in sweep.points:
        for result in point.results:
            listed = [r for r in _items(result.get("runs")) if isinstance(r, Mapping)]
            for run in listed or [_mapping(result.get("summary"))]:
                key = _summary_key(slo, _run_mode(run, _result_mode(result)))
                if key is not None and key not in keys:
                    keys.append(key)
    return " / ".join(keys) or (_summary_key(slo) or "")


class _SloEntry(NamedTuple):
    limit: float
    key: str  # the summary key the result checked ("" when it does not say)


def _slo_entries(sweep: Sweep) -> dict[str, _SloEntry]:
    """SLO name → its limit and key as the results report them (the first result that has it)."""
    found: dict[str, _SloEntry] = {}
    for result in sweep.results:
        for slo in map(_mapping, _items(result.get("slos"))):
            name, limit = str(slo.get("name", "")), slo.get("limit")
            if name and name not in found and _summary_key(name) is not None and _is_number(limit):
                found[name] = _SloEntry(float(limit), str(slo.get("key") or ""))
    return found


def capacity_slo_names(sweep: Sweep) -> list[str]:
    """The SLOs of a sweep a capacity can be read for: latency maxima and ``tok_s_per_user``."""
    return list(_slo_entries(sweep))


@dataclass(frozen=True, slots=True)
class Capacity:
    """The largest concurrency of a sweep that meets one SLO.

    ``concurrency`` is interpolated (0 when no point meets the SLO); ``measured_concurrency`` is the largest
    measured point that meets it (None when none does); ``bracket`` is (last point that meets it, first that
    does not) when the limit is crossed inside the sweep. ``status``: ``met`` (crossed inside the sweep),
    ``lower_bound`` (every point meets it: the capacity is at least the largest measured concurrency) or
    ``none``. ``non_monotonic``: a point beyond the first breach meets the SLO again (noise, or a sweep too
    short to be trusted); the capacity stays at the first crossing.
    """

    slo: str
    key: str
    limit: float
    kind: Literal["max", "min"]
    status: Status
    concurrency: float
    measured_concurrency: int | None
    bracket: tuple[int, int] | None
    gpu_count: int | None
    users_per_gpu: float | None
    measured_users_per_gpu: float | None
    points: tuple[tuple[int, float | None, bool], ...]
    non_monotonic: bool = False
    note: str = ""

    @property
    def lower_bound(self) -> bool:
        return self.status == "lower_bound"

    def as_dict(self) -> CapacityDict:
        return {
            "slo": self.slo,
            "key": self.key,
            "limit": self.limit,
            "kind": self.kind,
            "status": self.status,
            "concurrency": self.concurrency,
            "measured_concurrency": self.measured_concurrency,
            "bracket": list(self.bracket) if self.bracket else None,
            "lower_bound": self.lower_bound,
            "gpu_count": self.gpu_count,
            "users_per_gpu": self.users_per_gpu,
            "measured_users_per_gpu": self.measured_users_per_gpu,
            "points": [list(p) for p in self.points],
            "non_monotonic": self.non_monotonic,
            "note": self.note,
        }

    def describe(self) -> str:
        """One line for people: ``e2e_p50_ms ≤ 15000: up to c≈12.0 (c8 meets it, c16 does not) · 3 users/GPU``."""
        op = "≤" if self.kind == "max" else "≥"
        head = f"{self.slo} {op} {self.limit:g}"
        if self.status == "none":
            text = f"{head}: no measured concurrency meets it"
        elif self.status == "lower_bound":
            text = f"{head}: at least c{self.measured_concurrency} (every measured concurrency meets it)"
        elif self.bracket is not None:
            text = f"{head}: up to c≈{self.concurrency:.3g} (c{self.bracket[0]} meets it, c{self.bracket[1]} does not)"
        else:
            text = f"{head}: up to c{self.measured_concurrency}"
        if self.users_per_gpu is not None:
            prefix = "≥ " if self.lower_bound else ""
            text += f" · {prefix}{self.users_per_gpu:.3g} users/GPU ({self.gpu_count} GPUs)"
        else:
            text += " · users/GPU unknown (no GPU count)"
        if self.non_monotonic:
            text += " · non-monotonic: a larger concurrency meets it again"
        return text


class CapacityDict(TypedDict):
    """:meth:`Capacity.as_dict`: builtins only (the bracket and points as lists)."""

    slo: str
    key: str
    limit: float
    kind: Literal["max", "min"]
    status: Status
    concurrency: float
    measured_concurrency: int | None
    bracket: list[int] | None
    lower_bound: bool
    gpu_count: int | None
    users_per_gpu: float | None
    measured_users_per_gpu: float | None
    points: list[list[int | float | bool | None]]
    non_monotonic: bool
    note: str


def _meets(value: float | None, limit: float, kind: str) -> bool:
    if value is None:
        return False  # not measured: a contract that cannot be checked is not met
    return value <= limit if kind == "max" else value >= limit


def capacity_at_slo(sweep: Sweep, slo: str, limit: float | None = None, *, gpu_count: int | None = None) -> Capacity:
    """The capacity of ``sweep`` at SLO ``slo`` (e.g. ``"e2e_p50_ms"``).

    ``limit`` defaults to the limit the sweep's results carry for that SLO (ValueError when they carry none,
    or when ``slo`` is not a latency SLO or ``tok_s_per_user``). ``gpu_count`` overrides the sweep's.
    """
    entry = _slo_entries(sweep).get(slo)
    default_key = _summary_key(slo)
    if default_key is None:
        raise ValueError(
            f"capacity needs a latency SLO (<metric>_<stat>_ms, metric in ttft/tpot/itl/e2e) or tok_s_per_user, "
            f"not {slo!r}"
        )
    if limit is None:
        if entry is None:
            raise ValueError(f"no result of sweep {sweep.test} has SLO {slo!r}: pass its limit")
        limit = entry.limit
    if not (_is_number(limit) and limit > 0):
        raise ValueError(f"SLO limit {limit!r} must be a finite number > 0")
    # Each run is read in its own compatibility mode (a sweep's results could carry either mode's keys).
    key = _sweep_key(sweep, slo)
    kind: Literal["max", "min"] = "min" if slo in _PER_USER_SLOS else "max"
    gpus = gpu_count if gpu_count is not None else sweep.gpu_count

    values = [(p.concurrency, p.slo_value(slo)) for p in sweep.points]
    points = tuple((c, v, _meets(v, limit, kind)) for c, v in values)
    first_breach = next((i for i, (_, _, ok) in enumerate(points) if not ok), None)
    non_monotonic = first_breach is not None and any(ok for _, _, ok in points[first_breach + 1 :])
    bracket: tuple[int, int] | None = None
    note = ""
    if not points:
        status: Status = "none"
        concurrency, measured = 0.0, None
        note = "the sweep has no points"
    elif first_breach is None:
        status = "lower_bound"
        measured = points[-1][0]
        concurrency = float(measured)
        note = f"every measured concurrency meets it; the capacity is at least c{measured}"
    elif first_breach == 0:
        status = "none"
        concurrency, measured = 0.0, None
        c0, v0, _ = points[0]
        shown = "not measured" if v0 is None else f"{v0:.4g}"
        note = f"the smallest measured concurrency c{c0} already breaches it ({shown})"
    else:
        status = "met"
        c_ok, v_ok, _ = points[first_breach - 1]
        c_bad, v_bad, _ = points[first_breach]
        measured = c_ok
        bracket = (c_ok, c_bad)
        if v_ok is None or v_bad is None or v_bad == v_ok:
            concurrency = float(c_ok)
            note = f"c{c_bad} was not measured; no interpolation"
        else:
            concurrency = c_ok + (limit - v_ok) * (c_bad - c_ok) / (v_bad - v_ok)
    users = None if gpus is None else concurrency / gpus
    measured_users = None if gpus is None else (measured or 0) / gpus
    return Capacity(
        slo=slo,
        key=key,
        limit=float(limit),
        kind=kind,
        status=status,
        concurrency=concurrency,
        measured_concurrency=measured,
        bracket=bracket,
        gpu_count=gpus,
        users_per_gpu=users,
        measured_users_per_gpu=measured_users,
        points=points,
        non_monotonic=non_monotonic,
        note=note,
    )


def sweep_capacities(sweep: Sweep) -> list[Capacity]:
    """The capacity of ``sweep`` at each of its latency (and per-user rate) SLOs."""
    return [capacity_at_slo(sweep, name) for name in capacity_slo_names(sweep)]


@dataclass(frozen=True, slots=True)
class CapacityRatio:
    """Users per GPU of pair ``a`` over pair ``b`` at the same SLO.

    ``bound`` qualifies ``ratio``: ``exact`` when both capacities were bracketed, ``at_least`` when only
    ``a`` is a lower bound, ``at_most`` when only ``b`` is, ``unknown`` when both are. ``ratio`` is None when
    it cannot be computed (a GPU count unknown, or ``b`` meets the SLO nowhere); ``reason`` says why.
    """

    ratio: float | None
    bound: Bound
    basis: Basis
    a_users_per_gpu: float | None
    b_users_per_gpu: float | None
    reason: str = ""

    def as_dict(self) -> CapacityRatioDict:
        return {
            "ratio": self.ratio,
            "bound": self.bound,
            "basis": self.basis,
            "a_users_per_gpu": self.a_users_per_gpu,
            "b_users_per_gpu": self.b_users_per_gpu,
            "reason": self.reason,
        }


class CapacityRatioDict(TypedDict):
    """:meth:`CapacityRatio.as_dict`."""

    ratio: float | None
    bound: Bound
    basis: Basis
    a_users_per_gpu: float | None
    b_users_per_gpu: float | None
    reason: str


_BOUNDS: dict[tuple[bool, bool], Bound] = {
    (False, False): "exact",
    (True, False): "at_least",
    (False, True): "at_most",
    (True, True): "unknown",
}


def compare_capacity(a: Capacity, b: Capacity, *, basis: Basis = "interpolated") -> CapacityRatio:
    """How many times more users per GPU ``a`` serves than ``b`` within the SLO.

    ``basis="measured"`` compares the largest measured concurrencies that meet the SLO (how published
    comparisons state it: "meets 15 s up to 8 users"); ``"interpolated"`` compares the interpolated ones.
    """
    if (a.slo, a.limit, a.kind) != (b.slo, b.limit, b.kind):
        raise ValueError(f"different SLOs: {a.slo} {a.limit:g} vs {b.slo} {b.limit:g}")
    ua = a.users_per_gpu if basis == "interpolated" else a.measured_users_per_gpu
    ub = b.users_per_gpu if basis == "interpolated" else b.measured_users_per_gpu
    bound = _BOUNDS[(a.lower_bound, b.lower_bound)]
    if ua is None or ub is None:
        return CapacityRatio(None, "unknown", basis, ua, ub, "GPU count unknown, so users per GPU are unknown")
    if ub == 0:
        reason = "neither pair meets the SLO" if ua == 0 else "the second pair meets the SLO at no concurrency"
        return CapacityRatio(None, "unknown", basis, ua, ub, reason)
    return CapacityRatio(ua / ub, bound, basis, ua, ub)


@dataclass(frozen=True, slots=True)
class PairComparison:
    """One sweep present in both documents, compared at one SLO."""

    test: str
    workload: Mapping[str, object]
    a: Capacity
    b: Capacity
    ratio: CapacityRatio


def compare_documents(
    a: Mapping[str, object], b: Mapping[str, object], *, basis: Basis = "interpolated"
) -> list[PairComparison]:
    """Compare two pairs' session documents sweep by sweep, at every SLO both carry with the same limit."""
    b_sweeps = {s.key: s for s in sweeps_of(b)}
    out = []
    for sweep_a in sweeps_of(a):
        sweep_b = b_sweeps.get(sweep_a.key)
        if sweep_b is None:
            continue
        caps_b = {(c.slo, c.limit): c for c in sweep_capacities(sweep_b)}
        for cap_a in sweep_capacities(sweep_a):
            cap_b = caps_b.get((cap_a.slo, cap_a.limit))
            if cap_b is not None:
                ratio = compare_capacity(cap_a, cap_b, basis=basis)
                out.append(PairComparison(sweep_a.test, sweep_a.workload, cap_a, cap_b, ratio))
    return out


def point_along(sweep_points: Sequence[tuple[int, float | None]], concurrency: float) -> float | None:
    """Linear interpolation of a per-point value at a (fractional) concurrency; None outside or unmeasured."""
    for (c0, v0), (c1, v1) in itertools.pairwise(sweep_points):
        if c0 <= concurrency <= c1 and v0 is not None and v1 is not None:
            return v0 if c1 == c0 else v0 + (v1 - v0) * (concurrency - c0) / (c1 - c0)
    for c, v in sweep_points:
        if c == concurrency:
            return v
    return None
