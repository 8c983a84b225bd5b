"""What a session adds to the history: a :class:`SessionRecord` and one :class:`RunRecord` per measured run,
built from the session's result documents (the ``--llmperf-json`` shape) or from a baseline file's runs.

The same builders serve the plugin at the end of a session and ``history import`` of older documents, so a run
looks the same in the database however it got there. Nothing secret reaches a record: endpoints are stored as
engine, version and model only (never their URL), and a CI run's URL loses any ``user:password@`` part.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone

from pytest_llmperf.history.model import CiRun, RunRecord, SessionRecord, SessionSource, Side
from pytest_llmperf.judge.baseline import EPOCH_KEYS, BaselineEntry, stable_hash, workload_hash
from pytest_llmperf.results import BaselineRun, FingerprintDict, RunDocument, RunSummary

# Summary keys that are numbers but not measurements of the run: they would be series without meaning.
_NOT_METRICS = frozenset(
    {
        "started_at_unix",
        "ended_at_unix",
        "warmup_requests",
        "gpu_count",
        "measurement_lock_wait_s",
        "ab_idle_wait_s",
        "ab_pause_s",
        "max_concurrency",  # the workload's, as vLLM's result file repeats it
        # The price given, and what it makes of the throughput: a new price would read as a change point.
        "gpu_cost_per_hour",
        "cost_per_million_output_tokens",
        "cost_per_million_total_tokens",
        "output_tokens_per_dollar",
        "total_tokens_per_dollar",
    }
)


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def parse_time(text: str) -> datetime:
    """An ISO date or date-time as aware UTC (a naive one is taken as UTC); ``ValueError`` when it is neither."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# --- runs ----------------------------------------------------------------------------------------------------


def numeric_metrics(summary: Mapping[str, object]) -> dict[str, float]:
    """Every finite number of a run summary by its key (booleans and bookkeeping keys left out)."""
    found: dict[str, float] = {}
    for key, value in summary.items():
        if key in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            found[key] = float(value)
    return found


def epoch_key(fingerprint: Mapping[str, object]) -> str:
    """The baseline epoch a run belongs to, as a short hash of the fingerprint's epoch keys: runs with another
    engine build, server command or plugin version measure another thing (``judge.baseline.EPOCH_KEYS``)."""
    return stable_hash({key: fingerprint.get(key) for key in EPOCH_KEYS}, 12)


def split_pair(pair: str) -> tuple[str, str]:
    """``"<hardware>-<precision>"`` → its parts (neither part may hold a ``-``)."""
    hardware, _, precision = pair.rpartition("-")
    return (hardware, precision) if hardware else (pair, "")


def runs_of_document(document: RunDocument, *, session_id: str, pair: str) -> list[RunRecord]:
    """The runs of one test's result document: its runs (B's in A/B mode, then A's), each with the test's
    verdict; the SLO checks belong to the last run, as the document keeps only those."""
    measured: Mapping[str, object] = document.get("fingerprint") or {}
    workload: Mapping[str, object] = dict(document.get("workload") or {})
    served: Mapping[str, object] = document.get("endpoint") or {}
    hardware, precision = split_pair(pair)
    verdict = document.get("verdict")
    ab = document.get("ab")
    # A/B mode: both servers' runs, each with its own fingerprint (documents without fingerprint_a: A's engine).
    sides: list[tuple[Side, Sequence[RunSummary], Mapping[str, object], Mapping[str, object]]] = (
        [
            ("B", ab.get("runs_b") or [], measured, served),
            ("A", ab.get("runs_a") or [], ab.get("fingerprint_a") or {}, ab.get("a") or {}),
        ]
        if ab
        else [("", document.get("runs") or [], measured, served)]
    )
    # The baseline key is the node id, with "#1", "#2" for a test's further llmperf.run() calls.
    test_id = document.get("baseline_key") or document.get("nodeid") or "?"
    status = verdict.get("status") if verdict else None
    records = []
    for side, runs, fingerprint, endpoint in sides:
        for index, summary in enumerate(runs):
            last = side in ("", "B") and index == len(runs) - 1
            records.append(
                RunRecord(
                    session_id=session_id,
                    test_id=test_id,
                    run_index=index,
                    side=side,
                    started_at=_time(summary.get("started_at_unix")),
                    ended_at=_time(summary.get("ended_at_unix")),
                    pair=pair,
                    hardware=str(fingerprint.get("hardware") or hardware),
                    precision=str(fingerprint.get("precision") or precision),
                    model=str(fingerprint.get("model") or endpoint.get("model") or ""),
                    workload_hash=str(fingerprint.get("workload_hash") or workload_hash(workload)),
                    workload=workload,
                    engine=_text(fingerprint.get("engine") or endpoint.get("engine")),
                    engine_version=_text(fingerprint.get("engine_version") or endpoint.get("engine_version")),
                    server_command_hash=_text(fingerprint.get("server_command_hash")),
                    plugin_version=_text(fingerprint.get("plugin_version")),
                    epoch_key=epoch_key(fingerprint),
                    compat_mode=str(summary.get("compat_mode") or workload.get("compat") or "vllm"),
                    valid=not summary.get("invalid_reasons"),
                    outcome=document.get("outcome"),
                    # The verdict judges B (or the stored-baseline candidate): A's runs are its reference.
                    verdict_status=None if side == "A" else status,
                    metrics=numeric_metrics(summary),
                    verdict=dict(verdict) if verdict and side != "A" else None,
                    slos=tuple(dict(s) for s in document.get("slos") or ()) if last else (),
                )
            )
    return records


def session_of_documents(
    documents: Sequence[RunDocument],
    *,
    session_id: str,
    pair: str,
    plugin_version: str | None,
    git_commit: str | None,
    git_branch: str | None,
    ci: CiRun | None,
    fallback_time: datetime,
    source: SessionSource = "pytest",
) -> tuple[SessionRecord, list[RunRecord]]:
    """The session and its runs; the session spans its runs' times (``fallback_time`` when none has one)."""
    runs = [run for document in documents for run in runs_of_document(document, session_id=session_id, pair=pair)]
    times = [t for run in runs for t in (run.started_at, run.ended_at) if t is not None]
    session = SessionRecord(
        session_id=session_id,
        started_at=min(times, default=fallback_time),
        ended_at=max(times, default=fallback_time),
        pair=pair,
        plugin_version=plugin_version,
        git_commit=git_commit,
        git_branch=git_branch,
        ci=ci,
        source=source,
    )
    return session, runs


def sessions_in_document(documents: Iterable[RunDocument]) -> dict[str, list[RunDocument]]:
    """An imported JSON document's results by the session their runs name (one, for a document written by
    ``--llmperf-json``; a merged document may hold several)."""
    found: dict[str, list[RunDocument]] = {}
    for document in documents:
        runs = document.get("runs") or []
        session = next((str(r["session_id"]) for r in runs if r.get("session_id")), None)
        found.setdefault(session or "", []).append(document)
    return found


def sessions_of_entry(entry: BaselineEntry, *, test_id: str, pair: str) -> list[tuple[SessionRecord, list[RunRecord]]]:
    """A baseline entry's runs, its earlier epochs' too, as the sessions that recorded them, each dated by its
    runs' ``recorded_at``. Baselines keep no verdicts, SLO checks or run times: those columns stay empty."""
    workload: Mapping[str, object] = dict(entry.workload or {})
    epochs: list[tuple[FingerprintDict, Sequence[BaselineRun]]] = [
        (e["fingerprint"], e["runs"]) for e in entry.previous_epochs
    ]
    epochs.append((entry.fingerprint.as_dict(), entry.runs))
    by_session: dict[str, list[tuple[FingerprintDict, BaselineRun]]] = {}
    for epoch_fingerprint, epoch_runs in epochs:
        for run in epoch_runs:
            # Runs of version-1 files carry no session: one per test, pair and workload, as the baseline read them.
            legacy = f"baseline-{stable_hash([pair, test_id, entry.workload_hash], 12)}"
            by_session.setdefault(str(run.get("session") or legacy), []).append((epoch_fingerprint, run))
    hardware, precision = split_pair(pair)
    found = []
    for session_id, pairs in by_session.items():
        times = [t for _, run in pairs if (t := _recorded(run)) is not None]
        if not times:
            continue  # an undated run cannot be placed in a series
        records = [
            RunRecord(
                session_id=session_id,
                test_id=test_id,
                run_index=index,
                side="",
                started_at=_recorded(run),
                ended_at=None,
                pair=pair,
                hardware=fingerprint.get("hardware") or hardware,
                precision=fingerprint.get("precision") or precision,
                model=fingerprint.get("model") or "",
                workload_hash=fingerprint.get("workload_hash") or entry.workload_hash,
                workload=workload,
                engine=fingerprint.get("engine"),
                engine_version=fingerprint.get("engine_version"),
                server_command_hash=fingerprint.get("server_command_hash"),
                plugin_version=fingerprint.get("plugin_version"),
                epoch_key=epoch_key(fingerprint),
                compat_mode=str(run.get("compat_mode") or "vllm"),
                valid=True,  # a baseline keeps valid runs only
                outcome=None,
                verdict_status=None,
                metrics=numeric_metrics(run),
            )
            for index, (fingerprint, run) in enumerate(pairs)
        ]
        fingerprint = pairs[-1][0]
        session = SessionRecord(
            session_id=session_id,
            started_at=min(times),
            ended_at=max(times),
            pair=pair,
            plugin_version=fingerprint.get("plugin_version"),
            git_commit=fingerprint.get("git_commit"),
            source="import:baseline",
        )
        found.append((session, records))
    return found


def _recorded(run: Mapping[str, object]) -> datetime | None:
    text = run.get("recorded_at")
    if not isinstance(text, str):
        return None
    try:
        return parse_time(text)
    except ValueError:
        return None


def _time(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return utc(float(value))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
