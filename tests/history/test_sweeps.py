"""Concurrency sweeps of a history as curves to overlay (known answers)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

from pytest_llmperf.history.model import Series, SeriesKey, SessionPoint
from pytest_llmperf.history.sweeps import sweep_curves, sweep_name

START = datetime(2025, 10, 1, tzinfo=timezone.utc)
VERSIONS = ("0.11.0", "0.11.0", "0.12.0")


def point(day: int, value: float) -> SessionPoint:
    return SessionPoint(f"s{day}", START + timedelta(days=day), value, 1, f"c{day}", None, VERSIONS[day], "e")


def sweep(function: str, shape: str, levels: dict[int, tuple[float, float]], days: range = range(3)) -> list[Series]:
    """Two series per concurrency (interactivity, throughput per GPU) of ``function[shape-c]``; values grow by
    10 % a day so that each session's curve differs."""
    found = []
    for c, (interactivity, per_gpu) in levels.items():
        test = f"t.py::{function}[{shape}-{c}]"
        for metric, value in (("interactivity", interactivity), ("output_throughput_per_gpu", per_gpu)):
            points = tuple(point(day, value * 1.1**day) for day in days)
            found.append(Series(SeriesKey(test, "h200x8-fp8", f"{shape}-{c}", metric), points))
    return found


def workloads(shape: str, levels: list[int]) -> dict[str, dict[str, object]]:
    lengths = {"1k1k": (1024, 1024), "8k1k": (8192, 1024)}[shape]
    return {
        f"{shape}-{c}": {"input_len": lengths[0], "output_len": lengths[1], "concurrency": c, "num_prompts": 10 * c}
        for c in levels
    }


def test_the_first_and_last_session_are_overlaid_by_default() -> None:
    series = sweep("test_sweep", "1k1k", {1: (100.0, 50.0), 8: (60.0, 300.0), 64: (20.0, 900.0)})
    curves = sweep_curves(series, workloads("1k1k", [1, 8, 64]))
    assert list(curves) == ["t.py::test_sweep (h200x8-fp8, 1024/1024 tokens)"]
    first, last = curves["t.py::test_sweep (h200x8-fp8, 1024/1024 tokens)"]
    assert first.label == "2025-10-01 · 0.11.0 · c0"
    assert last.label == "2025-10-03 · 0.12.0 · c2"
    assert [(p.concurrency, p.interactivity, p.throughput_per_gpu) for p in first.points] == [
        (1, 100.0, 50.0),
        (8, 60.0, 300.0),
        (64, 20.0, 900.0),
    ]
    assert last.points[0].throughput_per_gpu == 50.0 * 1.1**2


def test_sessions_are_chosen_by_date_or_engine_version() -> None:
    series = sweep("test_sweep", "1k1k", {1: (100.0, 50.0), 8: (60.0, 300.0)})
    (curves,) = sweep_curves(series, workloads("1k1k", [1, 8]), chosen=["2025-10-02", "0.12.0", "1999-01-01"]).values()
    # The date covers its whole day (session 1); the version names session 2; a date before any session, none.
    assert [c.label.split(" · ")[0] for c in curves] == ["2025-10-02", "2025-10-03"]


def test_two_shapes_of_one_function_are_two_sweeps_not_one_zigzag() -> None:
    series = sweep("test_sweep", "1k1k", {1: (100.0, 50.0), 8: (60.0, 300.0)})
    series += sweep("test_sweep", "8k1k", {1: (90.0, 20.0), 8: (50.0, 100.0)})
    both = workloads("1k1k", [1, 8]) | workloads("8k1k", [1, 8])
    curves = sweep_curves(series, both)
    assert sorted(curves) == [
        "t.py::test_sweep (h200x8-fp8, 1024/1024 tokens)",
        "t.py::test_sweep (h200x8-fp8, 8192/1024 tokens)",
    ]
    assert all(len(c.points) == 2 for cs in curves.values() for c in cs)


def test_a_session_without_a_curve_is_not_picked_and_one_concurrency_is_no_sweep() -> None:
    # Concurrency 8 ran only from day 1 on: day 0 has one point, so the first curve is day 1's.
    series = sweep("test_sweep", "1k1k", {1: (100.0, 50.0)}) + sweep(
        "test_sweep", "1k1k", {8: (60.0, 300.0)}, days=range(1, 3)
    )
    (curves,) = sweep_curves(series, workloads("1k1k", [1, 8])).values()
    assert [c.label.split(" · ")[0] for c in curves] == ["2025-10-02", "2025-10-03"]
    alone = sweep("test_single", "1k1k", {4: (80.0, 100.0)})
    assert sweep_curves(alone, workloads("1k1k", [4])) == {}


def test_sweep_name_drops_the_parameters() -> None:
    assert sweep_name("m.py::test_1k_1k[4]") == "m.py::test_1k_1k"
    assert sweep_name("m.py::TestX::test_y") == "m.py::TestX::test_y"


def test_without_a_gpu_count_the_curves_are_per_server() -> None:
    series = [
        Series(dataclasses.replace(s.key, metric="output_throughput"), s.points)
        if s.key.metric == "output_throughput_per_gpu"
        else s
        for s in sweep("test_sweep", "1k1k", {1: (100.0, 50.0), 8: (60.0, 300.0)})
    ]
    (curves,) = sweep_curves(series, workloads("1k1k", [1, 8])).values()
    assert [c.per_gpu for c in curves] == [False, False]
    assert [p.throughput_per_gpu for p in curves[0].points] == [50.0, 300.0]  # the server's whole throughput
