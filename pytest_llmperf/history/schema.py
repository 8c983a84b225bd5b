"""The history database's tables and their versions: the schema a writer creates, the ordered steps that take
an older database to the current version, and the checks that refuse what this release cannot read.

Tables (all named ``llmperf_*``, so a shared database can hold other things too):

    llmperf_meta          key → value; ``schema_version``
    llmperf_sessions      one row per pytest session (or imported document)
    llmperf_runs          one row per measured run, with its workload, verdict and SLO checks as JSON text
    llmperf_run_metrics   the runs' figures in long form: (run_id, name, value), what a Grafana panel reads
    llmperf_series        one row per series: (test_id, pair, workload_hash, metric)
    llmperf_points        one row per series and session: the median of the session's valid runs, their count
                          and the latest of them; written with the runs, so that reading a series is one row per
                          session instead of grouping every run's figures
    llmperf_acks          ``history ack``: one row per acknowledged change (its series and first session after it)

Versions: :data:`SCHEMA_VERSION` is the one this release writes; a database stamped with an older one is taken to
it by :data:`MIGRATIONS`, one step per version, all in the one transaction of a writer's open (so a failed step
leaves the database as it was). Readers never migrate: they refuse a database of another version.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from pytest_llmperf.errors import HistoryError

__all__ = [
    "ACKS",
    "META",
    "METADATA",
    "MIGRATIONS",
    "POINTS",
    "RUNS",
    "RUN_METRICS",
    "SCHEMA_VERSION",
    "SERIES",
    "SESSIONS",
    "aware",
    "check_version",
    "create_or_migrate",
]

# The version this release creates and reads. A change to the tables adds a step to MIGRATIONS and raises it.
SCHEMA_VERSION: Final = 1
# pg_advisory_xact_lock key serialising schema changes ("llmperf" in ASCII).
_MIGRATION_LOCK: Final = 0x6C6C6D70657266
_UTC = timezone.utc


def aware(when: datetime) -> datetime:
    """``when``, checked to carry a time zone."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{when.isoformat()} has no time zone: the history stores timezone-aware times")
    return when


# --- tables ----------------------------------------------------------------------------------------------------


class _UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime: ``timestamptz`` on PostgreSQL; on SQLite SQLAlchemy's fixed-width ISO text
    of the UTC time (which sorts and compares as the times do). Read back as aware UTC on both."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = aware(value).astimezone(_UTC)
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


ACKS = sa.Table(
    "llmperf_acks",
    METADATA,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    # The change: its series ...
    sa.Column("test_id", sa.Text, nullable=False),
    sa.Column("pair", sa.Text, nullable=False),
    sa.Column("workload_hash", sa.Text, nullable=False),
    sa.Column("metric", sa.Text, nullable=False),
    # ... and the first session after it (its id and start), as found when it was acknowledged.
    sa.Column("session_id", sa.Text, nullable=False),
    sa.Column("at", _UtcDateTime, nullable=False),
    sa.Column("acked_by", sa.Text),  # not "by", an SQL keyword: hand-written SQL need not quote it
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("recorded_at", _UtcDateTime, nullable=False),
)


# --- versions --------------------------------------------------------------------------------------------------

# MIGRATIONS[n - 1] takes a database from version n to n + 1, inside the one transaction of a writer's open. A
# step works on the tables as they were at version n + 1 (frozen in the step, not the objects above, which
# follow the newest version).
MIGRATIONS: tuple[Callable[[Connection], None], ...] = ()
assert len(MIGRATIONS) == SCHEMA_VERSION - 1


def create_or_migrate(conn: Connection, shown: str) -> int:
    """A writer's open: create the tables in a database without them, or take an older schema to the current
    one; the version. Refuses a schema this release does not know. ``shown``: the URL for messages."""
    if conn.dialect.name == "postgresql":
        # Writers opening at once (xdist, parallel CI jobs) create or migrate one after the other.
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
    version = _stored_version(conn, shown)
    if version is None:
        METADATA.create_all(conn)
        conn.execute(META.insert(), [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
        return SCHEMA_VERSION
    _refuse_newer(version, shown)
    for step in MIGRATIONS[version - 1 :]:
        step(conn)
    if version < SCHEMA_VERSION:
        conn.execute(META.update().where(META.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
    return SCHEMA_VERSION


def check_version(conn: Connection, shown: str) -> int:
    """A reader's open: the database must hold a history of the current version; the version."""
    version = _stored_version(conn, shown)
    if version is None:
        raise HistoryError(
            f"history database {shown}: not a pytest-llmperf history database (it has no {META.name} table): "
            "name the database pytest --llmperf-history writes (--db), or run pytest with --llmperf-history first"
        )
    _refuse_newer(version, shown)
    if version < SCHEMA_VERSION:
        raise HistoryError(
            f"history database {shown}: its schema is version {version}, older than this pytest-llmperf's "
            f"{SCHEMA_VERSION}: open it once with pytest --llmperf-history (or `python -m pytest_llmperf.history "
            "import`) to migrate it"
        )
    return version


def _stored_version(conn: Connection, shown: str) -> int | None:
    """The schema version stamped in the database; None without the history's tables."""
    if not sa.inspect(conn).has_table(META.name):
        return None
    stamp = conn.execute(sa.select(META.c.value).where(META.c.key == "schema_version")).scalar_one_or_none()
    try:
        version = int(stamp) if stamp is not None else 0
    except ValueError:
        version = 0
    if version < 1:
        raise HistoryError(
            f"history database {shown}: its {META.name} table has no schema version: it is not a "
            "pytest-llmperf history (or was damaged); use another database"
        )
    return version


def _refuse_newer(version: int, shown: str) -> None:
    if version > SCHEMA_VERSION:
        raise HistoryError(
            f"history database {shown}: it was written by a newer pytest-llmperf (schema version "
            f"{version}; this one knows up to {SCHEMA_VERSION}); upgrade pytest-llmperf or use another database"
        )
