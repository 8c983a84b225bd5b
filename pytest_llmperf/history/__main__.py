"""``python -m pytest_llmperf.history``: read the history database the plugin writes with ``--llmperf-history``.

    changes   persistent shifts per test and metric (exit 1: a gating metric got worse since the last ack)
    ack       acknowledge the changes up to now (or --until) of matching tests and metrics
    report    a self-contained HTML trend report
    import    load --llmperf-json documents and baseline directories into the database

The database is ``--db URL``, else the ``LLMPERF_HISTORY`` environment variable, else
``sqlite:///.llmperf/history.db`` under the current directory (where ``--llmperf-history`` alone writes when
pytest's rootdir is that directory).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.errors import BaselineError, HistoryError
from pytest_llmperf.history.records import parse_time

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pytest_llmperf.history.database import HistoryDatabase
    from pytest_llmperf.history.model import Change, Series

DEFAULT_DB = "sqlite:///.llmperf/history.db"
_EXTRA_MODULES = frozenset({"otava", "matplotlib", "sqlalchemy", "psycopg"})  # the extra history-analysis
ENV_DB = "LLMPERF_HISTORY"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.command(args))
    except (HistoryError, BaselineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _EXTRA_MODULES:
            raise
        print(
            f"error: {exc.name} is not installed; the history commands need the extra: "
            'pip install "pytest-llmperf[history-analysis]"',
            file=sys.stderr,
        )
        return 2


# --- commands ------------------------------------------------------------------------------------------------


def _changes(args: argparse.Namespace) -> int:
    from pytest_llmperf.history.changes import format_changes, should_fail

    with _database(args, write=False) as database:
        _, changes = _found(database, args)
        acks = database.acks()
    failing = should_fail(changes, acks, fail_on="any" if args.fail_on == "any" else "worse")
    for line in format_changes(changes, acks):
        print(line)
    if args.fail_on == "never" or not failing:
        return 0
    print(
        f"\n{len(failing)} unacknowledged change(s) in a gating metric"
        + (" for the worse" if args.fail_on == "worse" else "")
        + ": review them, then `python -m pytest_llmperf.history ack --reason ...` (same selection)",
        file=sys.stderr,
    )
    return 1


def _ack(args: argparse.Namespace) -> int:
    """Acknowledge the changes found now in the selection (each one by its series and session): a change that
    appears later is new and fails ``changes`` again."""
    from pytest_llmperf.history.changes import acknowledge, format_changes, unacknowledged

    now = datetime.now(timezone.utc)
    by = args.by or os.environ.get("USER") or None
    with _database(args, write=True) as database:
        _, changes = _found(database, args)
        new = unacknowledged(changes, database.acks())
        acks = [acknowledge(change, by=by, reason=args.reason, now=now) for change in new]
        for ack in acks:
            database.add_ack(ack)
    for line in format_changes(new, acks):
        print(line)
    print(f"acknowledged {len(acks)} change(s)" + (f" ({len(changes) - len(new)} were already)" if changes else ""))
    return 0


def _found(database: HistoryDatabase, args: argparse.Namespace) -> tuple[list[Series], list[Change]]:
    """The selected series and their changes, oldest first, each gating as its test's latest verdict gated."""
    from pytest_llmperf.history.changes import find_changes

    gating = database.gating_metrics()
    series = database.series(test_pattern=args.test, metrics=_metrics(args, gating), since=args.since, pair=args.pair)
    changes = [
        change
        for s in series
        for change in find_changes(s, gating=s.key.metric in gating[s.key.test_id] if s.key.test_id in gating else None)
    ]
    changes.sort(key=lambda c: c.at)
    sessions = len({p.session_id for s in series for p in s.points})
    print(f"{len(series)} series over {sessions} session(s): {len(changes)} change(s)")
    return series, changes


def _report(args: argparse.Namespace) -> int:
    from pytest_llmperf.history.sweeps import sweep_curves
    from pytest_llmperf.history.trend import write_trend

    with _database(args, write=False) as database:
        series, changes = _found(database, args)
        sweep_series = database.series(test_pattern=args.test, metrics=SWEEP_METRICS, since=args.since, pair=args.pair)
        workloads = database.workloads({s.key.workload_hash for s in sweep_series})
    sweeps = sweep_curves(sweep_series, workloads, chosen=args.sweep or ())
    write_trend(args.out, series, changes, sweeps)
    print(f"trend report of {len(series)} series ({len(sweeps)} sweep(s)) written to {args.out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from pytest_llmperf.history.importing import import_paths

    with _database(args, write=True) as database:
        summary = import_paths(database, args.paths)
    print(summary)
    return 0


# --- arguments -----------------------------------------------------------------------------------------------

SWEEP_METRICS = ("interactivity", "output_throughput_per_gpu", "output_throughput")


def _metrics(args: argparse.Namespace, gating: Mapping[str, frozenset[str]]) -> Sequence[str] | None:
    """The metrics asked for; by default those that gate: by default (in both compat spellings) and as the tests'
    stored verdicts gated (a test that made p99 TTFT gating)."""
    if args.all_metrics:
        return None
    if args.metric:
        return list(args.metric)
    from pytest_llmperf.judge.verdict import DEFAULT_GATING, METRICS

    defaults = {METRICS[name].key(compat) for name in DEFAULT_GATING for compat in ("vllm", "sglang")}
    return sorted(defaults.union(*gating.values()))


class _database:
    """The database named by the arguments, closed on exit: read-only for ``changes`` and ``report`` (a missing
    database is an error there, never an empty history that passes)."""

    def __init__(self, args: argparse.Namespace, *, write: bool) -> None:
        self._url = _url(args.db or os.environ.get(ENV_DB) or DEFAULT_DB)
        self._write = write

    def __enter__(self) -> HistoryDatabase:
        from pytest_llmperf.history.database import HistoryDatabase

        self._database = HistoryDatabase.open(self._url, write=self._write)
        return self._database

    def __exit__(self, *exc: object) -> None:
        self._database.close()


def _url(text: str) -> str:
    """A database URL; a plain file path is taken as an SQLite file."""
    if "://" in text:
        return text
    return "sqlite:///" + Path(text).as_posix()


def _date(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (expected e.g. 2026-10-01 or 2026-10-01T12:00)"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_llmperf.history",
        description="Performance over time, from the history database pytest --llmperf-history writes.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, help: str, run: object) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(command=run)
        sub.add_argument(
            "--db", metavar="URL", help=f"database URL or SQLite file (default: ${ENV_DB}, else {DEFAULT_DB})"
        )
        return sub

    def selection(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--test", metavar="PATTERN", help="test ids to look at (fnmatch pattern, e.g. '*sweep*')")
        sub.add_argument(
            "--metric",
            action="append",
            metavar="KEY",
            help="summary key, e.g. median_tpot_ms (repeat for more); default: the gating metrics",
        )
        sub.add_argument("--all-metrics", action="store_true", help="every metric the runs recorded")
        sub.add_argument("--since", type=_date, metavar="DATE", help="sessions started on or after DATE")
        sub.add_argument("--pair", metavar="PAIR", help="one hardware-precision pair, e.g. h200x8-fp8")

    changes = command("changes", "Find persistent shifts per test and metric (Apache Otava's E-Divisive).", _changes)
    selection(changes)
    changes.add_argument(
        "--fail-on",
        choices=("worse", "any", "never"),
        default="worse",
        help="exit 1 on an unacknowledged change of a gating metric: for the worse (default), in any direction, never",
    )

    ack = command(
        "ack",
        "Acknowledge the changes `changes` finds now in the selection, so that it no longer fails on them "
        "(a change found later is new).",
        _ack,
    )
    selection(ack)
    ack.add_argument("--by", metavar="NAME", help="who acknowledges (default: $USER)")
    ack.add_argument("--reason", required=True, help="why, e.g. 'expected: engine upgrade to 0.12'")

    report = command("report", "Write a self-contained HTML trend report.", _report)
    report.add_argument("out", type=Path, metavar="OUT.html")
    selection(report)
    report.add_argument(
        "--sweep",
        action="append",
        metavar="DATE|VERSION",
        help="overlay a concurrency sweep's curve of the last session on DATE, or with engine VERSION (repeat; "
        "default: its first and last session)",
    )

    load = command("import", "Load --llmperf-json documents and baseline directories (or files).", _import)
    load.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    return parser


if __name__ == "__main__":
    sys.exit(main())
