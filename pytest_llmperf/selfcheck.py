"""The load generator watching itself: is the client, not the server, limiting this run?

Two signals, both cheap: how late a 10 ms timer fires on the event loop (every parsed event delays it), and how
much CPU the client process burns per second of wall time. One asyncio thread cannot use more than one core, so
a client near a full core, or a loop that fires its timers late, stamps events late and inflates every latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from pytest_llmperf.spec import ClientCheck

_TICK_S = 0.010
# Thresholds chosen so that a healthy client on an idle core stays well below them (figures in benchmarks/).
_CPU_FRACTION_LIMIT = 0.85
_LOOP_LAG_P99_LIMIT_MS = 10.0
_DISPATCH_LAG_P99_LIMIT_MS = 10.0


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class LoopMonitor:
    """Samples event-loop lag and process CPU time between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self._lags_s: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._cpu_start = 0.0
        self._cpu_s = 0.0

    def start(self) -> None:
        self._cpu_start = time.process_time()
        self._task = asyncio.ensure_future(self._sample())

    def stop(self) -> None:
        self._cpu_s = time.process_time() - self._cpu_start
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _sample(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                due = time.perf_counter() + _TICK_S
                await asyncio.sleep(_TICK_S)
                self._lags_s.append(max(0.0, time.perf_counter() - due))

    def check(self, dispatch_lags_s: Sequence[float], *, wall_s: float, busy_poll: bool = False) -> ClientCheck:
        """``busy_poll``: the loop polled on purpose, so a full core of CPU says nothing; the lags still do."""
        lags = sorted(self._lags_s)
        dispatch = sorted(dispatch_lags_s)
        lag_p99_ms = _quantile(lags, 0.99) * 1000
        dispatch_p99_ms = _quantile(dispatch, 0.99) * 1000
        cpu_fraction = self._cpu_s / wall_s if wall_s > 0 else 0.0
        reasons = []
        if cpu_fraction >= _CPU_FRACTION_LIMIT and not busy_poll:
            reasons.append(f"client used {cpu_fraction:.0%} of a core (limit {_CPU_FRACTION_LIMIT:.0%})")
        if lag_p99_ms >= _LOOP_LAG_P99_LIMIT_MS:
            reasons.append(f"event-loop lag p99 {lag_p99_ms:.1f} ms (limit {_LOOP_LAG_P99_LIMIT_MS:g} ms)")
        if dispatch_p99_ms >= _DISPATCH_LAG_P99_LIMIT_MS:
            reasons.append(
                f"requests left {dispatch_p99_ms:.1f} ms behind schedule at p99 "
                f"(limit {_DISPATCH_LAG_P99_LIMIT_MS:g} ms)"
            )
        return ClientCheck(
            loop_lag_p50_ms=_quantile(lags, 0.5) * 1000,
            loop_lag_p99_ms=lag_p99_ms,
            loop_lag_max_ms=(lags[-1] * 1000) if lags else 0.0,
            client_cpu_s=self._cpu_s,
            wall_s=wall_s,
            dispatch_lag_p99_ms=dispatch_p99_ms,
            client_bound=bool(reasons),
            reasons=tuple(reasons),
            busy_poll=busy_poll,
        )
