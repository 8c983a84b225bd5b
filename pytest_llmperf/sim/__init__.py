"""A loopback OpenAI-compatible streaming server whose timing follows a documented model (a test double).

Tests use it to know the true answer: the intended time of every chunk is kept and served at
``GET /sim/requests``. The timing model is described in :mod:`pytest_llmperf.sim.model`, the faults in
:mod:`pytest_llmperf.sim.faults`, the HTTP side in :mod:`pytest_llmperf.sim.app`.

    with run_in_thread(SimConfig(decode_ms=5)) as url:
        ...  # http://127.0.0.1:<port>

From a shell: ``python -m pytest_llmperf.sim --port 0`` prints ``LLMPERF_SIM_READY <url>`` when ready.

Endpoints (loopback only unless ``--host`` says otherwise):

- ``GET /health``, ``GET /version``, ``GET /v1/models``, ``GET /metrics`` (Prometheus text, ``sim:`` names).
- ``POST /v1/completions`` (``prompt``: text or token ids) and ``POST /v1/chat/completions``: vLLM-style SSE
  with ``stream: true`` (``stream_options.include_usage`` / ``continuous_usage_stats``, ``ignore_eos``,
  ``max_tokens`` / ``max_completion_tokens``); without it, one JSON body when the last token is due.
- ``POST /tokenize`` with ``{"prompt": str | [ids]}``, ``{"content": str}`` or ``{"messages": [...]}`` →
  ``{"tokens": [...], "count": n, "max_model_len": L}``.
- ``GET /sim/requests[?clear=1]`` → ``{"requests": [record, ...]}``, the last ``history`` requests, where a
  record is ``{"id", "number", "api", "received_at" (server perf_counter s), "prompt_tokens", "max_tokens",
  "completion_tokens", "finish_reason", "fault", "outcome", "intended_ttft_ms", "intended_chunk_times_ms",
  "chunk_tokens", "actual_chunk_times_ms"}``; times are ms after ``received_at`` and ``id`` is the ``id``
  of every chunk of that stream. ``outcome`` is one of running, ok, fault, empty, disconnect, truncated,
  hang, client_gone, slow_client, shutdown.
- ``GET /sim/config``, ``POST /sim/config`` with any :class:`SimConfig` field names (``{"reset": true}``
  first restores the start-up config) → the new config; ``GET /sim/stats`` → engine-loop lateness.
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
