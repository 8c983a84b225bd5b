"""One run from several client processes against the simulator: the same answers as from one, nothing lost on
Ctrl-C, a clear error when a process dies, and no process left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.client import loadgen, procs
from pytest_llmperf.client.datasets import PromptContext, build_prompts
from pytest_llmperf.errors import ClientShardError, RunInterrupted
from pytest_llmperf.harness.runner import planned_prompts
from pytest_llmperf.judge import metrics
from pytest_llmperf.spec import Endpoint, RunRecords, Workload

POOL = PromptContext(token_pool=list(range(1000, 5000)))


@pytest.fixture
def slow_sim(start_sim: Callable[..., Any]) -> str:
    """10 ms decode steps and a 20 ms prefill: latencies far above a busy machine's scheduling noise."""
    sim = start_sim("--decode-ms", "10", "--decode-ms-per-seq", "0", "--prefill-tok-s", "1600", "--jitter", "0")
    # A new simulator's first batch runs slower (its code warms up): not what the comparisons are about.
    w = Workload(input_len=32, output_len=20, num_prompts=16, concurrency=8)
    loadgen.run(w, Endpoint(url=sim.url, model="llmperf-sim"), build_prompts(w, 16, POOL))
    return str(sim.url)


def client_children() -> list[int]:
    """Client processes this test process started that are still running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"pytest_llmperf.client.procs" in cmdline:
            found.append(int(entry.name))
    return found


def run_both(w: Workload, url: str) -> tuple[RunRecords, RunRecords]:
    endpoint = Endpoint(url=url, model="llmperf-sim")
    prompts = build_prompts(w, planned_prompts(w), POOL)
    one = loadgen.run(w, endpoint, prompts, warmup_prompts=prompts[:2])
    two = procs.run(w, endpoint, prompts, processes=2, warmup_prompts=prompts[:2])
    return one, two


def test_two_processes_measure_what_one_does_in_closed_loop(slow_sim: str) -> None:
    w = Workload(input_len=32, output_len=20, num_prompts=32, concurrency=8)
    one, two = run_both(w, slow_sim)
    a, b = metrics.summarize(one), metrics.summarize(two)
    assert a["completed"] == b["completed"] == 32
    assert a["failed"] == b["failed"] == 0
    assert sorted(r.index for r in two.records) == list(range(32))
    assert len(two.warmup_records) == 2
    for key in ("median_ttft_ms", "median_tpot_ms", "median_itl_ms"):
        assert b[key] == pytest.approx(a[key], rel=0.25), key  # 10 ms steps: the simulator's own timing
    assert b["total_output_tokens"] == a["total_output_tokens"]
    assert two.client is not None
    assert two.client.processes == 2
    assert b["client_processes"] == 2
    assert a["client_processes"] == 1
    assert client_children() == []


def test_two_processes_keep_the_open_loop_schedule(slow_sim: str) -> None:
    w = Workload(input_len=32, output_len=5, num_prompts=24, request_rate=40.0, concurrency=None, seed=3)
    one, two = run_both(w, slow_sim)
    due_one = sorted(r.arrival_s - one.bench_start_s for r in one.records)
    due_two = sorted(r.arrival_s - two.bench_start_s for r in two.records)
    assert due_two == pytest.approx(due_one, abs=1e-9)  # the same arrivals, on one clock
    assert all(r.start_s >= r.arrival_s for r in two.records)
    assert statistics.median(r.start_s - r.arrival_s for r in two.records) < 0.05
    assert two.duration_s == pytest.approx(one.duration_s, rel=0.3)


@pytest.fixture
def hears_ctrl_c() -> Iterator[None]:
    """Python's own SIGINT handler, even where this suite was started with SIGINT ignored (a background job)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("hears_ctrl_c")
def test_ctrl_c_stops_every_process_and_keeps_their_records(slow_sim: str) -> None:
    w = Workload(input_len=8, output_len=400, num_prompts=16, concurrency=4)
    prompts = build_prompts(w, planned_prompts(w), POOL)
    endpoint = Endpoint(url=slow_sim, model="llmperf-sim")
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(RunInterrupted) as caught:
        procs.run(w, endpoint, prompts, processes=2)  # 4 s of decoding per request: cut short
    timer.cancel()
    assert time.monotonic() - started < 30
    partial = caught.value.partial
    assert partial.interrupted
    assert partial.records, "the requests in flight are kept"
    assert any(r.error_kind == "cancelled" for r in partial.records)
    assert any(len(r.event_times_s) > 10 for r in partial.records)  # what they streamed before the interrupt
    assert client_children() == []


def test_a_process_that_dies_fails_the_run_clearly(slow_sim: str) -> None:
    w = Workload(input_len=8, output_len=400, num_prompts=8, concurrency=2)
    prompts = build_prompts(w, planned_prompts(w), POOL)
    endpoint = Endpoint(url=slow_sim, model="llmperf-sim")

    def kill_one() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            children = client_children()
            if len(children) == 2:
                time.sleep(2.0)  # into the run
                os.kill(children[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    with pytest.raises(ClientShardError, match=r"client process \d \(pid \d+\) ended without its records"):
        procs.run(w, endpoint, prompts, processes=2)
    killer.join()
    assert client_children() == []


def test_auto_plans_processes_from_the_event_rate_within_the_free_cores() -> None:
    w = Workload(concurrency=64)
    assert procs.auto_processes(w, None, 6) == 6  # nothing measured yet: every free core
    assert procs.auto_processes(w, 10_000.0, 6) == 1
    assert procs.auto_processes(w, 60_000.0, 6) == 3  # 25,000 events/s planned per process
    assert procs.auto_processes(w, 1e6, 6) == 6
    assert procs.free_cores([0]) == tuple(c for c in sorted(os.sched_getaffinity(0)) if c != 0) or tuple(
        sorted(os.sched_getaffinity(0))
    )


@pytest.mark.usefixtures("hears_ctrl_c")
@pytest.mark.parametrize("after_s", [0.2, 1.5], ids=["while-starting", "during-warmup"])
def test_ctrl_c_before_the_window_opens_stops_at_once(slow_sim: str, after_s: float) -> None:
    w = Workload(input_len=8, output_len=300, num_prompts=8, concurrency=2)
    prompts = build_prompts(w, planned_prompts(w), POOL)
    endpoint = Endpoint(url=slow_sim, model="llmperf-sim")
    timer = threading.Timer(after_s, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(RunInterrupted) as caught:
        # A 3 s warmup request per process: the interrupt lands before (or while) they warm up.
        procs.run(w, endpoint, prompts, processes=2, warmup_prompts=prompts[:2])
    timer.cancel()
    assert time.monotonic() - started < 12  # not the 15 s grace of a process nobody started
    assert caught.value.partial.interrupted
    assert client_children() == []


def test_the_processes_end_with_a_parent_that_was_killed(slow_sim: str, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys\n"
        "from pytest_llmperf.client import procs\n"
        "from pytest_llmperf.client.datasets import PromptContext, build_prompts\n"
        "from pytest_llmperf.spec import Endpoint, Workload\n"
        "w = Workload(input_len=8, output_len=2000, num_prompts=4, concurrency=2)\n"
        "prompts = build_prompts(w, 4, PromptContext(token_pool=list(range(1000, 2000))))\n"
        "procs.run(w, Endpoint(url=sys.argv[1], model='llmperf-sim'), prompts, processes=2)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script), slow_sim])
    try:
        deadline = time.monotonic() + 30
        children: list[int] = []
        while time.monotonic() < deadline and len(children) < 2:
            children = [pid for pid in all_client_processes() if parent_of(pid) == parent.pid]
            time.sleep(0.1)
        assert len(children) == 2
    finally:
        parent.kill()  # SIGKILL: no clean-up of its own runs
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in children):
        time.sleep(0.1)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and not zombie(pid)]


def all_client_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if b"pytest_llmperf.client.procs" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
