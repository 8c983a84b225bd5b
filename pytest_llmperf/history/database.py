"""The history database: every session's runs, one row per run, in SQLite (the default, one file per project) or
PostgreSQL (shared by a team), through SQLAlchemy Core.

Tables (all named ``llmperf_*``, so a shared database can hold other things too):

    llmperf_meta          key → value; ``schema_version``
    llmperf_sessions      one row per pytest session (or imported document)
    llmperf_runs          one row per measured run, with its workload, verdict and SLO checks as JSON text
    llmperf_run_metrics   the runs' figures in long form: (run_id, name, value), what a Grafana panel reads
    llmperf_series        one row per series: (test_id, pair, workload_hash, metric)
    llmperf_points        one row per series and session: the median of the session's valid runs, their count
                          and the latest of them; written with the runs, so that :meth:`HistoryDatabase.series`
                          reads one row per session instead of grouping every run's figures
    llmperf_acks          ``history ack``: known changes

Which runs make a point: the valid ones (``valid``) of the server under test, i.e. every side but ``"B"`` (the
build A/B mode compares with it: its runs are stored, but a series follows one server).
:meth:`HistoryDatabase.session_values` reads the same runs.

Every database problem is a :class:`~pytest_llmperf.errors.HistoryError` naming the database with its password
hidden and saying what to do. :meth:`HistoryDatabase.open` connects, creates or migrates the schema and checks
that the database is writable, so that a wrong URL, an unreachable server, a read-only or damaged file or a
database written by a newer release fails there, at the start of a session, not after its measurements.

Concurrency: SQLite runs in WAL mode with a 30 s busy timeout and takes its write lock at the start of every
writing transaction (``BEGIN IMMEDIATE``), so sessions of several processes append one after the other; on
PostgreSQL a unique session id and ``ON CONFLICT DO NOTHING`` for new series do the same, and an advisory lock
serialises schema migrations.
"""

from __future__ import annotations

import fnmatch
import gc
import itertools
import json
import math
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url

from pytest_llmperf.errors import HistoryError
from pytest_llmperf.history.model import Acknowledgement, RunRecord, Series, SeriesKey, SessionPoint, SessionRecord
from pytest_llmperf.results import JSONValue

__all__ = ["SCHEMA_VERSION", "HistoryDatabase", "default_url", "display_url"]

SCHEMA_VERSION: Final = 2
URL_FORMS: Final = "sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
# How long SQLite waits for another process's write lock, and PostgreSQL for a connection.
SQLITE_BUSY_S: Final = 30
CONNECT_TIMEOUT_S: Final = 5
# The side whose runs are not the server under test (A/B mode's other build).
_OTHER_SIDE: Final = "B"
# pg_advisory_xact_lock key serialising schema changes ("llmperf" in ASCII).
_MIGRATION_LOCK: Final = 0x6C6C6D70657266
_IN_CHUNK: Final = 500  # values per SQL IN list
_UTC = timezone.utc
_NO_RUN: Final[tuple[str | None, str]] = (None, "")  # a point's engine version and epoch key when its run is not found


# --- schema ----------------------------------------------------------------------------------------------------


class _UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime: ``timestamptz`` on PostgreSQL; on SQLite SQLAlchemy's fixed-width ISO text
    of the UTC time (which sorts and compares as the times do). Read back as aware UTC on both."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = _aware(value).astimezone(_UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)


# 64-bit ids on PostgreSQL; on SQLite INTEGER PRIMARY KEY, the rowid (64-bit there anyway).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

METADATA = sa.MetaData()

META = sa.Table(
    "llmperf_meta",
    METADATA,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

SESSIONS = sa.Table(
    "llmperf_sessions",
    METADATA,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.Text, nullable=False),
    sa.Column("started_at", _UtcDateTime, nullable=False),
    sa.Column("ended_at", _UtcDateTime, nullable=False),
    sa.Column("pair", sa.Text, nullable=False),
    sa.Column("plugin_version", sa.Text),
    sa.Column("git_commit", sa.Text),
    sa.Column("git_branch", sa.Text),
    sa.Column("ci_provider", sa.Text),
    sa.Column("ci_run_id", sa.Text),
    sa.Column("ci_url", sa.Text),
    sa.Column("source", sa.Text, nullable=False),
    sa.UniqueConstraint("session_id", name="llmperf_sessions_session_id"),
    sa.Index("llmperf_sessions_started_at", "started_at"),
)

RUNS = sa.Table(
    "llmperf_runs",
    METADATA,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("session_ref", _ID, sa.ForeignKey("llmperf_sessions.id", ondelete="CASCADE"), nullable=False),
    sa.Column("test_id", sa.Text, nullable=False),
    sa.Column("run_index", sa.Integer, nullable=False),
    sa.Column("side", sa.Text, nullable=False),
    sa.Column("started_at", _UtcDateTime),
    sa.Column("ended_at", _UtcDateTime),
    sa.Column("pair", sa.Text, nullable=False),
    sa.Column("hardware", sa.Text, nullable=False),
    sa.Column("precision", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("workload_hash", sa.Text, nullable=False),
    sa.Column("workload", sa.Text, nullable=False),  # JSON
    sa.Column("engine", sa.Text),
    sa.Column("engine_version", sa.Text),
    sa.Column("server_command_hash", sa.Text),
    sa.Column("plugin_version", sa.Text),
    sa.Column("epoch_key", sa.Text, nullable=False),
    sa.Column("compat_mode", sa.Text, nullable=False),
    sa.Column("valid", sa.Boolean, nullable=False),
    sa.Column("outcome", sa.Text),
    sa.Column("verdict_status", sa.Text),
    sa.Column("verdict", sa.Text),  # JSON, NULL without a verdict
    sa.Column("slos", sa.Text),  # JSON list, NULL without SLO checks
    # A session's runs of one test (joins, and session_values' "has this session a run" probe) ...
    sa.Index("llmperf_runs_session", "session_ref", "test_id"),
    # ... and one test's runs on one pair, workload and epoch in one session (session_values: whether a session
    # has one is a single lookup, so the newest sessions are found by walking them newest first).
    sa.Index("llmperf_runs_key", "test_id", "pair", "workload_hash", "epoch_key", "session_ref"),
    sa.Index("llmperf_runs_workload", "workload_hash"),  # workloads()
)

RUN_METRICS = sa.Table(
    "llmperf_run_metrics",
    METADATA,
    sa.Column("run_id", _ID, sa.ForeignKey("llmperf_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Double, nullable=False),
    sqlite_with_rowid=False,  # stored in (run_id, name) order: a run's figures are one read
)

ACKS = sa.Table(
    "llmperf_acks",
    METADATA,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("test_pattern", sa.Text, nullable=False),
    sa.Column("metric", sa.Text),  # NULL: every metric
    sa.Column("until", _UtcDateTime, nullable=False),
    sa.Column("acked_by", sa.Text),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("recorded_at", _UtcDateTime, nullable=False),
)

# --- added in version 2 ---

SERIES = sa.Table(
    "llmperf_series",
    METADATA,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("test_id", sa.Text, nullable=False),
    sa.Column("pair", sa.Text, nullable=False),
    sa.Column("workload_hash", sa.Text, nullable=False),
    sa.Column("metric", sa.Text, nullable=False),
    sa.UniqueConstraint("test_id", "pair", "workload_hash", "metric", name="llmperf_series_key"),
)

POINTS = sa.Table(
    "llmperf_points",
    METADATA,
    sa.Column("series_id", _ID, sa.ForeignKey("llmperf_series.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("session_ref", _ID, sa.ForeignKey("llmperf_sessions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("value", sa.Double, nullable=False),  # the median of the session's valid runs
    sa.Column("runs", sa.Integer, nullable=False),  # how many
    # The latest of those runs (its engine version and epoch key). No foreign key: a point goes with its
    # session (the cascade above), and a key here would make every deletion of runs scan this table.
    sa.Column("run_ref", _ID, nullable=False),
    sa.Index("llmperf_points_session", "session_ref"),
    sqlite_with_rowid=False,  # stored in (series_id, session_ref) order: a series is one read
)


# --- migrations ------------------------------------------------------------------------------------------------


def _v1_to_v2(conn: Connection) -> None:
    """Version 2 keeps each session's median per series (``llmperf_series``, ``llmperf_points``), written with
    the runs; version 1 had only the runs' figures, which ``series()`` read and grouped on every call (one row
    per run and metric, 5× the rows at 5 runs a session, and a median per group in Python): 6.6 s against 1.8 s
    for every metric of 10,000 sessions on SQLite, 9.7 s against 2.7 s on PostgreSQL
    (``benchmarks/results/history_write.md``). Fills both tables from the stored runs, session by session
    (≈15 s for those 10,000 sessions).

    The tables' version-2 form is the current one; a later version that changes them must freeze it here."""
    SERIES.create(conn)
    POINTS.create(conn)
    session_refs = list(conn.scalars(sa.select(SESSIONS.c.id).order_by(SESSIONS.c.id)))
    for start in range(0, len(session_refs), 200):
        chunk = session_refs[start : start + 200]
        query = (
            sa.select(RUNS.c.session_ref, RUNS.c.id, RUNS.c.test_id, RUNS.c.pair, RUNS.c.workload_hash)
            .add_columns(RUN_METRICS.c.name, RUN_METRICS.c.value)
            .join(RUN_METRICS, RUN_METRICS.c.run_id == RUNS.c.id)
            .where(RUNS.c.session_ref.in_(chunk), _counted_run())
            .order_by(RUNS.c.session_ref, RUNS.c.id)
        )
        by_session: dict[int, dict[int, _RunFigures]] = {}
        for session_ref, run_id, test_id, pair, workload_hash, name, value in conn.execute(query):
            runs = by_session.setdefault(session_ref, {})
            run = runs.get(run_id)
            if run is None:
                run = runs[run_id] = _RunFigures(run_id, test_id, pair, workload_hash, {})
            run.metrics[name] = value
        for session_ref, runs in by_session.items():
            _write_points(conn, session_ref, list(runs.values()))


# MIGRATIONS[n - 1] takes a database from version n to n + 1, inside the one transaction of ``open``.
MIGRATIONS: Final[tuple[Callable[[Connection], None], ...]] = (_v1_to_v2,)
assert len(MIGRATIONS) == SCHEMA_VERSION - 1


# --- URLs ------------------------------------------------------------------------------------------------------


def default_url(rootdir: Path) -> str:
    """``sqlite:///<rootdir>/.llmperf/history.db``."""
    return f"sqlite:///{(rootdir / '.llmperf' / 'history.db').as_posix()}"


def display_url(url: str) -> str:
    """``url`` with its password (and any secret in its query) shown as ``***``; a HistoryError, that does not
    repeat it, when it is malformed."""
    parsed = _parse(url)
    if not _secrets(parsed):
        return url.strip()
    hidden = {key: "***" for key in parsed.query if _secret_key(key)}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


def _parse(url: str) -> URL:
    try:
        return make_url(url.strip())
    except (sa_exc.ArgumentError, ValueError, TypeError):
        # The message SQLAlchemy gives repeats the string, password and all.
        raise HistoryError(
            f"the history database URL is not a database URL: expected {URL_FORMS} (--llmperf-history)"
        ) from None


def _secret_key(key: str) -> bool:
    """A query parameter that holds a secret (libpq takes ``password`` there too)."""
    return any(word in key.lower() for word in ("password", "secret", "token"))


def _secrets(url: URL) -> list[str]:
    """The secrets in a URL, to keep out of every message."""
    found = [url.password] if url.password else []
    for key, value in url.query.items():
        if _secret_key(key):
            found += [value] if isinstance(value, str) else list(value)
    return [secret for secret in found if secret]


def _with_driver(url: URL, shown: str) -> URL:
    """The dialects this module knows, with psycopg 3 for PostgreSQL unless another driver is named."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url
    if backend in ("postgresql", "postgres"):
        driver = url.get_driver_name() if "+" in url.drivername else "psycopg"
        return url.set(drivername=f"postgresql+{driver}")
    raise HistoryError(f"history database {shown}: {backend!r} databases are not supported; use {URL_FORMS}")


# --- the database ----------------------------------------------------------------------------------------------


class HistoryDatabase:
    """An open history database. Use :meth:`open`; close it (or use it as a context manager) when done."""

    def __init__(self, engine: Engine, shown: str, secrets: Sequence[str]) -> None:
        self._engine: Engine | None = engine
        self._shown = shown
        self._secrets = tuple(secrets)
        self._version = 0

    # -- opening and closing --

    @classmethod
    def open(cls, url: str) -> HistoryDatabase:
        """Connect, create or migrate the schema, and check that the database takes writes."""
        shown = display_url(url)
        parsed = _with_driver(_parse(url), shown)
        if parsed.get_backend_name() == "sqlite":
            _make_parent(parsed, shown)
        db = cls(_create_engine(parsed, shown), shown, _secrets(parsed))
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
        return f"HistoryDatabase({self._shown!r}, schema_version={self._version})"

    @property
    def schema_version(self) -> int:
        return self._version

    @property
    def url_for_display(self) -> str:
        return self._shown

    # -- writing --

    def append(self, session: SessionRecord, runs: Sequence[RunRecord]) -> int:
        """Store a session and its runs in one transaction; the number of runs written, 0 when a session with
        this id is stored already (so importing a document twice adds nothing)."""
        _aware(session.started_at)
        _aware(session.ended_at)
        for run in runs:
            if run.session_id != session.session_id:
                raise ValueError(f"run {run.test_id}#{run.run_index} belongs to session {run.session_id!r}")
            for when in (run.started_at, run.ended_at):
                if when is not None:
                    _aware(when)
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
        row = {
            "test_pattern": ack.test_pattern,
            "metric": ack.metric,
            "until": _aware(ack.until),
            "acked_by": ack.by,
            "reason": ack.reason,
            "recorded_at": _aware(ack.recorded_at),
        }
        with self._transaction("record an acknowledgement in", write=True) as conn:
            conn.execute(ACKS.insert(), [row])

    # -- reading --

    def has_session(self, session_id: str) -> bool:
        with self._transaction("read") as conn:
            return self._session_ref(conn, session_id) is not None

    def acks(self) -> list[Acknowledgement]:
        query = sa.select(ACKS).order_by(ACKS.c.recorded_at, ACKS.c.id)
        with self._transaction("read the acknowledgements in") as conn:
            return [
                Acknowledgement(
                    test_pattern=row.test_pattern,
                    metric=row.metric,
                    until=row.until,
                    by=row.acked_by,
                    reason=row.reason,
                    recorded_at=row.recorded_at,
                )
                for row in conn.execute(query)
            ]

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
            recent = SESSIONS.c.started_at >= _aware(since)
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
        with _no_gc():  # hundreds of thousands of new objects, none in a cycle
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
        saying what was being done. ``write``: on SQLite, take the write lock at the start."""
        if self._engine is None:
            raise HistoryError(f"history database {self._shown}: cannot {doing} it: it is closed")
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(llmperf_write=True)
                with conn.begin():
                    yield conn
        except sa_exc.SQLAlchemyError as exc:
            raise HistoryError(self._explain(f"cannot {doing} it", exc)) from exc

    def _prepare(self) -> int:
        """Create or migrate the schema and check the database takes writes, in one transaction; the version."""
        with self._transaction("open", write=True) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            version = self._migrate(conn)
            # The write probe: a row in, and out again.
            probe = f"write_probe:{uuid.uuid4().hex}"
            conn.execute(META.insert(), [{"key": probe[:64], "value": "1"}])
            conn.execute(META.delete().where(META.c.key == probe[:64]))
        return version

    def _migrate(self, conn: Connection) -> int:
        if not sa.inspect(conn).has_table(META.name):
            METADATA.create_all(conn)
            conn.execute(META.insert(), [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
            return SCHEMA_VERSION
        stamp = conn.execute(sa.select(META.c.value).where(META.c.key == "schema_version")).scalar_one_or_none()
        try:
            version = int(stamp) if stamp is not None else 0
        except ValueError:
            version = 0
        if version < 1:
            raise HistoryError(
                f"history database {self._shown}: its {META.name} table has no schema version: it is not a "
                "pytest-llmperf history (or was damaged); use another database"
            )
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"history database {self._shown}: it was written by a newer pytest-llmperf (schema version "
                f"{version}; this one knows up to {SCHEMA_VERSION}); upgrade pytest-llmperf or use another database"
            )
        for step in MIGRATIONS[version - 1 :]:
            step(conn)
        if version < SCHEMA_VERSION:
            conn.execute(META.update().where(META.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
        return SCHEMA_VERSION

    def _explain(self, what: str, exc: BaseException) -> str:
        return _explain(self._shown, self._secrets, what, exc)


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
    rows = [(ids[key], session_ref, _median(found), len(found), latest[key]) for key, found in values.items()]
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


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


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


@contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{when.isoformat()} has no time zone: the history stores timezone-aware times")
    return when


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


# --- connecting ------------------------------------------------------------------------------------------------


def _make_parent(url: URL, shown: str) -> None:
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoryError(
            f"history database {shown}: cannot create its directory ({exc.strerror or exc}); "
            "point --llmperf-history at a writable place"
        ) from None


def _create_engine(url: URL, shown: str) -> Engine:
    try:
        if url.get_backend_name() == "sqlite":
            engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_S})
            sa.event.listen(engine, "connect", _sqlite_connect)
            sa.event.listen(engine, "begin", _sqlite_begin)
            return engine
        return sa.create_engine(
            url,
            pool_pre_ping=True,  # a session can run for hours between opening and appending
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "pytest-llmperf"},
        )
    except (sa_exc.SQLAlchemyError, ImportError) as exc:
        raise HistoryError(
            f"history database {shown}: cannot use its driver ({_first_line(str(exc), _secrets(url))}); "
            "install pytest-llmperf[history] or use " + URL_FORMS
        ) from None


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
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


# --- error messages --------------------------------------------------------------------------------------------


def _first_line(text: str, secrets: Sequence[str]) -> str:
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    for secret in secrets:
        line = line.replace(secret, "***")
    return line


def _explain(shown: str, secrets: Sequence[str], what: str, exc: BaseException) -> str:
    """``history database URL: what (the driver's words); what to do``."""
    orig = getattr(exc, "orig", None) or exc
    said = _first_line(str(orig), secrets)
    lowered = said.lower()
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if "not a database" in lowered or "malformed" in lowered or "file is encrypted" in lowered:
        advice = "it is not an SQLite database or is damaged: point --llmperf-history at another file, or move it away"
    elif "readonly" in lowered or "read-only" in lowered or sqlstate == "25006":
        advice = "it is read-only: make it writable or point --llmperf-history at another database"
    elif "unable to open" in lowered:
        advice = "check that the path names a file in a directory this user may write"
    elif "locked" in lowered or "busy" in lowered:
        advice = f"another process held it for more than {SQLITE_BUSY_S} s: try again, or use another database"
    elif sqlstate == "42501":
        advice = "this user may not write to it: grant it CREATE and INSERT, or use another database"
    elif sqlstate.startswith("28") or "authentication" in lowered or "password" in lowered:
        advice = "check the user name and password in the URL"
    elif sqlstate == "3D000" or ("database" in lowered and "does not exist" in lowered):
        advice = "create the database first (createdb), or name an existing one"
    elif isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or sqlstate.startswith("08"):
        advice = "check that the server runs and is reachable at that host and port, and the URL's credentials"
    else:
        advice = f"check --llmperf-history ({URL_FORMS})"
    return f"history database {shown}: {what}" + (f" ({said})" if said else "") + f"; {advice}"
