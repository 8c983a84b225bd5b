"""Speed of the history database (``pytest_llmperf.history.database``) on SQLite, and on PostgreSQL when
``--postgres-url`` names a database without history tables (they are dropped again at the end).

- **Write**: sessions of 100 tests × 5 runs, each run with the 61 figures a vLLM-mode summary holds (mean,
  median, SD and p50/p90/p95/p99 of TTFT, TPOT, ITL, E2E latency, per-token ITL and client queue; durations,
  counts, throughputs, client load), its workload, a verdict and SLO checks, appended one after the other to a
  new database: seconds per ``append`` (median, min and max over ``--sessions``). The same sessions are then
  appended onto the read database below (``--series-sessions`` sessions stored): what a nightly run's append
  costs once the history is large.
- **Read**: a database of ``--series-sessions`` sessions (10,000) of 1 test × 5 runs × 61 figures, built with
  ``append`` (its build time is shown too). Then, best of 3: ``series()`` of every metric, of the 6 metrics of
  ``history changes``' default (the gating metrics in both compat spellings), and of every metric since the
  last 10 % of the sessions; one ``session_values()`` call (what the verdict asks per test and gating metric);
  ``gating_metrics()`` (the latest verdict's gating metrics per test); and, for comparison, what ``series()`` of
  every metric would cost without the stored per-session points (``llmperf_points``): every run's figures read
  and grouped on each call.

Targets: less than 1 s per session written (into a new database and onto the large one); ``series()`` of every
metric in less than 5 s at 10,000 sessions.

Usage: ``python benchmarks/history_write.py [--quick] [--sessions N] [--series-sessions N] [--postgres-url URL]
[--out PATH]``. The full run takes about 2 minutes on SQLite (most of it building the 10,000 sessions) and writes
``benchmarks/results/history_write.md``; ``--quick`` is a smoke run (2 sessions of 10 tests, 300 sessions to
read) that writes nothing.
"""

from __future__ import annotations

import datetime
import math
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script, this directory is on sys.path already; the explicit entry also serves an import by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
from _common import git_commit, machine_line, make_parser, markdown_table, module_version, publish_report

from pytest_llmperf.history import schema
from pytest_llmperf.history.database import HistoryDatabase
from pytest_llmperf.history.model import RunRecord, SessionRecord
from pytest_llmperf.history.urls import display_url

COMMITTED = Path(__file__).resolve().parent / "results" / "history_write.md"
T0 = datetime.datetime(2026, 1, 5, tzinfo=datetime.timezone.utc)
RUNS = 5
STATS = ("mean", "median", "std", "p50", "p90", "p95", "p99")
LATENCIES = {"ttft": 40.0, "tpot": 12.0, "itl": 12.0, "e2el": 800.0, "itl_token": 12.0, "client_queue": 0.5}
OTHERS = {
    "duration": 30.0,
    "completed": 200.0,
    "failed": 0.0,
    "error_rate": 0.0,
    "total_input_tokens": 204800.0,
    "total_output_tokens": 25600.0,
    "request_throughput": 6.5,
    "output_throughput": 850.0,
    "total_token_throughput": 7500.0,
    "max_output_tokens_per_s": 1100.0,
    "max_concurrent_requests": 16.0,
    "interactivity": 83.0,
    "mean_tokens_per_chunk": 1.0,
    "client_loop_lag_p50_ms": 0.2,
    "client_loop_lag_p99_ms": 1.5,
    "client_loop_lag_max_ms": 4.0,
    "client_dispatch_lag_p99_ms": 0.8,
    "client_cpu_s": 3.0,
    "client_cpu_fraction": 0.1,
}
FIGURES = {f"{stat}_{name}_ms": level for name, level in LATENCIES.items() for stat in STATS} | OTHERS
# history changes' default metrics: the gating metrics in both compat spellings (median_e2e_latency_ms is
# SGLang's, absent from these vLLM-mode runs).
CHANGES_METRICS = (
    "error_rate",
    "median_e2e_latency_ms",
    "median_e2el_ms",
    "median_tpot_ms",
    "median_ttft_ms",
    "output_throughput",
)
PAIR = "cpu_epyc-default"


# --- the records -------------------------------------------------------------------------------------------


def make_session(index: int, tests: int, rng: random.Random) -> tuple[SessionRecord, list[RunRecord]]:
    """Session ``index`` (one an hour from T0) with ``tests`` tests of RUNS runs each."""
    sid = f"session-{index:06d}"
    start = T0 + datetime.timedelta(hours=index)
    session = SessionRecord(sid, start, start + datetime.timedelta(minutes=30), PAIR, "0.9.0", f"{index:040x}", "main")
    runs = []
    for test in range(tests):
        test_id = f"perf/test_serving.py::test_workload[{test:03d}]"
        workload = {"input_len": 1024, "output_len": 128, "concurrency": 1 + test % 32, "num_prompts": 200}
        verdict = {
            "status": "PASS",
            "metrics": [
                {"name": m, "key": m, "gating": True, "estimate": 1.0, "lower": 0.97, "upper": 1.03, "status": "PASS"}
                for m in CHANGES_METRICS[2:]
            ],
        }
        for run in range(RUNS):
            last = run == RUNS - 1
            runs.append(
                RunRecord(
                    session_id=sid,
                    test_id=test_id,
                    run_index=run,
                    side="",
                    started_at=start + datetime.timedelta(seconds=40 * run),
                    ended_at=start + datetime.timedelta(seconds=40 * run + 30),
                    pair=PAIR,
                    hardware="cpu_epyc",
                    precision="default",
                    model="llmperf-tiny",
                    workload_hash=f"{test:012x}",
                    workload=workload,
                    engine="llama.cpp",
                    engine_version="b4567",
                    server_command_hash="5d41402abc4b",
                    plugin_version="0.9.0",
                    epoch_key="0f1e2d3c4b5a",
                    compat_mode="vllm",
                    valid=True,
                    outcome="passed",
                    verdict_status="PASS",
                    metrics={name: level * math.exp(rng.gauss(0, 0.03)) for name, level in FIGURES.items()},
                    verdict=verdict,
                    slos=({"name": "p99_ttft_ms", "limit": 500.0, "value": 48.0, "ok": True},) if last else (),
                )
            )
    return session, runs


# --- measuring ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One database to measure: its name in the tables and its URL."""

    name: str
    url: str


def best_of(repeats: int, call: Callable[[], object]) -> tuple[float, object]:
    """The shortest of ``repeats`` timed calls, and the last result."""
    best = math.inf
    result: object = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - start)
    return best, result


def append_times(url: str, sessions: int, tests: int, first: int) -> list[float]:
    """Seconds of each ``append`` of ``sessions`` sessions of ``tests`` tests (numbered from ``first``)."""
    rng = random.Random(1)
    seconds = []
    with HistoryDatabase.open(url) as db:
        for index in range(first, first + sessions):
            session, runs = make_session(index, tests, rng)
            start = time.perf_counter()
            db.append(session, runs)
            seconds.append(time.perf_counter() - start)
    return seconds


def write_row(target: Target, seconds: Sequence[float], tests: int) -> list[str]:
    rows = 1 + tests * RUNS * (len(FIGURES) + 1) + tests * len(FIGURES)
    return [
        target.name,
        f"{tests} × {RUNS}",
        str(len(FIGURES)),
        f"{rows:,}",
        f"{statistics.median(seconds):.3f}",
        f"{min(seconds):.3f}",
        f"{max(seconds):.3f}",
    ]


def grouped_series(url: str) -> int:
    """What series() of every metric would do without the stored points: every valid run's figures, grouped by
    test, pair, workload, metric and session, the median of each group. The number of points."""
    engine = sa.create_engine(url)
    runs, metrics = schema.RUNS, schema.RUN_METRICS
    query = (
        sa.select(runs.c.session_ref, runs.c.test_id, runs.c.pair, runs.c.workload_hash, metrics.c.name)
        .add_columns(metrics.c.value)
        .join(metrics, metrics.c.run_id == runs.c.id)
        .where(runs.c.valid.is_(True), runs.c.side != "B")
    )
    groups: dict[tuple[Any, ...], dict[int, list[float]]] = {}
    try:
        with engine.connect() as conn:
            for session_ref, test_id, pair, workload_hash, name, value in conn.execute(query):
                by_session = groups.setdefault((test_id, pair, workload_hash, name), {})
                by_session.setdefault(session_ref, []).append(value)
    finally:
        engine.dispose()
    return sum(len([statistics.median(v) for v in by_session.values()]) for by_session in groups.values())


def read_speed(target: Target, sessions: int) -> tuple[list[list[str]], float, float]:
    """The read rows, the build time and series()' time of every metric."""
    rng = random.Random(2)
    with HistoryDatabase.open(target.url) as db:
        start = time.perf_counter()
        for index in range(sessions):
            db.append(*make_session(index, 1, rng))
        build_s = time.perf_counter() - start
        since = T0 + datetime.timedelta(hours=int(sessions * 0.9))
        queries: list[tuple[str, Callable[[], object]]] = [
            ("`series()`, every metric", db.series),
            ("`series(metrics=…)`, `history changes`' default 6", lambda: db.series(metrics=CHANGES_METRICS)),
            ("`series(since=…)`, every metric of the last 10 %", lambda: db.series(since=since)),
            (
                "`session_values()`, one test and metric (50 sessions)",
                lambda: db.session_values(
                    test_id="perf/test_serving.py::test_workload[000]",
                    pair=PAIR,
                    workload_hash=f"{0:012x}",
                    epoch_key="0f1e2d3c4b5a",
                    metric="median_tpot_ms",
                ),
            ),
            ("`gating_metrics()`, every test", db.gating_metrics),
        ]
        rows = []
        all_metrics_s = math.nan
        for name, call in queries:
            seconds, result = best_of(3, call)
            if name.startswith("`series()`"):
                all_metrics_s = seconds
            if isinstance(result, dict):
                series, points = "–", f"{len(result)} test(s)"
            elif name.startswith("`session_values"):
                assert isinstance(result, list)
                series, points = "–", f"{sum(len(v) for v in result)} values"
            else:
                assert isinstance(result, list)
                series, points = str(len(result)), f"{sum(len(s.points) for s in result):,}"
            rows.append([target.name, f"{sessions:,}", name, series, points, f"{seconds:.3f}"])
    seconds, found = best_of(1, lambda: grouped_series(target.url))
    grouped = "without stored points: every run's figures grouped"
    rows.append([target.name, f"{sessions:,}", grouped, "–", f"{found:,}", f"{seconds:.3f}"])
    return rows, build_s, all_metrics_s


def drop_tables(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        schema.METADATA.drop_all(engine)
    finally:
        engine.dispose()


def postgres_target(url: str) -> Target:
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            existing = [name for name in sa.inspect(conn).get_table_names() if name.startswith("llmperf_")]
            version = conn.exec_driver_sql("SHOW server_version").scalar_one()
    finally:
        engine.dispose()
    if existing:
        raise SystemExit(f"--postgres-url {display_url(url)} holds history tables already ({', '.join(existing)})")
    return Target(f"PostgreSQL {str(version).split()[0]}", url)


def shown_word(word: str, url: str | None) -> str:
    """A word of the command line as the report shows it: the PostgreSQL URL without its password."""
    if url and word in (url, f"--postgres-url={url}"):
        return word.replace(url, display_url(url))
    return word


# --- the report --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 sessions of 10 tests, 300 to read")
    parser.add_argument("--sessions", type=int, default=None, help="sessions written and timed (default 7; quick 2)")
    parser.add_argument("--tests", type=int, default=None, help="tests per written session (default 100; quick 10)")
    parser.add_argument(
        "--series-sessions", type=int, default=None, help="sessions of the read test (default 10000; quick 300)"
    )
    parser.add_argument("--postgres-url", default=None, help="also measure this PostgreSQL database (emptied after)")
    parser.add_argument("--out", type=Path, default=COMMITTED, help="the report (not written by a quick run)")
    args = parser.parse_args(argv)
    sessions = args.sessions or (2 if args.quick else 7)
    tests = args.tests or (10 if args.quick else 100)
    series_sessions = args.series_sessions or (300 if args.quick else 10_000)
    words = [shown_word(word, args.postgres_url) for word in (sys.argv[1:] if argv is None else argv)]
    command = " ".join(["python benchmarks/history_write.py", *words])

    started = time.perf_counter()
    write_rows: list[list[str]] = []
    large_rows: list[list[str]] = []
    read_rows: list[list[str]] = []
    builds: list[str] = []
    medians: list[float] = []
    series_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="llmperf-history-bench-") as tmp:
        targets = [Target("SQLite", f"sqlite:///{Path(tmp, 'write.db').as_posix()}")]
        if args.postgres_url:
            targets.append(postgres_target(args.postgres_url))
        for target in targets:
            print(f"{target.name}: writing {sessions} sessions of {tests} tests", file=sys.stderr)
            seconds = append_times(target.url, sessions, tests, first=0)
            write_rows.append(write_row(target, seconds, tests))
            medians.append(statistics.median(seconds))
            read_target = target
            if target.name == "SQLite":
                read_target = Target("SQLite", f"sqlite:///{Path(tmp, 'read.db').as_posix()}")
            else:
                drop_tables(target.url)
            print(f"{target.name}: reading {series_sessions} sessions", file=sys.stderr)
            rows, build_s, series_s[target.name] = read_speed(read_target, series_sessions)
            read_rows += rows
            builds.append(f"{target.name} {build_s:.0f} s ({build_s / series_sessions * 1000:.1f} ms a session)")
            print(f"{target.name}: writing {sessions} sessions onto {series_sessions} stored", file=sys.stderr)
            seconds = append_times(read_target.url, sessions, tests, first=series_sessions)
            large_rows.append([target.name, f"{series_sessions:,}", *write_row(target, seconds, tests)[1:]])
            medians.append(statistics.median(seconds))
            if target.name != "SQLite":
                drop_tables(target.url)
    elapsed = time.perf_counter() - started

    write_median = max(medians)
    slowest_series = max(series_s.values())
    at_scale = series_sessions >= 10_000
    mode = "QUICK smoke run: too small to judge the targets" if args.quick else "full run"
    versions = f"SQLAlchemy {sa.__version__}, SQLite {sqlite3.sqlite_version}, psycopg {module_version('psycopg')}"
    write_header = ["database", "tests × runs", "figures per run", "rows per session", "s per session", "min", "max"]
    lines = [
        "# History database speed",
        "",
        f"Generated by `{command}` ({mode}), {elapsed:.0f} s, {datetime.date.today().isoformat()}.",
        f"Machine: {machine_line()}; commit {git_commit()}; {versions}.",
        "",
        "## Write",
        "",
        f"One `append` per session into a new database, {sessions} sessions; rows written per session: sessions,",
        "runs, run figures (long form) and one point per test and metric (the session's median).",
        "",
        markdown_table(write_header, write_rows),
        "",
        f"The same {sessions} sessions appended onto the read database below ({series_sessions:,} sessions stored,",
        "after its reads):",
        "",
        markdown_table([write_header[0], "sessions stored", *write_header[1:]], large_rows),
        "",
        "## Read",
        "",
        f"{series_sessions:,} sessions of 1 test × {RUNS} runs × {len(FIGURES)} figures, built with `append`: "
        + "; ".join(builds)
        + ". Best of 3 (the read without stored points: one).",
        "",
        markdown_table(["database", "sessions", "query", "series", "points", "s"], read_rows),
        "",
        "## Targets",
        "",
        f"- {'MET' if write_median < 1 else 'MISSED'}: < 1 s per session of {tests} tests × {RUNS} runs written "
        f"(median, slowest database, new or with {series_sessions:,} sessions stored: {write_median:.3f} s)",
        f"- {'MET' if slowest_series < 5 and at_scale else 'MISSED' if at_scale else 'NOT MEASURED'}: `series()` "
        f"of every metric < 5 s at 10,000 sessions ({series_sessions:,} sessions: {slowest_series:.2f} s)",
    ]
    if args.quick:
        lines += ["", "(QUICK run: too few sessions for the MET/MISSED lines to mean anything)"]
    publish_report("\n".join(lines), args.out, quick=args.quick, committed=COMMITTED)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
