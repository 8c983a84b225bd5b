"""One run from client shards placed as Ray actors on the nodes of a Ray cluster (``--llmperf-ray``).

Ray is what vLLM and ray-project/llmperf already run on, so a cluster that serves the model can also host the
client: each actor is a load generator of its own on some node, running its shard of the run
(:mod:`pytest_llmperf.client.shards`). Ray carries every call; nothing here speaks a protocol of its own.

Clocks. Each shard measures with its own node's monotonic clock. Latencies (TTFT, TPOT, ITL, E2E) are
differences within one shard's clock and need no alignment. What spans shards is the run's window (and so
every throughput) and the open-loop schedule: those need the shards' clocks on one time line. An actor on the
driver's node shares its monotonic clock, exactly. For an actor on another node, the driver measures the
offset between the two wall clocks at start (the probe with the shortest Ray round trip, as NTP does), and
each shard reports the pair (wall clock, monotonic clock) read together at its end, so its times map onto the
driver's monotonic clock. The error left is about half that round trip (typically a millisecond over a data
center network), which moves a window of 10 s or more by less than 0.01 %; the run's notes say when it is
larger than :data:`ALIGNMENT_NOTE_S`. An offset above :data:`CLOCK_OFFSET_LIMIT_S` means the nodes' clocks
are not kept in sync (no NTP/chrony): the run is refused, since such clocks can also drift during a run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmperf.client import shards
from pytest_llmperf.errors import ClientShardError, RunInterrupted
from pytest_llmperf.spec import Endpoint, Prompt, RunRecords, Workload

CLOCK_OFFSET_LIMIT_S = 0.1
ALIGNMENT_NOTE_S = 0.001
_CLOCK_PROBES = 7
_PLACEMENT_TIMEOUT_S = 120.0  # a new actor's process start and imports: seconds; longer means no free CPU
_START_MARGIN_S = 0.25  # the start instant is this far after the last actor is ready: every begin() lands first
_INTERRUPT_GRACE_S = 15.0
_REACH_TIMEOUT_S = 5.0
_LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # a run's records pass through it once; Ray's default takes 30 % of RAM
_RAY_MISSING = (
    "--llmperf-ray needs Ray, which is not installed: pip install 'pytest-llmperf[ray]' (the same version of "
    "pytest-llmperf and Ray on every node of the cluster)"
)


def ray_installed() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except ValueError:  # sys.modules["ray"] is None: blocked on purpose
        return False


def require_ray() -> None:
    """Raise :class:`ClientShardError` naming the extra when Ray is not installed (checked before any load)."""
    if not ray_installed():
        raise ClientShardError(_RAY_MISSING)


@dataclass(frozen=True, slots=True)
class ClockOffset:
    """An actor's wall clock minus the driver's, and the half round trip that bounds the estimate's error."""

    offset_s: float
    uncertainty_s: float
    same_node: bool  # the actor shares the driver's monotonic clock: no alignment needed


def estimate_offset(probes: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """(offset, uncertainty) from probes of (driver wall before the call, actor wall, driver wall after).

    The probe with the shortest round trip wins; the actor read its clock somewhere inside it, so the offset
    is known to within half that round trip.
    """
    before, remote, after = min(probes, key=lambda p: p[2] - p[0])
    return remote - (before + after) / 2, (after - before) / 2


def shard_shift(offset: ClockOffset, shard_wall_minus_perf: float, driver_wall_minus_perf: float) -> float:
    """Seconds to add to a shard's monotonic times to put them on the driver's monotonic clock."""
    if offset.same_node:
        return 0.0
    # shard perf t -> shard wall (t + its wall-perf) -> driver wall (- offset) -> driver perf (- driver's wall-perf)
    return shard_wall_minus_perf - offset.offset_s - driver_wall_minus_perf


class _RunGate:
    """One run's rendezvous inside an actor: ready once its warmup is done, go once the driver set the start."""

    def __init__(self) -> None:
        from pytest_llmperf.client.interrupts import RemoteInterrupt

        self.ready = threading.Event()
        self.go = threading.Event()
        self.start_perf = 0.0
        self.interrupt = RemoteInterrupt()


class _ShardActor:
    """A client shard, as a threaded Ray actor: ``run`` blocks in one thread while ``wait_ready``, ``begin`` and
    ``interrupt`` come in on others. A threaded actor does not order its calls, so each run's calls name it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[int, _RunGate] = {}

    def _gate(self, run_id: int) -> _RunGate:
        with self._lock:
            if run_id not in self._gates:
                self._gates = {k: v for k, v in self._gates.items() if k > run_id - 4}  # keep a few, not all
                self._gates[run_id] = _RunGate()
            return self._gates[run_id]

    def identity(self) -> tuple[str, str, str]:
        from pytest_llmperf import __version__

        return host_identity(), __version__, str(os.getpid())

    def clock(self) -> float:
        return time.time()

    def run(self, run_id: int, workload: Workload, endpoint: Endpoint, plan: shards.ShardPlan, busy_poll: bool) -> Any:
        from pytest_llmperf.client import loadgen

        gate = self._gate(run_id)

        def start_instant() -> float:
            gate.ready.set()
            gate.go.wait()
            return gate.start_perf

        try:
            records = loadgen.run(
                workload,
                endpoint,
                plan.prompts,
                warmup_prompts=plan.warmup_prompts,
                busy_poll=busy_poll,
                offsets=plan.offsets,
                start_instant=start_instant,
                remote_interrupt=gate.interrupt,
            )
            kind = "done"
        except RunInterrupted as interrupted:
            records, kind = interrupted.partial, "interrupted"
        finally:
            gate.ready.set()  # a run that failed before its window: nobody waits for it
        return kind, records, time.time() - time.perf_counter()

    def wait_ready(self, run_id: int, timeout_s: float) -> bool:
        return self._gate(run_id).ready.wait(timeout_s)

    def begin(self, run_id: int, start_wall: float, start_perf: float | None) -> None:
        """Open the window at ``start_perf`` (the driver's monotonic clock, which an actor on its host shares),
        else at ``start_wall`` (this node's wall clock) turned into this node's monotonic time."""
        gate = self._gate(run_id)
        gate.start_perf = start_perf if start_perf is not None else time.perf_counter() + (start_wall - time.time())
        gate.go.set()

    def interrupt(self, run_id: int) -> None:
        gate = self._gate(run_id)
        gate.interrupt.fire()
        gate.go.set()


def host_identity() -> str:
    """This host's boot id: equal exactly where ``time.perf_counter()`` (CLOCK_MONOTONIC) is the same clock.
    Ray's node id is not enough: through Ray Client (``ray://``) the driver reports the head node's."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return f"{socket.gethostname()}:{os.getpid()}"  # unknown: never taken for the driver's host


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(error: BaseException) -> str:
    """A Ray error's message without its terminal colours."""
    return _ANSI.sub("", str(error))


class RayClients:
    """The session's client actors on a Ray cluster: connected on first use, reused by every run, gone at
    :meth:`close`. ``address``: a cluster's address (``ray://HOST:10001``, ``HOST:6379``), ``auto`` (the
    cluster this machine belongs to, or ``RAY_ADDRESS``), or ``local`` (a private instance for this session)."""

    def __init__(self, address: str, shards_wanted: int | None, local_cpus: int) -> None:
        self.address = address
        self.shards_wanted = shards_wanted  # None: one per CPU the cluster offers, at most the run's slots
        self.local_cpus = local_cpus
        self._actors: list[Any] = []
        self._offsets: list[ClockOffset] = []
        self._started_ray = False
        self._runs = 0

    def connect(self) -> Any:
        """Ray, connected to the cluster (a clear :class:`ClientShardError` when it cannot be)."""
        require_ray()
        import ray

        if ray.is_initialized():
            return ray
        _check_reachable(self.address)
        # ray.init installs handlers of its own (SIGTERM: sys.exit) and does not put ours back: the session's
        # "SIGTERM stops the run as Ctrl-C does" would be lost.
        handlers = {which: signal.getsignal(which) for which in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.address == "local":
                ray.init(
                    num_cpus=self.local_cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    object_store_memory=_LOCAL_OBJECT_STORE_BYTES,
                )
            else:
                ray.init(address=self.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClientShardError(
                f"--llmperf-ray={self.address}: cannot connect to a Ray cluster ({_plain(exc)}); start one (ray start "
                "--head), give its address, or use --llmperf-ray=local"
            ) from None
        finally:
            for which, handler in handlers.items():
                if handler is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(which, handler)
        self._started_ray = True
        return ray

    def _ensure_actors(self, count: int) -> list[Any]:
        ray = self.connect()
        if len(self._actors) >= count:
            return self._actors[:count]
        from pytest_llmperf import __version__

        actor_class = ray.remote(num_cpus=1, max_concurrency=4)(_ShardActor)
        new = [actor_class.options(scheduling_strategy="SPREAD").remote() for _ in range(count - len(self._actors))]
        try:
            identities = ray.get([a.identity.remote() for a in new], timeout=_PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            for actor in new:
                ray.kill(actor)
            free = ray.available_resources().get("CPU", 0)
            raise ClientShardError(
                f"Ray could not place {len(new)} client actor(s) within {_PLACEMENT_TIMEOUT_S:g} s: each needs a "
                f"CPU, and the cluster has {free:g} free; use fewer (--llmperf-client-procs=N)"
            ) from None
        here = host_identity()
        accepted: list[tuple[Any, ClockOffset]] = []
        try:
            for actor, (host, version, _pid) in zip(new, identities, strict=True):
                if version != __version__:
                    raise ClientShardError(
                        f"a Ray node runs pytest-llmperf {version}, this session {__version__}: install the same "
                        "version on every node"
                    )
                offset = _probe_offset(ray, actor, same_node=host == here)
                if abs(offset.offset_s) > CLOCK_OFFSET_LIMIT_S:
                    raise ClientShardError(
                        f"the wall clock of a Ray node is {offset.offset_s * 1000:+.0f} ms off this machine's "
                        f"(limit {CLOCK_OFFSET_LIMIT_S * 1000:g} ms): keep the nodes' clocks in sync (chrony or "
                        "NTP), then run again"
                    )
                accepted.append((actor, offset))
        except BaseException:
            for actor in new:
                ray.kill(actor)
            raise
        for actor, offset in accepted:
            self._actors.append(actor)
            self._offsets.append(offset)
        return self._actors[:count]

    def shard_count(self) -> int:
        """Actors asked for: ``--llmperf-client-procs``, else one per CPU of the cluster."""
        wanted = self.shards_wanted
        if wanted is None:
            ray = self.connect()
            wanted = max(1, int(ray.cluster_resources().get("CPU", 1)))
        return max(1, wanted)  # split() then deals out as many as the workload can feed

    def run(
        self,
        workload: Workload,
        endpoint: Endpoint,
        prompts: Sequence[Prompt],
        *,
        warmup_prompts: Sequence[Prompt] = (),
        busy_poll: bool = False,
    ) -> RunRecords:
        ray = self.connect()
        offsets = shards.arrival_schedule(workload, prompts)
        plans = shards.split(workload, prompts, warmup_prompts, self.shard_count(), offsets=offsets)
        actors = self._ensure_actors(len(plans))
        clocks = self._offsets[: len(plans)]
        self._runs += 1
        run_id = self._runs
        refs = [
            actor.run.remote(run_id, shards.shard_workload(workload, plan), endpoint, plan, busy_poll)
            for actor, plan in zip(actors, plans, strict=True)
        ]
        interrupted = False
        try:
            ready = ray.get([a.wait_ready.remote(run_id, _ready_timeout(workload, plans)) for a in actors])
            if not all(ready):
                raise ClientShardError(
                    "a Ray client shard was not ready in time (its warmup did not end): check the server and the "
                    "cluster's load"
                )
            start_wall, start_perf = time.time() + _START_MARGIN_S, time.perf_counter() + _START_MARGIN_S
            ray.get(
                [
                    a.begin.remote(run_id, start_wall + o.offset_s, start_perf if o.same_node else None)
                    for a, o in zip(actors, clocks, strict=True)
                ]
            )
            answers = ray.get(refs)
        except KeyboardInterrupt:
            interrupted = True
            answers = self._stop(ray, actors, refs, run_id)
        except (ray.exceptions.RayError, ClientShardError) as exc:
            self._stop(ray, actors, refs, run_id)
            if isinstance(exc, ClientShardError):
                raise
            raise ClientShardError(f"a Ray client shard failed: {_plain(exc)}") from None
        driver_wall_minus_perf = time.time() - time.perf_counter()
        runs, kept = [], []
        for plan, answer, offset in zip(plans, answers, clocks, strict=True):
            if answer is None:
                continue  # it did not answer within the interrupt's grace
            _kind, run, shard_wall_minus_perf = answer
            runs.append(shards.shift_times(run, shard_shift(offset, shard_wall_minus_perf, driver_wall_minus_perf)))
            kept.append(plan)
        if not runs:
            raise RunInterrupted(shards.nothing_measured(workload))
        merged = shards.merge(workload, kept, runs)
        spread = max((o.uncertainty_s for o in clocks if not o.same_node), default=0.0)
        if spread > ALIGNMENT_NOTE_S:
            merged.notes.append(
                f"the Ray shards' clocks are aligned to within ±{spread * 1000:.1f} ms (round trips to their nodes); "
                f"throughputs over this {merged.duration_s:.1f} s window are uncertain by ±"
                f"{100 * 2 * spread / max(merged.duration_s, 1e-9):.2f} %, latencies not at all"
            )
        if interrupted or merged.interrupted:
            merged.interrupted = True
            raise RunInterrupted(merged)
        return merged

    @staticmethod
    def _stop(ray: Any, actors: Sequence[Any], refs: Sequence[Any], run_id: int) -> list[Any]:
        """Interrupt every shard's run and collect what each measured, within a grace (None: no answer)."""
        for actor in actors:
            actor.interrupt.remote(run_id)
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=_INTERRUPT_GRACE_S)
        answers: list[Any] = []
        for ref in refs:
            try:
                answers.append(ray.get(ref, timeout=0) if ref in done else None)
            except ray.exceptions.RayError:
                answers.append(None)
        return answers

    def close(self) -> None:
        if not self._actors and not self._started_ray:
            return
        import ray

        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self._actors.clear()
        self._offsets.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def _ready_timeout(workload: Workload, plans: Sequence[shards.ShardPlan]) -> float:
    warmup = max((len(p.warmup_prompts) for p in plans), default=0)
    return _PLACEMENT_TIMEOUT_S + shards.warmup_time_s(workload, warmup)


def _check_reachable(address: str) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) that answers nothing fails now, not after Ray's minutes of
    retries."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_REACH_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        raise ClientShardError(
            f"--llmperf-ray={address}: nothing answers there ({exc}); check the Ray head's address and port"
        ) from None


def _probe_offset(ray: Any, actor: Any, *, same_node: bool) -> ClockOffset:
    if same_node:
        return ClockOffset(offset_s=0.0, uncertainty_s=0.0, same_node=True)
    probes = []
    for _ in range(_CLOCK_PROBES):
        before = time.time()
        remote = ray.get(actor.clock.remote())
        probes.append((before, remote, time.time()))
    offset, uncertainty = estimate_offset(probes)
    return ClockOffset(offset_s=offset, uncertainty_s=uncertainty, same_node=False)
