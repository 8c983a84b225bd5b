"""``history import``: what a team measured before it kept a history — ``--llmperf-json`` documents and the runs in
``baselines/`` (dated by their ``recorded_at``) — into the database, through the same record builders as a live
session. Importing twice adds nothing: a session already stored is skipped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pytest_llmperf.errors import HistoryError
from pytest_llmperf.history.model import RunRecord, SessionRecord
from pytest_llmperf.history.records import session_of_documents, sessions_in_document, sessions_of_entry
from pytest_llmperf.judge.baseline import read_entries, stable_hash

if TYPE_CHECKING:
    from pytest_llmperf.history.database import HistoryDatabase
    from pytest_llmperf.results import RunDocument


def import_paths(database: HistoryDatabase, paths: Sequence[Path]) -> str:
    """Import every JSON document and baseline file under ``paths``; one line saying what was added."""
    # One session's runs can sit in many files (a baseline file per test module): gathered first, then appended
    # whole, since a session already stored is never added to.
    gathered: dict[str, tuple[SessionRecord, list[RunRecord]]] = {}
    files = undated = 0
    for path in _files(paths):
        files += 1
        found, left_out = _sessions(path)
        undated += left_out
        for session, records in found:
            if session.session_id in gathered:
                known, runs_so_far = gathered[session.session_id]
                gathered[session.session_id] = (_spanning(known, session), [*runs_so_far, *records])
            else:
                gathered[session.session_id] = (session, list(records))
    sessions = runs = skipped = 0
    for session, records in sorted(gathered.values(), key=lambda found: found[0].started_at):
        if database.has_session(session.session_id):
            skipped += 1
            continue
        runs += database.append(session, _unique(records))
        sessions += 1
    if files == 0:
        raise HistoryError(
            f"nothing to import in {', '.join(map(str, paths))}: expected .json documents or .yaml baselines"
        )
    already = f"; {skipped} session(s) already stored (skipped whole)" if skipped else ""
    left = f"; {undated} baseline run(s) without a recorded_at date left out" if undated else ""
    return f"imported {runs} run(s) of {sessions} session(s) from {files} file(s){already}{left}"


def _spanning(a: SessionRecord, b: SessionRecord) -> SessionRecord:
    """One session seen in two files: the span of both, and what either knows."""
    return dataclasses.replace(
        a,
        started_at=min(a.started_at, b.started_at),
        ended_at=max(a.ended_at, b.ended_at),
        git_commit=a.git_commit or b.git_commit,
        plugin_version=a.plugin_version or b.plugin_version,
    )


def _unique(records: Sequence[RunRecord]) -> list[RunRecord]:
    """The same run read twice (a JSON document and the baseline it updated) is stored once."""
    seen: set[tuple[str, str, str, str, int]] = set()
    kept = []
    for record in sorted(records, key=lambda r: r.verdict is None):  # a document's record knows more
        key = (record.test_id, record.pair, record.workload_hash, record.side, record.run_index)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".json", ".yaml") and p.is_file())
        elif path.is_file():
            yield path
        else:
            raise HistoryError(f"{path}: no such file or directory")


def _sessions(path: Path) -> tuple[list[tuple[SessionRecord, list[RunRecord]]], int]:
    """The file's sessions, and how many of its runs could not be placed (baseline runs without a date)."""
    if path.suffix == ".yaml":
        return _baseline_sessions(path)
    return _document_sessions(path), 0


def _document_sessions(path: Path) -> list[tuple[SessionRecord, list[RunRecord]]]:
    """A ``--llmperf-json`` session document: its results by session (a document names the pair at the top)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HistoryError(f"{path}: not a readable JSON document ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), list) or "pair" not in document:
        raise HistoryError(
            f"{path}: not a pytest-llmperf session document (written by --llmperf-json): no pair/results"
        )
    results = [cast("RunDocument", r) for r in document["results"] if isinstance(r, dict)]
    fallback = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    found = []
    for session_id, documents in sessions_in_document(results).items():
        found.append(
            session_of_documents(
                documents,
                # A document without a session id (an old one) is named by its content: imported once.
                session_id=session_id or f"import-{stable_hash(document, 12)}",
                pair=str(document["pair"]),
                plugin_version=_plugin_version(documents),
                git_commit=_git_commit(documents),
                git_branch=None,
                ci=None,
                fallback_time=fallback,
                source="import:json",
            )
        )
    return found


def _baseline_sessions(path: Path) -> tuple[list[tuple[SessionRecord, list[RunRecord]]], int]:
    """A baseline file ``<root>/<pair>/<module path>.yaml``: every entry's runs as the sessions that recorded them."""
    pair, module = _pair_and_module(path)
    found = []
    runs = 0
    for entry in read_entries(path):
        found.extend(sessions_of_entry(entry, test_id=f"{module}::{entry.test_name}", pair=pair))
        runs += len(entry.runs) + sum(len(e["runs"]) for e in entry.previous_epochs)
    return found, runs - sum(len(records) for _, records in found)


def _pair_and_module(path: Path) -> tuple[str, str]:
    """The pair directory a baseline file sits under and its test module's path relative to the rootdir: the
    nearest ancestor named ``<hardware>-<precision>`` below a ``baselines`` directory (else the parent)."""
    parts = path.resolve().parts
    for i in range(len(parts) - 2, -1, -1):
        if i > 0 and parts[i - 1] == "baselines" and "-" in parts[i]:
            return parts[i], "/".join((*parts[i + 1 : -1], path.stem + ".py"))
    return path.parent.name, path.stem + ".py"


def _plugin_version(documents: Sequence[RunDocument]) -> str | None:
    return next((str(v) for d in documents if (v := (d.get("fingerprint") or {}).get("plugin_version"))), None)


def _git_commit(documents: Sequence[RunDocument]) -> str | None:
    return next((str(v) for d in documents if (v := (d.get("fingerprint") or {}).get("git_commit"))), None)
