"""The concurrency sweeps of a history, as curves to overlay: a sweep is a test parametrized over concurrency
(``test_1k_1k[1]``, ``test_1k_1k[4]``, ...), and each chosen session gives one throughput-per-GPU vs
interactivity curve (the TensorRT-LLM "October vs January software" picture)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from pytest_llmperf.history.model import Series, SessionPoint
from pytest_llmperf.history.records import parse_time
from pytest_llmperf.history.trend import SweepCurve, SweepPoint

INTERACTIVITY = "interactivity"
PER_GPU = "output_throughput_per_gpu"
_PARAMETERS = re.compile(r"\[[^\]]*\]$")


def sweep_name(test_id: str) -> str:
    """The test id without its parameters: ``m.py::test_1k_1k[4]`` → ``m.py::test_1k_1k``."""
    return _PARAMETERS.sub("", test_id)


def sweep_curves(
    series: Sequence[Series], workloads: Mapping[str, Mapping[str, object]], chosen: Sequence[str] = ()
) -> dict[str, list[SweepCurve]]:
    """Per sweep (and pair), one curve per chosen session: ``chosen`` holds dates (the last session on or before
    that day) or engine versions (the last session with it); by default the sweep's first and last session.
    A sweep needs at least two concurrencies with both interactivity and output throughput per GPU measured."""
    values: dict[tuple[str, str], dict[str, dict[str, dict[str, float]]]] = {}  # sweep → session → test → metric
    sessions: dict[tuple[str, str], dict[str, SessionPoint]] = {}
    concurrency: dict[str, float] = {}
    for s in series:
        level = _concurrency(workloads.get(s.key.workload_hash, {}))
        if s.key.metric not in (INTERACTIVITY, PER_GPU) or level is None:
            continue
        concurrency[s.key.test_id] = level
        group = (sweep_name(s.key.test_id), s.key.pair)
        for point in s.points:
            values.setdefault(group, {}).setdefault(point.session_id, {}).setdefault(s.key.test_id, {})[
                s.key.metric
            ] = point.value
            sessions.setdefault(group, {})[point.session_id] = point
    curves: dict[str, list[SweepCurve]] = {}
    for (name, pair), by_session in sorted(values.items()):
        if len({concurrency[test] for session in by_session.values() for test in session}) < 2:
            continue  # not a sweep: one concurrency
        ordered = sorted(sessions[(name, pair)].values(), key=lambda p: p.at)
        picked = _pick(ordered, chosen)
        title = f"{name} ({pair})"
        for point in picked:
            tests = by_session[point.session_id]
            points = sorted(
                (
                    SweepPoint(concurrency[test], figures[INTERACTIVITY], figures[PER_GPU])
                    for test, figures in tests.items()
                    if INTERACTIVITY in figures and PER_GPU in figures
                ),
                key=lambda p: p.concurrency,
            )
            if len(points) >= 2:
                curves.setdefault(title, []).append(SweepCurve(_label(point), tuple(points)))
    return curves


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
