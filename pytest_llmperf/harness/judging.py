"""One ``llmperf.run()``: measure, check the SLOs on every run, and add runs only while the verdict is open.

An orchestrator between the runner (measurement), :mod:`slo` (contracts) and :mod:`verdict` (statistics); it
decides nothing itself. Sequential stopping: after each run the verdict says whether another run could still
decide an open gating metric within the budget (``repeats``); a SLO breach or a regression stops at once.

A/B mode (:func:`run_ab_until_decided`) does the same with blocks: each block runs A and B once, in the order
:func:`block_orders` gives; at least two blocks, at most ``budget``. (The pause between the two servers'
runs belongs to the measurement itself: see ``ServerManager.settle``.)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from pytest_llmperf.harness.markers import PerfSpec
from pytest_llmperf.harness.runner import Result
from pytest_llmperf.judge.slo import SloResult, check_slos
from pytest_llmperf.judge.stats import SESSION_SD_PRIOR
from pytest_llmperf.judge.verdict import (
    NO_BASELINE,
    NOT_COMPARABLE,
    Verdict,
    judge,
    judge_paired,
    needs_more_runs,
    planned_looks,
    resolve_tolerances,
    without_runs,
)
from pytest_llmperf.results import INCONCLUSIVE, BaselineRun, BaselineViewDict, RunFigures
from pytest_llmperf.spec import AB_ORDERS

MIN_BLOCKS = 2


@dataclass(kw_only=True, slots=True)
class BaselineView:
    """What the fixture found for this test's baseline entry."""

    runs: Sequence[RunFigures] = ()  # stored runs; in A/B mode (and in benchmarks) summaries stand in
    where: str = ""
    hard_diffs: Sequence[str] = ()
    soft_diffs: Sequence[str] = ()
    # Per-request arrays of the baseline runs, pooled per field (``ttfts``, ``latencies`` ...), for reports.
    raw: Mapping[str, Sequence[float]] = field(default_factory=dict)

    def as_dict(self) -> BaselineViewDict:
        return {
            "where": self.where,
            "runs": [cast(BaselineRun, dict(r)) for r in self.runs],  # the reports read figures both have
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
    session_prior: float = SESSION_SD_PRIOR,
    history: Mapping[str, Sequence[Sequence[float]]] | None = None,
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
        # An invalid run (e.g. served from the prefix cache) describes other work than the test's: left out.
        valid = [r.summary for r in results if not invalid_reasons(r)] or [r.summary for r in results]
        verdict = judge(
            valid,
            list(baseline.runs) or None,
            tolerances=tolerances,
            family_size=family_size,
            looks=looks,
            hard_diffs=baseline.hard_diffs,
            soft_diffs=baseline.soft_diffs,
            where=baseline.where,
            session_prior=session_prior,
            history=history,
        )
        if all(invalid_reasons(r) for r in results) and verdict.status not in (NO_BASELINE, NOT_COMPARABLE):
            verdict = without_runs(_left_out(results), len(results))
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
    notes.extend(f"{why} (left out of the verdict)" for why in _left_out(results))
    return Judgement(
        results=results,
        slo_results=slo_results,
        verdict=verdict,
        budget=budget,
        slo_gating=spec.slo_gating,
        notes=notes,
    )


def invalid_reasons(result: Result) -> list[str]:
    """Why a run does not describe the work the test asked for (empty for a valid run)."""
    return list(result.summary.get("invalid_reasons") or ())


def _left_out(results: Sequence[Result], side: str = "") -> list[str]:
    return [f"{side}run {i + 1}: {'; '.join(invalid_reasons(r))}" for i, r in enumerate(results) if invalid_reasons(r)]


@dataclass(kw_only=True, slots=True)
class ABJudgement:
    """Interleaved A/B blocks: ``a_results[i]`` and ``b_results[i]`` ran in block i, in ``orders[i]``.

    After an SLO breach the last block may be incomplete (B ran, A did not); the verdict covers complete blocks.
    """

    a_results: list[Result]
    b_results: list[Result]
    orders: list[str]
    slo_results: list[list[SloResult]]  # B's runs: B is the build whose contract is checked
    verdict: Verdict
    budget: int
    slo_gating: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def results(self) -> list[Result]:
        return self.b_results

    @property
    def breaches(self) -> list[tuple[int, SloResult]]:
        return [(i, r) for i, run in enumerate(self.slo_results) for r in run if not r.passed]


def block_orders(order: str, blocks: int, seed: int) -> list[str]:
    """The order of A and B in each block: ``abba`` alternates AB, BA, AB ... (a linear drift cancels over each
    pair of blocks); ``random`` flips a seeded coin per block (no pattern a periodic effect could follow)."""
    if order == "abba":
        return ["AB" if i % 2 == 0 else "BA" for i in range(blocks)]
    if order == "random":
        rng = random.Random(seed)
        return [rng.choice(("AB", "BA")) for _ in range(blocks)]
    raise ValueError(f"A/B order {order!r}: expected one of {', '.join(AB_ORDERS)}")


def look_points(order: str, budget: int) -> list[int]:
    """Block counts after which the verdict is computed. ``abba`` looks only after complete AB+BA pairs (even
    counts), where the position within a block (first or second) cancels; ``random`` after every block."""
    step = 2 if order == "abba" else 1
    return list(range(MIN_BLOCKS, budget + 1, step))


def run_ab_until_decided(
    spec: PerfSpec,
    measure: Callable[[str], Result],
    *,
    budget: int,
    order: str,
    global_tolerance: float | None,
    family_size: int | None,
) -> ABJudgement:
    """Run blocks of A and B (``measure("A")``, ``measure("B")``) until the paired verdict is decided.

    Runs ``MIN_BLOCKS`` blocks first (a paired interval needs two), then more up to ``budget`` blocks (at least
    ``MIN_BLOCKS``; with ``abba`` rounded down to an even count), judging at :func:`look_points`; an SLO breach
    of B stops at once (the verdict then covers the complete blocks so far).
    """
    budget = max(budget, MIN_BLOCKS)
    if order == "abba":
        budget -= budget % 2
    tolerances = resolve_tolerances(global_tolerance, spec.tolerance)
    looks_at = look_points(order, budget)
    orders = block_orders(order, budget, spec.workload.seed)
    runs: dict[str, list[Result]] = {"A": [], "B": []}
    slo_results: list[list[SloResult]] = []
    notes: list[str] = []
    verdict: Verdict | None = None

    def judged() -> Verdict:
        complete = min(len(runs["A"]), len(runs["B"]))
        # A block with an invalid run on either side is left out whole: the pair no longer compares like work.
        blocks = [
            (a, b)
            for a, b in zip(runs["A"][:complete], runs["B"][:complete], strict=True)
            if not invalid_reasons(a) and not invalid_reasons(b)
        ]
        if len(blocks) < MIN_BLOCKS:
            reasons = _left_out(runs["A"], "A ") + _left_out(runs["B"], "B ")
            return without_runs([*reasons, f"fewer than {MIN_BLOCKS} valid A/B blocks"], complete, reference="A")
        return judge_paired(
            [a.summary for a, _ in blocks],
            [b.summary for _, b in blocks],
            tolerances=tolerances,
            family_size=family_size,
            looks=len(looks_at),
        )

    for block, sequence in enumerate(orders):
        breached = False
        for server in sequence:
            runs[server].append(measure(server))
            if server == "B":
                slo_results.append(check_slos(spec.slos, runs["B"][-1].summary))
                breached = spec.slo_gating and any(not r.passed for r in slo_results[-1])
            if breached:
                break
        if breached:
            notes.append(f"stopped in block {block + 1} of at most {budget}: B breached an SLO")
            if min(len(runs["A"]), len(runs["B"])) >= MIN_BLOCKS:
                verdict = judged()
            break
        if block + 1 not in looks_at:
            continue
        verdict = judged()
        if not needs_more_runs(verdict, block + 1, budget):
            break
    if verdict is None:  # stopped by an SLO breach before two full blocks
        verdict = Verdict(
            status=INCONCLUSIVE,
            reason=f"stopped after {len(runs['A'])} A/B block(s), before a paired comparison was possible",
            runs_candidate=min(len(runs["A"]), len(runs["B"])),
            runs_baseline=min(len(runs["A"]), len(runs["B"])),
            reference="A",
        )
    notes.extend(f"{why} (its block is left out of the verdict)" for why in _left_out(runs["A"], "A "))
    notes.extend(f"{why} (its block is left out of the verdict)" for why in _left_out(runs["B"], "B "))
    return ABJudgement(
        a_results=runs["A"],
        b_results=runs["B"],
        orders=orders[: max(len(runs["A"]), len(runs["B"]))],
        slo_results=slo_results,
        verdict=verdict,
        budget=budget,
        slo_gating=spec.slo_gating,
        notes=notes,
    )
