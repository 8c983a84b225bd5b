"""The history database (history/database.py, schema.py, urls.py) on SQLite and on a real PostgreSQL server:
what goes in comes back (medians per session with known answers, filters, acknowledgements, the gating metrics of
the latest verdicts, times as aware UTC), concurrent sessions of several processes, opening to read (which writes
nothing, creates nothing and refuses what it cannot read), the migration machinery with a step the test adds,
and every way opening can fail, each with one clear message that never shows a password. The write and read
speeds are measured by ``benchmarks/history_write.py``."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pytest_llmperf.errors import HistoryError
from pytest_llmperf.history import database, schema
from pytest_llmperf.history.database import SCHEMA_VERSION, HistoryDatabase, default_url, display_url
from pytest_llmperf.history.model import Acknowledgement, CiRun, RunRecord, SeriesKey, SessionRecord

T0 = datetime(2026, 1, 5, 2, 30, tzinfo=timezone.utc)
TEST = "perf/test_serve.py::test_decode[sim]"
OTHER = "perf/test_serve.py::test_prefill[sim]"
PAIR = "cpu_x-default"
METRIC = "median_tpot_ms"
ROOT = Path(__file__).resolve().parents[2]


def session(sid: str, day: float, **fields: object) -> SessionRecord:
    start = T0 + timedelta(days=day)
    values: dict[str, object] = {
        "session_id": sid,
        "started_at": start,
        "ended_at": start + timedelta(minutes=20),
        "pair": PAIR,
        "plugin_version": "0.9.0",
        "git_commit": f"commit-{sid}",
        "git_branch": "main",
    }
    values.update(fields)
    return SessionRecord(**values)


def run(sid: str, index: int, metrics: Mapping[str, float], **fields: object) -> RunRecord:
    values: dict[str, object] = {
        "session_id": sid,
        "test_id": TEST,
        "run_index": index,
        "side": "",
        "started_at": T0 + timedelta(seconds=index),
        "ended_at": T0 + timedelta(seconds=index + 1),
        "pair": PAIR,
        "hardware": "cpu_x",
        "precision": "default",
        "model": "tiny",
        "workload_hash": "w1",
        "workload": {"input_len": 128, "output_len": 64, "concurrency": 4},
        "engine": "llama.cpp",
        "engine_version": "b100",
        "server_command_hash": "c1",
        "plugin_version": "0.9.0",
        "epoch_key": "e1",
        "compat_mode": "vllm",
        "valid": True,
        "outcome": "passed",
        "verdict_status": "PASS",
        "metrics": metrics,
    }
    values.update(fields)
    return RunRecord(**values)


def runs(sid: str, values: Sequence[float], metric: str = METRIC, **fields: object) -> list[RunRecord]:
    return [run(sid, i, {metric: v}, **fields) for i, v in enumerate(values)]


def points(db: HistoryDatabase, **query: object) -> dict[tuple[str, str, str, str], list[tuple[str, float, int]]]:
    """series() as {(test, pair, workload, metric): [(session, value, runs), ...]}."""
    return {
        (s.key.test_id, s.key.pair, s.key.workload_hash, s.key.metric): [
            (p.session_id, p.value, p.runs) for p in s.points
        ]
        for s in db.series(**query)
    }


@contextmanager
def raw(url: str) -> Iterator[sa.Connection]:
    """A plain SQLAlchemy connection to the database, in a transaction committed at the end: what an SQL
    reader (Grafana, psql) sees."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


# --- writing and reading -----------------------------------------------------------------------------------------


def test_a_new_database_has_the_current_schema_and_opens_again(history_url: str) -> None:
    with HistoryDatabase.open(history_url) as db:
        assert db.schema_version == SCHEMA_VERSION == 1
        assert db.series() == []
        assert db.acks() == []
        assert not db.has_session("s1")
        assert db.append(session("s1", 0), runs("s1", [1.0])) == 1
    with HistoryDatabase.open(history_url) as db:
        assert db.schema_version == SCHEMA_VERSION
        assert db.has_session("s1")
    with raw(history_url) as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert {t.name for t in schema.METADATA.sorted_tables} <= tables


def test_appending_a_stored_session_again_adds_nothing(history_url: str) -> None:
    with HistoryDatabase.open(history_url) as db:
        assert db.append(session("s1", 0), runs("s1", [1.0, 2.0, 3.0])) == 3
        assert db.append(session("s1", 0), runs("s1", [7.0, 8.0])) == 0
        assert db.append(session("s2", 1), []) == 0  # a session without runs is stored all the same
        assert db.has_session("s2")
        assert points(db) == {(TEST, PAIR, "w1", METRIC): [("s1", 2.0, 3)]}


def test_a_session_stored_by_another_process_meanwhile_is_not_stored_twice(
    history_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HistoryDatabase.open(history_url) as db:
        assert db.append(session("s1", 0), runs("s1", [1.0])) == 1
        # The other process's session was committed after this one looked: its insert meets the unique id.
        looked = HistoryDatabase._session_ref
        missed: list[str] = []

        def look_too_early(conn: sa.Connection, session_id: str) -> int | None:
            if not missed:
                missed.append(session_id)
                return None
            return looked(conn, session_id)

        monkeypatch.setattr(HistoryDatabase, "_session_ref", staticmethod(look_too_early))
        assert db.append(session("s1", 0), runs("s1", [5.0, 6.0])) == 0
        assert missed == ["s1"]
        assert points(db) == {(TEST, PAIR, "w1", METRIC): [("s1", 1.0, 1)]}


def test_a_point_is_the_median_of_the_sessions_valid_runs_of_the_server_under_test(history_url: str) -> None:
    with HistoryDatabase.open(history_url) as db:
        db.append(session("odd", 0), runs("odd", [3.0, 1.0, 2.0]))
        db.append(session("even", 1), runs("even", [4.0, 1.0]))
        invalid = [*runs("invalid", [1.0, 2.0, 3.0]), run("invalid", 3, {METRIC: 100.0}, valid=False)]
        db.append(session("invalid", 2), invalid)
        # A/B mode: B (the other build) is stored but not in the series; A and "" are the server under test.
        ab = [*runs("ab", [5.0, 6.0, 7.0], side="A"), *runs("ab", [50.0, 60.0, 70.0], side="B")]
        db.append(session("ab", 3), ab)
        db.append(session("none-valid", 4), runs("none-valid", [9.0], valid=False))
        assert points(db) == {
            (TEST, PAIR, "w1", METRIC): [("odd", 2.0, 3), ("even", 2.5, 2), ("invalid", 2.0, 3), ("ab", 6.0, 3)]
        }


def test_a_point_carries_its_session_and_its_latest_run(history_url: str) -> None:
    with HistoryDatabase.open(history_url) as db:
        measured = [
            run("s1", 0, {METRIC: 1.0}, engine_version="b100", epoch_key="e1"),
            run("s1", 1, {METRIC: 2.0}, engine_version="b101", epoch_key="e2"),
            run("s1", 2, {METRIC: 3.0}, engine_version="b999", epoch_key="e9", valid=False),
        ]
        db.append(session("s1", 0, git_commit="abc123", git_branch="feature"), measured)
        [series] = db.series()
    [point] = series.points
    assert point.session_id == "s1"
    assert point.at == T0
    assert point.at.utcoffset() == timedelta(0)
    assert (point.value, point.runs) == (1.5, 2)
    assert (point.git_commit, point.git_branch) == ("abc123", "feature")
    assert (point.engine_version, point.epoch_key) == ("b101", "e2")


def test_series_are_per_test_pair_workload_and_metric_oldest_session_first(history_url: str) -> None:
    with HistoryDatabase.open(history_url) as db:
        # Appended newest first (an import of older documents): the points still run oldest first.
        for sid, day in (("s3", 3), ("s1", 1), ("s2", 2)):
            measured = [
                run(sid, 0, {METRIC: day, "output_throughput": 10 * day}),
                run(sid, 1, {METRIC: day}, test_id=OTHER),
                run(sid, 2, {METRIC: day + 0.5}, workload_hash="w2"),
                run(sid, 3, {METRIC: day + 0.25}, pair="gpu-fp8"),
            ]
            db.append(session(sid, day), measured)
        found = points(db)
    order = [("s1", 1.0, 1), ("s2", 2.0, 1), ("s3", 3.0, 1)]
    assert list(found) == sorted(found)
    assert found == {
        (TEST, PAIR, "w1", METRIC): order,
        (TEST, PAIR, "w1", "output_throughput"): [(s, 10 * v, n) for s, v, n in order],
        (TEST, PAIR, "w2", METRIC): [(s, v + 0.5, n) for s, v, n in order],
        (TEST, "gpu-fp8", "w1", METRIC): [(s, v + 0.25, n) for s, v, n in order],
        (OTHER, PAIR, "w1", METRIC): order,
    }


def test_series_filters_by_test_pattern_metric_pair_and_start(history_url: str) -> None:
    tests = [
        "perf/test_a.py::test_decode[sim]",
        "perf/test_a.py::test_Decode[sim]",
        "perf/test_b.py::test_decode[100%_load]",
        "perf/test_b.py::test_decodeX100Y_load]",
        "perf/test_c.py::test_prefill",
    ]
    with HistoryDatabase.open(history_url) as db:
        for day in range(4):
            sid = f"s{day}"
            measured = [
                run(sid, i, {METRIC: float(day), "output_throughput": 1.0}, test_id=test)
                for i, test in enumerate(tests)
            ]
            db.append(session(sid, day), measured)

        def tests_of(**query: object) -> list[str]:
            return sorted({key[0] for key in points(db, **query)})

        assert tests_of() == sorted(tests)
        assert tests_of(test_pattern="*") == sorted(tests)
        assert tests_of(test_pattern="*decode*") == sorted(t for t in tests if "decode" in t)  # case-sensitive
        assert tests_of(test_pattern="perf/test_a.py::*") == sorted(tests[:2])
        assert tests_of(test_pattern="perf/test_?.py::test_prefill") == [tests[4]]
        # SQL's wildcards are literal characters in an fnmatch pattern; fnmatch's own classes work.
        assert tests_of(test_pattern="*[[]100%_load]") == [tests[2]]
        assert tests_of(test_pattern="*test_[dD]ecode[[]sim]") == sorted(tests[:2])
        assert tests_of(test_pattern="nothing*") == []
        assert {key[3] for key in points(db, metrics=["output_throughput"])} == {"output_throughput"}
        assert points(db, metrics=[]) == {}
        assert points(db, pair="gpu-fp8") == {}
        assert len(points(db, pair=PAIR)) == 2 * len(tests)
        since = points(db, test_pattern=tests[4], metrics=[METRIC], since=T0 + timedelta(days=2))
        assert since == {(tests[4], PAIR, "w1", METRIC): [("s2", 2.0, 1), ("s3", 3.0, 1)]}  # at or after
        assert points(db, since=T0 + timedelta(days=9)) == {}


def test_session_values_are_the_newest_sessions_runs_of_one_test_workload_and_epoch(history_url: str) -> None:
    with HistoryDatabase.open(history_url) as db:
        for day in range(6):
            sid = f"s{day}"
            measured = [
                *runs(sid, [day, day + 0.5]),
                run(sid, 2, {METRIC: 99.0}, valid=False),
                run(sid, 3, {METRIC: 98.0}, side="B"),
                run(sid, 4, {METRIC: 97.0}, epoch_key="e2"),
                run(sid, 5, {METRIC: 96.0}, workload_hash="w2"),
                run(sid, 6, {METRIC: 95.0}, pair="gpu-fp8"),
                run(sid, 7, {METRIC: 94.0}, test_id=OTHER),
                run(sid, 8, {"output_throughput": 93.0}),
            ]
            db.append(session(sid, day), measured)
        db.append(session("other-epoch", 9), runs("other-epoch", [5.0], epoch_key="e3"))
        key = {"test_id": TEST, "pair": PAIR, "workload_hash": "w1", "epoch_key": "e1", "metric": METRIC}
        everything = db.session_values(**key)
        assert sorted(everything) == [[float(d), d + 0.5] for d in range(6)]
        newest = db.session_values(**key, limit_sessions=2, exclude_session="s5")
        assert sorted(newest) == [[3.0, 3.5], [4.0, 4.5]]
        assert db.session_values(**key, limit_sessions=0) == []
        assert db.session_values(**{**key, "metric": "output_throughput"}, limit_sessions=3) == [[93.0]] * 3
        assert db.session_values(**{**key, "epoch_key": "e3"}) == [[5.0]]
        assert db.session_values(**{**key, "test_id": "missing"}) == []


def test_acknowledgements_round_trip(history_url: str) -> None:
    plus_two = timezone(timedelta(hours=2))
    acks = [
        Acknowledgement(
            SeriesKey(TEST, PAIR, "w1", METRIC), "s40", T0, None, "new driver", recorded_at=T0 + timedelta(hours=1)
        ),
        Acknowledgement(
            SeriesKey(OTHER, "gpu-fp8", "w2", "output_throughput"),
            "s41",
            datetime(2026, 1, 6, 12, 0, tzinfo=plus_two),
            "ana",
            "known",
            recorded_at=datetime(2026, 1, 6, 13, 0, tzinfo=plus_two),
        ),
    ]
    with HistoryDatabase.open(history_url) as db:
        for ack in reversed(acks):  # read back in the order recorded, not stored
            db.add_ack(ack)
        stored = db.acks()
    assert stored == acks
    assert [a.recorded_at for a in stored] == [a.recorded_at for a in acks]  # not compared by ==
    assert all(a.at.utcoffset() == timedelta(0) and a.recorded_at.tzinfo is timezone.utc for a in stored)
    assert stored[1].at == datetime(2026, 1, 6, 10, 0, tzinfo=timezone.utc)
    with raw(history_url) as conn:
        columns = [c["name"] for c in sa.inspect(conn).get_columns("llmperf_acks")]
    assert columns == [
        "id",
        "test_id",
        "pair",
        "workload_hash",
        "metric",
        "session_id",
        "at",
        "acked_by",
        "reason",
        "recorded_at",
    ]


def verdict(*metrics: tuple[str, bool], status: str = "PASS") -> dict[str, object]:
    """A stored verdict's JSON form with these (summary key, gating) metrics."""
    return {"status": status, "metrics": [{"name": key, "key": key, "gating": gating} for key, gating in metrics]}


def test_gating_metrics_are_those_of_each_tests_latest_verdict_that_judged_metrics(history_url: str) -> None:
    older = verdict((METRIC, True), ("median_ttft_ms", True), ("median_itl_ms", False))
    newer = verdict((METRIC, True), ("median_ttft_ms", False), ("output_throughput", True), status="REGRESSION")
    unjudged = {"status": "NO_BASELINE", "metrics": []}
    advisory = verdict((METRIC, False))
    tests = {name: f"perf/test_g.py::test_{name}" for name in ("changed", "fell_back", "bare", "advisory", "ab")}

    def judged(sid: str, test: str, stored: dict[str, object] | None, **fields: object) -> list[RunRecord]:
        status = None if stored is None else str(stored["status"])
        return [
            run(sid, i, {METRIC: 1.0}, test_id=tests[test], verdict=stored, verdict_status=status, **fields)
            for i in range(2)
        ]

    with HistoryDatabase.open(history_url) as db:
        assert db.gating_metrics() == {}
        # Appended newest first (an import of older documents): the newest session's verdict still wins.
        db.append(
            session("new", 2),
            [
                *judged("new", "changed", newer),
                *judged("new", "fell_back", unjudged),
                *judged("new", "bare", None),
                *judged("new", "advisory", advisory),
            ],
        )
        db.append(
            session("old", 1),
            [
                *judged("old", "changed", older),
                *judged("old", "fell_back", older),
                *judged("old", "bare", None),
                *judged("old", "ab", older, side="A"),
                *judged("old", "ab", older, side="B", valid=False),
            ],
        )
        everything = db.gating_metrics()
        assert everything == {
            tests["changed"]: frozenset({METRIC, "output_throughput"}),
            tests["fell_back"]: frozenset({METRIC, "median_ttft_ms"}),  # NO_BASELINE judged nothing
            tests["advisory"]: frozenset(),
            tests["ab"]: frozenset({METRIC, "median_ttft_ms"}),
        }
        assert tests["bare"] not in everything  # never had a verdict
        assert db.gating_metrics([tests["changed"], tests["bare"], "missing"]) == {
            tests["changed"]: frozenset({METRIC, "output_throughput"})
        }
        assert db.gating_metrics([]) == {}
        assert db.gating_metrics(iter([tests["ab"]])) == {tests["ab"]: frozenset({METRIC, "median_ttft_ms"})}


def test_gating_metrics_of_more_tests_than_an_in_list_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "_IN_CHUNK", 2)
    with HistoryDatabase.open(f"sqlite:///{(tmp_path / 'h.db').as_posix()}") as db:
        measured = [run("s1", i, {METRIC: 1.0}, test_id=f"t{i}", verdict=verdict((f"m{i}", True))) for i in range(5)]
        db.append(session("s1", 0), measured)
        assert db.gating_metrics([f"t{i}" for i in range(6)]) == {f"t{i}": frozenset({f"m{i}"}) for i in range(5)}


def test_times_are_stored_as_utc_and_naive_times_refused(history_url: str) -> None:
    local = datetime(2026, 3, 1, 9, 15, 30, 123456, tzinfo=timezone(timedelta(hours=-5)))
    with HistoryDatabase.open(history_url) as db:
        db.append(session("s1", 0, started_at=local, ended_at=local + timedelta(hours=1)), runs("s1", [1.0]))
        [series] = db.series()
        assert series.points[0].at == local
        assert series.points[0].at.tzinfo is timezone.utc
        assert series.points[0].at.hour == 14
        with pytest.raises(ValueError, match="time zone"):
            db.append(session("s2", 0, started_at=datetime(2026, 1, 1)), [])
        with pytest.raises(ValueError, match="time zone"):
            db.series(since=datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="belongs to session"):
            db.append(session("s3", 0), runs("s2", [1.0]))
        assert not db.has_session("s2")
        assert not db.has_session("s3")


def test_runs_are_plain_rows_and_metrics_long_form_for_sql_readers(history_url: str) -> None:
    verdict = {"status": "PASS", "metrics": {"tpot": {"ratio": float("inf"), "p": 0.5}}}
    slos = ({"name": "tpot", "ok": True, "value": 12.5},)
    measured = [
        run(
            "s1",
            0,
            {METRIC: 12.5, "completed": 64, "bad": float("nan"), "worse": float("inf")},
            verdict=verdict,
            slos=slos,
        ),
        run("s1", 1, {METRIC: 13.5}),
    ]
    ci = CiRun("github", "4242", "https://github.com/o/r/actions/runs/4242")
    with HistoryDatabase.open(history_url) as db:
        db.append(session("s1", 0, ci=ci, source="import:json"), measured)
    with raw(history_url) as conn:
        rows = conn.execute(
            sa.text(
                "SELECT s.session_id, s.ci_provider, s.ci_run_id, s.ci_url, s.source, r.run_index, r.workload, "
                "r.verdict, r.slos, m.name, m.value FROM llmperf_run_metrics m "
                "JOIN llmperf_runs r ON r.id = m.run_id JOIN llmperf_sessions s ON s.id = r.session_ref "
                "ORDER BY r.run_index, m.name"
            )
        ).all()
    # Only finite figures are stored; JSON cannot hold an infinity, which becomes null.
    assert [(r.run_index, r.name, r.value) for r in rows] == [
        (0, "completed", 64.0),
        (0, METRIC, 12.5),
        (1, METRIC, 13.5),
    ]
    first = rows[0]
    assert (first.session_id, first.ci_provider, first.ci_run_id, first.source) == (
        "s1",
        "github",
        "4242",
        "import:json",
    )
    assert first.ci_url == ci.url
    assert json.loads(first.workload) == {"input_len": 128, "output_len": 64, "concurrency": 4}
    assert json.loads(first.verdict) == {"status": "PASS", "metrics": {"tpot": {"ratio": None, "p": 0.5}}}
    assert json.loads(first.slos) == [slos[0]]
    assert rows[2].verdict is None
    assert rows[2].slos is None


def test_workloads_are_read_back_by_hash(history_url: str) -> None:
    with HistoryDatabase.open(history_url) as db:
        db.append(
            session("s1", 0),
            [run("s1", 0, {METRIC: 1.0}), run("s1", 1, {METRIC: 1.0}, workload_hash="w2", workload={"concurrency": 8})],
        )
        assert db.workloads({"w1", "w2", "missing"}) == {
            "w1": {"input_len": 128, "output_len": 64, "concurrency": 4},
            "w2": {"concurrency": 8},
        }
        assert db.workloads([]) == {}


# --- several processes at once -----------------------------------------------------------------------------------

WRITER = """
import sys, time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from pytest_llmperf.history.database import HistoryDatabase
from pytest_llmperf.history.model import RunRecord, SessionRecord

url, worker, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.005)
t0 = datetime(2026, 1, 5, tzinfo=timezone.utc)

def runs(sid):
    return [
        RunRecord(sid, f"perf/test_{t}.py::test_x", i, "", None, None, "cpu-default", "cpu", "default", "tiny",
                  "w1", {}, None, None, None, None, "e1", "vllm", True, "passed", None,
                  {"median_tpot_ms": float(i), "output_throughput": 1.0 + i})
        for t in range(3) for i in range(5)
    ]

with HistoryDatabase.open(url) as db:
    for k in range(count):
        sid = f"{worker}-{k}"
        start = t0 + timedelta(minutes=k)
        db.append(SessionRecord(sid, start, start + timedelta(minutes=1), "cpu-default", None), runs(sid))
        if k == count // 2:
            db.append(SessionRecord("shared", t0, t0, "cpu-default", None), runs("shared"))
print("done")
"""


def test_sessions_of_several_processes_are_all_stored(history_url: str, tmp_path: Path) -> None:
    # Four processes open a new database at the same moment (each may create the schema) and append at once.
    go = tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, history_url, f"w{n}", "6", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for n in range(4)
    ]
    time.sleep(1.0)  # let them start Python and import
    go.touch()
    for writer in writers:
        out, err = writer.communicate(timeout=180)
        assert writer.returncode == 0, err[-3000:]
        assert "done" in out
    with HistoryDatabase.open(history_url) as db:
        stored = [s.session_id for s in db.series()[0].points]
        assert sorted(stored) == sorted(["shared", *(f"w{n}-{k}" for n in range(4) for k in range(6))])
        for s in db.series():
            assert [p.runs for p in s.points] == [5] * 25
    with raw(history_url) as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM llmperf_runs")).scalar_one() == 25 * 15
        assert conn.execute(sa.text("SELECT count(*) FROM llmperf_run_metrics")).scalar_one() == 25 * 15 * 2
        assert conn.execute(sa.text("SELECT count(*) FROM llmperf_series")).scalar_one() == 3 * 2


# --- schema versions ---------------------------------------------------------------------------------------------


def stored_version(url: str) -> str:
    with raw(url) as conn:
        found = conn.execute(sa.select(schema.META.c.value).where(schema.META.c.key == "schema_version"))
        return str(found.scalar_one())


def add_note(conn: sa.Connection) -> None:
    """A real step from version 1 to a version 2 the test makes up: a column and an index."""
    conn.exec_driver_sql("ALTER TABLE llmperf_sessions ADD COLUMN note TEXT")
    conn.exec_driver_sql("CREATE INDEX llmperf_sessions_note ON llmperf_sessions (note)")


def test_a_writer_migrates_an_older_database_with_its_data_and_a_reader_refuses_it_until_then(
    history_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ack = Acknowledgement(SeriesKey(TEST, PAIR, "w1", METRIC), "s2", T0, "ana", "kept", recorded_at=T0)
    with HistoryDatabase.open(history_url) as db:
        db.append(session("s1", 1), runs("s1", [3.0, 1.0, 2.0]))
        db.append(session("s2", 2), runs("s2", [4.0, 6.0]))
        db.add_ack(ack)
    assert schema.SCHEMA_VERSION == 1
    assert schema.MIGRATIONS == ()
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(schema, "MIGRATIONS", (add_note,))
    older = (
        r"its schema is version 1, older than this pytest-llmperf's 2: open it once with pytest --llmperf-history "
        r"\(or `python -m pytest_llmperf.history import`\) to migrate it"
    )
    with pytest.raises(HistoryError, match=older):
        HistoryDatabase.open(history_url, write=False)
    assert stored_version(history_url) == "1"
    with HistoryDatabase.open(history_url) as db:
        assert db.schema_version == 2
        assert points(db) == {(TEST, PAIR, "w1", METRIC): [("s1", 2.0, 3), ("s2", 5.0, 2)]}
        assert db.acks() == [ack]
        db.append(session("s3", 3), runs("s3", [7.0]))
    assert stored_version(history_url) == "2"
    with raw(history_url) as conn:
        inspector = sa.inspect(conn)
        assert "note" in [c["name"] for c in inspector.get_columns("llmperf_sessions")]
        assert "llmperf_sessions_note" in [i["name"] for i in inspector.get_indexes("llmperf_sessions")]
    with HistoryDatabase.open(history_url, write=False) as db:  # migrated once; now it reads
        assert db.schema_version == 2
        assert [p.session_id for p in db.series()[0].points] == ["s1", "s2", "s3"]
    with HistoryDatabase.open(history_url) as db:
        assert db.schema_version == 2


def test_a_failed_migration_step_leaves_the_database_as_it_was(
    history_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HistoryDatabase.open(history_url) as db:
        db.append(session("s1", 1), runs("s1", [1.0]))

    def half_done(conn: sa.Connection) -> None:
        add_note(conn)
        conn.exec_driver_sql("ALTER TABLE llmperf_no_such_table ADD COLUMN x TEXT")

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(schema, "MIGRATIONS", (half_done,))
    with pytest.raises(HistoryError, match=r"cannot open it .*no_such_table"):
        HistoryDatabase.open(history_url)
    assert stored_version(history_url) == "1"
    with raw(history_url) as conn:
        assert "note" not in [c["name"] for c in sa.inspect(conn).get_columns("llmperf_sessions")]
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 1)
    monkeypatch.setattr(schema, "MIGRATIONS", ())
    with HistoryDatabase.open(history_url, write=False) as db:
        assert db.has_session("s1")


def stamp(url: str, value: str | None) -> None:
    version = schema.META.c.key == "schema_version"
    with raw(url) as conn:
        if value is None:
            conn.execute(schema.META.delete().where(version))
        else:
            conn.execute(schema.META.update().where(version).values(value=value))


@pytest.mark.parametrize("write", [True, False], ids=["writer", "reader"])
def test_a_database_of_a_newer_release_is_refused_and_left_alone(history_url: str, write: bool) -> None:
    with HistoryDatabase.open(history_url) as db:
        db.append(session("s1", 0), runs("s1", [1.0]))
    stamp(history_url, "3")
    with pytest.raises(HistoryError, match=r"written by a newer pytest-llmperf \(schema version 3; .*upgrade"):
        HistoryDatabase.open(history_url, write=write)
    assert stored_version(history_url) == "3"
    with raw(history_url) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.META)).scalar_one() == 1


@pytest.mark.parametrize("write", [True, False], ids=["writer", "reader"])
@pytest.mark.parametrize("version", [None, "two"])
def test_a_history_table_without_a_version_is_refused(history_url: str, version: str | None, write: bool) -> None:
    HistoryDatabase.open(history_url).close()
    stamp(history_url, version)
    with pytest.raises(HistoryError, match="no schema version: it is not a pytest-llmperf history"):
        HistoryDatabase.open(history_url, write=write)


# --- opening to read ----------------------------------------------------------------------------------------------


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_reader_reads_what_a_writer_wrote_and_writes_nothing(history_url: str, tmp_path: Path) -> None:
    with HistoryDatabase.open(history_url) as db:
        db.append(session("s1", 0), runs("s1", [1.0, 3.0], verdict=verdict((METRIC, True))))
    before = files(tmp_path)
    with HistoryDatabase.open(history_url, write=False) as db:
        assert (db.writable, db.schema_version) == (False, SCHEMA_VERSION)
        assert repr(db) == f"HistoryDatabase({display_url(history_url)!r}, schema_version=1, write=False)"
        assert points(db) == {(TEST, PAIR, "w1", METRIC): [("s1", 2.0, 2)]}
        assert db.gating_metrics() == {TEST: frozenset({METRIC})}
        assert db.acks() == []
        with pytest.raises(HistoryError, match="cannot append a session to it: it was opened to read"):
            db.append(session("s2", 1), runs("s2", [1.0]))
        ack = Acknowledgement(SeriesKey(TEST, PAIR, "w1", METRIC), "s1", T0, None, "known", recorded_at=T0)
        with pytest.raises(HistoryError, match="cannot record an acknowledgement in it: it was opened to read"):
            db.add_ack(ack)
        assert not db.has_session("s2")
    # SQLite: the file as it was, byte for byte, and no WAL files left behind.
    assert files(tmp_path) == before


def test_a_reader_never_creates_a_database(history_url: str, tmp_path: Path) -> None:
    if history_url.startswith("sqlite"):
        expected = f"no history database at {history_url}: run pytest with --llmperf-history first, or give --db"
        with pytest.raises(HistoryError, match=re.escape(expected)):
            HistoryDatabase.open(history_url, write=False)
        missing_dir = f"sqlite:///{(tmp_path / 'no' / 'such' / 'history.db').as_posix()}"
        with pytest.raises(HistoryError, match="no history database at"):
            HistoryDatabase.open(missing_dir, write=False)
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(HistoryError, match=r"no history database at .*names a directory"):
            HistoryDatabase.open(f"sqlite:///{tmp_path.as_posix()}", write=False)
        return
    # PostgreSQL: the database exists but holds no history; nothing is created in it.
    with pytest.raises(HistoryError, match=r"not a pytest-llmperf history database .*llmperf_meta.*--db"):
        HistoryDatabase.open(history_url, write=False)
    with raw(history_url) as conn:
        assert sa.inspect(conn).get_table_names() == []


def test_a_reader_refuses_a_database_without_the_history_tables(history_url: str, tmp_path: Path) -> None:
    with raw(history_url) as conn:
        conn.exec_driver_sql("CREATE TABLE notes (body TEXT)")
    with pytest.raises(HistoryError, match="not a pytest-llmperf history database"):
        HistoryDatabase.open(history_url, write=False)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")  # an empty file is an empty SQLite database
    with pytest.raises(HistoryError, match="not a pytest-llmperf history database"):
        HistoryDatabase.open(f"sqlite:///{empty.as_posix()}", write=False)
    assert empty.read_bytes() == b""
    with pytest.raises(HistoryError, match="not a pytest-llmperf history database"):
        HistoryDatabase.open("sqlite://", write=False)  # in memory: empty by definition


def test_a_reader_opens_files_whose_names_hold_uri_characters(tmp_path: Path) -> None:
    path = tmp_path / "odd ?#%name" / "history.db"
    with HistoryDatabase.open(f"sqlite:///{path.as_posix()}") as db:
        db.append(session("s1", 0), runs("s1", [1.0]))
    with HistoryDatabase.open(f"sqlite:///{path.as_posix()}", write=False) as db:
        assert db.has_session("s1")
    uri = f"sqlite:///file:{path.as_posix().replace('%', '%25').replace('?', '%3F').replace('#', '%23')}?uri=true"
    with HistoryDatabase.open(uri, write=False) as db:  # a URI of the user's own: never created either
        assert db.has_session("s1")
    gone = f"sqlite:///file:{(tmp_path / 'gone.db').as_posix()}?uri=true"
    with pytest.raises(HistoryError, match=r"cannot open it .*unable to open.*a history database this user may read"):
        HistoryDatabase.open(gone, write=False)
    assert not (tmp_path / "gone.db").exists()


def test_a_reader_opens_a_sqlite_file_it_may_not_write(tmp_path: Path) -> None:
    prefix = unprivileged()
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "history.db"
    url = f"sqlite:///{path.as_posix()}"
    with HistoryDatabase.open(url) as db:
        db.append(session("s1", 0), runs("s1", [1.0]))
    path.chmod(0o444)
    try:
        said = subprocess.run(
            [*prefix, sys.executable, "-c", OPENER, url, "read"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
        )
        assert said.returncode == 0, said.stderr[-3000:]
        assert said.stdout.strip() == "opened"
    finally:
        path.chmod(0o644)


def test_the_fixture_stops_a_cluster_a_killed_session_left_and_spares_live_ones(postgres_cluster: Any) -> None:
    # tests/history/conftest.py's functions: both conftest modules are named "conftest", so sys.modules cannot say.
    fixtures = types.SimpleNamespace(**type(postgres_cluster).new_database.__globals__)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    left = fixtures.start_cluster(postgres_cluster.bin_dir, postgres_cluster.run_as)
    try:
        assert fixtures.postmaster(left.data) is not None
        assert not fixtures.abandoned(left.root)  # this process owns it
        (left.root / fixtures.OWNER).write_text(json.dumps({"pid": dead_pid, "create_time": 0.0}), encoding="utf-8")
        assert fixtures.abandoned(left.root)
        removed = fixtures.stop_abandoned(postgres_cluster.bin_dir, postgres_cluster.run_as, left.root.parent)
        assert left.root in removed
        assert not left.root.exists()
        assert postgres_cluster.root not in removed
        assert fixtures.postmaster(postgres_cluster.data) is not None  # ours still runs
        HistoryDatabase.open(postgres_cluster.new_database()).close()
    finally:
        fixtures.stop_cluster(postgres_cluster.bin_dir, postgres_cluster.run_as, left.data)
        shutil.rmtree(left.root, ignore_errors=True)


# --- opening fails clearly -----------------------------------------------------------------------------------------


def secret_free(exc: BaseException, secret: str) -> None:
    """Neither the message, the repr nor any exception it was raised from shows ``secret``."""
    assert secret not in str(exc)
    assert secret not in repr(exc)
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for link in chain:
        assert secret not in "".join(traceback.format_exception_only(link))


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_text("these are notes, not a database\n" * 200, encoding="utf-8")
    with pytest.raises(HistoryError, match="is not an SQLite database or is damaged") as caught:
        HistoryDatabase.open(f"sqlite:///{path.as_posix()}")
    assert str(caught.value).startswith(f"history database sqlite:///{path.as_posix()}: cannot open it")
    assert path.read_text(encoding="utf-8").startswith("these are notes")


def test_a_read_only_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with HistoryDatabase.open(f"sqlite:///{path.as_posix()}") as db:
        db.append(session("s1", 0), runs("s1", [1.0]))
    with pytest.raises(HistoryError, match="it is read-only: make it writable"):
        HistoryDatabase.open(f"sqlite:///file:{path.as_posix()}?mode=ro&uri=true")


OPENER = """
import sys
from pytest_llmperf.errors import HistoryError
from pytest_llmperf.history.database import HistoryDatabase
try:
    HistoryDatabase.open(sys.argv[1], write=sys.argv[2] == "write").close()
except HistoryError as exc:
    print(exc)
else:
    print("opened")
"""


def unprivileged() -> list[str]:
    """A command prefix under which file modes apply: none for an ordinary user; for root, ``setpriv`` without
    the capabilities that let root write whatever the modes say."""
    if not hasattr(os, "geteuid"):
        pytest.skip("file modes are POSIX")
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("file modes do not stop root, and setpriv (util-linux) is not here to drop its capabilities")
    drop = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}"]


def test_a_sqlite_file_without_write_permission_is_refused(tmp_path: Path) -> None:
    prefix = unprivileged()
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "history.db"
    url = f"sqlite:///{path.as_posix()}"
    HistoryDatabase.open(url).close()
    assert [p.name for p in folder.iterdir()] == ["history.db"]  # a clean close leaves no -wal, -shm files
    path.chmod(0o444)
    try:
        for folder_mode in (0o755, 0o555):  # the file read-only; then its directory too
            folder.chmod(folder_mode)
            said = subprocess.run(
                [*prefix, sys.executable, "-c", OPENER, url, "write"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd=ROOT,
            )
            assert said.returncode == 0, said.stderr[-3000:]
            assert said.stdout.startswith(f"history database {url}: cannot open it ("), said.stdout
            assert "it is read-only: make it writable" in said.stdout
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)


def test_a_sqlite_database_locked_too_long_by_another_process_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "history.db"
    HistoryDatabase.open(f"sqlite:///{path.as_posix()}").close()
    monkeypatch.setattr(database, "SQLITE_BUSY_S", 0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another session's write, in progress
        started = time.monotonic()
        with pytest.raises(HistoryError, match=r"cannot open it \(database is locked\); another process held it"):
            HistoryDatabase.open(f"sqlite:///{path.as_posix()}")
        assert time.monotonic() - started < 5
    finally:
        holder.close()
    HistoryDatabase.open(f"sqlite:///{path.as_posix()}").close()


def test_without_returning_runs_are_inserted_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite before 3.35 (some Python 3.10 builds) has no RETURNING: the runs' ids come one insert at a time.
    with HistoryDatabase.open(f"sqlite:///{(tmp_path / 'h.db').as_posix()}") as db:
        dialect = sa.create_engine("sqlite://").dialect
        monkeypatch.setattr(type(dialect), "insert_executemany_returning_sort_by_parameter_order", False)
        assert db.append(session("s1", 0), runs("s1", [3.0, 1.0, 2.0])) == 3
        assert points(db) == {(TEST, PAIR, "w1", METRIC): [("s1", 2.0, 3)]}


def test_a_postgresql_role_that_may_only_read_opens_to_read_but_not_to_write(postgres_cluster: Any) -> None:
    url = postgres_cluster.new_database()
    with HistoryDatabase.open(url) as db:  # the owner creates the tables and writes
        db.append(session("s1", 0), runs("s1", [1.0, 3.0]))
        db.add_ack(Acknowledgement(SeriesKey(TEST, PAIR, "w1", METRIC), "s1", T0, None, "known", recorded_at=T0))
    secret = "reader-Secret-99"
    reader = postgres_cluster.new_role(url, secret)  # CONNECT, USAGE on the schema, SELECT on the tables
    with HistoryDatabase.open(reader, write=False) as db:
        assert not db.writable
        assert points(db) == {(TEST, PAIR, "w1", METRIC): [("s1", 2.0, 2)]}
        assert len(db.acks()) == 1
        assert db.has_session("s1")
        assert db.workloads(["w1"]) == {"w1": {"input_len": 128, "output_len": 64, "concurrency": 4}}
        assert db.session_values(test_id=TEST, pair=PAIR, workload_hash="w1", epoch_key="e1", metric=METRIC)
        assert db.gating_metrics() == {}
    with pytest.raises(HistoryError, match="this user may not write to it: grant it CREATE and INSERT") as caught:
        HistoryDatabase.open(reader)
    secret_free(caught.value, secret)
    empty = postgres_cluster.new_database()
    with pytest.raises(HistoryError, match="this user may not write to it"):
        HistoryDatabase.open(postgres_cluster.new_role(empty, secret))  # where it would create the tables
    with pytest.raises(HistoryError, match="not a pytest-llmperf history database"):
        HistoryDatabase.open(postgres_cluster.new_role(empty, secret), write=False)
    unreadable = postgres_cluster.new_role(url, secret, select=False)
    with pytest.raises(HistoryError, match="this user may not read it: grant it USAGE on the schema and SELECT"):
        HistoryDatabase.open(unreadable, write=False)


def test_a_readers_postgresql_transactions_are_read_only(postgres_cluster: Any) -> None:
    url = postgres_cluster.new_database()
    HistoryDatabase.open(url).close()
    with HistoryDatabase.open(url, write=False) as db, db._transaction("read") as conn:
        assert conn.exec_driver_sql("SHOW transaction_read_only").scalar_one() == "on"
        with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            conn.execute(schema.META.insert(), [{"key": "x", "value": "y"}])


def test_a_missing_directory_is_created_and_an_impossible_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "history.db"
    HistoryDatabase.open(f"sqlite:///{path.as_posix()}").close()
    assert path.is_file()
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(HistoryError, match="cannot create its directory"):
        HistoryDatabase.open(f"sqlite:///{(blocker / 'sub' / 'history.db').as_posix()}")
    with pytest.raises(HistoryError, match=r"cannot open it .*unable to open"):
        HistoryDatabase.open(f"sqlite:///{tmp_path.as_posix()}")  # a directory


def test_an_unreachable_postgresql_is_refused_quickly_without_its_password() -> None:
    secret = "s3cr3t-Pa55"
    url = f"postgresql://ana:{secret}@127.0.0.1:{closed_port()}/history"
    started = time.monotonic()
    with pytest.raises(HistoryError) as caught:
        HistoryDatabase.open(url)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith(f"history database postgresql://ana:***@127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}")
    assert "cannot open it" in message
    assert "check that the server runs and is reachable" in message
    secret_free(caught.value, secret)


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def test_a_wrong_postgresql_password_is_refused_without_repeating_it(postgres_cluster: Any) -> None:
    secret = "wrong-Secret-4711"
    url = postgres_cluster.url("postgres", password=secret)
    with pytest.raises(HistoryError, match="check the user name and password") as caught:
        HistoryDatabase.open(url)
    secret_free(caught.value, secret)
    missing = postgres_cluster.url("no_such_database")
    with pytest.raises(HistoryError, match="create the database first") as caught:
        HistoryDatabase.open(missing)
    secret_free(caught.value, postgres_cluster.url("x").split(":")[2].split("@")[0])


def test_the_url_is_shown_without_its_password(history_url: str) -> None:
    with HistoryDatabase.open(history_url) as db:
        shown = db.url_for_display
        assert shown == display_url(history_url)
        assert repr(db) == f"HistoryDatabase({shown!r}, schema_version=1, write=True)"
        if history_url.startswith("postgresql"):
            password = history_url.split(":")[2].split("@")[0]
            assert password not in shown
            assert password not in repr(db)
            assert ":***@" in shown
        else:
            assert shown == history_url


def test_display_url_and_default_url(tmp_path: Path) -> None:
    assert display_url("postgresql://ana:secret@db.example:5432/perf") == "postgresql://ana:***@db.example:5432/perf"
    assert display_url("postgresql://ana@db.example/perf") == "postgresql://ana@db.example/perf"
    hidden = display_url("postgresql://db.example/perf?password=secret&sslmode=require")
    assert "secret" not in hidden
    assert "sslmode=require" in hidden
    assert display_url("sqlite:///relative/history.db") == "sqlite:///relative/history.db"
    assert default_url(tmp_path) == f"sqlite:///{tmp_path.as_posix()}/.llmperf/history.db"
    for bad in ("postgresql://ana:secret@db.example:port/perf", "ana:secret@db.example", ""):
        with pytest.raises(HistoryError, match="expected sqlite:///PATH or postgresql://") as caught:
            display_url(bad)
        secret_free(caught.value, "secret")
    with pytest.raises(HistoryError, match="'mysql' databases are not supported") as caught:
        HistoryDatabase.open("mysql://ana:secret@db.example/perf")
    secret_free(caught.value, "secret")


def test_a_closed_database_says_so(tmp_path: Path) -> None:
    db = HistoryDatabase.open(f"sqlite:///{(tmp_path / 'h.db').as_posix()}")
    db.close()
    db.close()
    with pytest.raises(HistoryError, match="it is closed"):
        db.series()
