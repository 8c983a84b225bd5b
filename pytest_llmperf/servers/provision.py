"""Getting the session's server: attach to a URL, spawn from a profile, or share one across xdist workers.

No pytest import: the fixture passes in what it resolved (settings, profile, hook-supplied launcher).

Sharing under pytest-xdist: the first worker to take ``server.lock`` in the run directory starts the server,
writes ``server.json`` and hands its ownership to the controller (``detach``); the others read that file.
The controller stops the process group at session end. Measurements are serialized with ``measure.lock``.
The first worker to find the server dead writes why to ``server.exited``, so that the others fail at once
with the same message (:class:`ServerWatch`).

Spawned servers are on record under the cache directory while they run (:mod:`pytest_llmperf.servers.registry`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pytest_llmperf._files import write_text_atomic
from pytest_llmperf.errors import EndpointError, LLMPerfError, ServerError
from pytest_llmperf.servers import control, registry
from pytest_llmperf.servers import process as lifecycle
from pytest_llmperf.servers.profiles import Profile
from pytest_llmperf.spec import Endpoint, Launch, redact_url

STATE_FILE = "server.json"
COMPARE_STATE_FILE = "compare.json"  # A/B mode's second server (B)
_PROBE_PAUSE_S = 0.5
_TAIL_LINES = 20  # of the server log, in the message of a server that died

Launcher = Callable[[Profile, int, list[str]], "Launch | None"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerChoice:
    """What the user asked for, resolved from options."""

    model: str | None
    api_key: str | None = field(repr=False)
    ready_timeout_s: float
    gpu_count: int | None
    gpu_cost_per_hour: float | None = None  # USD per GPU-hour


def wait_for_endpoint(url: str, choice: ServerChoice) -> None:
    """Probe ``url`` until it answers or ``ready_timeout_s`` passes; then raise the last error, with the wait."""
    deadline = time.monotonic() + choice.ready_timeout_s
    while True:
        try:
            control.probe(url, timeout_s=max(1.0, min(10.0, deadline - time.monotonic())), api_key=choice.api_key)
            return
        except EndpointError as exc:
            if time.monotonic() + _PROBE_PAUSE_S >= deadline:
                raise EndpointError(
                    f"{exc} (kept trying for {choice.ready_timeout_s:g} s; raise --llmperf-ready-timeout if the "
                    "server is still starting)"
                ) from None
        time.sleep(_PROBE_PAUSE_S)


def describe(
    url: str,
    choice: ServerChoice,
    *,
    model: str | None = None,
    engine: str | None = None,
    extra_body: dict[str, object] | None = None,
    pid: int | None = None,
    log_path: str | None = None,
) -> Endpoint:
    """An :class:`Endpoint` for a server that answers: model from ``/v1/models`` unless given, engine facts.

    ``engine`` and ``extra_body`` are what a spawned server's profile says (else found out); ``pid`` and
    ``log_path`` that server's process and log."""
    chosen = choice.model or model
    if chosen is None:
        models = control.fetch_models(url, choice.api_key)
        if not models:
            raise EndpointError(f"{control.redact_url(url)}/v1/models lists no model; pass --llmperf-model=NAME")
        chosen = models[0]
    info = control.engine_info(url, choice.api_key)
    engine = str(engine or info.get("engine") or "unknown")
    if extra_body is None and engine == "llama.cpp":
        # As the embedded profile does: per-chunk token counts (per-token ITL) and no prompt cache unless a
        # workload shares prefixes on purpose (the runner turns it back on for those).
        extra_body = {"cache_prompt": False, "timings_per_token": True}
    return Endpoint(
        extra_body=extra_body or {},
        url=url,
        model=chosen,
        api_key=choice.api_key,
        engine=engine,
        engine_version=info.get("engine_version"),
        gpu_count=choice.gpu_count,
        gpu_cost_per_hour=choice.gpu_cost_per_hour,
        # llama.cpp's server drops a kept-alive connection after some streams although it advertises
        # keep-alive (seen on every connection's first reuse under load); a connection per request avoids
        # failed attempts. Other engines keep connections, as vLLM's and SGLang's benchmark clients assume.
        reuse_connections=engine != "llama.cpp",
        pid=pid,
        log_path=log_path,
    )


def attach(url: str, choice: ServerChoice) -> Endpoint:
    if choice.api_key and redact_url(url) != url:
        # The streaming client would send both as Authorization headers and refuse the request mid-run.
        raise EndpointError(
            f"{redact_url(url)}: the URL carries a user name and password and an API key is set as well; "
            "keep one of them (remove the credentials from the URL, or unset the API key variable)"
        )
    wait_for_endpoint(url, choice)
    return describe(url, choice)


@dataclass(slots=True)
class Spawned:
    endpoint: Endpoint
    process: lifecycle.ServerProcess
    pinned_cpus: list[int] | None


def spawn(
    profile: Profile,
    choice: ServerChoice,
    *,
    log_path: Path,
    cuda_devices: str | None = None,
    launcher: Launcher | None = None,
) -> Spawned:
    """Start ``profile`` and return it ready, with its endpoint described."""
    host = "127.0.0.1"
    env = profile.render_env(0, host=host, model=choice.model) if profile.env else {}
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    launch: Launch | None = None

    def argv_for(port: int) -> list[str]:
        nonlocal launch
        argv = profile.render(port, host=host, model=choice.model)
        launch = launcher(profile, port, argv) if launcher is not None else None
        return list(launch.argv) if launch is not None else argv

    port = lifecycle.free_port(host)
    argv = argv_for(port)
    if launch is not None and launch.url is not None:
        # A hook-supplied server answering elsewhere: readiness at its URL, lifecycle of its local command.
        process = lifecycle.ServerProcess(
            argv,
            env={**env, **launch.env},
            log_path=log_path,
            health_url=launch.url.rstrip("/") + profile.health_path,
            startup_timeout_s=profile.startup_timeout_s,
            name=profile.name,
            registry_dir=registry.default_dir(),
        ).start()
        url = launch.url.rstrip("/")
    else:
        process = lifecycle.spawn(
            argv_for,
            host=host,
            health_path=profile.health_path,
            env=env or None,
            log_path=log_path,
            startup_timeout_s=profile.startup_timeout_s,
            name=profile.name,
            registry_dir=registry.default_dir(),
        )
        url = process.base_url
    try:
        gpus = choice.gpu_count if choice.gpu_count is not None else (profile.gpus_per_server or None)
        price = choice.gpu_cost_per_hour if choice.gpu_cost_per_hour is not None else profile.gpu_cost_per_hour
        endpoint = describe(
            url,
            ServerChoice(
                model=choice.model, api_key=choice.api_key, ready_timeout_s=0, gpu_count=gpus, gpu_cost_per_hour=price
            ),
            model=profile.model,
            engine=profile.engine,
            extra_body=dict(profile.extra_body),
            pid=process.pid,
            log_path=str(log_path),
        )
    except BaseException:
        process.stop()
        raise
    return Spawned(endpoint=endpoint, process=process, pinned_cpus=profile.pinned_cpus())


def shared(
    run_dir: Path,
    start: Callable[[], Spawned],
    api_key: str | None,
    *,
    state_file: str = STATE_FILE,
    controller_pid: int | None = None,
) -> Endpoint:
    """The one server all xdist workers share: started by the first worker to get here, else read back.

    ``state_file`` names the server (:data:`STATE_FILE`, or :data:`COMPARE_STATE_FILE` for A/B mode's B).
    ``controller_pid`` becomes the server's owner on record."""
    from filelock import FileLock

    state_path = run_dir / state_file
    with FileLock(str(state_path.with_suffix(".lock"))):
        if state_path.exists():
            state = json.loads(state_path.read_text())
            if "error" in state:
                raise ServerError(f"the shared server failed to start in another worker: {state['error']}")
            return Endpoint(api_key=api_key, **state["endpoint"])
        try:
            spawned = start()
        except LLMPerfError as exc:
            state_path.write_text(json.dumps({"error": str(exc)}))
            raise
        state = {
            "endpoint": spawned.endpoint.public_dict(),
            "pgid": spawned.process.pgid,
            "pinned_cpus": spawned.pinned_cpus,
            "started_by": os.getpid(),
            "record": str(spawned.process.record) if spawned.process.record is not None else None,
        }
        # In this order: until the controller can find the server in the state file, this process stops it.
        write_text_atomic(state_path, json.dumps(state))
        spawned.process.detach(controller_pid)  # the controller stops it once every worker is done
        return spawned.endpoint


def shared_pinned_cpus(run_dir: Path, *, state_file: str = STATE_FILE) -> list[int] | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        cpus = json.loads((run_dir / state_file).read_text())["pinned_cpus"]
        return [int(c) for c in cpus] if cpus else None
    return None


def stop_shared(run_dir: Path, *, state_file: str = STATE_FILE) -> bool:
    """Stop the shared server recorded in ``run_dir`` (controller, at session end). True if one was stopped."""
    try:
        state = json.loads((run_dir / state_file).read_text())
    except (OSError, ValueError):
        return False
    pgid = state.get("pgid")
    if not isinstance(pgid, int):
        return False
    if lifecycle.stop_process_group(pgid) and state.get("record"):
        registry.forget(Path(state["record"]))
    return True


@dataclass(slots=True)
class ServerWatch:
    """Whether a spawned server still runs, so that one that died is named, once, instead of showing up as
    refused connections, and every later test fails at once with the same message.

    ``process`` is set in the process that started the server (its exit code is known there); otherwise the
    pid's start time tells the server from a process that reused its pid. ``exited_file`` (xdist-shared
    servers) carries the message from the worker that found the server dead to the others.
    """

    name: str
    pid: int
    log_path: Path
    process: lifecycle.ServerProcess | None = None
    exited_file: Path | None = None
    started: float | None = field(default=None)
    message: str | None = None

    def __post_init__(self) -> None:
        if self.process is None and self.started is None:
            self.started = registry.start_time(self.pid)

    def check(self, when: str) -> str | None:
        """The message if the server has exited (``when``: "during test X" / "before test X"), else None."""
        if self.message is None and self.exited_file is not None:
            with contextlib.suppress(OSError):
                self.message = self.exited_file.read_text() or None
        if self.message is not None:
            return self.message
        exited, code = self._exited()
        if not exited:
            return None
        how = f"exited with code {code}" if code is not None else "exited (its exit code is not known here)"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                how += f" ({signal.Signals(-code).name})"
        tail = lifecycle.read_log_tail(self.log_path, _TAIL_LINES).strip() or "(the log is empty)"
        self.message = f"the spawned server {self.name} {how} {when}; log tail ({self.log_path}):\n{tail}"
        # Not into a run directory the controller has removed: writing would make it anew, left behind.
        if self.exited_file is not None and self.exited_file.parent.is_dir():
            with contextlib.suppress(OSError):
                write_text_atomic(self.exited_file, self.message)
        return self.message

    def _exited(self) -> tuple[bool, int | None]:
        if self.process is not None:
            code = self.process.exit_code()
            return code is not None, code
        code = lifecycle.zombie_exit_code(self.pid)
        if code is not None:
            return True, code
        now = registry.start_time(self.pid)
        return now is None or self.started is None or abs(now - self.started) > 0.1, None


def worker_devices(
    profile: Profile, worker_id: str | None, gpus_visible: int | None, *, offset: int = 0, stride: int | None = None
) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for this worker's own server: disjoint GPU sets of ``gpus_per_server``.

    Worker ``gwK`` gets the K-th slice of the devices this process may see (``CUDA_VISIBLE_DEVICES`` when
    set, else ``0..gpus_visible-1``), so an 8-GPU node runs 8 (or 2x4) servers side by side. In A/B mode each
    worker owns two servers: its slice is ``stride`` devices wide (A's and B's GPUs together) and B's part
    starts ``offset`` devices into it.
    """
    per_server = profile.gpus_per_server
    if per_server <= 0:
        return None
    worker = int(worker_id[2:]) if worker_id and worker_id.startswith("gw") else 0
    width = stride if stride is not None else per_server
    start = worker * width + offset
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        devices = [str(i) for i in range(gpus_visible if gpus_visible is not None else start + per_server)]
    chosen = devices[start : start + per_server]
    if len(chosen) < per_server:
        raise ServerError(
            f"profile {profile.name!r} needs {per_server} GPUs per server, but worker {worker_id or 'gw0'} would "
            f"need GPUs {start}..{start + per_server - 1} of the {len(devices)} visible: run "
            "fewer xdist workers (-n) or lower gpus_per_server"
        )
    return ",".join(chosen)


@contextlib.contextmanager
def client_off_cpus(cpus: list[int] | None) -> Iterator[None]:
    """Keep this process (the load generator) off the cores a pinned server runs on, then restore."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    rest = before - set(cpus)
    if not rest:
        yield
        return
    os.sched_setaffinity(0, rest)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
