"""How a session sends each run's load: from this process, from several client processes of this host
(``--llmperf-client-procs``), or from Ray actors on a cluster's nodes (``--llmperf-ray``).

Whichever it is, a run comes back as one :class:`~pytest_llmperf.spec.RunRecords` on one clock, so nothing
downstream knows the difference. ``auto`` sizes the client by the event rate the session has already seen from
the same server (events per second per concurrency slot, or per request per second in open loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

# At the plugin's import, not a run's: the client processes' jobs are pickled by class, and pytester's in-process
# runs drop modules first imported inside them (a class imported again is not the one pickled). No aiohttp here.
from pytest_llmperf.client import procs

if TYPE_CHECKING:
    from pytest_llmperf.client.rayshards import RayClients
    from pytest_llmperf.options import Settings
    from pytest_llmperf.spec import Endpoint, Prompt, RunRecords, Workload

Send = Callable[..., "RunRecords"]
"""``loadgen.run``'s signature: (workload, endpoint, prompts, *, warmup_prompts, progress, busy_poll)."""


class ClientScale:
    """The session's client: one per session, closed at its end (Ray actors and a local Ray instance go)."""

    def __init__(self, settings: Settings) -> None:
        self.procs = settings.client_procs  # None: auto
        self.ray_address = settings.ray
        self._ray: RayClients | None = None
        self._rates: dict[str, float] = {}  # endpoint URL -> events/s per unit of load seen so far

    @property
    def scaled_out(self) -> bool:
        return self.ray_address is not None or self.procs != 1

    def sender(self, server_cores: Sequence[int] | None) -> Send:
        """How to send a run to a server that runs on ``server_cores`` of this host (None: elsewhere/unknown)."""
        if not self.scaled_out:
            from pytest_llmperf.client import loadgen

            return loadgen.run
        if self.ray_address is not None:
            return self._ray_send

        def send(workload: Workload, endpoint: Endpoint, prompts: Sequence[Prompt], **options: Any) -> RunRecords:
            from pytest_llmperf.client import loadgen

            cores = procs.free_cores(server_cores)
            count = self.procs or procs.auto_processes(workload, self._expected(workload, endpoint), len(cores))
            if count == 1:
                return loadgen.run(workload, endpoint, prompts, **options)
            return procs.run(workload, endpoint, prompts, processes=count, cores=cores, **options)

        return send if self.procs is not None else self._observed(send)  # only `auto` plans from what it saw

    def check(self) -> None:
        """At the session's start: a Ray cluster that cannot be reached is a usage error before any load (a
        ``local`` instance starts with the first run)."""
        if self.ray_address is None or self.ray_address == "local":
            return
        import pytest

        from pytest_llmperf.errors import ClientShardError

        try:
            self._ray_clients().connect()
        except ClientShardError as exc:
            raise pytest.UsageError(str(exc)) from None

    def _ray_clients(self) -> RayClients:
        from pytest_llmperf.client.rayshards import RayClients

        if self._ray is None:
            self._ray = RayClients(self.ray_address or "auto", self.procs, local_cpus=len(procs.free_cores(None)))
        return self._ray

    def _ray_send(
        self, workload: Workload, endpoint: Endpoint, prompts: Sequence[Prompt], **options: Any
    ) -> RunRecords:
        options.pop("progress", None)  # actors report no live progress
        return self._ray_clients().run(workload, endpoint, prompts, **options)

    def _observed(self, send: Send) -> Send:
        def observed(workload: Workload, endpoint: Endpoint, prompts: Sequence[Prompt], **options: Any) -> RunRecords:
            records = send(workload, endpoint, prompts, **options)
            load = _load(workload)
            events = sum(len(r.event_times_s) for r in records.records)
            if load and records.duration_s > 0 and events:
                self._rates[endpoint.base_url] = events / records.duration_s / load
            return records

        return observed

    def _expected(self, workload: Workload, endpoint: Endpoint) -> float | None:
        rate, load = self._rates.get(endpoint.base_url), _load(workload)
        return None if rate is None or load is None else rate * load

    def close(self) -> None:
        if self._ray is not None:
            self._ray.close()
            self._ray = None


def _load(workload: Workload) -> float | None:
    """The unit the event rate scales with: concurrency in closed loop, the request rate in open loop."""
    if workload.trace is not None:
        return None
    if math.isfinite(workload.request_rate):
        return workload.request_rate
    return float(workload.concurrency) if workload.concurrency else None
