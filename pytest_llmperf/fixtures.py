"""The fixtures users write tests with: ``llmperf_server`` (session) and ``llmperf`` (function)."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmperf.errors import EndpointError, LLMPerfError, RunInterrupted
from pytest_llmperf.markers import build_workload, merge
from pytest_llmperf.session import RESULTS_KEY, LLMPerfSession
from pytest_llmperf.spec import Endpoint

SESSION_KEY = pytest.StashKey[LLMPerfSession]()

_NO_SERVER = (
    "no inference server for perf tests: pass --llmperf-endpoint=URL to attach to a running OpenAI-compatible server"
)


def attach(session: LLMPerfSession, url: str) -> Endpoint:
    """Wait for the server at ``url``, pick the model, and read what it says about its engine."""
    from pytest_llmperf import server

    settings = session.settings
    server.probe(url, timeout_s=settings.ready_timeout_s, api_key=settings.api_key)
    model = settings.model
    if model is None:
        models = server.fetch_models(url, api_key=settings.api_key)
        if not models:
            raise EndpointError(f"{url}/v1/models lists no model; pass --llmperf-model=NAME")
        model = models[0]
    info = server.engine_info(url, api_key=settings.api_key)
    return Endpoint(
        url=url,
        model=model,
        api_key=settings.api_key,
        engine=str(info.get("engine") or "unknown"),
        engine_version=info.get("version"),
    )


@pytest.fixture(scope="session")
def llmperf_server(request: pytest.FixtureRequest) -> Endpoint:
    """The server under test: attached with ``--llmperf-endpoint``."""
    session = request.config.stash[SESSION_KEY]
    url = session.settings.endpoint
    if url is None:
        pytest.skip(_NO_SERVER)
    try:
        endpoint = attach(session, url)
    except LLMPerfError as exc:
        pytest.fail(str(exc), pytrace=False)
    session.endpoint_info = endpoint.public_dict()
    return endpoint


class LLMPerf:
    """Runs the test's workload against the server: ``llmperf.run(**overrides) -> Result``."""

    def __init__(self, item: pytest.Item, session: LLMPerfSession, endpoint: Endpoint) -> None:
        self._item = item
        self._session = session
        self.endpoint = endpoint
        self._marker_kwargs = merge(marker.kwargs for marker in item.iter_markers("perf"))

    def run(self, **overrides: Any) -> Any:
        """Run the marker's workload (``overrides`` win) and return its :class:`~pytest_llmperf.runner.Result`."""
        from pytest_llmperf import runner, tokenizer

        try:
            workload = build_workload({"compat": self._session.settings.compat, **self._marker_kwargs}, overrides)
            key = (self.endpoint.url, workload.api, workload.dataset, self._session.settings.tokenizer or "")
            context = self._session.prompt_contexts.get(key)
            if context is None:
                context = tokenizer.prompt_context(
                    workload, self.endpoint, tokenizer_path=self._session.settings.tokenizer
                )
                self._session.prompt_contexts[key] = context
            result = runner.measure(workload, self.endpoint, context)
        except RunInterrupted as interrupted:
            # Ctrl-C skips the call report, so hand the partial result to the session directly.
            partial = runner.summarize(interrupted.partial, self.endpoint)
            self._session.results.append({"nodeid": self._item.nodeid, "outcome": "interrupted", **partial.as_dict()})
            raise
        except LLMPerfError as exc:
            pytest.fail(str(exc), pytrace=False)
        self._record(result)
        return result

    def _record(self, result: Any) -> None:
        self._item.stash.setdefault(RESULTS_KEY, []).append(result.as_dict())
        summary = result.summary
        for key in (
            "completed",
            "failed",
            "median_ttft_ms",
            "median_tpot_ms",
            "median_e2el_ms",
            "output_throughput",
        ):
            if summary.get(key) is not None:
                self._item.user_properties.append((f"llmperf.{key}", summary[key]))


@pytest.fixture
def llmperf(request: pytest.FixtureRequest, llmperf_server: Endpoint) -> LLMPerf:
    """Measure the server under test with the workload of this test's ``perf`` marker."""
    return LLMPerf(request.node, request.config.stash[SESSION_KEY], llmperf_server)
