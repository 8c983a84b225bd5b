"""The load generator watching itself: is the client, not the server, limiting this run?

Three signals, all cheap: how late a timer fires on the event loop (every parsed event delays it), how much
CPU the client process burns per second of wall time, and how long streamed bytes wait unread in the kernel's
socket buffers. One asyncio thread cannot use more than one core, so a client near a full core, or a loop that
fires its timers late, stamps events late and inflates every latency. A client can also fall behind a server
that writes faster than it reads while neither of those shows: its timers fire between its passes over the
sockets, and its CPU stays under the limit when it idles between bursts. The bytes it has not read yet show it;
the server has written them, so their wait is the client's alone, and every event in them is stamped that late.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pytest_llmperf.spec import ClientCheck

# Each tick waits a whole number of milliseconds (loop timers count them), drawn at random so that the unread
# samples cannot lock onto a server's fixed step (a 10 ms tick against 10 ms decode steps would sample the same
# moment of every step).
_TICK_MS = (5, 15)
# Thresholds chosen so that a healthy client on an idle core stays well below them (figures in benchmarks/).
_CPU_FRACTION_LIMIT = 0.85
_LOOP_LAG_P99_LIMIT_MS = 10.0
_DISPATCH_LAG_P99_LIMIT_MS = 10.0
# The mean wait of a streamed byte in its socket's kernel buffer (:class:`Unread`). A client that keeps up waits
# for the CPU's wake-up (up to about a millisecond on a VM) and for its pass over the sockets: 0.8-1.1 ms in
# benchmarks/client_capacity.py's scenario (a) (256 streams) on a 2-vCPU VM, where the p99 stamp lag was about
# 3.5 times the mean, so 3 ms goes with the loop-lag limit's 10 ms at p99. A client that a server outpaces shows
# tens of ms (results/client_capacity.md).
_UNREAD_WAIT_LIMIT_MS = 3.0


class UnreadSource(Protocol):
    """What the connections left unread (:class:`pytest_llmperf.client.feedclock.UnreadBytes`)."""

    def sample(self) -> tuple[int, int]: ...  # (unread bytes over all open connections, open connections)

    def bytes_read(self) -> int: ...

    def late_byte_s(self) -> float: ...  # Σ bytes × their wait behind earlier reads of the same pass


@dataclass(frozen=True, slots=True)
class Unread:
    """How long a run's streamed bytes waited unread in their sockets' kernel buffers, on average.

    Two parts. Between passes of the loop over its ready sockets, by Little's law: the unread bytes sampled at
    each tick (held over the time since the one before), integrated, over the bytes read. Ticks come only
    between passes, and a pass reads every ready socket, so these samples cannot see the bytes that wait while
    a pass reads the sockets before theirs: that wait is counted as each read is stamped (bytes × how much later
    than the pass's start, see :class:`~pytest_llmperf.client.feedclock.ReadyClock`).
    """

    between_passes_ms: float
    within_passes_ms: float
    p99_bytes: float  # of the samples: unread bytes summed over the open connections
    sockets: int  # most connections open at a sample

    @property
    def wait_mean_ms(self) -> float:
        return self.between_passes_ms + self.within_passes_ms


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class LoopMonitor:
    """Samples event-loop lag, process CPU time and, given ``unread``, the sockets' unread bytes between
    :meth:`start` and :meth:`stop`."""

    def __init__(self, unread: UnreadSource | None = None) -> None:
        self._lags_s: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._cpu_start = 0.0
        self._cpu_s = 0.0
        self._source = unread
        self._unread: list[int] = []
        self._unread_byte_s = 0.0  # ∫ unread bytes dt, each sample held back to the one before it
        self._sockets = 0
        self._read_start = 0
        self._read = 0
        self._late_start = 0.0
        self._late = 0.0

    def start(self) -> None:
        self._cpu_start = time.process_time()
        if self._source is not None:
            self._read_start = self._source.bytes_read()
            self._late_start = self._source.late_byte_s()
        self._task = asyncio.ensure_future(self._sample())

    def stop(self) -> None:
        self._cpu_s = time.process_time() - self._cpu_start
        if self._source is not None:
            self._read = self._source.bytes_read() - self._read_start
            self._late = self._source.late_byte_s() - self._late_start
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _sample(self) -> None:
        ticks = random.Random()
        last = time.perf_counter()
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                tick_s = ticks.randint(*_TICK_MS) / 1000
                due = time.perf_counter() + tick_s
                await asyncio.sleep(tick_s)
                now = time.perf_counter()
                self._lags_s.append(max(0.0, now - due))
                if self._source is not None:
                    unread, sockets = self._source.sample()
                    self._unread.append(unread)
                    self._unread_byte_s += unread * (now - last)
                    self._sockets = max(self._sockets, sockets)
                last = now

    def unread(self) -> Unread | None:
        if self._source is None or self._read <= 0:
            return None
        return Unread(
            between_passes_ms=self._unread_byte_s / self._read * 1000,
            within_passes_ms=self._late / self._read * 1000,
            p99_bytes=_quantile(sorted(self._unread), 0.99),
            sockets=self._sockets,
        )

    def check(self, dispatch_lags_s: Sequence[float], *, wall_s: float, busy_poll: bool = False) -> ClientCheck:
        """``busy_poll``: the loop polled on purpose, so a full core of CPU says nothing; the lags still do."""
        return assess(
            self._lags_s, dispatch_lags_s, cpu_s=self._cpu_s, wall_s=wall_s, busy_poll=busy_poll, unread=self.unread()
        )


def assess(
    loop_lags_s: Sequence[float],
    dispatch_lags_s: Sequence[float],
    *,
    cpu_s: float,
    wall_s: float,
    busy_poll: bool = False,
    unread: Unread | None = None,
) -> ClientCheck:
    """The verdict from the figures: client-bound when any of them crosses its limit."""
    lags = sorted(loop_lags_s)
    lag_p99_ms = _quantile(lags, 0.99) * 1000
    dispatch_p99_ms = _quantile(sorted(dispatch_lags_s), 0.99) * 1000
    cpu_fraction = cpu_s / wall_s if wall_s > 0 else 0.0
    reasons = []
    if cpu_fraction >= _CPU_FRACTION_LIMIT and not busy_poll:
        reasons.append(f"client used {cpu_fraction:.0%} of a core (limit {_CPU_FRACTION_LIMIT:.0%})")
    if lag_p99_ms >= _LOOP_LAG_P99_LIMIT_MS:
        reasons.append(f"event-loop lag p99 {lag_p99_ms:.1f} ms (limit {_LOOP_LAG_P99_LIMIT_MS:g} ms)")
    if dispatch_p99_ms >= _DISPATCH_LAG_P99_LIMIT_MS:
        reasons.append(
            f"requests left {dispatch_p99_ms:.1f} ms behind schedule at p99 (limit {_DISPATCH_LAG_P99_LIMIT_MS:g} ms)"
        )
    if unread is not None and unread.wait_mean_ms >= _UNREAD_WAIT_LIMIT_MS:
        reasons.append(
            f"unread stream data waited in socket buffers {unread.wait_mean_ms:.1f} ms on average "
            f"(limit {_UNREAD_WAIT_LIMIT_MS:g} ms): p99 {unread.p99_bytes / 1024:.0f} KiB unread over "
            f"{unread.sockets} sockets"
        )
    return ClientCheck(
        loop_lag_p50_ms=_quantile(lags, 0.5) * 1000,
        loop_lag_p99_ms=lag_p99_ms,
        loop_lag_max_ms=(lags[-1] * 1000) if lags else 0.0,
        client_cpu_s=cpu_s,
        wall_s=wall_s,
        dispatch_lag_p99_ms=dispatch_p99_ms,
        unread_wait_mean_ms=None if unread is None else unread.wait_mean_ms,
        unread_p99_kib=None if unread is None else unread.p99_bytes / 1024,
        unread_sockets=None if unread is None else unread.sockets,
        client_bound=bool(reasons),
        reasons=tuple(reasons),
        busy_poll=busy_poll,
    )
