"""One ``llmperf.run()``: measure, check the SLOs on every run, and add runs only while the verdict is open.

An orchestrator between the runner (measurement), :mod:`slo` (contracts) and :mod:`verdict` (statistics); it
decides nothing itself. Sequential stopping: after each run the verdict says whether another run could still
decide an open gating metric within the budget (``repeats``); a SLO breach or a regression stops at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_llmperf.markers import PerfSpec
from pytest_llmperf.runner import Result
from pytest_llmperf.slo import SloResult, check_slos
from pytest_llmperf.verdict import Verdict, judge, needs_more_runs, planned_looks, resolve_tolerances


@dataclass(kw_only=True, slots=True)
class BaselineView:
    """What the fixture found for this test's baseline entry."""

    runs: Sequence[Mapping[str, Any]] = ()
    where: str = ""
    hard_diffs: Sequence[str] = ()
    soft_diffs: Sequence[str] = ()
    # Per-request arrays of the baseline runs, pooled per field (``ttfts``, ``latencies`` ...), for reports.
    raw: Mapping[str, Sequence[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "runs": [dict(r) for r in self.runs],
            "raw": {k: list(v) for k, v in self.raw.items()},
        }


@dataclass(kw_only=True, slots=True)
class Judgement:
    results: list[Result]
    slo_results: list[list[SloResult]]
    verdict: Verdict
    budget: int
    slo_gating: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def breaches(self) -> list[tuple[int, SloResult]]:
        return [(i, r) for i, run in enumerate(self.slo_results) for r in run if not r.passed]


def run_until_decided(
    spec: PerfSpec,
    measure_once: Callable[[], Result],
    baseline: BaselineView,
    *,
    budget: int,
    global_tolerance: float | None,
    family_size: int | None,
    record_all: bool,
) -> Judgement:
    """Measure at least once and at most ``budget`` times. ``record_all`` (baseline update) runs the whole budget."""
    tolerances = resolve_tolerances(global_tolerance, spec.tolerance)
    looks = planned_looks(budget, 1)
    results: list[Result] = []
    slo_results: list[list[SloResult]] = []
    notes: list[str] = []
    while True:
        result = measure_once()
        results.append(result)
        slo_results.append(check_slos(spec.slos, result.summary))
        verdict = judge(
            [r.summary for r in results],
            list(baseline.runs) or None,
            tolerances=tolerances,
            family_size=family_size,
            looks=looks,
            hard_diffs=baseline.hard_diffs,
            soft_diffs=baseline.soft_diffs,
            where=baseline.where,
        )
        if spec.slo_gating and any(not r.passed for r in slo_results[-1]):
            if len(results) < budget:
                notes.append(f"stopped after run {len(results)} of at most {budget}: an SLO was breached")
            break
        if record_all:
            if len(results) >= budget:
                break
            continue
        if not needs_more_runs(verdict, len(results), budget):
            break
    return Judgement(
        results=results,
        slo_results=slo_results,
        verdict=verdict,
        budget=budget,
        slo_gating=spec.slo_gating,
        notes=notes,
    )
