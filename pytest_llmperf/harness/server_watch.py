"""What this process knows of each server it measures, by URL: whether a spawned one has died, and what the
disturbance monitor may watch of it (pid, cores, GPUs)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pytest_llmperf.servers.process import ServerProcess
    from pytest_llmperf.servers.provision import ServerWatch
    from pytest_llmperf.spec import Endpoint

# (pid, cores, GPU indices) of a server; None where unknown.
Resources = tuple[int | None, list[int] | None, list[int] | None]


class ServerWatches:
    def __init__(self) -> None:
        self._cores_by_url: dict[str, list[int]] = {}
        self._devices_by_url: dict[str, str] = {}
        self._resources: dict[str, Resources] = {}
        self._exits: dict[str, ServerWatch] = {}  # spawned servers by URL: has one died?

    def remember(self, endpoint: Endpoint, cores: list[int] | None, devices: str | None) -> None:
        """The cores a spawned server is pinned to and its CUDA_VISIBLE_DEVICES, for :meth:`resources`."""
        if cores:
            self._cores_by_url[endpoint.url] = list(cores)
        if devices is not None:
            self._devices_by_url[endpoint.url] = devices

    def watch(self, name: str, endpoint: Endpoint, process: ServerProcess | None, exited_file: Path | None) -> None:
        """Keep watch on a spawned server so that a dead one is named (see :meth:`exited`). ``process``: set
        where this process started it; ``exited_file``: where xdist workers sharing it pass on its fate."""
        from pytest_llmperf.servers import provision

        if endpoint.pid is None or endpoint.log_path is None:
            return
        self._exits[endpoint.url] = provision.ServerWatch(
            name=name, pid=endpoint.pid, log_path=Path(endpoint.log_path), process=process, exited_file=exited_file
        )

    def exited(self, endpoint: Endpoint, when: str) -> str | None:
        """Why ``endpoint``'s spawned server is gone ("the spawned server sim exited with code -9 during test X;
        log tail ..."), or None while it runs (or is not ours to watch). The first answer sticks."""
        watch = self._exits.get(endpoint.url)
        return watch.check(when) if watch is not None else None

    def resources(self, endpoint: Endpoint) -> Resources:
        """What the disturbance monitor can watch of ``endpoint``'s server: its pid (spawned, or found listening
        on a loopback port), its cores (pinned, else its affinity) and its GPU indices (None: every GPU). A
        remote server gives (None, None, None): only its /metrics can show foreign load."""
        if endpoint.url not in self._resources:
            from pytest_llmperf.servers import disturbance

            pid = endpoint.pid
            if pid is None and is_loopback(endpoint.url):
                port = urlsplit(endpoint.url).port
                pid = disturbance.find_listening_pid(port) if port else None
            cores = self._cores_by_url.get(endpoint.url)
            if cores is None and pid is not None:
                with contextlib.suppress(OSError):
                    cores = sorted(os.sched_getaffinity(pid))
            devices = self._devices_by_url.get(endpoint.url)
            gpus = [int(d) for d in devices.split(",") if d.strip().isdigit()] if devices else None
            self._resources[endpoint.url] = (pid, cores, gpus)
        return self._resources[endpoint.url]


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
