"""A loopback OpenAI-compatible streaming server whose timing follows a documented model (a test double).

Tests use it to know the true answer: the intended time of every chunk is kept and served at
``GET /sim/requests``. The timing model is described in :mod:`pytest_llmperf.sim.model`, the faults in
:mod:`pytest_llmperf.sim.faults`, the HTTP side in :mod:`pytest_llmperf.sim.app`.

    with run_in_thread(SimConfig(decode_ms=5)) as url:
        ...  # http://127.0.0.1:<port>

From a shell: ``python -m pytest_llmperf.sim --port 0`` prints ``LLMPERF_SIM_READY <url>`` when ready.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from pytest_llmperf.sim.faults import FAULT_KINDS, FaultSpec, parse_fault
from pytest_llmperf.sim.model import SimConfig, simulate

if TYPE_CHECKING:
    import asyncio

__all__ = ["FAULT_KINDS", "FaultSpec", "SimConfig", "parse_fault", "run_in_thread", "serve", "simulate"]


def run_in_thread(config: SimConfig | None = None, *, timeout_s: float = 10.0) -> AbstractContextManager[str]:
    """Context manager: run the simulator in a daemon thread and yield its base URL."""
    # aiohttp is imported only when a server is actually started.
    from pytest_llmperf.sim.app import run_in_thread as run

    return run(config, timeout_s=timeout_s)


async def serve(
    config: SimConfig,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve on the running event loop until ``stop`` is set; ``on_ready(base_url)`` once listening."""
    from pytest_llmperf.sim.app import serve as run

    await run(config, on_ready=on_ready, stop=stop)
