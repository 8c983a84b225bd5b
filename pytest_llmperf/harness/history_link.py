"""The session's link to the history database (``--llmperf-history``).

The controller opens it when the session starts, so an unreachable, read-only, corrupt or too-new database is a
usage error before any load; it appends the session's runs at the very end, after the JSON, HTML and baseline
files are written, so a database failure never costs them. Every process (xdist workers too) reads from it the
earlier sessions of a test, which give the verdict its between-session spread while the baseline holds fewer
than three sessions.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_llmperf.errors import HistoryError, LLMPerfConfigWarning

if TYPE_CHECKING:
    from pytest_llmperf.history.database import HistoryDatabase
    from pytest_llmperf.judge.baseline import Fingerprint
    from pytest_llmperf.results import RunDocument


class HistoryLink:
    def __init__(self, url: str | None, rootdir: Path) -> None:
        self._url = url
        self._rootdir = rootdir
        self._database: HistoryDatabase | None = None
        self._unreadable: str | None = None  # why reading failed once (then the verdict's prior stands)
        self.started_at = datetime.now(timezone.utc)

    @property
    def enabled(self) -> bool:
        return self._url is not None

    def check(self) -> None:
        """Controller, at the session's start: open (create, migrate) the database and prove it writable."""
        if self._url is None:
            return
        try:
            self._open(write=True)
        except HistoryError as exc:
            raise pytest.UsageError(f"--llmperf-history: {exc}") from None

    def _open(self, *, write: bool) -> HistoryDatabase:
        """The database, opened once per process: by the controller to write (created, migrated, proven
        writable), by an xdist worker only to read."""
        from pytest_llmperf.history.database import HistoryDatabase

        assert self._url is not None
        if self._database is not None and write and not self._database.writable:
            self._database.close()
            self._database = None
        if self._database is None:
            self._database = HistoryDatabase.open(self._url, write=write)
        return self._database

    def close(self) -> None:
        if self._database is not None:
            self._database.close()
            self._database = None

    def earlier_sessions(
        self, test_id: str, fingerprint: Fingerprint, keys: Sequence[str], exclude_session: str
    ) -> Mapping[str, list[list[float]]]:
        """Per summary key, the values of earlier sessions of this test on the same pair, workload and epoch, one
        list per session; empty without a history (or when it cannot be read: the verdict then assumes its
        prior, as without one)."""
        if self._url is None or self._unreadable is not None:
            return {}
        from pytest_llmperf.history.records import epoch_key

        fields = fingerprint.as_dict()
        try:
            database = self._open(write=False)
            return {
                key: database.session_values(
                    test_id=test_id,
                    pair=f"{fingerprint.hardware}-{fingerprint.precision}",
                    workload_hash=fingerprint.workload_hash,
                    epoch_key=epoch_key(fields),
                    metric=key,
                    exclude_session=exclude_session,
                )
                for key in keys
            }
        except HistoryError as exc:
            self._unreadable = str(exc)
            warnings.warn(
                LLMPerfConfigWarning(
                    f"--llmperf-history: earlier sessions cannot be read ({exc}); verdicts assume the prior "
                    "between-session spread, as without a history"
                ),
                stacklevel=2,
            )
            return {}

    def record(self, documents: Sequence[RunDocument], *, session_id: str, pair: str, git_commit: str | None) -> str:
        """Append the session's runs; the line the terminal summary shows. Raises HistoryError."""
        from pytest_llmperf import __version__
        from pytest_llmperf.history.provenance import ci_run, git_branch
        from pytest_llmperf.history.records import session_of_documents

        session, runs = session_of_documents(
            documents,
            session_id=session_id,
            pair=pair,
            plugin_version=__version__,
            git_commit=git_commit,
            git_branch=git_branch(os.environ, self._rootdir),
            ci=ci_run(os.environ),
            fallback_time=self.started_at,
        )
        database = self._open(write=True)
        written = database.append(session, runs)
        tests = len({run.test_id for run in runs})
        return (
            f"history: {written} run(s) of {tests} test(s) appended to {database.url_for_display} "
            f"(session {session_id})"
        )
