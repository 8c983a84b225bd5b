"""The run-state plugin of one pytest session, kept in ``config.stash`` and registered as a plugin.

:class:`LLMPerfSession` holds the pytest hooks, collects the results, corrects for the session's family of
claims (Holm) and writes the reports. It owns two collaborators, which the fixtures ask directly:
``servers`` (:mod:`~pytest_llmperf.harness.server_manager`: opening A and B, SIGTERM, cores, measurement turns,
prompt calibration) and ``book`` (:mod:`~pytest_llmperf.harness.baseline_book`: baseline views, fingerprints,
updates); ``role`` (:mod:`~pytest_llmperf.harness.xdist`) says whether this process is a worker.

Workers attach each perf test's results to its report as builtins (``report.llmperf``); the controller
collects them from ``pytest_runtest_logreport``, so the same code path works with and without xdist. An
interrupted run gets no report: a worker leaves it in the run directory, where the controller collects it at the
end, so nothing measured is lost. The controller alone writes the output files (and the baseline updates) and
stops a server shared by workers; it handles SIGTERM as Ctrl-C, as does every process while it owns a spawned
server. At its start it stops the servers that sessions killed with SIGKILL left running
(:mod:`pytest_llmperf.servers.registry`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmperf._files import jsonable, write_json_atomic, write_text_atomic
from pytest_llmperf.errors import HistoryError
from pytest_llmperf.harness import server_manager
from pytest_llmperf.harness.baseline_book import BaselineBook
from pytest_llmperf.harness.client_scale import ClientScale
from pytest_llmperf.harness.history_link import HistoryLink
from pytest_llmperf.harness.server_manager import ServerManager
from pytest_llmperf.harness.xdist import XdistRole
from pytest_llmperf.options import Settings

if TYPE_CHECKING:
    from pytest_llmperf.results import RunDocument, SessionDocument

RESULTS_KEY = pytest.StashKey["list[RunDocument]"]()  # a string: results.py is for type checkers only
PARTIAL_DIR = "partial"  # in the run directory: interrupted runs of xdist workers, for the controller

# The embedded engine is a tiny model on one CPU core: published GPU workloads shrink 20× to run in minutes.
EMBEDDED_SCALE = 0.05
# A CPU engine's sessions sit 7-22 % apart (log median TPOT, measured by benchmarks/validate_sessions_llamacpp.py),
# so a 5 % tolerance can never be decided on it. With the session model no tolerance raised a false REGRESSION in
# 180 A/A verdicts; 30 % decided 81 % of them (PASS), 20 % only 60 %, 50 % 94 %: 30 % still flags a change of a
# third and mostly decides.
EMBEDDED_TOLERANCE = 0.3
# Measured on the embedded engine: a session's log TPOT sat 5–16 % from the next session's (3–11 % between the
# runs of one session). A CPU engine on a shared machine drifts far more between server starts than a GPU server.
EMBEDDED_SESSION_SPREAD = 0.10


class LLMPerfSession:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.role = XdistRole(config)
        self.servers = ServerManager(config, settings, self.role)
        self.book = BaselineBook(config, settings, self.servers)
        self.history = HistoryLink(settings.history, config.rootpath)
        self.clients = ClientScale(settings)
        self.results: list[RunDocument] = []
        self.family_size: int | None = None  # gating claims of the session, for the verdict's correction
        self.holm_lines: list[str] = []
        self.written: list[str] = []  # "JSON results PATH" lines for the terminal summary, as JUnit's xml file
        self.unwritten: list[str] = []  # outputs that failed, for the terminal summary (in red)
        self._session_id: str | None = None

    @property
    def session_id(self) -> str:
        """This pytest session's id (the controller's, shared by its xdist workers): the level of the verdict's
        variance model, stored with every baseline run. A worker with a server of its own (GPU sets) is a
        session of its own: its server started apart from the others."""
        if self._session_id is None:
            self._session_id = self.role.session_id or time.strftime("%Y%m%dT%H%M%S-") + secrets.token_hex(3)
        if self.role.is_worker and self.servers.owns_server:
            return f"{self._session_id}-{self.role.worker_id}"
        return self._session_id

    # -- judging defaults: the embedded engine's differ ------------------------------------------------

    @property
    def scale(self) -> float:
        """The ``--llmperf-scale`` factor; ``auto`` is :data:`EMBEDDED_SCALE` on the embedded engine, else 1."""
        if self.settings.scale is not None:
            return self.settings.scale
        return EMBEDDED_SCALE if self.servers.embedded else 1.0

    @property
    def tolerance(self) -> float | None:
        """The global tolerance: ``--llmperf-tolerance``, else :data:`EMBEDDED_TOLERANCE` on the embedded engine."""
        if self.settings.tolerance is not None:
            return self.settings.tolerance
        if self.settings.compare is not None:
            return None  # A and B share this machine and this hour: the per-metric defaults apply
        return EMBEDDED_TOLERANCE if self.servers.embedded else None

    @property
    def session_spread(self) -> float:
        """The between-session SD the verdict assumes below 3 baseline sessions: ``--llmperf-session-spread``,
        else :data:`EMBEDDED_SESSION_SPREAD` on the embedded engine, else the GPU-server prior (3 %)."""
        from pytest_llmperf.judge.stats import SESSION_SD_PRIOR

        if self.settings.session_spread is not None:
            return self.settings.session_spread
        return EMBEDDED_SESSION_SPREAD if self.servers.embedded else SESSION_SD_PRIOR

    # -- results ---------------------------------------------------------------------------------------

    def keep_partial(self, document: RunDocument) -> None:
        """An interrupted run's entry. Its test gets no call report, so it goes into the results here; an xdist
        worker leaves it in the run directory, where the controller collects it at the end (an interrupted
        worker's messages to the controller are not reliable, a file is)."""
        if not self.role.is_worker:
            self.results.append(document)
            return
        run_dir = self.role.run_dir
        if not run_dir.is_dir():
            return  # the controller has finished (and would not read it): making the directory anew would leave it
        (run_dir / PARTIAL_DIR).mkdir(exist_ok=True)
        name = f"{self.role.worker_id}-{time.time_ns()}.json"
        write_text_atomic(run_dir / PARTIAL_DIR / name, json.dumps(document, default=str))

    def close_run_dir(self, session: pytest.Session) -> None:
        """Controller, once the workers are down: collect the interrupted runs they left, stop the shared servers
        and remove the run directory (again: nothing left to do). An interrupt meanwhile waits: cut short, this
        would leave a server running."""
        from pytest_llmperf.client.interrupts import deferred

        run_dir = self.role.made_run_dir
        if run_dir is None:
            return
        with deferred(reraise=False) as interrupts:
            try:
                self.results.extend(_load_partials(run_dir / PARTIAL_DIR))
                server_manager.stop_shared(run_dir)
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
        if interrupts:
            session.exitstatus = pytest.ExitCode.INTERRUPTED

    # -- hooks -----------------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)  # before xdist starts its workers: a bad database stops the session alone
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.role.is_worker:
            return
        self.history.check()
        self.clients.check()
        server_manager.stop_leftovers(self.config)
        if self.config.pluginmanager.has_plugin("dsession") and server_manager.may_spawn(self.settings):
            # The xdist controller stops the workers' shared server: a SIGTERM must reach that teardown too.
            self.servers.handle_sigterm()

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        from pytest_llmperf.judge.verdict import DEFAULT_GATING

        perf_tests = sum(1 for item in items if "llmperf" in getattr(item, "fixturenames", ()))
        self.family_size = max(1, perf_tests) * len(DEFAULT_GATING)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if call.when == "call" and RESULTS_KEY in item.stash:
            report.llmperf = item.stash[RESULTS_KEY]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        results: list[RunDocument] | None = getattr(report, "llmperf", None)
        if report.when == "call" and results:
            for result in results:
                self.results.append({"nodeid": report.nodeid, "outcome": report.outcome, **result})

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.role.is_worker:
            return
        if self.results:
            self._results_summary(terminalreporter)
        for what in self.written:
            terminalreporter.write_sep("-", f"llmperf {what}")
        for what in self.unwritten:
            terminalreporter.write_sep("-", f"llmperf {what}", red=True)

    def _results_summary(self, tr: Any) -> None:
        from pytest_llmperf.report import terminal

        tr.write_sep("=", "llmperf results")
        lines = terminal.render(
            self.results,
            pair=self.book.pair,
            endpoint=self.servers.described.get("A"),
            verbose=self.config.get_verbosity(),
            recording=self.settings.update is not None,
        )
        for text, markup in lines:
            tr.write_line(text, **markup)
        for line in self.holm_lines:
            tr.write_line(line, red=True)
        if self.book.update_lines:
            tr.write_sep("-", f"llmperf baselines updated ({self.book.pair})")
            for line in self.book.update_lines:
                tr.write_line(line, red=line.startswith("NOT "))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        try:
            self.clients.close()
        except Exception as exc:  # the results are still to be written: a failed Ray shutdown must not stop that
            self.unwritten.append(f"the client's Ray actors did not shut down cleanly: {type(exc).__name__}: {exc}")
        if self.role.is_worker:
            self.history.close()
            return
        self.close_run_dir(session)
        failed = False
        if self.settings.update is not None:
            failed |= not self.book.apply_updates(self.results)
        elif any(r.get("verdict") for r in self.results):
            self.holm_lines = _session_holm(self.results)
            failed |= bool(self.holm_lines)
        if failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if not self.results and self.settings.json_path is None and self.settings.report_path is None:
            self.history.close()
            return  # not a perf session: detect no hardware, write nothing
        self._write_reports()
        if self.results and self.history.enabled and not self._record_history() and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self.history.close()

    def _record_history(self) -> bool:
        """Append the session's runs to the history, last, once every file is written; False when it failed."""
        try:
            line = self.history.record(
                self.results, session_id=self.session_id, pair=self.book.pair, git_commit=self.book.git_commit
            )
        except Exception as exc:  # whatever it is: the files are written, and the summary must say it
            kept = " (the JSON file is written: import it later with python -m pytest_llmperf.history import)"
            why = str(exc) if isinstance(exc, HistoryError) else f"{type(exc).__name__}: {exc}"
            self.unwritten.append(f"history NOT written: {why}" + (kept if self.settings.json_path else ""))
            return False
        self.written.append(line)
        return True

    def _write_reports(self) -> None:
        endpoint = self.servers.described.get("A")
        document: SessionDocument = {"pair": self.book.pair, "endpoint": endpoint, "results": self.results}
        if "B" in self.servers.described:
            document["compare"] = self.servers.described["B"]  # A/B mode: B (``endpoint`` is A)
        if self.settings.json_path is not None:
            write_json_atomic(self.settings.json_path, document)
            self.written.append(f"JSON results written to {self.settings.json_path.absolute()}")
        if self.settings.report_path is not None:
            from pytest_llmperf.report.html import write_html

            write_html(self.settings.report_path, jsonable(document))
            self.written.append(f"HTML report written to {self.settings.report_path.absolute()}")
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if step_summary and self.results:
            from pytest_llmperf.report.markdown import step_summary as render_step_summary

            with open(step_summary, "a", encoding="utf-8") as handle:
                handle.write(render_step_summary(self.results, pair=self.book.pair, endpoint=endpoint))


def _session_holm(results: list[RunDocument]) -> list[str]:
    """Holm over every gating claim of the session: a line per regression the tests did not find (each such
    result's verdict is replaced by the adjusted one)."""
    from pytest_llmperf.judge.verdict import REGRESSION, Verdict, apply_holm

    judged = [(r, Verdict.from_dict(r["verdict"])) for r in results if r.get("verdict")]
    adjusted = apply_holm([v for _, v in judged])
    lines = []
    for (result, before), after in zip(judged, adjusted, strict=True):
        if after.status == REGRESSION and before.status != REGRESSION:
            result["verdict"] = after.as_dict()
            lines.append(
                f"{result['nodeid']}: REGRESSION once all {after.family_size} gating claims of the session "
                "are adjusted together (Holm)"
            )
    return lines


def _load_partials(directory: Path) -> list[RunDocument]:
    """The interrupted runs xdist workers left (:meth:`LLMPerfSession.keep_partial`), oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns):
        with contextlib.suppress(OSError, ValueError):
            found.append(json.loads(path.read_text()))
    return found
