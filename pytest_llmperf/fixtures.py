"""The fixtures users write tests with: ``llmperf_server`` (session) and ``llmperf`` (function)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pytest_llmperf.errors import LLMPerfError, RunInterrupted
from pytest_llmperf.markers import build_workload, merge
from pytest_llmperf.session import RESULTS_KEY, LLMPerfSession
from pytest_llmperf.spec import Endpoint

SESSION_KEY = pytest.StashKey[LLMPerfSession]()


@pytest.fixture(scope="session")
def llmperf_server(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    """The server under test: attached (``--llmperf-endpoint``), spawned from a profile
    (``--llmperf-server``), or the embedded llama.cpp default; stopped at the end if spawned here."""
    session = request.config.stash[SESSION_KEY]
    try:
        endpoint = session.open_server()
    except LLMPerfError as exc:
        session.close_server()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield endpoint
    finally:
        session.close_server()


class LLMPerf:
    """Runs the test's workload against the server: ``llmperf.run(**overrides) -> Result``."""

    def __init__(self, item: pytest.Item, session: LLMPerfSession, endpoint: Endpoint) -> None:
        self._item = item
        self._session = session
        self.endpoint = endpoint
        self._marker_kwargs = merge(marker.kwargs for marker in item.iter_markers("perf"))

    def run(self, **overrides: Any) -> Any:
        """Run the marker's workload (``overrides`` win) and return its :class:`~pytest_llmperf.runner.Result`."""
        from pytest_llmperf import runner, servermetrics

        try:
            workload = build_workload({"compat": self._session.settings.compat, **self._marker_kwargs}, overrides)
            context = self._session.prompt_context(workload, self.endpoint)
            with self._session.measurement_slot() as slot:
                before = servermetrics.scrape(self.endpoint)
                try:
                    result = runner.measure(workload, self.endpoint, context)
                except RunInterrupted as interrupted:
                    # Ctrl-C skips the call report, so hand the partial result to the session directly.
                    partial = runner.summarize(interrupted.partial, self.endpoint)
                    self._session.results.append(
                        {"nodeid": self._item.nodeid, "outcome": "interrupted", **self._document(partial)}
                    )
                    raise
                after = servermetrics.scrape(self.endpoint) if before is not None else None
        except LLMPerfError as exc:
            pytest.fail(str(exc), pytrace=False)
        result.summary["measurement_lock_wait_s"] = slot["wait_s"]
        if before is not None and after is not None:
            result.summary["server_metrics"] = servermetrics.deltas(before, after)
        self._record(result)
        return result

    def _document(self, result: Any) -> dict[str, Any]:
        return {**result.as_dict(), "endpoint": self.endpoint.public_dict()}

    def _record(self, result: Any) -> None:
        document = self._document(result)
        self._item.stash.setdefault(RESULTS_KEY, []).append(document)
        summary = result.summary
        for key in ("completed", "failed", "median_ttft_ms", "median_tpot_ms", "median_e2el_ms", "output_throughput"):
            if summary.get(key) is not None:
                self._item.user_properties.append((f"llmperf.{key}", summary[key]))
        self._item.config.hook.pytest_llmperf_result(item=self._item, result=document)


@pytest.fixture
def llmperf(request: pytest.FixtureRequest, llmperf_server: Endpoint) -> LLMPerf:
    """Measure the server under test with the workload of this test's ``perf`` marker."""
    return LLMPerf(request.node, request.config.stash[SESSION_KEY], llmperf_server)
