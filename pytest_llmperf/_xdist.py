"""pytest-xdist glue, registered only when xdist is installed: hand the run directory and the session id to every
worker."""

from __future__ import annotations

from typing import Any

from pytest_llmperf.session import RUN_DIR_KEY, SESSION_ID_KEY, LLMPerfSession


class XdistHooks:
    def __init__(self, session: LLMPerfSession) -> None:
        self._session = session

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[RUN_DIR_KEY] = str(self._session.run_dir)
        node.workerinput[SESSION_ID_KEY] = self._session.session_id
