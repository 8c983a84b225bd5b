"""What disturbed the server's resources during a run: other processes, hypervisor steal, GPU neighbours, throttling.

The self-check watches the client; this module watches the server's side. :class:`DisturbanceMonitor` samples
at the start and at the end of a run (no thread: two samples and their difference) and :meth:`stop` returns a
:class:`Disturbance` whose ``reasons`` say what exceeded its limit, so that a REGRESSION seen under a disturbance
can be called INCONCLUSIVE and rerun instead.

What is measured, and the limits (``disturbed`` is true as soon as one is reached):

- **Foreign CPU** (``FOREIGN_CPU_LIMIT`` = 10% of the watched cores): busy time of the server's cores (``user +
  nice + system + irq + softirq``; guest time is already inside user/nice; idle, iowait and steal are not busy)
  minus the CPU time of the server's process tree and of this client. Measured on the embedded CPU engine, one
  busy neighbour on the server's core made TTFT 3.4× slower; a tenth of a core stays within the run-to-run noise
  of that engine while a neighbour that matters takes far more. Below ``TICK_FLOOR_S`` (0.05 s, five 10 ms ticks)
  the figure is tick rounding and never a reason, so very short runs are not called disturbed by rounding.
- **Steal** (``STEAL_LIMIT`` = 5%): time the hypervisor gave the server's cores to another guest. Stricter than
  foreign CPU because it is invisible to the server: a stolen slice freezes it mid-step.
- **Foreign GPU compute processes** (any): another process computing on the server's GPUs shares its SMs and
  memory bandwidth; even a small one moves latencies by more than the verdict's tolerance.
- **GPU clock slowdowns** (any of ``DISTURBING_THROTTLE``: HW slowdown, HW/SW thermal, HW power brake): the
  machine, not the server, slowed the clocks. Not counted: ``gpu_idle`` and ``applications_clocks_setting``
  (not slowdowns), ``sync_boost`` and ``display_clock_setting`` (settings, the same in every run), and
  ``sw_power_cap``: a saturated datacenter GPU sits at its power cap as a matter of course, in the baseline as
  in the candidate, so it is part of what is measured; it is recorded in ``gpu_throttle_reasons`` all the same.
- **Foreign requests** (``FOREIGN_REQUESTS_MIN`` = 1 and ``FOREIGN_REQUESTS_SHARE`` = 1% of ours, whichever is
  larger): the server's own counters handled more than this run sent (for remote servers, the only view).
- **Load average** (1 min): recorded, never a reason: it counts runnable tasks on every core, the run's own too.

How the figures are attributed:

- The server is its whole process tree (every thread of the server pid and of its descendants). A descendant that
  exits during the window is counted through its parent's ``children_*`` times once reaped (its time before the
  window is taken back, capped at what the parent gained); one that leaves the tree (orphaned to init) takes its
  time in the window with it, which can only make foreign CPU look larger. Processes are told apart by pid and
  creation time, so a reused pid is a new process.
- Server and client CPU time count against the watched cores in proportion to the share of the cores they may
  run on (``sched_getaffinity``): a server pinned to the watched cores counts whole, a client kept off them
  (the plugin does that) counts nothing. ``server_cpus=None`` watches every core, so both then count whole.
- Without a server pid (a remote server, or one not found) the local CPU says nothing of the server: foreign CPU
  and foreign GPU processes are then None; steal is kept when ``server_cpus`` names the cores.
- GPUs are read with ``nvidia-smi`` only (``rocm-smi`` is not read: its figures are None), at start and stop:
  a slowdown or a process that came and went between the two samples is not seen. GPU indices are nvidia-smi's
  (PCI bus order). Inside a container whose pid namespace differs from the driver's, nvidia-smi reports pids
  that do not exist here; when none of the reported pids is the server's and some are such strangers, the
  server's own process cannot be told from a neighbour, and foreign GPU processes are None rather than a guess.
- Per-cpu times come from ``psutil.cpu_times(percpu=True)``, whose list is taken to be indexed by core number
  (true while no core is offline).

Cost: a sample reads ``/proc/stat`` and the server tree's ``/proc/<pid>/stat`` (a few ms); ``nvidia-smi`` runs
only where it exists, both queries in parallel, with a short timeout. No sample raises: a missing ``/proc``,
psutil or nvidia-smi makes its figure None.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol, TypeVar

from pytest_llmperf.results import DisturbanceDict

FOREIGN_CPU_LIMIT = 0.10
STEAL_LIMIT = 0.05
TICK_FLOOR_S = 0.05
FOREIGN_REQUESTS_MIN = 1.0
FOREIGN_REQUESTS_SHARE = 0.01
# Shares compared with a limit are rounded to this, so that 0.9 s of 1.0 s leaves exactly 10%, not 9.999…%.
_EPSILON = 1e-9
_SMI_TIMEOUT_S = 3.0

# NVML clock event (throttle) reason bits, as nvidia-smi's ``clocks_event_reasons.active`` mask reports them.
THROTTLE_BITS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
_NOT_THROTTLING = frozenset({"gpu_idle", "applications_clocks_setting"})
DISTURBING_THROTTLE = frozenset(
    {"hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}
)
# The newer field name first; drivers before R535 only know the older one.
_THROTTLE_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")

# Counters of what a server handled, by engine: requests first (exact), else prompt tokens (converted to
# request-equivalents with our mean prompt length). llama.cpp counts processed prompt tokens, without the
# prefix it reused from cache, so its cached counter is added where it exports one.
_REQUEST_COUNTERS = ("vllm:request_success_total", "sglang:num_requests_total", "sim:requests_total")
_PROMPT_TOKEN_COUNTERS: tuple[tuple[str, ...], ...] = (
    ("vllm:prompt_tokens_total",),
    ("sglang:prompt_tokens_total",),
    ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total"),
    ("sim:prompt_tokens_total",),
)


# --- values --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Disturbance:
    """What disturbed the server's resources during one run; ``reasons`` name what reached its limit."""

    window_s: float
    server_cpus: tuple[int, ...] | None  # cores watched (None: unknown, every core watched)
    foreign_cpu_s: float | None  # CPU time on those cores of processes that are neither the server's nor the client
    foreign_cpu_fraction: float | None  # foreign_cpu_s / (window_s * cores)
    steal_fraction: float | None  # hypervisor steal on those cores / (window_s * cores)
    load_avg_1m: float | None
    gpu_foreign_processes: tuple[str, ...] | None  # "pid name" computing on the server's GPUs, not the server's
    gpu_throttle_reasons: tuple[str, ...] | None  # "GPU i: reason", active reasons but idle / application clocks
    foreign_requests: float | None  # requests the server handled beyond ours (request-equivalents from tokens)
    disturbed: bool
    reasons: tuple[str, ...]

    def as_dict(self) -> DisturbanceDict:
        """Builtins only (tuples as lists), for JSON and JUnit properties."""
        return {
            "window_s": self.window_s,
            "server_cpus": _listed(self.server_cpus),
            "foreign_cpu_s": self.foreign_cpu_s,
            "foreign_cpu_fraction": self.foreign_cpu_fraction,
            "steal_fraction": self.steal_fraction,
            "load_avg_1m": self.load_avg_1m,
            "gpu_foreign_processes": _listed(self.gpu_foreign_processes),
            "gpu_throttle_reasons": _listed(self.gpu_throttle_reasons),
            "foreign_requests": self.foreign_requests,
            "disturbed": self.disturbed,
            "reasons": list(self.reasons),
        }


_T = TypeVar("_T")


def _listed(items: tuple[_T, ...] | None) -> list[_T] | None:
    return None if items is None else list(items)


@dataclass(frozen=True, kw_only=True, slots=True)
class CoreTimes:
    """One core's cumulative times, in seconds."""

    busy_s: float  # user + nice + system + irq + softirq
    steal_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcTimes:
    """One process's cumulative CPU times, in seconds (all its threads)."""

    pid: int
    ppid: int
    created: float  # creation time: with the pid, tells a reused pid from the process seen before
    own_s: float  # user + system
    reaped_s: float  # children_user + children_system: children it has waited for

    @property
    def key(self) -> tuple[int, float]:
        return (self.pid, self.created)

    @property
    def total_s(self) -> float:
        return self.own_s + self.reaped_s


@dataclass(frozen=True, kw_only=True, slots=True)
class CpuSample:
    """Per-core times, the server tree's and the client's CPU time, taken together."""

    cores: tuple[CoreTimes, ...] | None  # indexed by core number; None: not readable
    server: tuple[ProcTimes, ...] | None  # None: no server pid, or not readable
    client_s: float | None  # the client's own user + system (its children are not the client)


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuApp:
    gpu_uuid: str
    pid: int
    name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuSample:
    """What nvidia-smi showed: GPU index -> uuid and active reason mask (None: not reported), compute apps."""

    uuids: Mapping[int, str]
    masks: Mapping[int, int | None]
    apps: tuple[GpuApp, ...]
    here: frozenset[int]  # app pids that exist in this pid namespace


# --- pure helpers --------------------------------------------------------------------------------------


def core_times(times: object) -> CoreTimes:
    """A :class:`CoreTimes` from one of psutil's per-cpu ``scputimes`` (fields absent on a platform count 0)."""

    def get(name: str) -> float:
        return float(getattr(times, name, 0.0) or 0.0)

    busy = get("user") + get("nice") + get("system") + get("irq") + get("softirq")
    return CoreTimes(busy_s=busy, steal_s=get("steal"))


def tree_cpu_s(before: Sequence[ProcTimes], after: Sequence[ProcTimes]) -> float:
    """CPU time a process tree used between two samples of it (see the module docstring for exits)."""
    old = {p.key: p for p in before}
    new = {p.key: p for p in after}
    used = sum(p.total_s - (old[p.key].total_s if p.key in old else 0.0) for p in new.values())
    # A process gone by the end shows whole in the reaped time of its nearest surviving ancestor, if that
    # one waited for it: take back what it had used before the window, at most what that ancestor gained.
    by_pid = {p.pid: p for p in before}
    take_back: dict[tuple[int, float], float] = {}
    for key, gone in old.items():
        if key in new:
            continue
        ancestor = _surviving_ancestor(gone, by_pid, new)
        if ancestor is not None:
            take_back[ancestor] = take_back.get(ancestor, 0.0) + gone.total_s
    for ancestor, amount in take_back.items():
        gained = new[ancestor].reaped_s - old[ancestor].reaped_s
        used -= min(amount, max(0.0, gained))
    return max(0.0, used)


def _surviving_ancestor(
    proc: ProcTimes, by_pid: Mapping[int, ProcTimes], new: Mapping[tuple[int, float], ProcTimes]
) -> tuple[int, float] | None:
    seen: set[int] = set()
    parent = by_pid.get(proc.ppid)
    while parent is not None and parent.pid not in seen:
        if parent.key in new:
            return parent.key
        seen.add(parent.pid)
        parent = by_pid.get(parent.ppid)
    return None


def affinity_share(affinity: Collection[int] | None, watched: Collection[int], cpu_count: int) -> float:
    """The share of a process's CPU time taken to be on ``watched``: the watched part of the cores it may use
    (``affinity``; None: every core), as the scheduler spreads a process over the cores it is allowed."""
    allowed = set(affinity) if affinity is not None else set(range(cpu_count))
    if not allowed:
        return 0.0
    return len(allowed & set(watched)) / len(allowed)


def foreign_cpu(
    before: CpuSample,
    after: CpuSample,
    *,
    cpus: Sequence[int],
    server_share: float = 1.0,
    client_share: float = 1.0,
) -> float | None:
    """CPU seconds used on ``cpus`` by processes that are neither the server tree nor the client, clamped at 0
    (10 ms ticks round both sides). None when the cores or the server are not known."""
    busy = _core_delta(before, after, cpus, "busy_s")
    if busy is None or before.server is None or after.server is None:
        return None
    server_s = tree_cpu_s(before.server, after.server)
    client_s = 0.0
    if before.client_s is not None and after.client_s is not None:
        client_s = max(0.0, after.client_s - before.client_s)
    return max(0.0, busy - server_share * server_s - client_share * client_s)


def steal_cpu(before: CpuSample, after: CpuSample, *, cpus: Sequence[int]) -> float | None:
    """Seconds the hypervisor took from ``cpus`` between the samples (None: cores not readable)."""
    stolen = _core_delta(before, after, cpus, "steal_s")
    return None if stolen is None else max(0.0, stolen)


def _core_delta(before: CpuSample, after: CpuSample, cpus: Sequence[int], name: str) -> float | None:
    if before.cores is None or after.cores is None or not cpus:
        return None
    if any(not 0 <= cpu < min(len(before.cores), len(after.cores)) for cpu in cpus):
        return None
    return float(sum(getattr(after.cores[cpu], name) - getattr(before.cores[cpu], name) for cpu in cpus))


def throttle_reasons(mask: int) -> tuple[str, ...]:
    """Names of the active reasons in an NVML clock-event mask, but idle and application clocks (not
    slowdowns). Bits this module does not know are named by value."""
    names = [name for bit, name in THROTTLE_BITS.items() if mask & bit and name not in _NOT_THROTTLING]
    unknown = mask & ~sum(THROTTLE_BITS)
    names += [f"0x{1 << b:x}" for b in range(unknown.bit_length()) if unknown >> b & 1]
    return tuple(names)


def parse_gpus(text: str) -> tuple[dict[int, str], dict[int, int | None]]:
    """``index, uuid, mask`` lines of ``nvidia-smi --query-gpu`` → uuid and reason mask by index."""
    uuids: dict[int, str] = {}
    masks: dict[int, int | None] = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        index = int(parts[0])
        uuids[index] = parts[1]
        try:
            masks[index] = int(parts[2], 16)
        except ValueError:  # "[N/A]", "[Not Supported]"
            masks[index] = None
    return uuids, masks


def parse_compute_apps(text: str) -> tuple[GpuApp, ...]:
    """``gpu_uuid, pid, process_name`` lines of ``nvidia-smi --query-compute-apps``."""
    apps = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",", 2)]
        if len(parts) == 3 and parts[1].isdigit():
            apps.append(GpuApp(gpu_uuid=parts[0], pid=int(parts[1]), name=parts[2]))
    return tuple(apps)


def foreign_gpu_apps(
    samples: Iterable[GpuSample], *, indices: Collection[int] | None, ours: Collection[int]
) -> tuple[str, ...] | None:
    """The ``"pid name"`` of compute processes seen on the GPUs ``indices`` (None: all) whose pid is not ``ours``.
    None when the pids cannot be trusted: none is ours and some do not exist here (another pid namespace)."""
    watched: list[GpuApp] = []
    here: set[int] = set()
    for sample in samples:
        uuids = {uuid for index, uuid in sample.uuids.items() if indices is None or index in indices}
        watched += [app for app in sample.apps if app.gpu_uuid in uuids]
        here |= sample.here
    ours_seen = any(app.pid in ours for app in watched)
    if not ours_seen and any(app.pid not in here for app in watched):
        return None
    return tuple(sorted({f"{app.pid} {app.name}" for app in watched if app.pid not in ours}))


def gpu_throttle(samples: Iterable[GpuSample], *, indices: Collection[int] | None) -> tuple[str, ...] | None:
    """``"GPU i: reason"`` for every reason active in any sample on the GPUs ``indices`` (None: all);
    None when no watched GPU reported a mask."""
    seen: set[tuple[int, str]] = set()
    reported = False
    for sample in samples:
        for index, mask in sample.masks.items():
            if mask is None or (indices is not None and index not in indices):
                continue
            reported = True
            seen |= {(index, name) for name in throttle_reasons(mask)}
    if not reported:
        return None
    return tuple(f"GPU {index}: {name}" for index, name in sorted(seen, key=lambda item: (item[0], _bit(item[1]))))


def _bit(reason: str) -> int:
    """The mask bit of a reason named by :func:`throttle_reasons`: they are listed in NVML's order."""
    bits = {name: bit for bit, name in THROTTLE_BITS.items()}
    return bits[reason] if reason in bits else int(reason, 16)


def foreign_load_from_metrics(
    counter_deltas: Mapping[str, float], *, sent_requests: int, sent_prompt_tokens: int
) -> float | None:
    """Requests the server handled during the run beyond the ``sent_requests`` we sent, from its counter deltas
    (labels summed, as :func:`pytest_llmperf.servers.engine_metrics.parse_counters` gives them). Engines with a request
    counter (vLLM, SGLang, the simulator) give requests; one with prompt tokens only (llama.cpp) gives
    request-equivalents: extra prompt tokens ÷ our mean prompt tokens per request, so ``sent_prompt_tokens``
    must be counted as the server counts them (the sum of ``usage.prompt_tokens``). Clamped at 0; None when
    no known counter is there (or only tokens and nothing sent to scale them by)."""
    for name in _REQUEST_COUNTERS:
        if name in counter_deltas:
            return max(0.0, counter_deltas[name] - sent_requests)
    for names in _PROMPT_TOKEN_COUNTERS:
        if names[0] in counter_deltas:
            if sent_requests <= 0 or sent_prompt_tokens <= 0:
                return None
            server_tokens = sum(counter_deltas.get(name, 0.0) for name in names)
            return max(0.0, server_tokens - sent_prompt_tokens) * sent_requests / sent_prompt_tokens
    return None


def cpu_list(cpus: Iterable[int]) -> str:
    """``0-3,6``: cores as taskset writes them."""
    ordered = sorted(set(cpus))
    runs: list[list[int]] = []
    for cpu in ordered:
        if runs and cpu == runs[-1][-1] + 1:
            runs[-1].append(cpu)
        else:
            runs.append([cpu])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def _reached(value: float | None, limit: float) -> bool:
    return value is not None and value >= limit - _EPSILON


def assess(
    *,
    window_s: float,
    server_cpus: Sequence[int] | None,
    core_count: int,
    foreign_cpu_s: float | None,
    steal_s: float | None,
    load_avg_1m: float | None = None,
    gpu_foreign_processes: tuple[str, ...] | None = None,
    gpu_throttle_reasons: tuple[str, ...] | None = None,
    foreign_requests: float | None = None,
    sent_requests: int = 0,
) -> Disturbance:
    """The :class:`Disturbance` of measured figures: fractions of the ``core_count`` watched cores, and the
    reasons (figure, limit) for every limit reached."""
    cpus = tuple(server_cpus) if server_cpus is not None else None
    capacity = window_s * core_count
    foreign_fraction = foreign_cpu_s / capacity if foreign_cpu_s is not None and capacity > 0 else None
    steal_fraction = steal_s / capacity if steal_s is not None and capacity > 0 else None
    where = _cores_phrase(cpus, core_count)
    reasons: list[str] = []
    if _reached(foreign_fraction, FOREIGN_CPU_LIMIT) and _reached(foreign_cpu_s, TICK_FLOOR_S):
        reasons.append(f"other processes used {foreign_fraction:.0%} of {where} (limit {FOREIGN_CPU_LIMIT:.0%})")
    if _reached(steal_fraction, STEAL_LIMIT) and _reached(steal_s, TICK_FLOOR_S):
        reasons.append(f"the hypervisor stole {steal_fraction:.0%} of {where} (limit {STEAL_LIMIT:.0%})")
    if gpu_foreign_processes:
        reasons.append(f"other processes computed on the server's GPUs: {', '.join(gpu_foreign_processes)} (limit 0)")
    slowdowns = [r for r in gpu_throttle_reasons or () if r.rpartition(" ")[2] in DISTURBING_THROTTLE]
    if slowdowns:
        reasons.append(f"GPU clocks were slowed down: {', '.join(slowdowns)} (limit: none)")
    request_limit = max(FOREIGN_REQUESTS_MIN, FOREIGN_REQUESTS_SHARE * sent_requests)
    if _reached(foreign_requests, request_limit):
        reasons.append(
            f"the server handled {foreign_requests:.3g} requests this run did not send (limit {request_limit:.3g})"
        )
    return Disturbance(
        window_s=window_s,
        server_cpus=cpus,
        foreign_cpu_s=foreign_cpu_s,
        foreign_cpu_fraction=foreign_fraction,
        steal_fraction=steal_fraction,
        load_avg_1m=load_avg_1m,
        gpu_foreign_processes=gpu_foreign_processes,
        gpu_throttle_reasons=gpu_throttle_reasons,
        foreign_requests=foreign_requests,
        disturbed=bool(reasons),
        reasons=tuple(reasons),
    )


def _cores_phrase(cpus: tuple[int, ...] | None, core_count: int) -> str:
    if cpus is None:
        return f"this machine's {core_count} cores"
    return f"the server's {'core' if len(cpus) == 1 else 'cores'} {cpu_list(cpus)}"


# --- sampling ------------------------------------------------------------------------------------------


def _psutil() -> ModuleType | None:
    """psutil, or None where it is missing (every figure it gives is then None)."""
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    module: ModuleType = psutil
    return module


def _cores(psutil: ModuleType) -> tuple[CoreTimes, ...] | None:
    try:
        return tuple(core_times(times) for times in psutil.cpu_times(percpu=True))
    except (OSError, psutil.Error):
        return None


class _CpuTimes(Protocol):
    user: float
    system: float


class _Process(Protocol):
    """What is read of a ``psutil.Process`` (psutil ships no type information)."""

    @property
    def pid(self) -> int: ...

    def oneshot(self) -> AbstractContextManager[object]: ...

    def ppid(self) -> int: ...

    def create_time(self) -> float: ...

    def cpu_times(self) -> _CpuTimes: ...


def _proc_times(proc: _Process) -> ProcTimes:
    with proc.oneshot():
        times = proc.cpu_times()
        return ProcTimes(
            pid=proc.pid,
            ppid=proc.ppid(),
            created=proc.create_time(),
            own_s=times.user + times.system,
            reaped_s=getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0),
        )


def _tree(psutil: ModuleType, pid: int) -> tuple[ProcTimes, ...] | None:
    """The process ``pid`` and its descendants now (None: it is gone or unreadable)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        out = [_proc_times(root)]
    except (OSError, psutil.Error):
        return None
    for proc in procs[1:]:
        with contextlib.suppress(OSError, psutil.Error):  # exited since the listing: its parent reaps it
            out.append(_proc_times(proc))
    return tuple(out)


def _own_cpu_s(psutil: ModuleType, pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except (OSError, psutil.Error):
        return None
    return float(times.user + times.system)


def _affinity(pid: int) -> set[int] | None:
    try:
        return set(os.sched_getaffinity(pid))
    except (AttributeError, OSError):  # not Linux, or the process is gone
        return None


def _load_avg_1m() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _run_all(argvs: Sequence[Sequence[str]]) -> list[str | None]:
    """Run the commands side by side; each one's stdout, or None on a failure or after the timeout."""
    procs: list[subprocess.Popen[str] | None] = []
    for argv in argvs:
        try:
            procs.append(
                subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
                )
            )
        except OSError:
            procs.append(None)
    deadline = time.monotonic() + _SMI_TIMEOUT_S
    outputs: list[str | None] = []
    for proc in procs:
        if proc is None:
            outputs.append(None)
            continue
        try:
            out, _ = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            outputs.append(out if proc.returncode == 0 else None)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            outputs.append(None)
    return outputs


class _NvidiaSmi:
    """The two nvidia-smi queries, remembering which reason field this driver knows."""

    def __init__(self) -> None:
        self.fields = list(_THROTTLE_FIELDS)

    def sample(self, psutil: ModuleType | None) -> GpuSample | None:
        if shutil.which("nvidia-smi") is None:
            return None
        apps_argv = ["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,process_name", "--format=csv,noheader"]
        apps_out, gpus_out = _run_all([apps_argv, self._gpu_argv()])
        while gpus_out is None and len(self.fields) > 1:  # an older driver: try the older field name
            self.fields.pop(0)
            (gpus_out,) = _run_all([self._gpu_argv()])
        if apps_out is None or gpus_out is None:
            return None
        uuids, masks = parse_gpus(gpus_out)
        apps = parse_compute_apps(apps_out)
        here = frozenset(app.pid for app in apps if psutil is not None and psutil.pid_exists(app.pid))
        return GpuSample(uuids=uuids, masks=masks, apps=apps, here=here)

    def _gpu_argv(self) -> list[str]:
        return ["nvidia-smi", f"--query-gpu=index,uuid,{self.fields[0]}", "--format=csv,noheader"]


# --- monitor -------------------------------------------------------------------------------------------


class DisturbanceMonitor:
    """Samples the server's resources at :meth:`start` and :meth:`stop`; :meth:`stop` returns the difference.

    ``server_pid``: the server's process (its descendants are found at each sample); None for a remote server.
    ``server_cpus``: the cores it is pinned to; None watches every core. ``client_pid``: the load generator,
    default this process. ``gpu_indices``: the server's GPUs as nvidia-smi numbers them; None watches every GPU
    when the server is local, an empty sequence none (a CPU server).
    """

    def __init__(
        self,
        *,
        server_pid: int | None,
        server_cpus: Sequence[int] | None,
        client_pid: int | None = None,
        gpu_indices: Sequence[int] | None = None,
    ) -> None:
        self.server_pid = server_pid
        self.server_cpus = tuple(sorted(set(server_cpus))) if server_cpus is not None else None
        self.client_pid = client_pid if client_pid is not None else os.getpid()
        self.gpu_indices = tuple(gpu_indices) if gpu_indices is not None else None
        self._psutil = _psutil()
        self._smi = _NvidiaSmi()
        self._watch_gpus = self.gpu_indices != () and (self.gpu_indices is not None or server_pid is not None)
        self._started_at: float | None = None
        self._cpu_before: CpuSample | None = None
        self._gpu_before: GpuSample | None = None
        self._server_affinity: set[int] | None = None
        self._client_affinity: set[int] | None = None

    def start(self) -> None:
        """Sample GPU state, then per-core times and the server's and client's CPU times (the window opens)."""
        self._gpu_before = self._gpu_sample()
        self._server_affinity = _affinity(self.server_pid) if self.server_pid is not None else None
        self._client_affinity = _affinity(self.client_pid)
        self._cpu_before = self._cpu_sample()
        self._started_at = time.monotonic()

    def stop(
        self,
        *,
        counter_deltas: Mapping[str, float] | None = None,
        sent_requests: int = 0,
        sent_prompt_tokens: int = 0,
    ) -> Disturbance:
        """Sample again and judge. ``counter_deltas``: the server's Prometheus counter deltas over the run, with
        what this run sent, for :func:`foreign_load_from_metrics`."""
        cpu_after = self._cpu_sample()
        window_s = time.monotonic() - self._started_at if self._started_at is not None else 0.0
        gpu_after = self._gpu_sample()
        core_count = len(cpu_after.cores) if cpu_after.cores is not None else (os.cpu_count() or 1)
        cpus = self.server_cpus if self.server_cpus is not None else tuple(range(core_count))
        foreign_s, steal_s = self._cpu_figures(self._cpu_before, cpu_after, cpus, core_count)
        gpu_samples = [s for s in (self._gpu_before, gpu_after) if s is not None]
        foreign_gpu = None
        if gpu_samples and self.server_pid is not None:
            ours = {p.pid for s in (self._cpu_before, cpu_after) if s is not None for p in s.server or ()}
            foreign_gpu = foreign_gpu_apps(gpu_samples, indices=self.gpu_indices, ours=ours | {self.server_pid})
        foreign_requests = None
        if counter_deltas is not None:
            foreign_requests = foreign_load_from_metrics(
                counter_deltas, sent_requests=sent_requests, sent_prompt_tokens=sent_prompt_tokens
            )
        return assess(
            window_s=window_s,
            server_cpus=self.server_cpus,
            core_count=len(cpus),
            foreign_cpu_s=foreign_s,
            steal_s=steal_s,
            load_avg_1m=_load_avg_1m(),
            gpu_foreign_processes=foreign_gpu,
            gpu_throttle_reasons=gpu_throttle(gpu_samples, indices=self.gpu_indices) if gpu_samples else None,
            foreign_requests=foreign_requests,
            sent_requests=sent_requests,
        )

    def _cpu_figures(
        self, before: CpuSample | None, after: CpuSample, cpus: Sequence[int], core_count: int
    ) -> tuple[float | None, float | None]:
        if before is None:
            return None, None
        steal_s = None
        if self.server_pid is not None or self.server_cpus is not None:
            steal_s = steal_cpu(before, after, cpus=cpus)
        client_affinity = self._client_affinity
        if client_affinity is not None:  # the union: the client may have been moved off the cores meanwhile
            client_affinity = client_affinity | (_affinity(self.client_pid) or set())
        # An unreadable server affinity: taken as pinned to the watched cores, as server_cpus says.
        server_share = 1.0
        if self._server_affinity is not None:
            server_share = affinity_share(self._server_affinity, cpus, core_count)
        foreign_s = foreign_cpu(
            before,
            after,
            cpus=cpus,
            server_share=server_share,
            client_share=affinity_share(client_affinity, cpus, core_count),
        )
        return foreign_s, steal_s

    def _cpu_sample(self) -> CpuSample:
        psutil = self._psutil
        if psutil is None:
            return CpuSample(cores=None, server=None, client_s=None)
        server = _tree(psutil, self.server_pid) if self.server_pid is not None else None
        # The client counts apart only when it is not inside the server's tree (an in-process server).
        in_tree = server is not None and any(p.pid == self.client_pid for p in server)
        client_s = None if in_tree else _own_cpu_s(psutil, self.client_pid)
        return CpuSample(cores=_cores(psutil), server=server, client_s=client_s)

    def _gpu_sample(self) -> GpuSample | None:
        if not self._watch_gpus:
            return None
        try:
            return self._smi.sample(self._psutil)
        except (OSError, ValueError, subprocess.SubprocessError):
            return None


def find_listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` on this machine (the first of a tree that shares the
    socket), or None: not found, several unrelated listeners, or not allowed to look (psutil needs root for
    other users' sockets on Linux, and for any on macOS)."""
    psutil = _psutil()
    if psutil is None:
        return None
    try:
        conns = psutil.net_connections(kind="tcp")
    except (OSError, psutil.Error):
        return None
    pids = {c.pid for c in conns if c.status == psutil.CONN_LISTEN and c.pid and c.laddr and c.laddr.port == port}
    ancestors: dict[int, set[int]] = {}
    for pid in pids:
        try:
            ancestors[pid] = {parent.pid for parent in psutil.Process(pid).parents()}
        except (OSError, psutil.Error):
            ancestors[pid] = set()
    return listening_root(ancestors)


def listening_root(ancestors: Mapping[int, Collection[int]]) -> int | None:
    """Of the pids holding a listening socket (pid -> its ancestors), the one the others descend from: a
    server's workers inherit its socket. None when there is none or several roots (unrelated servers)."""
    roots = [pid for pid, parents in ancestors.items() if not set(parents) & set(ancestors)]
    return roots[0] if len(roots) == 1 else None
