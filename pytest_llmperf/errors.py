"""Exceptions raised by pytest-llmperf.

Every message ends with what to do next, so a failing CI log is actionable.

    LLMPerfError
    ├── SpecError (ValueError)      a workload, marker kwarg or option is invalid
    ├── EndpointError               the server cannot be reached or answered wrongly
    ├── ServerError                 a spawned server failed
    │   ├── ServerExitedError       the process exited before/while serving
    │   └── ServerStartTimeout      it never became ready before the deadline
    └── BaselineError               a stored baseline cannot be read or written

    RunInterrupted (KeyboardInterrupt)  Ctrl-C during a run; carries what was measured so far
"""

from __future__ import annotations

from typing import Any


class LLMPerfError(Exception):
    """Base class of every error the plugin raises on purpose."""


class SpecError(LLMPerfError, ValueError):
    """A workload, marker kwarg or option value is invalid."""


class EndpointError(LLMPerfError):
    """The inference server is unreachable or answered the control plane wrongly."""


class ServerError(LLMPerfError):
    """A server the plugin spawned failed."""


class ServerExitedError(ServerError):
    """The spawned server process exited."""


class ServerStartTimeout(ServerError):
    """The spawned server never became ready before its deadline."""


class BaselineError(LLMPerfError):
    """A baseline file cannot be read or written."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run. ``partial`` holds the records measured so far, so nothing is lost."""

    def __init__(self, partial: Any) -> None:
        super().__init__("run interrupted; partial results kept")
        self.partial = partial
