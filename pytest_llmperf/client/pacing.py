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
    """About ``per_iteration`` callers of :meth:`wait` go on per event-loop iteration, first come first served.

    A waiter released by one iteration's refill runs in the next one, and the refill itself runs somewhere among
    that iteration's callbacks, so the bound is loose: never more than ``2 * per_iteration`` in one iteration.
    That is enough to cut a wave of hundreds of sends into batches with socket reads in between.
    """

    def __init__(self, per_iteration: int) -> None:
        if per_iteration < 1:
            raise ValueError(f"per_iteration must be >= 1, got {per_iteration}")
        self._per_iteration = per_iteration
        self._left = per_iteration
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._released = 0  # waiters released by the last refill, going on in the next iteration
        self._refill_due = False
        self.held_back = 0  # waits that had to wait for a later iteration

    async def wait(self) -> None:
        # Nobody may pass ahead of a waiter, queued or released but not yet resumed.
        if self._left > 0 and not self._waiting and not self._released:
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
        # The waiters released last time were woken before this callback (both via call_soon, in order): they
        # have gone on in this iteration and count against it.
        went_on, self._released = self._released, 0
        self._left = max(0, self._per_iteration - went_on)
        while self._released < self._per_iteration and self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # a waiter cancelled meanwhile (Ctrl-C) gives its place up
                waiter.set_result(None)
                self._released += 1
        if self._waiting or self._released or self._left < self._per_iteration:
            self._schedule_refill()
