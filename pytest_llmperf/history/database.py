"""The history database: every session's runs, one row per run, in SQLite (the default, one file per project) or
PostgreSQL (shared by a team), through SQLAlchemy Core. The tables and their versions are
:mod:`~pytest_llmperf.history.schema`'s; URLs and error messages :mod:`~pytest_llmperf.history.urls`'.

Which runs make a point: the valid ones (``valid``) of the server under test, i.e. every side but ``"B"`` (the
build A/B mode compares with it: its runs are stored, but a series follows one server).
:meth:`HistoryDatabase.session_values` reads the same runs.

Every database problem is a :class:`~pytest_llmperf.errors.HistoryError` naming the database with its password
hidden and saying what to do. Opening checks what the work ahead needs, so that a wrong URL or database fails
there, not later:

- ``HistoryDatabase.open(url)`` (a writer: the session that appends, ``history ack``, ``history import``)
  connects, creates the database and its tables or migrates an older schema, and checks that the database takes
  writes, so that an unreachable server, a read-only or damaged file or a database written by a newer release
  fails at the start of a session, not after its measurements.
- ``HistoryDatabase.open(url, write=False)`` (a reader: xdist workers reading earlier sessions for the verdict,
  ``history changes`` and ``history report``) writes nothing: it never creates a database (a missing SQLite
  file is an error), never migrates, and refuses a database that is not a history of the current schema
  version. On SQLite it opens the file with ``mode=rw`` (never created) and ``PRAGMA query_only``; on
  PostgreSQL its transactions are ``READ ONLY``, so a role granted only SELECT can read.

Concurrency: SQLite runs in WAL mode with a 30 s busy timeout and takes its write lock at the start of every
writing transaction (``BEGIN IMMEDIATE``), so sessions of several processes append one after the other; on
PostgreSQL a unique session id and ``ON CONFLICT DO NOTHING`` for new series do the same, and an advisory lock
serialises schema changes.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
import sqlite3
import statistics
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine

from pytest_llmperf.errors import HistoryError
from pytest_llmperf.history import schema
from pytest_llmperf.history.model import Acknowledgement, RunRecord, Series, SeriesKey, SessionPoint, SessionRecord
from pytest_llmperf.history.schema import ACKS, META, POINTS, RUN_METRICS, RUNS, SCHEMA_VERSION, SERIES, SESSIONS, aware
from pytest_llmperf.history.urls import (
    URL_FORMS,
    default_url,
    display_url,
    explain,
    first_line,
    parse_url,
    url_secrets,
    with_driver,
)
from pytest_llmperf.results import NO_BASELINE, NOT_COMPARABLE, JSONValue

__all__ = ["SCHEMA_VERSION", "HistoryDatabase", "default_url", "display_url"]

# How long SQLite waits for another process's write lock, and PostgreSQL for a connection.
SQLITE_BUSY_S: Final = 30
CONNECT_TIMEOUT_S: Final = 5
# The side whose runs are not the server under test (A/B mode's other build).
_OTHER_SIDE: Final = "B"
# Verdicts that judged no metric (their "metrics" list is empty): they say nothing about what a test gates.
_UNJUDGED: Final = (NO_BASELINE, NOT_COMPARABLE)
_IN_CHUNK: Final = 500  # values per SQL IN list
_NO_RUN: Final[tuple[str | None, str]] = (None, "")  # a point's engine version and epoch key when its run is not found


# --- the database ----------------------------------------------------------------------------------------------


class HistoryDatabase:
    """An open history database. Use :meth:`open`; close it (or use it as a context manager) when done."""

    def __init__(self, engine: Engine, shown: str, secrets: Sequence[str], *, write: bool) -> None:
        self._engine: Engine | None = engine
        self._shown = shown
        self._secrets = tuple(secrets)
        self._write = write
        self._version = 0

    # -- opening and closing --

    @classmethod
    def open(cls, url: str, *, write: bool = True) -> HistoryDatabase:
        """Connect and check what the work ahead needs. ``write`` (the default): create the database and its
        tables, or migrate an older schema, and check that it takes writes. ``write=False``: write nothing;
        refuse a database that does not exist, is not a history or has another schema version."""
        shown = display_url(url)
        parsed = with_driver(parse_url(url), shown)
        hidden = url_secrets(parsed)
        if parsed.get_backend_name() == "sqlite":
            parsed = _sqlite_writer_url(parsed, shown) if write else _sqlite_reader_url(parsed, shown)
        db = cls(_create_engine(parsed, shown, hidden, write=write), shown, hidden, write=write)
        try:
            db._version = db._prepare()
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> HistoryDatabase:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HistoryDatabase({self._shown!r}, schema_version={self._version}, write={self._write})"

    @property
    def schema_version(self) -> int:
        return self._version

    @property
    def url_for_display(self) -> str:
        return self._shown

    @property
    def writable(self) -> bool:
        """Whether it was opened to write (``open(url)``) rather than only to read (``open(url, write=False)``)."""
        return self._write

    # -- writing --

    def append(self, session: SessionRecord, runs: Sequence[RunRecord]) -> int:
        """Store a session and its runs in one transaction; the number of runs written, 0 when a session with
        this id is stored already (so importing a document twice adds nothing)."""
        aware(session.started_at)
        aware(session.ended_at)
        for run in runs:
            if run.session_id != session.session_id:
                raise ValueError(f"run {run.test_id}#{run.run_index} belongs to session {run.session_id!r}")
            for when in (run.started_at, run.ended_at):
                if when is not None:
                    aware(when)
        try:
            with self._transaction("append a session to", write=True) as conn:
                if self._session_ref(conn, session.session_id) is not None:
                    return 0
                inserted = conn.execute(SESSIONS.insert(), _session_row(session)).inserted_primary_key
                assert inserted is not None
                session_ref = int(inserted[0])
                run_ids = _insert_runs(conn, [_run_row(session_ref, run) for run in runs])
                metric_rows = [
                    (run_id, name, float(value))
                    for run_id, run in zip(run_ids, runs, strict=True)
                    for name, value in run.metrics.items()
                    if _finite(value)
                ]
                _insert_many(conn, RUN_METRICS, ("run_id", "name", "value"), metric_rows)
                counted = [
                    _RunFigures(run_id, run.test_id, run.pair, run.workload_hash, run.metrics)
                    for run_id, run in zip(run_ids, runs, strict=True)
                    if run.valid and run.side != _OTHER_SIDE
                ]
                _write_points(conn, session_ref, counted)
        except HistoryError as exc:
            # Another process stored the same session between our check and our insert.
            if isinstance(exc.__cause__, sa_exc.IntegrityError) and self.has_session(session.session_id):
                return 0
            raise
        return len(runs)

    def add_ack(self, ack: Acknowledgement) -> None:
        """Store an acknowledgement of one change."""
        row = {
            "test_id": ack.key.test_id,
            "pair": ack.key.pair,
            "workload_hash": ack.key.workload_hash,
            "metric": ack.key.metric,
            "session_id": ack.session_id,
            "at": aware(ack.at),
            "acked_by": ack.by,
            "reason": ack.reason,
            "recorded_at": aware(ack.recorded_at),
        }
        with self._transaction("record an acknowledgement in", write=True) as conn:
            conn.execute(ACKS.insert(), [row])

    # -- reading --

    def has_session(self, session_id: str) -> bool:
        with self._transaction("read") as conn:
            return self._session_ref(conn, session_id) is not None

    def acks(self) -> list[Acknowledgement]:
        """Every acknowledgement, in the order they were recorded."""
        query = sa.select(ACKS).order_by(ACKS.c.recorded_at, ACKS.c.id)
        with self._transaction("read the acknowledgements in") as conn:
            return [
                Acknowledgement(
                    key=SeriesKey(row.test_id, row.pair, row.workload_hash, row.metric),
                    session_id=row.session_id,
                    at=row.at,
                    by=row.acked_by,
                    reason=row.reason,
                    recorded_at=row.recorded_at,
                )
                for row in conn.execute(query)
            ]

    def gating_metrics(self, test_ids: Iterable[str] | None = None) -> dict[str, frozenset[str]]:
        """Per test id (of ``test_ids``, default every stored test), the summary keys of the metrics that gated
        in the test's most recent stored verdict: that of its newest session (by start) with a verdict that
        judged metrics (a NO_BASELINE or NOT_COMPARABLE verdict judges none, so says nothing about what the
        test gates). Tests without such a verdict are left out."""
        wanted = None if test_ids is None else sorted(set(test_ids))
        if wanted is not None and not wanted:
            return {}
        newest_first = sa.func.row_number().over(
            partition_by=RUNS.c.test_id,
            order_by=(SESSIONS.c.started_at.desc(), SESSIONS.c.id.desc(), RUNS.c.id.desc()),
        )
        judged = sa.and_(
            RUNS.c.verdict.is_not(None),
            sa.or_(RUNS.c.verdict_status.is_(None), RUNS.c.verdict_status.not_in(_UNJUDGED)),
        )
        chunks: list[list[str] | None] = (
            [None] if wanted is None else [wanted[i : i + _IN_CHUNK] for i in range(0, len(wanted), _IN_CHUNK)]
        )
        out: dict[str, frozenset[str]] = {}
        with self._transaction("read the verdicts in") as conn:
            for chunk in chunks:
                of_tests = [] if chunk is None else [RUNS.c.test_id.in_(chunk)]
                ranked = (
                    sa.select(RUNS.c.id, newest_first.label("rank"))
                    .join(SESSIONS, SESSIONS.c.id == RUNS.c.session_ref)
                    .where(judged, *of_tests)
                    .subquery()
                )
                latest = sa.select(ranked.c.id).where(ranked.c.rank == 1)
                # Two steps: the ranking carries ids only, and just the winners' verdicts are read.
                query = sa.select(RUNS.c.test_id, RUNS.c.verdict).where(RUNS.c.id.in_(latest))
                for test_id, text in conn.execute(query):
                    keys = _gating_keys(text)
                    if keys is not None:
                        out[test_id] = keys
        return out

    def series(
        self,
        *,
        test_pattern: str | None = None,
        metrics: Sequence[str] | None = None,
        since: datetime | None = None,
        pair: str | None = None,
    ) -> list[Series]:
        """One series per (test, pair, workload, metric), ordered by those; its points are the sessions (that
        started at or after ``since``) with a valid run measuring the metric, oldest first. ``test_pattern`` is
        an fnmatch pattern over test ids (case-sensitive)."""
        if metrics is not None and not metrics:
            return []
        of_series: list[sa.ColumnElement[bool]] = []  # which series
        if test_pattern is not None and (like := _like_prefix(test_pattern)) != "%":
            of_series.append(SERIES.c.test_id.like(like, escape="\\"))  # the exact match is fnmatch's, below
        if pair is not None:
            of_series.append(SERIES.c.pair == pair)
        if metrics is not None:
            of_series.append(SERIES.c.metric.in_(sorted(set(metrics))))
        sessions_query = sa.select(
            SESSIONS.c.id, SESSIONS.c.session_id, SESSIONS.c.started_at, SESSIONS.c.git_commit, SESSIONS.c.git_branch
        )
        chosen = POINTS.join(SERIES, SERIES.c.id == POINTS.c.series_id)
        of_points = list(of_series)  # which points
        if since is not None:
            recent = SESSIONS.c.started_at >= aware(since)
            chosen = chosen.join(SESSIONS, SESSIONS.c.id == POINTS.c.session_ref)
            of_points.append(recent)
            sessions_query = sessions_query.where(recent)
        points_query = (
            sa.select(POINTS.c.series_id, POINTS.c.session_ref, POINTS.c.value, POINTS.c.runs, POINTS.c.run_ref)
            .select_from(chosen)
            .where(*of_points)
            .order_by(POINTS.c.series_id)
        )
        runs_query = sa.select(RUNS.c.id, RUNS.c.engine_version, RUNS.c.epoch_key).where(
            RUNS.c.id.in_(sa.select(POINTS.c.run_ref).select_from(chosen).where(*of_points))
        )
        with self._transaction("read the series in") as conn:
            # Points first: the sessions, series and runs they name were committed before them, so the later
            # queries find all of them whatever the isolation level.
            points = _plain_rows(conn, points_query)
            keys = {
                row.id: SeriesKey(row.test_id, row.pair, row.workload_hash, row.metric)
                for row in conn.execute(sa.select(SERIES).where(*of_series))
                if test_pattern is None or fnmatch.fnmatchcase(row.test_id, test_pattern)
            }
            sessions = {
                row.id: (row.session_id, row.started_at, row.git_commit, row.git_branch)
                for row in conn.execute(sessions_query)
            }
            latest = {row.id: (row.engine_version, row.epoch_key) for row in conn.execute(runs_query)}
        # Oldest first: the sessions' order once, then each series' points in it.
        rank = {ref: i for i, ref in enumerate(sorted(sessions, key=lambda ref: (sessions[ref][1], sessions[ref][0])))}
        out: list[Series] = []
        for series_id, group in itertools.groupby(points, key=_first):
            key = keys.get(series_id)
            if key is None:
                continue
            found = [row for row in group if row[1] in rank]
            found.sort(key=lambda row: rank[row[1]])
            made: list[SessionPoint] = []
            for _, session_ref, value, count, run_ref in found:
                session_id, at, git_commit, git_branch = sessions[session_ref]
                engine_version, epoch_key = latest.get(run_ref, _NO_RUN)
                made.append(
                    SessionPoint(session_id, at, value, count, git_commit, git_branch, engine_version, epoch_key)
                )
            out.append(Series(key, tuple(made)))
        out.sort(key=lambda series: (series.key.test_id, series.key.pair, series.key.workload_hash, series.key.metric))
        return out

    def session_values(
        self,
        *,
        test_id: str,
        pair: str,
        workload_hash: str,
        epoch_key: str,
        metric: str,
        exclude_session: str | None = None,
        limit_sessions: int = 50,
    ) -> list[list[float]]:
        """Per stored session (the newest ``limit_sessions`` with a valid run of this test, pair, workload and
        epoch measuring the metric, but ``exclude_session``), the metric's values of those runs."""
        if limit_sessions <= 0:
            return []
        matching = sa.and_(
            RUNS.c.test_id == test_id,
            RUNS.c.pair == pair,
            RUNS.c.workload_hash == workload_hash,
            RUNS.c.epoch_key == epoch_key,
            _counted_run(),
            RUN_METRICS.c.run_id == RUNS.c.id,
            RUN_METRICS.c.name == metric,
        )
        has_value = sa.exists().where(RUNS.c.session_ref == SESSIONS.c.id, matching)
        newest = sa.select(SESSIONS.c.id).where(has_value)
        if exclude_session is not None:
            newest = newest.where(SESSIONS.c.session_id != exclude_session)
        newest = newest.order_by(SESSIONS.c.started_at.desc(), SESSIONS.c.id.desc()).limit(limit_sessions)
        chosen = [row[0] for row in self._read("read earlier sessions from", newest)]
        if not chosen:
            return []
        values = (
            sa.select(RUNS.c.session_ref, RUN_METRICS.c.value)
            .where(matching, RUNS.c.session_ref.in_(chosen))
            .order_by(RUNS.c.session_ref, RUNS.c.id)
        )
        by_session: dict[int, list[float]] = {ref: [] for ref in chosen}
        for session_ref, value in self._read("read earlier sessions from", values):
            by_session[session_ref].append(value)
        return [found for found in by_session.values() if found]

    def workloads(self, hashes: Iterable[str]) -> dict[str, dict[str, JSONValue]]:
        """The workload (its JSON form, as the latest run with it stored it) of each of these workload hashes
        that is stored."""
        wanted = sorted(set(hashes))
        out: dict[str, dict[str, JSONValue]] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            latest = (
                sa.select(sa.func.max(RUNS.c.id))
                .where(RUNS.c.workload_hash.in_(wanted[start : start + _IN_CHUNK]))
                .group_by(RUNS.c.workload_hash)
            )
            query = sa.select(RUNS.c.workload_hash, RUNS.c.workload).where(RUNS.c.id.in_(latest))
            for workload_hash, text in self._read("read workloads from", query):
                workload = json.loads(text)
                out[workload_hash] = workload if isinstance(workload, dict) else {}
        return out

    # -- internals --

    def _read(self, doing: str, query: sa.Select[Any]) -> list[tuple[Any, ...]]:
        with self._transaction(doing) as conn:
            return [tuple(row) for row in conn.execute(query)]

    @staticmethod
    def _session_ref(conn: Connection, session_id: str) -> int | None:
        found: int | None = conn.execute(
            sa.select(SESSIONS.c.id).where(SESSIONS.c.session_id == session_id)
        ).scalar_one_or_none()
        return found

    @contextmanager
    def _transaction(self, doing: str, *, write: bool = False) -> Iterator[Connection]:
        """A connection in a transaction, committed when the block ends; every database error a HistoryError
        saying what was being done. ``write``: on SQLite, take the write lock at the start; refused when the
        database was opened to read. A reader's transactions are read-only on PostgreSQL."""
        if self._engine is None:
            raise HistoryError(f"history database {self._shown}: cannot {doing} it: it is closed")
        if write and not self._write:
            raise HistoryError(
                f"history database {self._shown}: cannot {doing} it: it was opened to read (write=False)"
            )
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(llmperf_write=True)
                elif not self._write and conn.dialect.name == "postgresql":
                    conn.execution_options(postgresql_readonly=True)
                with conn.begin():
                    yield conn
        except sa_exc.SQLAlchemyError as exc:
            raise HistoryError(self._explain(f"cannot {doing} it", exc)) from exc

    def _prepare(self) -> int:
        """The schema version, checked; a writer also creates or migrates the schema and checks that the
        database takes writes, all in one transaction."""
        if not self._write:
            with self._transaction("open") as conn:
                return schema.check_version(conn, self._shown)
        with self._transaction("open", write=True) as conn:
            version = schema.create_or_migrate(conn, self._shown)
            # The write probe: a row in, and out again.
            probe = f"write_probe:{uuid.uuid4().hex}"
            conn.execute(META.insert(), [{"key": probe[:64], "value": "1"}])
            conn.execute(META.delete().where(META.c.key == probe[:64]))
        return version

    def _explain(self, what: str, exc: BaseException) -> str:
        return explain(self._shown, self._secrets, what, exc, write=self._write, busy_s=SQLITE_BUSY_S)


# --- writing helpers -------------------------------------------------------------------------------------------


class _RunFigures:
    """A counted run's figures, for the points of its session."""

    __slots__ = ("metrics", "pair", "run_id", "test_id", "workload_hash")

    def __init__(self, run_id: int, test_id: str, pair: str, workload_hash: str, metrics: Mapping[str, float]) -> None:
        self.run_id = run_id
        self.test_id = test_id
        self.pair = pair
        self.workload_hash = workload_hash
        self.metrics = metrics if isinstance(metrics, dict) else dict(metrics)


def _counted_run() -> sa.ColumnElement[bool]:
    """The runs series and spreads are made of: valid runs of the server under test."""
    return sa.and_(RUNS.c.valid.is_(True), RUNS.c.side != _OTHER_SIDE)


def _write_points(conn: Connection, session_ref: int, runs: Sequence[_RunFigures]) -> None:
    """One point per (test, pair, workload, metric) of the session: the median of ``runs``' values, their count
    and the latest run (``runs`` in the order they were measured)."""
    values: dict[tuple[str, str, str, str], list[float]] = {}
    latest: dict[tuple[str, str, str, str], int] = {}
    for run in runs:
        for name, value in run.metrics.items():
            if not _finite(value):
                continue
            key = (run.test_id, run.pair, run.workload_hash, name)
            found = values.get(key)
            if found is None:
                values[key] = [float(value)]
            else:
                found.append(float(value))
            latest[key] = run.run_id
    if not values:
        return
    ids = _series_ids(conn, set(values))
    rows = [(ids[key], session_ref, statistics.median(found), len(found), latest[key]) for key, found in values.items()]
    _insert_many(conn, POINTS, ("series_id", "session_ref", "value", "runs", "run_ref"), rows)


def _insert_many(conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert plain rows (numbers and text, no conversion): with COPY on PostgreSQL through psycopg (a session's
    tens of thousands of figures in a tenth of the time an executemany takes), else an executemany."""
    if not rows:
        return
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        # The driver's own connection, inside the transaction SQLAlchemy began on it.
        driver_connection = conn.connection.driver_connection
        assert driver_connection is not None
        statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        with driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
        return
    conn.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])


def _series_ids(conn: Connection, keys: set[tuple[str, str, str, str]]) -> dict[tuple[str, str, str, str], int]:
    """The ids of these series, adding those not stored yet."""
    tests = sorted({key[0] for key in keys})

    def stored() -> dict[tuple[str, str, str, str], int]:
        found: dict[tuple[str, str, str, str], int] = {}
        for start in range(0, len(tests), _IN_CHUNK):
            query = sa.select(SERIES).where(SERIES.c.test_id.in_(tests[start : start + _IN_CHUNK]))
            for row in conn.execute(query):
                found[(row.test_id, row.pair, row.workload_hash, row.metric)] = row.id
        return found

    ids = stored()
    missing = [key for key in keys if key not in ids]
    if missing:
        rows = [{"test_id": t, "pair": p, "workload_hash": w, "metric": m} for t, p, w, m in sorted(missing)]
        if conn.dialect.name == "postgresql":
            # Another session may add the same series now: its row wins, ours is skipped, and the reread finds it.
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(SERIES).on_conflict_do_nothing(), rows)
        else:
            conn.execute(SERIES.insert(), rows)  # SQLite: this transaction holds the write lock
        ids = stored()
    return ids


def _insert_runs(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert runs; their ids in order."""
    if not rows:
        return []
    if conn.dialect.insert_executemany_returning_sort_by_parameter_order:
        result = conn.execute(RUNS.insert().returning(RUNS.c.id, sort_by_parameter_order=True), rows)
        return [int(row[0]) for row in result]
    # SQLite before 3.35 has no RETURNING.
    ids: list[int] = []
    for row in rows:
        primary_key = conn.execute(RUNS.insert(), [row]).inserted_primary_key
        assert primary_key is not None
        ids.append(int(primary_key[0]))
    return ids


def _session_row(session: SessionRecord) -> dict[str, Any]:
    return {
        "session_id": session.session_id,
        "started_at": session.started_at,
        "ended_at": session.ended_at,
        "pair": session.pair,
        "plugin_version": session.plugin_version,
        "git_commit": session.git_commit,
        "git_branch": session.git_branch,
        "ci_provider": session.ci.provider if session.ci else None,
        "ci_run_id": session.ci.run_id if session.ci else None,
        "ci_url": session.ci.url if session.ci else None,
        "source": session.source,
    }


def _run_row(session_ref: int, run: RunRecord) -> dict[str, Any]:
    return {
        "session_ref": session_ref,
        "test_id": run.test_id,
        "run_index": run.run_index,
        "side": run.side,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "pair": run.pair,
        "hardware": run.hardware,
        "precision": run.precision,
        "model": run.model,
        "workload_hash": run.workload_hash,
        "workload": _json(dict(run.workload)),
        "engine": run.engine,
        "engine_version": run.engine_version,
        "server_command_hash": run.server_command_hash,
        "plugin_version": run.plugin_version,
        "epoch_key": run.epoch_key,
        "compat_mode": run.compat_mode,
        "valid": run.valid,
        "outcome": run.outcome,
        "verdict_status": run.verdict_status,
        "verdict": None if run.verdict is None else _json(dict(run.verdict)),
        "slos": _json([dict(slo) for slo in run.slos]) if run.slos else None,
    }


def _json(value: object) -> str:
    """Compact JSON; a number that is not finite (which JSON cannot hold) as null."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite_json(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _finite_json(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_json(item) for item in value]
    return value


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _first(row: Sequence[Any]) -> Any:
    return row[0]


def _plain_rows(conn: Connection, query: sa.Select[Any]) -> list[tuple[Any, ...]]:
    """The rows of a query whose columns need no conversion (numbers), as the driver returns them: without
    SQLAlchemy's row objects, a third of the time of a large read."""
    result = conn.execute(query)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


def _like_prefix(pattern: str) -> str:
    """An SQL LIKE pattern (escape ``\\``) matching at least what the fnmatch ``pattern`` matches: ``*`` and
    ``?`` translated, and from the first ``[`` on anything (the exact match is fnmatch's, in Python)."""
    out: list[str] = []
    for ch in pattern:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch == "[":
            out.append("%")
            break
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    like = "".join(out)
    return "%" if set(like) == {"%"} else like


def _gating_keys(text: str | None) -> frozenset[str] | None:
    """The summary keys of a stored verdict's gating metrics; None when it lists no metrics (or is damaged)."""
    try:
        verdict = json.loads(text) if text else None
    except ValueError:
        return None
    metrics = verdict.get("metrics") if isinstance(verdict, dict) else None
    if not isinstance(metrics, list) or not metrics:
        return None
    return frozenset(
        str(m["key"])
        for m in metrics
        if isinstance(m, dict) and m.get("gating") is True and isinstance(m.get("key"), str)
    )


# --- connecting ------------------------------------------------------------------------------------------------


def _sqlite_writer_url(url: URL, shown: str) -> URL:
    """A writer's SQLite URL, as given; the file's directory is created."""
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    try:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoryError(
            f"history database {shown}: cannot create its directory ({exc.strerror or exc}); "
            "point --llmperf-history at a writable place"
        ) from None
    return url


def _sqlite_reader_url(url: URL, shown: str) -> URL:
    """A reader's SQLite URL: the file, which must exist, as an SQLite URI with ``mode=rw`` (opened for reading
    and writing as a writer's connection would be, so that closing the last connection tidies the WAL files away,
    but never created); a URI the URL gives already gets ``mode=rw`` unless it names a mode."""
    database = url.database or ""
    if not database or database == ":memory:":
        return url  # an empty database in memory: the schema check refuses it
    if database.startswith("file:"):
        return url if "mode" in url.query else url.update_query_dict({"mode": "rw", "uri": "true"})
    path = Path(database)
    if not path.is_file():
        raise HistoryError(
            f"no history database at {shown}: run pytest with --llmperf-history first, or give --db"
            + (" (it names a directory)" if path.is_dir() else "")
        )
    # The URI's path is percent-encoded: a file name may hold "?", "#" or "%".
    uri = "file:" + quote(path.absolute().as_posix(), safe="/")
    return url.set(database=uri, query={"mode": "rw", "uri": "true"})


def _create_engine(url: URL, shown: str, hidden: Sequence[str], *, write: bool) -> Engine:
    try:
        if url.get_backend_name() == "sqlite":
            engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_S})
            sa.event.listen(engine, "connect", _sqlite_writer_connect if write else _sqlite_reader_connect)
            sa.event.listen(engine, "begin", _sqlite_begin)
            return engine
        return sa.create_engine(
            url,
            pool_pre_ping=True,  # a session can run for hours between opening and appending
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "pytest-llmperf"},
        )
    except (sa_exc.SQLAlchemyError, ImportError) as exc:
        raise HistoryError(
            f"history database {shown}: cannot use its driver ({first_line(str(exc), hidden)}); "
            "install pytest-llmperf[history] or use " + URL_FORMS
        ) from None


def _sqlite_writer_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Transactions are begun by _sqlite_begin, not by the sqlite3 module (whose implicit BEGIN SQLAlchemy
    # documents as broken for this).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL: readers never wait for the writer, and a crash cannot damage the file; NORMAL is durable with WAL
        # up to the last transactions before a power loss.
        _wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_reader_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # As a writer's, without the switch to WAL (a write; the writer that created the file made it); query_only
    # makes every statement that would change the database fail.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_S * 1000)}")
        cursor.execute("PRAGMA query_only = ON")
    finally:
        cursor.close()


def _wal(cursor: Any) -> None:
    """Switch the database to WAL (a lasting property of the file, so once). The switch needs the database to
    itself and SQLite does not wait for that (no busy timeout): when several processes open a new database at
    once, the others' connections make it fail with "database is locked", so it is retried."""
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_begin(conn: Connection) -> None:
    # A writer takes the write lock at once: two writers never both read, then both want to write (which
    # SQLite resolves by failing one at once, busy timeout or not).
    write = conn.get_execution_options().get("llmperf_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
