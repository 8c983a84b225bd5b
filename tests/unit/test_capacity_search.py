"""The capacity search's logic with fake probe functions whose answers are known."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator

import pytest

from pytest_llmperf.judge.capacity_search import decide_probe, render_probe_table, search_capacity


def _curve(latency: Callable[[float], float]) -> tuple[Callable[[float], float], list[float]]:
    """A deterministic probe function and the points it was called at, in order."""
    calls: list[float] = []

    def measure(at: float) -> float:
        calls.append(at)
        return latency(at)

    return measure, calls


def _cubic(at: float) -> float:
    """E2E p50 12 s at c=8, 17.1 s at c=9: the 15 s limit is crossed between 8 and 9."""
    return 12000 * (at / 8) ** 3


def test_a_monotone_curve_crossing_the_limit_gives_the_last_concurrency_that_meets_it() -> None:
    measure, calls = _curve(_cubic)
    search = search_capacity(measure, slo="e2e_p50_ms", limit=15000, low=1, high=64, gpu_count=4)
    assert search.capacity == 8
    assert search.status == "met"
    assert search.resolved
    assert search.bracket == (8, 9)
    assert search.users_per_gpu == 2
    assert calls[:2] == [1, 64]  # the ends first, then geometric midpoints
    assert len(search.probes) <= 8
    assert all(p.runs == 1 for p in search.probes)  # every probe was far enough from the limit to decide at once
    # One run each: bounds at three noise floors (σ = 9 %): 12 s × e^(1.2816 · 0.09) = 13.5 s, 17.09 s × e^(−0.1153)
    # = 15.2 s.
    assert search.statement.startswith("capacity c=8: c=8 meets e2e_p50_ms ≤ 15 s (upper 90% bound 13.5 s)")
    assert ", c=9 breaches it (lower 90% bound 15.2 s)" in search.statement
    assert "2 users/GPU (4 GPUs)" in search.statement
    json.dumps(search.as_dict())  # builtins only


def test_a_crossing_between_8_and_12_with_coarse_probes_gives_8() -> None:
    # The curve steps from 10 s to 20 s above c=8: c=9..11 breach as c=12 does.
    measure, _ = _curve(lambda c: 10000.0 if c <= 8 else 20000.0)
    search = search_capacity(measure, slo="e2e_p50_ms", limit=15000, low=1, high=12)
    assert (search.capacity, search.bracket, search.status) == (8, (8, 9), "met")


def test_noisy_probes_are_repeated_until_decided() -> None:
    # One run of 14.5 s is within the 3 % noise floor of 15 s (upper bound 15.07 s); two agreeing runs decide it.
    runs: dict[float, int] = {}

    def measure(at: float) -> float:
        runs[at] = runs.get(at, 0) + 1
        return 14500.0 if at <= 8 else 30000.0

    search = search_capacity(measure, slo="e2e_p50_ms", limit=15000, low=8, high=9)
    assert runs == {8: 2, 9: 1}
    assert search.probes[0].values == (14500.0, 14500.0)
    assert search.capacity == 8


def test_a_probe_that_stays_undecided_after_its_runs_is_not_counted_as_meeting() -> None:
    noise: Iterator[float] = iter([1.0, 1.1, 0.9] * 10)
    measure, _ = _curve(lambda c: 4000.0 * c * next(noise) if c >= 4 else 1000.0)
    search = search_capacity(measure, slo="e2e_p50_ms", limit=16000, low=1, high=4, max_runs=3)
    high = search.probe_at(4)
    assert high is not None
    assert high.decision == "undecided"
    assert high.runs == 3
    assert search.status == "undecided"
    assert search.capacity == 3  # the bisection went on below the undecided probe
    assert search.bracket == (3, 4)
    assert "undecided above it: c=4 neither meets nor breaches it (90% interval" in search.statement


def test_the_probe_count_is_bounded_and_an_unresolved_bracket_is_said() -> None:
    measure, calls = _curve(lambda c: 100.0 * c)
    search = search_capacity(measure, slo="e2e_p50_ms", limit=10000, low=1, high=1024, max_probes=4)
    assert len(calls) == len(search.probes) == 4
    assert not search.resolved
    assert search.bracket is not None
    assert search.bracket[1] - search.bracket[0] > 1
    assert "the search stopped after 4 probes" in search.statement
    unbounded = search_capacity(measure, slo="e2e_p50_ms", limit=10000, low=1, high=1024)
    assert len(unbounded.probes) <= 8


def test_the_ends_every_probe_meets_or_the_lowest_breaches() -> None:
    everywhere, _ = _curve(lambda c: 100.0)
    search = search_capacity(everywhere, slo="e2e_p50_ms", limit=15000, low=1, high=16)
    assert (search.status, search.capacity, search.bracket) == ("lower_bound", 16, None)
    assert search.statement.startswith("capacity at least c=16")
    nowhere, calls = _curve(lambda c: 60000.0)
    search = search_capacity(nowhere, slo="e2e_p50_ms", limit=15000, low=1, high=16)
    assert (search.status, search.capacity, calls) == ("none", 0, [1])
    assert search.statement.startswith("no capacity: c=1, the lowest probed, breaches it (lower 90% bound")


def test_a_run_that_measured_nothing_is_a_breach() -> None:
    search = search_capacity(lambda at: None if at > 2 else 100.0, slo="e2e_p50_ms", limit=1000, low=1, high=8)
    assert search.capacity == 2
    assert search.probe_at(3) is not None
    assert search.probe_at(3).reason.startswith("not measured")


def test_a_rate_search_bisects_to_the_tolerance() -> None:
    measure, _ = _curve(lambda rate: 1000.0 * math.exp(rate))  # 15 s at rate ln 15 ≈ 2.71 req/s
    search = search_capacity(
        measure, slo="e2e_p50_ms", limit=15000, vary="request_rate", low=0.5, high=8, tolerance=0.05, max_probes=12
    )
    assert search.status == "met"
    assert search.resolved
    assert search.bracket is not None
    assert search.bracket[1] / search.bracket[0] <= 1.05
    assert 2.5 < search.capacity < math.log(15)
    assert search.users_per_gpu is None
    assert search.statement.startswith("capacity rate=")


def test_a_per_user_rate_minimum_is_searched_the_other_way() -> None:
    measure, _ = _curve(lambda c: 100.0 / c)  # tok/s per user falls as users are added
    search = search_capacity(measure, slo="tok_s_per_user", limit=20, kind="min", unit="tok/s/user", low=1, high=16)
    assert search.capacity == 4  # 25 tok/s/user at c=4, 20 exactly at c=5 (not shown to meet it)


def test_capacity_min_is_probed_and_gates() -> None:
    measure, calls = _curve(_cubic)
    passed = search_capacity(measure, slo="e2e_p50_ms", limit=15000, low=1, high=64, capacity_min=8)
    assert calls[:3] == [1, 64, 8]  # the gate's own point right after the ends
    assert passed.gate_passed is True
    assert passed.statement.endswith("capacity_min=8 met")
    failed = search_capacity(measure, slo="e2e_p50_ms", limit=15000, low=1, high=64, capacity_min=12)
    assert failed.gate_passed is False
    assert failed.capacity == 8
    assert failed.probe_at(12) is not None
    table = render_probe_table(failed)
    assert table.splitlines()[0].split() == [
        "concurrency",
        "runs",
        "values",
        "geo.",
        "mean",
        "90%",
        "bounds",
        "decision",
    ]
    assert "breaches" in table
    assert "meets" in table


def test_decide_probe_reads_the_bound_on_the_limits_side() -> None:
    meets = decide_probe(8, [12000.0, 12100.0, 11900.0], 15000, "max", 0.9)
    assert meets.decision == "meets"
    assert meets.upper is not None
    assert meets.upper < 15000
    # One run 7 % over the limit is not enough alone (its spread is unknown: three noise floors), two are.
    assert decide_probe(8, [16000.0], 15000, "max", 0.9).decision == "undecided"
    assert decide_probe(8, [14000.0], 15000, "max", 0.9).decision == "undecided"
    breaches = decide_probe(8, [16000.0, 16100.0], 15000, "max", 0.9)
    assert breaches.decision == "breaches"
    assert breaches.lower is not None
    assert breaches.lower > 15000
    assert decide_probe(8, [15100.0, 14900.0], 15000, "max", 0.9).decision == "undecided"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"low": 8, "high": 4}, "need 0 < low < high"),
        ({"low": 1.5, "high": 4}, "int bounds"),
        ({"low": 1, "high": 4, "vary": "rate"}, "expected one of concurrency, request_rate"),
        ({"low": 1, "high": 4, "max_probes": 1}, "max_probes >= 2"),
    ],
)
def test_a_range_or_budget_it_cannot_search_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        search_capacity(lambda at: 1.0, slo="e2e_p50_ms", limit=10, **kwargs)  # type: ignore[arg-type]
