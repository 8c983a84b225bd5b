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
from typing import Any

from pytest_llmperf.client import shards
from pytest_llmperf.errors import ClientShardError, RunInterrupted
from pytest_llmperf.spec import Endpoint, Prompt, RunRecords, Workload

EVENTS_PER_PROCESS_S = 25_000.0
"""The event rate ``auto`` plans per client process: about half of what one process reads at one event per read
(benchmarks/results/client_capacity.md), so the self-check's CPU limit stays far."""

_START_MARGIN_S = 0.05  # from "all ready" to the common start: the start message reaches every process first
_READY_TIMEOUT_S = 120.0  # spawning and importing take about a second; the rest is the warmup
_PROGRESS_EVERY_S = 0.25
_INTERRUPT_GRACE_S = 15.0  # each process cancels its requests within 5 s (loadgen) and then sends its records
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
    offsets = shards.arrival_schedule(workload, prompts)
    plans = shards.split(workload, prompts, warmup_prompts, processes, offsets=offsets)
    workers: list[_Worker] = []
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
        runs = _Coordinator(workload, plans, workers).run(progress)
    finally:
        for worker in workers:
            worker.stop()
    merged = shards.merge(workload, plans, runs)
    if len(plans) < processes:
        merged.notes.append(
            f"{processes} client processes were asked for; this workload feeds {len(plans)} (each needs a "
            "concurrency slot and a prompt)"
        )
    if merged.interrupted:
        raise RunInterrupted(merged)
    return merged


def _cores_of(shard: int, count: int, cores: Sequence[int] | None) -> tuple[int, ...] | None:
    if not cores:
        return None
    if len(cores) >= count:
        return (cores[shard],)
    return tuple(cores)


class _Worker:
    """The parent's handle on one client process."""

    def __init__(self, process: subprocess.Popen[bytes], conn: Connection, shard: int) -> None:
        self.process = process
        self.conn = conn
        self.shard = shard
        self.ready = False
        self.result: RunRecords | None = None
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
        conn.send(job)
        return cls(process, conn, job.plan.shard)

    @property
    def name(self) -> str:
        return f"client process {self.shard + 1} (pid {self.process.pid})"

    def alive(self) -> bool:
        return self.process.poll() is None

    def interrupt(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)

    def stop(self) -> None:
        """The process gone, whatever happened: waited for, else terminated, else killed."""
        for end in (None, self.process.terminate, self.process.kill):
            if end is not None:
                end()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
                break
        self.conn.close()


class _Coordinator:
    """Reads the processes' messages: every one ready, then the common start, progress, and the results."""

    def __init__(self, workload: Workload, plans: Sequence[shards.ShardPlan], workers: list[_Worker]) -> None:
        self.workload = workload
        self.plans = plans
        self.workers = workers
        self.planned = sum(len(p.prompts) for p in plans) if workload.duration_s is None else None
        self.interrupted_at: float | None = None

    def run(self, progress: Any) -> list[RunRecords]:
        started = time.monotonic()
        while any(w.result is None for w in self.workers):
            try:
                self._pump(progress)
            except KeyboardInterrupt:
                if self.interrupted_at is not None:  # a second interrupt: stop waiting for them
                    raise RunInterrupted(self._partial()) from None
                self.interrupted_at = time.monotonic()
                for worker in self.workers:
                    worker.interrupt()
                continue
            if not all(w.ready for w in self.workers) and time.monotonic() - started > _READY_TIMEOUT_S:
                raise ClientShardError(
                    f"the client processes were not ready within {_READY_TIMEOUT_S:g} s (spawning, importing and "
                    "the warmup): check the machine's load, or use fewer processes (--llmperf-client-procs)"
                )
            if self.interrupted_at is not None and time.monotonic() - self.interrupted_at > _INTERRUPT_GRACE_S:
                raise RunInterrupted(self._partial())
        return [w.result for w in self.workers if w.result is not None]

    def _pump(self, progress: Any) -> None:
        pending = {w.conn: w for w in self.workers if w.result is None}
        for conn in wait(list(pending), timeout=_PARENT_CHECK_S):
            worker = pending[conn]  # type: ignore[index]  # wait() hands back the connections it was given
            try:
                kind, payload = worker.conn.recv()
            except (EOFError, OSError):
                self._died(worker)
                continue
            self._handle(worker, kind, payload, progress)
        for worker in self.workers:
            if worker.result is None and not worker.alive() and not worker.conn.poll():
                self._died(worker)

    def _handle(self, worker: _Worker, kind: str, payload: Any, progress: Any) -> None:
        if kind == "ready":
            worker.ready = True
            if all(w.ready for w in self.workers):
                start = time.perf_counter() + _START_MARGIN_S
                for each in self.workers:
                    each.conn.send(start)
        elif kind == "progress":
            worker.done, worker.events = payload
            if progress is not None:
                progress(sum(w.done for w in self.workers), self.planned, sum(w.events for w in self.workers))
        elif kind in ("done", "interrupted"):
            worker.result = payload
        else:  # "error": the process's own failure, with its traceback
            for other in self.workers:
                other.interrupt()
            raise ClientShardError(f"{worker.name} failed: {payload}")

    def _died(self, worker: _Worker) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=1)
        code = worker.process.returncode
        for other in self.workers:
            other.interrupt()
        raise ClientShardError(
            f"{worker.name} ended without its records (exit code {code}): look for an out-of-memory kill "
            "(dmesg) or a crash above; the run is lost"
        )

    def _partial(self) -> RunRecords:
        """What the processes that answered measured (a second interrupt does not wait for the others)."""
        answered = [(plan, w.result) for plan, w in zip(self.plans, self.workers, strict=True) if w.result is not None]
        silent = len(self.workers) - len(answered)
        if answered:
            merged = shards.merge(self.workload, [p for p, _ in answered], [r for _, r in answered])
        else:
            now = time.perf_counter()
            merged = RunRecords(workload=self.workload, records=[], bench_start_s=now, bench_end_s=now)
        merged.interrupted = True
        if silent:
            merged.notes.append(f"{silent} client process(es) did not hand back their records after the interrupt")
        return merged


# -- the child process ---------------------------------------------------------------------------------------


def _child_main(conn: Connection) -> None:
    """A client process: run the shard, send back its records (or its failure), never outlive the parent."""
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
    except BaseException:  # everything, so the parent hears why rather than a bare exit code
        conn.send(("error", traceback.format_exc(limit=8)))
    else:
        conn.send(("done", records))
    conn.close()


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(_PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(3)


if __name__ == "__main__":
    _child_main(Connection(int(sys.argv[1])))
