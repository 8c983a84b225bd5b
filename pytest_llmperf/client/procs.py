"""One run from several client processes on this host (``--llmperf-client-procs``).

Each process is a load generator of its own (event loop, connection pool, self-check) running its shard of the
run (:mod:`pytest_llmperf.client.shards`). Each is a fresh interpreter (``python -m
pytest_llmperf.client.procs``: no copy of pytest's state, threads or sockets, and unlike ``multiprocessing``'s
spawn, no second import of whatever script started pytest); they warm up, and open their measured window at
one instant the parent sets once all are ready.
``time.perf_counter()`` is the host's monotonic clock, shared by every process, so their records merge onto
one clock as they are.

The processes talk to the parent over a socket pair each, with ``multiprocessing``'s pickled-message
connection: the job, ready, the start instant, progress, and their records at the end. Ctrl-C (or SIGTERM) in
the parent is passed on to them; each stops as a run of one process would and hands back what it measured, so
an interrupted run keeps everything. They live in their own process group (a terminal's Ctrl-C reaches the
parent alone, which then stops them once) and end themselves when the parent goes away, so none outlives the
session.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from pytest_llmperf.client import shards
from pytest_llmperf.errors import ClientShardError, RunInterrupted
from pytest_llmperf.spec import Endpoint, Prompt, RunRecords, Workload

if TYPE_CHECKING:  # the plugin imports this module at start-up; interrupts brings asyncio, needed only in a run
    from pytest_llmperf.client.interrupts import Interrupts

EVENTS_PER_PROCESS_S = 25_000.0
"""The event rate ``auto`` plans per client process: about half of what one process reads at one event per read
(benchmarks/results/client_capacity.md), so the self-check's CPU limit stays far."""

_START_MARGIN_S = 0.05  # from "all ready" to the common start: the start message reaches every process first
_READY_TIMEOUT_S = 120.0  # spawning and importing take about a second; the rest is the warmup
_PROGRESS_EVERY_S = 0.25
_INTERRUPT_GRACE_S = 15.0  # each process cancels its requests within 5 s (loadgen) and then sends its records
_STOP_WAIT_S = 5.0
_PARENT_CHECK_S = 0.5


@dataclass(frozen=True, slots=True)
class _Job:
    """What a client process needs to run its shard."""

    workload: Workload
    endpoint: Endpoint
    plan: shards.ShardPlan
    busy_poll: bool
    cores: tuple[int, ...] | None
    parent_pid: int


def free_cores(server_cores: Sequence[int] | None) -> tuple[int, ...]:
    """This process's cores, without a local server's (all of them when that would leave none)."""
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    free = [core for core in mine if core not in set(server_cores or ())]
    return tuple(free or mine)


def auto_processes(workload: Workload, expected_events_per_s: float | None, cores: int) -> int:
    """``--llmperf-client-procs=auto``: enough processes for the expected event rate, at most ``cores``.

    ``expected_events_per_s`` is what an earlier run of the session measured against the same server, scaled to
    this workload's concurrency; None (nothing measured yet) takes every free core.
    """
    if expected_events_per_s is None:
        return max(1, cores)
    return max(1, min(math.ceil(expected_events_per_s / EVENTS_PER_PROCESS_S), cores))


def run(
    workload: Workload,
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    *,
    processes: int,
    warmup_prompts: Sequence[Prompt] = (),
    cores: Sequence[int] | None = None,
    progress: Any = None,
    busy_poll: bool = False,
) -> RunRecords:
    """Run one load episode from ``processes`` client processes and return the merged records.

    ``cores``: where the processes may run (e.g. :func:`free_cores`); with at least as many cores as processes
    each gets one of its own, else they share them. ``progress`` is called as in ``loadgen.run``.
    """
    from pytest_llmperf.client.interrupts import deferred

    offsets = shards.arrival_schedule(workload, prompts)
    plans = shards.split(workload, prompts, warmup_prompts, processes, offsets=offsets)
    workers: list[_Worker] = []
    # Ctrl-C (and SIGTERM mapped to it) is noted, not raised, while the processes run: raised in the middle of
    # reading a message it would lose that message; the coordinator passes it on and collects what they measured.
    with deferred(reraise=False) as interrupts:
        try:
            for plan in plans:
                job = _Job(
                    workload=shards.shard_workload(workload, plan),
                    endpoint=endpoint,
                    plan=plan,
                    busy_poll=busy_poll,
                    cores=_cores_of(plan.shard, len(plans), cores),
                    parent_pid=os.getpid(),
                )
                workers.append(_Worker.start(job))
            coordinator = _Coordinator(workload, plans, workers, interrupts)
            coordinator.run(progress)
        finally:
            _stop_all(workers)
    answered = [(plan, w.result) for plan, w in zip(plans, workers, strict=True) if w.result is not None]
    if answered:
        merged = shards.merge(workload, [p for p, _ in answered], [r for _, r in answered])
    else:
        merged = shards.nothing_measured(workload)
    if len(plans) < processes:
        merged.notes.insert(
            0,
            f"{processes} client processes were asked for; this workload feeds {len(plans)} (each needs a "
            "concurrency slot and a prompt, or a conversation)",
        )
    silent = len(workers) - len(answered)
    if interrupts or merged.interrupted:
        merged.interrupted = True
        if silent:
            merged.notes.insert(0, f"{silent} client process(es) stopped before measuring anything")
        if not any("interrupted" in note for note in merged.notes):
            merged.notes.append(f"the run was interrupted by {interrupts.name}; figures cover the requests finished")
        raise RunInterrupted(merged)
    return merged


def _cores_of(shard: int, count: int, cores: Sequence[int] | None) -> tuple[int, ...] | None:
    if not cores:
        return None
    if len(cores) >= count:
        return (cores[shard],)
    return tuple(cores)


def _ready_timeout(job: _Job) -> float:
    """Spawning and importing take about a second; the warmup takes what its requests take."""
    return _READY_TIMEOUT_S + shards.warmup_time_s(job.workload, len(job.plan.warmup_prompts))


class _Worker:
    """The parent's handle on one client process."""

    def __init__(self, process: subprocess.Popen[bytes], conn: Connection, job: _Job) -> None:
        self.process = process
        self.conn = conn
        self.shard = job.plan.shard
        self.ready_timeout_s = _ready_timeout(job)
        self.ready = False
        self.started = False  # the start instant was sent
        self.result: RunRecords | None = None
        self.gone = False  # ended without records (interrupted before measuring, or died)
        self.done = 0
        self.events = 0

    @classmethod
    def start(cls, job: _Job) -> _Worker:
        mine, theirs = socket.socketpair()
        with mine, theirs:
            fd = theirs.fileno()
            process = subprocess.Popen(
                [sys.executable, "-m", "pytest_llmperf.client.procs", str(fd)],
                pass_fds=(fd,),
                # Its own process group: a terminal's Ctrl-C reaches the parent alone, which passes it on once.
                start_new_session=True,
            )
            conn = Connection(os.dup(mine.fileno()))
        worker = cls(process, conn, job)
        try:
            conn.send(job)
        except BaseException:
            _stop_all([worker])  # never a process nobody watches
            raise
        return worker

    @property
    def name(self) -> str:
        return f"client process {self.shard + 1} (pid {self.process.pid})"

    @property
    def pending(self) -> bool:
        return self.result is None and not self.gone

    def alive(self) -> bool:
        return self.process.poll() is None

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


def _stop_all(workers: Sequence[_Worker]) -> None:
    """Every process gone, whatever happened: waited for together, then terminated, then killed."""
    for end in (None, "terminate", "kill"):
        alive = [w for w in workers if w.alive()]
        if not alive:
            break
        for worker in alive:
            if end is not None:
                with contextlib.suppress(ProcessLookupError):
                    getattr(worker.process, end)()
        deadline = time.monotonic() + _STOP_WAIT_S
        for worker in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for worker in workers:
        worker.conn.close()


class _Coordinator:
    """Reads the processes' messages: every one ready, then the common start, progress, and the results."""

    def __init__(
        self, workload: Workload, plans: Sequence[shards.ShardPlan], workers: list[_Worker], interrupts: Interrupts
    ) -> None:
        self.workload = workload
        self.workers = workers
        self.interrupts = interrupts
        self.planned = sum(len(p.prompts) for p in plans) if workload.duration_s is None else None
        self.interrupted_at: float | None = None

    def run(self, progress: Any) -> None:
        started = time.monotonic()
        while any(w.pending for w in self.workers):
            if self.interrupts and self.interrupted_at is None:
                self._pass_on_interrupt()
            if len(self.interrupts.received) > 1:  # a second interrupt: stop waiting for them
                return
            self._pump(progress)
            late = [w for w in self.workers if not w.ready and time.monotonic() - started > w.ready_timeout_s]
            if late and self.interrupted_at is None:
                raise ClientShardError(
                    f"{late[0].name} was not ready within {late[0].ready_timeout_s:g} s (spawning, importing and "
                    "the warmup): check the machine's load, or use fewer processes (--llmperf-client-procs)"
                )
            if self.interrupted_at is not None and time.monotonic() - self.interrupted_at > _INTERRUPT_GRACE_S:
                return

    def _pass_on_interrupt(self) -> None:
        """Each process stops as one process would: one still starting has measured nothing and just ends; one
        waiting for the start instant gets it, so that it too can stop and answer."""
        self.interrupted_at = time.monotonic()
        for worker in self.workers:
            if not worker.pending:
                continue
            if not worker.ready:
                worker.gone = True
                with contextlib.suppress(ProcessLookupError):
                    worker.process.terminate()
                continue
            if not worker.started:
                self._send_start(worker, time.perf_counter())
            worker.interrupt(self.interrupts.received[0])

    def _send_start(self, worker: _Worker, start: float) -> None:
        with contextlib.suppress(OSError):
            worker.conn.send(start)
        worker.started = True

    def _pump(self, progress: Any) -> None:
        pending = {w.conn: w for w in self.workers if w.pending}
        for conn in wait(list(pending), timeout=_PARENT_CHECK_S):
            worker = pending[conn]  # type: ignore[index]  # wait() hands back the connections it was given
            try:
                kind, payload = worker.conn.recv()
            except (EOFError, OSError):
                self._died(worker)
                continue
            self._handle(worker, kind, payload, progress)
        for worker in self.workers:
            if worker.pending and not worker.alive() and not worker.conn.poll():
                self._died(worker)

    def _handle(self, worker: _Worker, kind: str, payload: Any, progress: Any) -> None:
        if kind == "ready":
            worker.ready = True
            if self.interrupted_at is not None:
                self._send_start(worker, time.perf_counter())
                worker.interrupt(self.interrupts.received[0])
            elif all(w.ready for w in self.workers):
                start = time.perf_counter() + _START_MARGIN_S
                for each in self.workers:
                    self._send_start(each, start)
        elif kind == "progress":
            worker.done, worker.events = payload
            if progress is not None:
                progress(sum(w.done for w in self.workers), self.planned, sum(w.events for w in self.workers))
        elif kind in ("done", "interrupted"):
            worker.result = payload
        elif kind == "stopped" or self.interrupted_at is not None:
            worker.gone = True  # interrupted before it measured anything, or failed while stopping
        else:  # "error": the process's own failure, with its traceback
            raise ClientShardError(f"{worker.name} failed: {payload}")

    def _died(self, worker: _Worker) -> None:
        worker.gone = True
        if self.interrupted_at is not None:
            return  # stopped by the interrupt before it had records to send
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=1)
        raise ClientShardError(
            f"{worker.name} ended without its records (exit code {worker.process.returncode}): look for an "
            "out-of-memory kill (dmesg) or a crash above; the run is lost"
        )


# -- the child process ---------------------------------------------------------------------------------------


def _child_main(conn: Connection) -> None:
    """A client process: run the shard, send back its records (or its failure), never outlive the parent."""
    # SIGTERM as the parent received it: stops the run as Ctrl-C does (loadgen), and the notes name it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    job: _Job = conn.recv()
    threading.Thread(target=_exit_with_parent, args=(job.parent_pid,), daemon=True).start()
    if job.cores is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, job.cores)
    from pytest_llmperf.client import loadgen

    last = [0.0]

    def report(done: int, planned: int | None, events: int) -> None:
        now = time.monotonic()
        if now - last[0] >= _PROGRESS_EVERY_S:
            last[0] = now
            conn.send(("progress", (done, events)))

    def start_instant() -> float:
        conn.send(("ready", None))
        start: float = conn.recv()
        return start

    try:
        records = loadgen.run(
            job.workload,
            job.endpoint,
            job.plan.prompts,
            warmup_prompts=job.plan.warmup_prompts,
            progress=report,
            busy_poll=job.busy_poll,
            offsets=job.plan.offsets,
            start_instant=start_instant,
        )
    except RunInterrupted as interrupted:
        conn.send(("interrupted", interrupted.partial))
    except KeyboardInterrupt:  # before the run's own handler was in place: nothing measured
        conn.send(("stopped", None))
    except BaseException:  # everything, so the parent hears why rather than a bare exit code
        conn.send(("error", traceback.format_exc(limit=-8)))
    else:
        conn.send(("done", records))
    conn.close()


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(_PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(3)


if __name__ == "__main__":
    try:
        _child_main(Connection(int(sys.argv[1])))
    except KeyboardInterrupt:  # still importing when the parent passed an interrupt on: nothing was measured
        sys.exit(130)
