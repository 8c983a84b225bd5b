"""The values the history modules pass each other: what one session and one run add to the database, and the
per-session series that change-point detection and the trend report read back. Frozen and typed; JSON only at
the database boundary (workload, verdict and SLO results are stored as JSON text beside the typed columns)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypeAlias

SessionSource: TypeAlias = Literal["pytest", "import:json", "import:baseline"]
Side: TypeAlias = Literal["", "A", "B"]  # "": a stored-baseline run; "A"/"B": A/B mode's servers


@dataclass(frozen=True, slots=True)
class CiRun:
    """The CI run a session belongs to, when the environment names one (GitHub Actions, GitLab, Buildkite,
    Jenkins). ``url`` has any user:password part removed."""

    provider: str
    run_id: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One pytest session (or one imported document or baseline session). Times are timezone-aware UTC."""

    session_id: str
    started_at: datetime
    ended_at: datetime
    pair: str  # "<hardware>-<precision>"
    plugin_version: str | None
    git_commit: str | None = None
    git_branch: str | None = None
    ci: CiRun | None = None
    source: SessionSource = "pytest"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One measured run of one test. ``metrics`` holds every finite number of the run's summary by its summary
    key (``median_tpot_ms``, ``output_throughput``, ...); ``verdict``/``slos`` are the test's verdict and this
    run's SLO checks as their JSON dict forms (``None``/empty when there were none)."""

    session_id: str
    test_id: str  # the pytest node id
    run_index: int  # 0, 1, ... within the test in its session
    side: Side
    started_at: datetime | None
    ended_at: datetime | None
    pair: str
    hardware: str
    precision: str
    model: str
    workload_hash: str
    workload: Mapping[str, object]  # JSON-able (a WorkloadDict)
    engine: str | None
    engine_version: str | None
    server_command_hash: str | None
    plugin_version: str | None
    epoch_key: str  # a hash of the baseline's epoch keys (engine version, server command, plugin version)
    compat_mode: str
    valid: bool  # False when the run's summary lists invalid_reasons
    outcome: str | None  # the test's pytest outcome ("passed", "failed", ...); None when imported from baselines
    verdict_status: str | None
    metrics: Mapping[str, float]
    verdict: Mapping[str, object] | None = None  # JSON-able (a VerdictDict)
    slos: tuple[Mapping[str, object], ...] = ()  # JSON-able (SloResultDicts)


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """One series: a test's metric on one pair and workload (a changed workload starts another series)."""

    test_id: str
    pair: str
    workload_hash: str
    metric: str  # a summary key


@dataclass(frozen=True, slots=True)
class SessionPoint:
    """One session's value in a series: the median of its valid runs' values of the metric."""

    session_id: str
    at: datetime  # the session's start (UTC)
    value: float
    runs: int
    git_commit: str | None
    git_branch: str | None
    engine_version: str | None
    epoch_key: str


@dataclass(frozen=True, slots=True)
class Series:
    key: SeriesKey
    points: tuple[SessionPoint, ...]  # oldest first


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """``history ack``: one change known and accepted, so that ``history changes`` no longer fails on it. It names
    the change by its series and the first session after it, as found when acknowledged; the same change found a
    few sessions off later (its place is re-estimated as sessions arrive) is still covered, a new change is not."""

    key: SeriesKey
    session_id: str  # the first session after the change
    at: datetime  # that session's start (UTC)
    by: str | None
    reason: str
    recorded_at: datetime = field(compare=False)


@dataclass(frozen=True, slots=True)
class Change:
    """A persistent shift in a series, found by change-point detection: ``points[index]`` is the first session
    after it. ``ratio`` is the mean after over the mean before (on the series' values); ``worse`` follows the
    metric's direction (a latency up, a throughput down); ``gating`` when the metric gates verdicts."""

    key: SeriesKey
    index: int
    before: SessionPoint  # the last session before the change
    after: SessionPoint  # the first session after it
    mean_before: float
    mean_after: float
    ratio: float
    p_value: float
    worse: bool
    gating: bool
    # The sessions around it (up to ACK_SLACK either side of ``after``): an acknowledgement naming one of them
    # covers this change, whose place may move by a session or two as later sessions arrive.
    nearby: tuple[str, ...] = ()

    @property
    def at(self) -> datetime:
        return self.after.at


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One concurrency of a sweep: its interactivity (tok/s/user, the x axis) and output throughput per GPU (y)."""

    concurrency: float
    interactivity: float
    throughput_per_gpu: float


@dataclass(frozen=True, slots=True)
class SweepCurve:
    """A sweep as measured at one date or engine version, e.g. ``"2025-10-01 · vllm 0.11.0"``. The sweep it belongs
    to (the test id without its parameter) is the key it is passed under to :func:`render_trend`."""

    label: str
    points: tuple[SweepPoint, ...]
    # False: the GPU count was unknown, and ``throughput_per_gpu`` holds the server's whole output throughput.
    per_gpu: bool = True
