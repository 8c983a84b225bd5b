"""Every exception and warning pytest-llmperf raises on purpose; ``pytest_llmperf`` re-exports them.

Every message ends with what to do next, so a failing CI log is actionable.

    LLMPerfError
    ├── SpecError (ValueError)          a workload, marker kwarg or option is invalid
    ├── EndpointError                   the server cannot be reached or answered the control plane wrongly
    ├── StreamError                     one streamed response is wrong (malformed, error chunk, empty, cut short,
    │                                   not SSE); recorded as that request's failure, never escapes a run
    ├── ServerError                     a spawned server failed
    │   ├── ServerExitedError           the process exited before/while serving
    │   │   └── ServerProcessExited     the same, with returncode, log_tail and log_path as attributes
    │   │       └── PortInUseError      it could not bind its port (or something already listens there)
    │   └── ServerStartTimeout          it never became ready before the deadline
    ├── BaselineError                   a stored baseline cannot be read or written
    ├── HistoryError                    the history database cannot be opened, migrated, read or written
    ├── ClientShardError                a client process or Ray actor of a scaled-out run failed or disagreed
    └── DocumentError                   ``python -m pytest_llmperf.pairs``: a file is not a session document

    RunInterrupted (KeyboardInterrupt)  Ctrl-C during a run; carries what was measured so far

    LLMPerfWarning (UserWarning)        base of the warnings, to filter them all at once
    ├── LLMPerfConfigWarning            an option that probably does not do what was meant (unset key variable)
    ├── LLMPerfLimitWarning             a workload may exceed this machine's limits (open files, ports)
    ├── LLMPerfDatasetWarning           a dataset file has fewer usable prompts than a run sends: prompts repeat
    └── LLMPerfInconclusive             a verdict stayed open within its run budget (--llmperf-inconclusive=warn)

Not here, on purpose, as private to the code that raises them: ``_Shape`` (``client/sse.py``) and ``_Problem``
(``judge/baseline.py``) never leave their module, which turns them into a StreamError or a BaselineError;
``_SchemaMismatch`` (``judge/baseline.py``) is a BaselineError that also carries the schema version found, for
the update to decide on; ``ApiError`` (``sim/app.py``) lives inside the simulator process and only ever becomes
an HTTP error response.
"""

from __future__ import annotations

# Not ``typing.TYPE_CHECKING``: importing typing would be most of this package's import time. Type checkers
# recognise the name.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

__all__ = [
    "BaselineError",
    "ClientShardError",
    "DocumentError",
    "EndpointError",
    "HistoryError",
    "LLMPerfConfigWarning",
    "LLMPerfDatasetWarning",
    "LLMPerfError",
    "LLMPerfInconclusive",
    "LLMPerfLimitWarning",
    "LLMPerfWarning",
    "PortInUseError",
    "RunInterrupted",
    "ServerError",
    "ServerExitedError",
    "ServerProcessExited",
    "ServerStartTimeout",
    "SpecError",
    "StreamError",
]


class LLMPerfError(Exception):
    """Base class of every error the plugin raises on purpose."""


class SpecError(LLMPerfError, ValueError):
    """A workload, marker kwarg or option value is invalid."""


class EndpointError(LLMPerfError):
    """The inference server is unreachable or answered the control plane wrongly."""


class StreamError(LLMPerfError):
    """The stream itself is wrong (malformed, an error chunk, empty, cut short, not SSE at all); ``kind`` names
    the failure."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ServerError(LLMPerfError):
    """A server the plugin spawned failed."""


class ServerExitedError(ServerError):
    """The spawned server process exited."""


class ServerProcessExited(ServerExitedError):
    """:class:`ServerExitedError` with its facts as attributes, for callers that attach them to reports."""

    def __init__(
        self, message: str, returncode: int | None = None, log_tail: str = "", log_path: Path | None = None
    ) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail
        self.log_path = log_path


class PortInUseError(ServerProcessExited):
    """The server could not bind its port because something else holds it (``returncode`` is ``None``
    when this was found before the start)."""


class ServerStartTimeout(ServerError):
    """The spawned server never became ready before its deadline."""


class BaselineError(LLMPerfError):
    """A baseline file cannot be read or written."""


class HistoryError(LLMPerfError):
    """The history database (``--llmperf-history``) cannot be opened, migrated, read or written. Its message
    names the database with any password hidden."""


class ClientShardError(LLMPerfError):
    """A shard of a scaled-out client (``--llmperf-client-procs``, ``--llmperf-ray``) could not run its share."""


class DocumentError(LLMPerfError):
    """A file that is not a readable session document; the message says which and why."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run. ``partial`` holds the records measured so far, so nothing is lost."""

    def __init__(self, partial: Any) -> None:
        super().__init__("run interrupted; partial results kept")
        self.partial = partial


class LLMPerfWarning(UserWarning):
    """Base class of every warning the plugin issues."""


class LLMPerfConfigWarning(LLMPerfWarning):
    """An option that does not stop the run but probably does not do what was meant (an unset key variable)."""


class LLMPerfLimitWarning(LLMPerfWarning):
    """A workload that may exceed this machine's limits (e.g. more requests in flight than open files allowed)."""


class LLMPerfDatasetWarning(LLMPerfWarning):
    """A dataset file left fewer usable prompts (after its length filters) than a run sends, so prompts repeat."""


class LLMPerfInconclusive(LLMPerfWarning):
    """A perf test whose verdict stayed open within its run budget (``--llmperf-inconclusive=warn``)."""
