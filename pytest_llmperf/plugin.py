"""pytest entry point (``pytest11: llmperf``): hooks only, cheap to import.

numpy, scipy, httpx and aiohttp are imported inside the functions that use them, so having the plugin
installed costs unrelated pytest runs nothing.
"""

from __future__ import annotations

import pytest

from pytest_llmperf import options
from pytest_llmperf.harness.fixtures import SESSION_KEY, llmperf, llmperf_compare_server, llmperf_server
from pytest_llmperf.harness.markers import MARKER_HELP
from pytest_llmperf.harness.server_manager import check_compare_target
from pytest_llmperf.harness.session import LLMPerfSession

__all__ = ["llmperf", "llmperf_compare_server", "llmperf_server"]


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_llmperf import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.register(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = options.resolve(config)
    check_compare_target(settings)
    session = LLMPerfSession(config, settings)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "llmperf-session")
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_llmperf.harness.xdist import XdistHooks

        config.pluginmanager.register(XdistHooks(session), "llmperf-xdist")


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    warnings = [f"llmperf: warning: {w}" for w in config.stash.get(options.HEADER_WARNINGS, [])]
    return [*warnings, *_target_lines(config)] or None


def _target_lines(config: pytest.Config) -> list[str]:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return []
    s = session.settings
    if s.endpoint is None and s.server is None and s.compare is None:
        return []
    from pytest_llmperf.spec import is_url, redact_url

    target = redact_url(s.endpoint) if s.endpoint else f"profile {s.server or 'llamacpp-tiny (embedded default)'}"
    if s.compare is not None:
        other = redact_url(s.compare) if is_url(s.compare) else f"profile {s.compare}"
        return [f"llmperf: A/B mode, A = {target}, B = {other} (judged B vs A)"]
    return [f"llmperf: {target}, baseline pair {session.book.pair}"]


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.servers.release_sigterm()
        config.pluginmanager.unregister(session)
        del config.stash[SESSION_KEY]
