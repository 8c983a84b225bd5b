"""The concurrency sweeps of a history, as curves to overlay: a sweep is a test parametrized over concurrency
(``test_1k_1k[1]``, ``test_1k_1k[4]``, ...), and each chosen session gives one throughput-per-GPU vs
interactivity curve (the TensorRT-LLM "October vs January software" picture)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from pytest_llmperf.history.model import Series, SessionPoint, SweepCurve, SweepPoint
from pytest_llmperf.history.records import parse_time
from pytest_llmperf.judge.baseline import stable_hash

INTERACTIVITY = "interactivity"
PER_GPU = "output_throughput_per_gpu"
PER_SERVER = "output_throughput"  # where the GPU count is unknown (a CPU engine, an endpoint without --llmperf-gpus)
# What a concurrency sweep varies besides concurrency: the prompt count (often 10 × c) and the run's length.
_SWEPT = frozenset({"concurrency", "num_prompts", "duration_s", "warmup"})
_PARAMETERS = re.compile(r"\[[^\]]*\]$")


def sweep_name(test_id: str) -> str:
    """The test id without its parameters: ``m.py::test_1k_1k[4]`` → ``m.py::test_1k_1k``."""
    return _PARAMETERS.sub("", test_id)


def sweep_curves(
    series: Sequence[Series], workloads: Mapping[str, Mapping[str, object]], chosen: Sequence[str] = ()
) -> dict[str, list[SweepCurve]]:
    """Per sweep, one curve per chosen session: ``chosen`` holds dates (the last session on or before that day)
    or engine versions (the last session with it); by default the sweep's first and last session that measured
    a curve. A sweep is the tests of one function and pair whose workloads differ in concurrency (and the prompt
    count or length that follow it) alone, with at least two concurrencies measured (interactivity and output
    throughput, per GPU where the GPU count is known) in one session."""
    values: dict[tuple[str, str, str], dict[str, dict[str, dict[str, float]]]] = {}  # sweep → session → test
    sessions: dict[tuple[str, str, str], dict[str, SessionPoint]] = {}
    concurrency: dict[str, float] = {}
    shapes: dict[tuple[str, str, str], str] = {}
    for s in series:
        workload = workloads.get(s.key.workload_hash, {})
        level = _concurrency(workload)
        if s.key.metric not in (INTERACTIVITY, PER_GPU, PER_SERVER) or level is None:
            continue
        concurrency[s.key.test_id] = level
        rest = {k: v for k, v in workload.items() if k not in _SWEPT}
        group = (sweep_name(s.key.test_id), s.key.pair, stable_hash(rest, 12))
        shapes[group] = _shape(rest)
        for point in s.points:
            values.setdefault(group, {}).setdefault(point.session_id, {}).setdefault(s.key.test_id, {})[
                s.key.metric
            ] = point.value
            sessions.setdefault(group, {})[point.session_id] = point
    curves: dict[str, list[SweepCurve]] = {}
    for group, by_session in sorted(values.items()):
        name, pair, _ = group
        # Per GPU when every session of the sweep knew its GPU count, else per server, for every curve alike.
        throughput = PER_GPU if all(PER_GPU in f for t in by_session.values() for f in t.values()) else PER_SERVER
        drawn = {
            session: points
            for session, tests in by_session.items()
            if len(points := _points(tests, concurrency, throughput)) >= 2  # a curve: two concurrencies at least
        }
        if not drawn:
            continue
        ordered = sorted((sessions[group][session] for session in drawn), key=lambda p: p.at)
        title = f"{name} ({pair}{shapes[group]})"
        for point in _pick(ordered, chosen):
            curves.setdefault(title, []).append(
                SweepCurve(_label(point), drawn[point.session_id], per_gpu=throughput == PER_GPU)
            )
    return curves


def _points(
    tests: Mapping[str, Mapping[str, float]], concurrency: Mapping[str, float], throughput: str
) -> tuple[SweepPoint, ...]:
    return tuple(
        sorted(
            (
                SweepPoint(concurrency[test], figures[INTERACTIVITY], figures[throughput])
                for test, figures in tests.items()
                if INTERACTIVITY in figures and throughput in figures
            ),
            key=lambda p: p.concurrency,
        )
    )


def _shape(workload: Mapping[str, object]) -> str:
    """ ", 1024/1024 tokens": what tells apart sweeps of one test function (a parameter of lengths besides
    concurrency); the workload hash tells them apart in any case."""
    lengths = workload.get("input_len"), workload.get("output_len")
    return f", {lengths[0]}/{lengths[1]} tokens" if all(isinstance(n, int) for n in lengths) else ""


def _concurrency(workload: Mapping[str, object]) -> float | None:
    value = workload.get("concurrency")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _pick(ordered: Sequence[SessionPoint], chosen: Sequence[str]) -> list[SessionPoint]:
    if not chosen:
        return [ordered[0], ordered[-1]] if len(ordered) > 1 else list(ordered)
    picked: list[SessionPoint] = []
    for wanted in chosen:
        match = _by_version(ordered, wanted) or _by_date(ordered, wanted)
        if match is not None and match not in picked:
            picked.append(match)
    return picked


def _by_version(ordered: Sequence[SessionPoint], version: str) -> SessionPoint | None:
    return next((p for p in reversed(ordered) if p.engine_version == version), None)


def _by_date(ordered: Sequence[SessionPoint], text: str) -> SessionPoint | None:
    try:
        day: datetime = parse_time(text)
    except ValueError:
        return None
    end = day + timedelta(days=1) if len(text.strip()) <= 10 else day  # a date covers its whole day
    return next((p for p in reversed(ordered) if p.at < end), None)


def _label(point: SessionPoint) -> str:
    parts = [point.at.strftime("%Y-%m-%d")]
    if point.engine_version:
        parts.append(point.engine_version)
    if point.git_commit:
        parts.append(point.git_commit[:10])
    return " · ".join(parts)
