"""Turning Ctrl-C during a run into a cancellation of the run, instead of an exception wherever the loop is.

Python's default SIGINT handler raises ``KeyboardInterrupt`` at whatever line the main thread happens to run.
During a load run that is often inside aiohttp's C HTTP parser, which catches every exception its body
callback raises and turns it into a payload error on that one stream: one request fails as "truncated" and the
run goes on as if nothing had happened. So while a run's loop runs, an interrupt only asks the loop to cancel
the run's task; the loop delivers the cancellation at the next ``await``, where every coroutine expects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar

_T = TypeVar("_T")


@dataclass
class Interrupts:
    """The interrupting signals received while :func:`cancel_on_interrupt` was in force."""

    received: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.received)

    @property
    def name(self) -> str:
        """How the run was stopped, in words for its notes."""
        if self.received and self.received[0] == signal.SIGTERM:
            return "SIGTERM"
        return "Ctrl-C"


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def cancel_on_interrupt(loop: asyncio.AbstractEventLoop, task: asyncio.Future[_T]) -> Iterator[Interrupts]:
    """Within the block, a signal whose handler is Python's default interrupt handler cancels ``task``.

    That covers SIGINT, and SIGTERM while the session maps it to Ctrl-C (see
    :mod:`pytest_llmperf.harness.server_manager`).
    The second interrupt raises ``KeyboardInterrupt`` out of the loop, from a callback of its own, so that it too
    cannot be caught inside a parser; it is for a run whose requests do not wind down. The third raises at once.
    Handlers anybody else installed are left alone, and every handler is put back on leaving. Signal handlers
    can only be set from the main thread; elsewhere the block runs with the signals as they are. ``loop`` must
    stay open until the block ends.
    """
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        interrupts.received.append(signum)
        count = len(interrupts.received)
        if count > 2:
            raise KeyboardInterrupt
        # The handler runs between two bytecodes of whatever the loop is doing: leave the loop's state alone
        # and let it act on its next pass (the thread-safe call also wakes a loop that is waiting).
        loop.call_soon_threadsafe(task.cancel if count == 1 else _raise_interrupt)

    with _replacing_default_handlers(on_interrupt):
        yield interrupts


@contextlib.contextmanager
def deferred(*, reraise: bool = True) -> Iterator[Interrupts]:
    """Within the block, an interrupt (SIGINT, and SIGTERM while mapped to Ctrl-C) waits for the block's end.

    For steps that must not be cut in two: starting a server and putting it on record (cut after the start, the
    server would run unknown to whatever stops servers), and stopping a shared server and removing the run
    directory. On leaving, a held interrupt raises ``KeyboardInterrupt`` if ``reraise``; otherwise the caller
    reads it from the yielded :class:`Interrupts`. Only Python's default interrupt handler is replaced, and only
    in the main thread.
    """
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return

    def hold(signum: int, frame: FrameType | None) -> None:
        interrupts.received.append(signum)

    with _replacing_default_handlers(hold):
        yield interrupts
    if interrupts and reraise:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _replacing_default_handlers(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM where Python's default interrupt handler is installed (a handler someone
    else installed is left alone); the previous handlers are put back on leaving."""
    replaced: dict[signal.Signals, Any] = {}
    try:
        for which in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(which) is signal.default_int_handler:
                replaced[which] = signal.signal(which, handler)
        yield
    finally:
        for which, previous in replaced.items():
            signal.signal(which, previous)


class RemoteInterrupt:
    """An interrupt that comes from another thread rather than a signal: a Ray actor's ``interrupt`` call, whose
    run goes on in a thread of its own where signal handlers cannot be set. It stops the run as Ctrl-C does
    (see :func:`cancel_on_interrupt`); one that comes before the run started stops it at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Interrupts] | None = None
        self._pending: list[int] = []

    def attach(self, loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any], interrupts: Interrupts) -> None:
        with self._lock:
            self._target = (loop, task, interrupts)
            pending, self._pending = self._pending, []
        for signum in pending:
            self.fire(signum)

    def detach(self) -> None:
        with self._lock:
            self._target = None

    def fire(self, signum: int = signal.SIGINT) -> None:
        with self._lock:
            if self._target is None:
                self._pending.append(signum)
                return
            loop, task, interrupts = self._target
            interrupts.received.append(signum)
            if not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)
