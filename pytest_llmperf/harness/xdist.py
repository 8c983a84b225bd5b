"""pytest-xdist glue, registered only when xdist is installed: hand the run directory, the session id and the
controller's pid (the owner on record of a shared server) to every worker."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

from pytest_llmperf.harness.session import CONTROLLER_PID_KEY, RUN_DIR_KEY, SESSION_ID_KEY, LLMPerfSession


class XdistHooks:
    def __init__(self, session: LLMPerfSession) -> None:
        self._session = session

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[RUN_DIR_KEY] = str(self._session.run_dir)
        node.workerinput[SESSION_ID_KEY] = self._session.session_id
        node.workerinput[CONTROLLER_PID_KEY] = os.getpid()

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None, None, None]:
        """However the other finish hooks end (an interrupt in xdist's own teardown, say), the controller stops the
        shared server and removes the run directory; normally the session has done so already."""
        try:
            return (yield)
        finally:
            if not self._session.is_worker:
                self._session.close_run_dir(session)
