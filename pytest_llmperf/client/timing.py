"""Waiting for a deadline on an event loop more precisely than its timers allow.

Event-loop timers count whole milliseconds (epoll's timeout, libuv's clock), so a timer alone wakes 0.3–1 ms
late. :func:`sleep_until` leaves the last ``spin_s`` to a loop of ``sleep(0)``, which still polls the sockets,
so I/O goes on meanwhile; the cost is the CPU of that stretch.
"""

from __future__ import annotations

import asyncio
from time import perf_counter


async def sleep_until(deadline: float, spin_s: float = 0.0) -> None:
    """Sleep until ``deadline`` (``perf_counter`` seconds): never return early, always yield once."""
    remaining = deadline - perf_counter()
    while remaining > spin_s:
        await asyncio.sleep(remaining - spin_s)
        remaining = deadline - perf_counter()
    await asyncio.sleep(0)
    while perf_counter() < deadline:
        await asyncio.sleep(0)


async def poll_until(stop: asyncio.Event) -> None:
    """Keep the loop polling (never sleeping in epoll) until ``stop`` is set.

    An idle loop sleeps in the kernel, and on some virtual machines a sleeping CPU takes up to a millisecond to
    wake when data arrives; a loop that never sleeps reads it at once.
    """
    while not stop.is_set():
        await asyncio.sleep(0)
