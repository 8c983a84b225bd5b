"""pytest-llmperf: LLM-serving performance as ordinary pytest tests.

What a test module or ``conftest.py`` imports lives here; the subpackages are the plugin's own business.

pytest imports this package at every start (the plugin's entry point is ``pytest_llmperf.plugin``), also in
sessions that run no perf test, and every subprocess that runs a subpackage (``python -m pytest_llmperf.sim``)
imports it first, so it must stay cheap: the errors (standard library only) load at once, the rest on first
use; ``Result``'s module pulls in the aiohttp load generator.
"""

from __future__ import annotations

from pytest_llmperf.errors import (
    BaselineError,
    ClientShardError,
    DocumentError,
    EndpointError,
    HistoryError,
    LLMPerfConfigWarning,
    LLMPerfDatasetWarning,
    LLMPerfError,
    LLMPerfInconclusive,
    LLMPerfLimitWarning,
    LLMPerfWarning,
    PortInUseError,
    RunInterrupted,
    ServerError,
    ServerExitedError,
    ServerProcessExited,
    ServerStartTimeout,
    SpecError,
    StreamError,
)

# As in errors.py: type checkers treat this name as true, and not importing typing keeps the import cheap.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from pytest_llmperf.harness.runner import Result
    from pytest_llmperf.judge.slo import SloResult
    from pytest_llmperf.judge.verdict import MetricVerdict, Verdict
    from pytest_llmperf.spec import Endpoint, Launch, Workload

__version__ = "0.1.0"

__all__ = [
    "BaselineError",
    "ClientShardError",
    "DocumentError",
    "Endpoint",
    "EndpointError",
    "HistoryError",
    "LLMPerfConfigWarning",
    "LLMPerfDatasetWarning",
    "LLMPerfError",
    "LLMPerfInconclusive",
    "LLMPerfLimitWarning",
    "LLMPerfWarning",
    "Launch",
    "MetricVerdict",
    "PortInUseError",
    "Result",
    "RunInterrupted",
    "ServerError",
    "ServerExitedError",
    "ServerProcessExited",
    "ServerStartTimeout",
    "SloResult",
    "SpecError",
    "StreamError",
    "Verdict",
    "Workload",
    "__version__",
]

# Public name -> module that defines it, imported on first access (PEP 562).
_LAZY = {
    "Endpoint": "pytest_llmperf.spec",
    "Launch": "pytest_llmperf.spec",
    "MetricVerdict": "pytest_llmperf.judge.verdict",
    "Result": "pytest_llmperf.harness.runner",
    "SloResult": "pytest_llmperf.judge.slo",
    "Verdict": "pytest_llmperf.judge.verdict",
    "Workload": "pytest_llmperf.spec",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
