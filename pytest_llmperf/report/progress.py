"""Live progress of a long run on the terminal: requests done, output chunks per second, elapsed time.

Shown on a TTY only (or with ``--llmperf-progress=on``), rewritten in place at most four times a second, and
written around pytest's output capture so that it reaches the terminal while the test runs.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Protocol

import pytest

_INTERVAL_S = 0.25


class _Capture(Protocol):
    """What is used of pytest's capture manager (its class is not public)."""

    def global_and_fixture_disabled(self) -> AbstractContextManager[None]: ...


class LiveProgress:
    def __init__(self, terminal: pytest.TerminalReporter, capture: _Capture, label: str) -> None:
        self._terminal = terminal
        self._capture = capture
        self._label = label
        self._started = time.perf_counter()
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int | None, events: int) -> None:
        now = time.perf_counter()
        if now - self._last < _INTERVAL_S and done != total:
            return
        self._last = now
        elapsed = now - self._started
        of = f"/{total}" if total is not None else ""
        rate = events / elapsed if elapsed > 0 else 0.0
        self._write(f"  {self._label}: {done}{of} requests · {rate:,.0f} chunks/s · {elapsed:.1f} s")

    def close(self) -> None:
        if self._shown:
            self._write("")

    def _write(self, line: str) -> None:
        self._shown = True
        with self._capture.global_and_fixture_disabled():
            self._terminal.rewrite(line, erase=True)
            if not line:
                self._terminal.rewrite("", erase=True)
