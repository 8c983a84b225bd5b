"""pytest-xdist glue, registered only when xdist is installed: hand the run directory to every worker."""

from __future__ import annotations

from typing import Any

from pytest_llmperf.session import RUN_DIR_KEY, LLMPerfSession


class XdistHooks:
    def __init__(self, session: LLMPerfSession) -> None:
        self._session = session

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[RUN_DIR_KEY] = str(self._session.run_dir)
