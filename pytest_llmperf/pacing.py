"""Spreading bursts of request sends over event-loop iterations, so the sockets are read in between.

Building and writing one request costs the client about a tenth of a millisecond. When a whole wave of streams
ends in the same decode step (closed loop, equal output lengths: the usual benchmark), every freed worker sends
its next request in the same loop iteration, and no socket is read until the last one is written: at
concurrency 256 that is tens of milliseconds in which every event that arrives is stamped late. With at most
``per_iteration`` sends per iteration the loop polls its sockets between batches. A request held back is only
written later; its clock starts when it is written, so what it measures does not move.
"""

from __future__ import annotations

import asyncio
from collections import deque


class SendPacer:
    """At most ``per_iteration`` callers of :meth:`wait` go on per event-loop iteration, first come first served."""

    def __init__(self, per_iteration: int) -> None:
        if per_iteration < 1:
            raise ValueError(f"per_iteration must be >= 1, got {per_iteration}")
        self._per_iteration = per_iteration
        self._left = per_iteration
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._refill_due = False
        self.held_back = 0  # waits that had to wait for a later iteration

    async def wait(self) -> None:
        if self._left > 0 and not self._waiting:
            self._left -= 1
            self._schedule_refill()
            return
        self.held_back += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._schedule_refill()
        await waiter

    def _schedule_refill(self) -> None:
        # call_soon from inside an iteration runs in the next one, after the loop has polled its sockets.
        if not self._refill_due:
            self._refill_due = True
            asyncio.get_running_loop().call_soon(self._refill)

    def _refill(self) -> None:
        self._refill_due = False
        self._left = self._per_iteration
        while self._left > 0 and self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # a waiter cancelled meanwhile (Ctrl-C) gives its place up
                waiter.set_result(None)
                self._left -= 1
        if self._waiting:
            self._schedule_refill()
