"""The servers of one process: A (the server under test) and, in A/B mode, B.

Each is attached (a URL), spawned from a profile, or, under xdist without GPU sets, shared by every worker:
the first worker to get there starts it and hands it to the controller, which stops it at the end (see
:mod:`pytest_llmperf.servers.provision`). While this process owns a spawned server, SIGTERM acts as Ctrl-C so
that teardown stops it, and the load generator keeps off the cores of every pinned server. Measurements on a
shared server take turns (:meth:`ServerManager.measurement_slot`); in A/B mode a run waits for the other
server to settle (:meth:`ServerManager.settle`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import pytest

from pytest_llmperf.errors import LLMPerfError, ServerError
from pytest_llmperf.harness.server_watch import ServerWatches, is_loopback
from pytest_llmperf.options import Settings
from pytest_llmperf.spec import is_url

if TYPE_CHECKING:
    import httpx

    from pytest_llmperf.client.datasets import PromptContext
    from pytest_llmperf.harness.xdist import XdistRole
    from pytest_llmperf.results import EndpointDict
    from pytest_llmperf.servers.profiles import Profile
    from pytest_llmperf.servers.provision import ServerChoice, Spawned
    from pytest_llmperf.spec import Endpoint, Launch, Workload

Side = Literal["A", "B"]

DEFAULT_PROFILE = "llamacpp-tiny"

# A/B mode waits at most this long for a server to report itself idle before the other one runs.
IDLE_TIMEOUT_S = 60.0

NO_SERVER = (
    "no inference server for perf tests, and the embedded default (llama.cpp) is not installed. Either "
    "install it: pip install 'pytest-llmperf[llamacpp]' (compiles llama.cpp once, ~13 min on 2 cores); or "
    "attach to a running server: --llmperf-endpoint=URL; or spawn one from a profile: "
    "--llmperf-server=PROFILE (e.g. sim, the built-in simulator)"
)


class ServerManager:
    def __init__(self, config: pytest.Config, settings: Settings, role: XdistRole) -> None:
        self._config = config
        self._settings = settings
        self._role = role
        self.watches = ServerWatches()
        self.described: dict[Side, EndpointDict] = {}  # each opened server's public description, for reports
        self.shared = False  # measurements take turns: a server (A or B) is shared by xdist workers
        self._spawned: dict[Side, Spawned] = {}  # the servers this process started and stops
        self._profile_name: str | None = None  # A's, when spawned or shared from a profile
        self._pinned: set[int] = set()  # cores of spawned servers (A's, and B's in A/B mode): the client stays off
        self._affinity: contextlib.ExitStack | None = None
        self._sigterm: contextlib.ExitStack | None = None
        self._last_measured: str | None = None  # URL of this process's last A/B run, for the pause rule
        # Prompt calibration per (endpoint, api, dataset): one /tokenize round per session, not per test.
        self._prompt_contexts: dict[tuple[str, str, str, str], PromptContext] = {}
        self._control: httpx.Client | None = None
        # New per session (and per xdist worker): with the test and the run index it keys each run's prompt
        # contents, so a long-lived server has never seen them (recorded in every summary as prompt_contents).
        self.prompt_nonce = secrets.token_hex(6)

    @property
    def embedded(self) -> bool:
        """A is the embedded engine (the llama.cpp default profile), whose tiny model sets the scale defaults."""
        return self._profile_name == DEFAULT_PROFILE

    @property
    def owns_server(self) -> bool:
        """This process started A itself (not attached, not shared)."""
        return "A" in self._spawned

    def spawned_command(self, side: Side = "A") -> tuple[list[str], int | None] | None:
        """A side's command and port when this process spawned it, for the baseline fingerprint."""
        spawned = self._spawned.get(side)
        return (spawned.process.argv, urlsplit(spawned.endpoint.url).port) if spawned is not None else None

    def open(self, side: Side) -> Endpoint | None:
        """Attach or spawn A (raises ``pytest.skip`` when there is none to use) or, in A/B mode, B (None without
        ``--llmperf-compare``). B is opened once A is ready, so two servers without disjoint GPU sets are
        started one after the other, never at once."""
        from pytest_llmperf.harness.runner import endpoint_dict
        from pytest_llmperf.servers import provision

        s = self._settings
        if side == "B" and s.compare is None:
            return None
        choice = provision.ServerChoice(
            model=s.model,
            api_key=s.api_key if side == "A" else s.compare_api_key,
            ready_timeout_s=s.ready_timeout_s,
            gpu_count=s.gpus,
            # The option prices the server under test; in A/B mode B (often other hardware) takes its profile's.
            gpu_cost_per_hour=s.gpu_cost_per_hour if side == "A" else None,
        )
        attach_to = s.endpoint if side == "A" else (s.compare if is_url(s.compare or "") else None)
        if attach_to is not None:
            endpoint = provision.attach(attach_to, choice)
            # Workers share an attached server as they share a spawned one: their measurements take turns.
            self.shared = self.shared or self._role.is_worker
        else:
            profile = target_profile(s, side)
            if profile is None:
                pytest.skip(NO_SERVER)
            endpoint = self._spawn(side, profile, choice)
        self.described[side] = endpoint_dict(endpoint)
        if side == "B" and "A" in self.described:
            _check_same_model(self.described["A"], endpoint)
        return endpoint

    def _spawn(self, side: Side, profile: Profile, choice: ServerChoice) -> Endpoint:
        """Start ``profile`` for ``side`` here, or share it with the other xdist workers (CPU engines)."""
        from pytest_llmperf.servers import provision
        from pytest_llmperf.servers.profiles import default_cache_dir

        if side == "A":
            self._profile_name = profile.name
        devices = _devices(self._settings, self._role.worker_id, profile, side)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        tag = "-B" if side == "B" else ""
        log_path = default_cache_dir() / "logs" / f"{profile.name}{tag}-{stamp}-{os.getpid()}.log"
        state_file = provision.STATE_FILE if side == "A" else provision.COMPARE_STATE_FILE

        started: list[Spawned] = []  # the server, if this process is the one that starts it

        def start() -> Spawned:
            started.append(
                provision.spawn(profile, choice, log_path=log_path, cuda_devices=devices, launcher=self._launch)
            )
            return started[-1]

        self.handle_sigterm()  # from before the start: a SIGTERM while the server starts stops it too
        # B's profile picks its cores from every core this process may use, exactly as A's did: with the
        # client's restriction (off A's cores) still in place, "auto" would find one core and not pin B.
        self._release_cores()
        try:
            if self._role.is_worker and not profile.gpus_per_server:
                self.shared = True
                run_dir, owner = self._role.run_dir, self._role.controller_pid
                endpoint = provision.shared(run_dir, start, choice.api_key, state_file=state_file, controller_pid=owner)
                pinned = provision.shared_pinned_cpus(run_dir, state_file=state_file)
            else:
                self._spawned[side] = start()
                endpoint, pinned = self._spawned[side].endpoint, self._spawned[side].pinned_cpus
            self._pinned |= set(pinned or ())
            self.watches.remember(endpoint, pinned, devices)
            exited = self._role.run_dir / Path(state_file).with_suffix(".exited").name if self.shared else None
            self.watches.watch(profile.name, endpoint, started[-1].process if started else None, exited)
        finally:
            self._own_cores()
        return endpoint

    def _launch(self, profile: Profile, port: int, argv: list[str]) -> Launch | None:
        result: Launch | None = self._config.hook.pytest_llmperf_launch(
            config=self._config, profile=profile, port=port, argv=argv
        )
        return result

    def _own_cores(self) -> None:
        """Keep the load generator off every spawned server's cores (A's, and B's in A/B mode)."""
        from pytest_llmperf.servers import provision

        self._release_cores()
        self._affinity = contextlib.ExitStack()
        self._affinity.enter_context(provision.client_off_cpus(sorted(self._pinned) or None))

    def _release_cores(self) -> None:
        if self._affinity is not None:
            self._affinity.close()
            self._affinity = None

    def close(self, side: Side) -> None:
        """Stop ``side``'s server if this process spawned it. Closing A (last: B's fixture depends on A's) ends
        this process's use of servers: the control client, the client's core restriction and SIGTERM go too."""
        if side == "A":
            if self._control is not None:
                self._control.close()
                self._control = None
            self._release_cores()
        spawned = self._spawned.pop(side, None)
        if spawned is not None:
            spawned.process.stop()
        if side == "A":
            self.release_sigterm()  # last: a SIGTERM while stopping still tears down

    def handle_sigterm(self) -> None:
        """While this process owns a spawned server, SIGTERM acts like Ctrl-C so that teardown stops it."""
        if self._sigterm is None:
            self._sigterm = contextlib.ExitStack()
            self._sigterm.enter_context(_sigterm_as_interrupt())

    def release_sigterm(self) -> None:
        """SIGTERM back to its default (the controller's mapping lasts until pytest unconfigures)."""
        if self._sigterm is not None:
            self._sigterm.close()
            self._sigterm = None

    @contextlib.contextmanager
    def measurement_slot(self) -> Iterator[dict[str, float]]:
        """Serialize measurements on a server shared by xdist workers; yields {"wait_s": ...} for the report."""
        waited = {"wait_s": 0.0}
        if not self.shared:
            yield waited
            return
        from filelock import FileLock

        started = time.perf_counter()
        with FileLock(str(self._role.run_dir / "measure.lock")):
            waited["wait_s"] = time.perf_counter() - started
            yield waited

    def settle(self, endpoint: Endpoint, other: Endpoint) -> tuple[float | None, float]:
        """A/B pause rule, inside the measurement slot just before a run on ``endpoint``: wait until ``other``
        reports no running or queued request (where its /metrics says so, at most a minute); then, when the
        previous run may have been on ``other`` (it was, or another xdist worker may have measured since),
        ``--llmperf-compare-pause`` seconds more for what no gauge shows (KV-cache frees, background work).
        Returns the waits for the run's summary, (idle wait or None without a gauge, pause): they are reported,
        never inside a latency."""
        from pytest_llmperf.servers import engine_metrics

        idle_wait = engine_metrics.wait_idle(other, timeout_s=IDLE_TIMEOUT_S)
        # Shared: another xdist worker may have measured the other server since our last run.
        switched = self.shared or (self._last_measured is not None and self._last_measured != endpoint.url)
        pause = self._settings.compare_pause_s if switched else 0.0
        time.sleep(pause)
        self._last_measured = endpoint.url
        return idle_wait, pause

    def prompt_context(self, workload: Workload, endpoint: Endpoint) -> PromptContext:
        """How to build exact-length prompts for ``workload`` (calibrated once per endpoint, api and dataset)."""
        from pytest_llmperf.client import tokenizer

        key = (endpoint.url, workload.api, workload.dataset, self._settings.tokenizer or "")
        if key not in self._prompt_contexts:
            if self._control is None:
                self._control = tokenizer.control_client(endpoint)
            self._prompt_contexts[key] = tokenizer.prompt_context(
                workload, endpoint, self._control, tokenizer_path=self._settings.tokenizer
            )
        return self._prompt_contexts[key]


def target_profile(settings: Settings, side: Side) -> Profile | None:
    """The profile ``side`` is spawned from: A's is ``--llmperf-server``, else the embedded default when it is
    installed; B's is ``--llmperf-compare`` unless that is a URL. None: attach (or, for A, no server at all)."""
    from pytest_llmperf.servers import profiles

    user = profiles.load_profiles(settings.profiles_path) if settings.profiles_path else None
    if side == "B":
        target = settings.compare
        return None if target is None or is_url(target) else profiles.get_profile(target, user)
    if settings.server is not None:
        return profiles.get_profile(settings.server, user)
    return profiles.get_profile(DEFAULT_PROFILE, user) if profiles.llamacpp_available() else None


def _devices(settings: Settings, worker_id: str | None, profile: Profile, side: Side) -> str | None:
    """CUDA_VISIBLE_DEVICES of a spawned server. In A/B mode, when both profiles name GPUs per server,
    each worker's slice holds A's GPUs then B's, so the two never share a device."""
    from pytest_llmperf.servers import provision

    if not profile.gpus_per_server:
        return None
    from pytest_llmperf.servers.hardware import detect

    gpus_visible = detect().gpu_count
    other = target_profile(settings, "B" if side == "A" else "A")
    paired = settings.compare is not None and other is not None and other.gpus_per_server > 0
    if not paired:
        return provision.worker_devices(profile, worker_id, gpus_visible)
    assert other is not None
    stride = profile.gpus_per_server + other.gpus_per_server
    offset = 0 if side == "A" else other.gpus_per_server
    return provision.worker_devices(profile, worker_id, gpus_visible, offset=offset, stride=stride)


def check_compare_target(settings: Settings) -> None:
    """A/B mode: an unknown B profile is a usage error at start-up, before A is started or load is spent."""
    try:
        target_profile(settings, "B")
    except LLMPerfError as exc:
        raise pytest.UsageError(f"--llmperf-compare={settings.compare}: {exc}") from None


def may_spawn(settings: Settings) -> bool:
    return settings.endpoint is None or target_profile(settings, "B") is not None


def server_cores(settings: Settings) -> int | None:
    """The cores a CPU engine gets: its profile's pinned cores, or the affinity of a server attached on a
    loopback address; None when unknown (then every core this process may use counts)."""
    endpoint = settings.endpoint
    if endpoint is not None:
        port = urlsplit(endpoint).port if is_loopback(endpoint) else None
        if port is None:
            return None
        from pytest_llmperf.servers.disturbance import find_listening_pid

        pid = find_listening_pid(port)
        with contextlib.suppress(OSError):
            return len(os.sched_getaffinity(pid)) if pid is not None else None
        return None
    try:
        profile = target_profile(settings, "A")
    except LLMPerfError:
        return None
    pinned = profile.pinned_cpus() if profile is not None else None
    return len(pinned) if pinned else None


def _check_same_model(a: EndpointDict, b: Endpoint) -> None:
    if b.model != a.get("model"):
        raise ServerError(
            f"A serves model {a.get('model')!r} and B serves {b.model!r}: an A/B comparison sends both the same "
            "prompts and needs one model; if both serve it under one name, pass --llmperf-model=NAME"
        )


def stop_leftovers(config: pytest.Config) -> None:
    """Stop the servers of earlier sessions killed with SIGKILL (their owner is gone), before any is spawned."""
    from pytest_llmperf.servers import registry

    terminal = config.pluginmanager.getplugin("terminalreporter")
    for finding in registry.sweep(registry.default_dir()):
        if terminal is not None:
            terminal.write_line(finding.message, yellow=finding.warning)


def stop_shared(run_dir: Path) -> None:
    """Controller, at the end: stop the servers the workers shared (A's and B's)."""
    from pytest_llmperf.servers import provision

    provision.stop_shared(run_dir)
    provision.stop_shared(run_dir, state_file=provision.COMPARE_STATE_FILE)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While this process owns a spawned server, SIGTERM (a CI runner cancelling the job) acts like Ctrl-C, so
    pytest tears down and stops the server instead of dying and leaving it running."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    # Python's own Ctrl-C handler, so that a run in progress treats SIGTERM exactly like Ctrl-C
    # (pytest_llmperf.client.interrupts recognises it by identity).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
