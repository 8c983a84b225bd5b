"""Fault syntax, validation and selection."""

from __future__ import annotations

import pytest

from pytest_llmperf.errors import SpecError
from pytest_llmperf.sim.faults import FaultSpec, parse_fault, pick_fault


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http_500:every=5", FaultSpec(kind="http_500", every=5)),
        ("disconnect:rate=0.1,after=3", FaultSpec(kind="disconnect", rate=0.1, after=3)),
        (" hang:every=1,seconds=2.5 ", FaultSpec(kind="hang", every=1, seconds=2.5)),
        ("truncated:rate=1", FaultSpec(kind="truncated", rate=1.0)),
    ],
)
def test_parse(text: str, expected: FaultSpec) -> None:
    assert parse_fault(text) == expected
    assert parse_fault(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http_500", "no selector"),
        ("oops:every=1", "unknown kind 'oops'"),
        ("http_500:every=1,rate=0.5", "exactly one of every=N and rate=P"),
        ("disconnect:after=1", "exactly one of every=N and rate=P"),
        ("empty:every=0", "every=0 must be an int >= 1"),
        ("empty:rate=1.5", r"rate=1\.5 must be in \[0, 1\]"),
        ("http_503:every=2,after=1", "http_503 does not take after"),
        ("disconnect:every=2,seconds=1", "disconnect does not take seconds"),
        ("disconnect:every=two", "invalid literal"),
        ("disconnect:every=1,every=2", "repeated"),
        ("hang:every=1,seconds=-1", "seconds=-1.0 must be a number > 0"),
    ],
)
def test_parse_errors_name_the_problem_and_the_syntax(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        parse_fault(text)
    assert "KIND:every=N" in str(info.value)


def test_every_selects_multiples() -> None:
    fault = parse_fault("http_500:every=3")
    assert [n for n in range(1, 10) if fault.selects(n, seed=0, index=0)] == [3, 6, 9]


def test_rate_is_seeded_and_close_to_the_fraction() -> None:
    fault = parse_fault("empty:rate=0.25")
    picks = [fault.selects(n, seed=1, index=0) for n in range(1, 4001)]
    assert picks == [fault.selects(n, seed=1, index=0) for n in range(1, 4001)]
    assert sum(picks) / len(picks) == pytest.approx(0.25, abs=0.03)
    assert picks != [fault.selects(n, seed=2, index=0) for n in range(1, 4001)]


def test_the_first_listed_fault_wins() -> None:
    faults = [parse_fault("http_500:every=2"), parse_fault("http_429:every=3")]
    kinds = [f.kind if (f := pick_fault(faults, n, seed=0)) else None for n in range(1, 7)]
    assert kinds == [None, "http_500", "http_429", "http_500", None, "http_500"]
