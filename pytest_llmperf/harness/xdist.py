"""Where this process stands under pytest-xdist, and the glue that tells the workers.

Without xdist there is one process, the controller. With it, workers run the tests and the controller collects
their results (``report.llmperf``), writes every output file and, at the end, stops the servers the workers
shared. :class:`XdistRole` answers "am I a worker, which one, where is the run directory" for the other harness
objects; :class:`XdistHooks` (registered only when xdist is installed) hands the run directory, the session id
and the controller's pid (the owner on record of a shared server) to every worker.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_llmperf.harness.session import LLMPerfSession

RUN_DIR_KEY = "llmperf_run_dir"
CONTROLLER_PID_KEY = "llmperf_controller_pid"  # the owner on record of a server the workers share
SESSION_ID_KEY = "llmperf_session_id"


class XdistRole:
    """This process's role: the controller (also the only process without xdist) or worker ``gwN``."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._run_dir: Path | None = None

    @property
    def _workerinput(self) -> dict[str, Any] | None:
        found: dict[str, Any] | None = getattr(self._config, "workerinput", None)
        return found

    @property
    def is_worker(self) -> bool:
        return hasattr(self._config, "workerinput")

    @property
    def worker_id(self) -> str | None:
        return str(self._workerinput["workerid"]) if self._workerinput else None

    @property
    def controller_pid(self) -> int | None:
        """The controller's pid, in a worker (None in the controller)."""
        found = (self._workerinput or {}).get(CONTROLLER_PID_KEY)
        return int(found) if found is not None else None

    @property
    def session_id(self) -> str | None:
        """The controller's session id, in a worker (None in the controller, which makes its own)."""
        found = (self._workerinput or {}).get(SESSION_ID_KEY)
        return str(found) if found else None

    @property
    def run_dir(self) -> Path:
        """A directory shared by the controller and its workers (locks, the shared servers' state, partial runs);
        made on first use."""
        if self._run_dir is None:
            given = (self._workerinput or {}).get(RUN_DIR_KEY)
            self._run_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="pytest-llmperf-"))
        return self._run_dir

    @property
    def made_run_dir(self) -> Path | None:
        """The run directory if this process has used it, else None (then there is nothing to clean up)."""
        return self._run_dir


class XdistHooks:
    def __init__(self, session: LLMPerfSession) -> None:
        self._session = session

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[RUN_DIR_KEY] = str(self._session.role.run_dir)
        node.workerinput[SESSION_ID_KEY] = self._session.session_id
        node.workerinput[CONTROLLER_PID_KEY] = os.getpid()

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None, None, None]:
        """However the other finish hooks end (an interrupt in xdist's own teardown, say), the controller stops the
        shared server and removes the run directory; normally the session has done so already."""
        try:
            return (yield)
        finally:
            if not self._session.role.is_worker:
                self._session.close_run_dir(session)
