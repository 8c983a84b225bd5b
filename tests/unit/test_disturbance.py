"""Disturbance of the server's resources: known answers of the pure helpers, a fake nvidia-smi on PATH, and a
real measurement with a busy process pinned to a core."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_llmperf.servers import disturbance
from pytest_llmperf.servers.disturbance import (
    CoreTimes,
    CpuSample,
    DisturbanceMonitor,
    GpuApp,
    GpuSample,
    ProcTimes,
    affinity_share,
    assess,
    cpu_list,
    find_listening_pid,
    foreign_cpu,
    foreign_gpu_apps,
    foreign_load_from_metrics,
    listening_root,
    parse_compute_apps,
    parse_gpus,
    steal_cpu,
    throttle_reasons,
    tree_cpu_s,
)


def proc(pid: int, own_s: float, *, ppid: int = 1, reaped_s: float = 0.0, created: float = 100.0) -> ProcTimes:
    return ProcTimes(pid=pid, ppid=ppid, created=created, own_s=own_s, reaped_s=reaped_s)


def sample(
    core1_busy: float, *, steal: float = 0.0, server: tuple[ProcTimes, ...] | None = (), client_s: float = 0.0
) -> CpuSample:
    """Two cores; only core 1 changes between samples."""
    cores = (CoreTimes(busy_s=50.0, steal_s=0.0), CoreTimes(busy_s=core1_busy, steal_s=steal))
    return CpuSample(cores=cores, server=server, client_s=client_s)


# --- foreign CPU and steal: known answers -----------------------------------------------------------------


def test_server_using_90_percent_of_a_busy_core_leaves_10_percent_foreign_at_the_limit() -> None:
    before = sample(10.0, server=(proc(10, 2.0),))
    after = sample(11.0, server=(proc(10, 2.9),))
    foreign_s = foreign_cpu(before, after, cpus=[1])
    assert foreign_s == pytest.approx(0.1)
    result = assess(window_s=1.0, server_cpus=[1], core_count=1, foreign_cpu_s=foreign_s, steal_s=0.0)
    assert result.foreign_cpu_fraction == pytest.approx(0.10)
    assert result.disturbed  # the limit is reached at 10%, not only beyond it
    assert result.reasons == ("other processes used 10% of the server's core 1 (limit 10%)",)


def test_just_below_the_limit_is_not_disturbed() -> None:
    before = sample(10.0, server=(proc(10, 2.0),))
    after = sample(11.0, server=(proc(10, 2.91),))
    result = assess(
        window_s=1.0, server_cpus=[1], core_count=1, foreign_cpu_s=foreign_cpu(before, after, cpus=[1]), steal_s=0.0
    )
    assert result.foreign_cpu_fraction == pytest.approx(0.09)
    assert not result.disturbed
    assert result.reasons == ()


def test_foreign_cpu_is_clamped_at_zero() -> None:
    # Tick rounding can make the server's time exceed its core's busy time.
    before = sample(10.0, server=(proc(10, 2.0),))
    after = sample(11.0, server=(proc(10, 3.02),))
    assert foreign_cpu(before, after, cpus=[1]) == 0.0


def test_client_time_counts_in_proportion_to_its_share_of_the_cores() -> None:
    before = sample(10.0, server=(proc(10, 2.0),), client_s=1.0)
    after = sample(11.0, server=(proc(10, 2.5),), client_s=1.4)
    assert foreign_cpu(before, after, cpus=[1], client_share=0.0) == pytest.approx(0.5)
    assert foreign_cpu(before, after, cpus=[1], client_share=0.5) == pytest.approx(0.3)
    assert foreign_cpu(before, after, cpus=[1], client_share=1.0) == pytest.approx(0.1)


def test_foreign_cpu_unknown_without_server_or_cores() -> None:
    assert foreign_cpu(sample(10.0, server=None), sample(11.0, server=None), cpus=[1]) is None
    assert foreign_cpu(sample(10.0), sample(11.0), cpus=[7]) is None  # no such core
    blind = CpuSample(cores=None, server=(), client_s=0.0)
    assert foreign_cpu(blind, blind, cpus=[1]) is None


def test_steal_at_and_below_its_limit() -> None:
    stolen = steal_cpu(sample(10.0, steal=3.0), sample(10.9, steal=3.05), cpus=[1])
    assert stolen == pytest.approx(0.05)
    at_limit = assess(window_s=1.0, server_cpus=[1], core_count=1, foreign_cpu_s=0.0, steal_s=stolen)
    assert at_limit.steal_fraction == pytest.approx(0.05)
    assert at_limit.reasons == ("the hypervisor stole 5% of the server's core 1 (limit 5%)",)
    below = assess(window_s=1.0, server_cpus=[1], core_count=1, foreign_cpu_s=0.0, steal_s=0.04)
    assert not below.disturbed


def test_a_few_ticks_in_a_short_window_are_rounding_not_a_disturbance() -> None:
    # 0.03 s is 15% of a 0.2 s window, but only three 10 ms ticks.
    result = assess(window_s=0.2, server_cpus=[1], core_count=1, foreign_cpu_s=0.03, steal_s=0.03)
    assert result.foreign_cpu_fraction == pytest.approx(0.15)
    assert not result.disturbed


def test_all_cores_watched_when_server_cpus_unknown() -> None:
    result = assess(window_s=2.0, server_cpus=None, core_count=4, foreign_cpu_s=2.0, steal_s=0.0)
    assert result.server_cpus is None
    assert result.foreign_cpu_fraction == pytest.approx(0.25)
    assert result.reasons == ("other processes used 25% of this machine's 4 cores (limit 10%)",)


def test_load_average_is_recorded_but_never_a_reason() -> None:
    result = assess(window_s=1.0, server_cpus=[0], core_count=1, foreign_cpu_s=0.0, steal_s=0.0, load_avg_1m=40.0)
    assert result.load_avg_1m == 40.0
    assert not result.disturbed


# --- the server's process tree ------------------------------------------------------------------------------


def test_tree_counts_threads_children_and_newcomers() -> None:
    before = (proc(10, 5.0), proc(11, 1.0, ppid=10))
    after = (proc(10, 5.5), proc(11, 1.25, ppid=10), proc(12, 0.5, ppid=10))
    assert tree_cpu_s(before, after) == pytest.approx(0.5 + 0.25 + 0.5)


def test_tree_counts_a_child_reaped_in_the_window_once() -> None:
    # Child 11 had used 3 s before the window, 0.5 s in it, then exited; the server waited for it.
    before = (proc(10, 5.0), proc(11, 3.0, ppid=10))
    after = (proc(10, 5.2, reaped_s=3.5),)
    assert tree_cpu_s(before, after) == pytest.approx(0.2 + 0.5)


def test_tree_counts_a_grandchild_reaped_through_a_vanished_child() -> None:
    before = (proc(10, 5.0), proc(11, 3.0, ppid=10), proc(12, 2.0, ppid=11))
    # 12 used 0.5 s more and was reaped by 11 (11: reaped 2.5), which used 0.25 s more and was reaped by 10.
    after = (proc(10, 5.0, reaped_s=3.25 + 2.5),)
    assert tree_cpu_s(before, after) == pytest.approx(0.75)


def test_tree_takes_nothing_back_for_a_child_that_left_unreaped() -> None:
    # Orphaned to init: its time is gone with it, and the server's own time is not eaten by its past.
    before = (proc(10, 5.0), proc(11, 30.0, ppid=10))
    after = (proc(10, 5.4),)
    assert tree_cpu_s(before, after) == pytest.approx(0.4)


def test_tree_tells_a_reused_pid_from_the_process_before() -> None:
    before = (proc(10, 5.0), proc(11, 3.0, ppid=10, created=100.0))
    after = (proc(10, 5.0, reaped_s=3.1), proc(11, 0.2, ppid=10, created=150.0))
    assert tree_cpu_s(before, after) == pytest.approx(0.1 + 0.2)


@pytest.mark.parametrize(
    ("affinity", "watched", "expected"),
    [({1}, [1], 1.0), ({0}, [1], 0.0), ({0, 1}, [1], 0.5), (None, [1], 0.25), ({0, 1, 2, 3}, [0, 1, 2, 3], 1.0)],
)
def test_affinity_share(affinity: set[int] | None, watched: list[int], expected: float) -> None:
    assert affinity_share(affinity, watched, cpu_count=4) == expected


# --- foreign requests from the server's counters -------------------------------------------------------------


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        ({"vllm:request_success_total": 105.0, "vllm:prompt_tokens_total": 99_999.0}, 5.0),
        ({"sglang:num_requests_total": 100.0, "sglang:prompt_tokens_total": 20_000.0}, 0.0),
        ({"sglang:prompt_tokens_total": 20_600.0}, 3.0),  # older SGLang: prompt tokens only, 200 per request
        ({"llamacpp:prompt_tokens_total": 20_400.0}, 2.0),
        ({"llamacpp:prompt_tokens_total": 5_000.0, "llamacpp:prompt_tokens_cached_total": 16_000.0}, 5.0),
        ({"sim:requests_total": 101.0, "sim:prompt_tokens_total": 20_200.0}, 1.0),
        ({"vllm:request_success_total": 90.0}, 0.0),  # fewer than we sent (aborted): clamped
        ({"vllm:generation_tokens_total": 5000.0, "other:requests_total": 7.0}, None),
        ({}, None),
    ],
)
def test_foreign_load_from_metrics(deltas: dict[str, float], expected: float | None) -> None:
    found = foreign_load_from_metrics(deltas, sent_requests=100, sent_prompt_tokens=20_000)
    assert found == (pytest.approx(expected) if expected is not None else None)


def test_sim_exports_the_counters_read() -> None:
    from pytest_llmperf.servers.engine_metrics import parse_counters
    from pytest_llmperf.sim.app import Sim, render_metrics
    from pytest_llmperf.sim.model import SimConfig

    names = parse_counters(render_metrics(Sim(SimConfig())))
    assert {"sim:requests_total", "sim:prompt_tokens_total"} <= set(names)


def test_token_counters_need_something_sent_to_scale_by() -> None:
    assert (
        foreign_load_from_metrics({"llamacpp:prompt_tokens_total": 500.0}, sent_requests=0, sent_prompt_tokens=0)
        is None
    )


def test_foreign_requests_limit_is_one_or_one_percent_of_ours() -> None:
    def judged(foreign: float, sent: int) -> bool:
        return assess(
            window_s=1.0,
            server_cpus=None,
            core_count=1,
            foreign_cpu_s=None,
            steal_s=None,
            foreign_requests=foreign,
            sent_requests=sent,
        ).disturbed

    assert judged(1.0, 50)
    assert not judged(0.5, 50)
    assert not judged(9.0, 1000)
    assert judged(10.0, 1000)


# --- GPU ----------------------------------------------------------------------------------------------------


def test_throttle_reasons_leave_out_idle_and_application_clocks() -> None:
    assert throttle_reasons(0x0) == ()
    assert throttle_reasons(0x1 | 0x2) == ()
    assert throttle_reasons(0x4 | 0x40) == ("sw_power_cap", "hw_thermal_slowdown")
    assert throttle_reasons(0x800) == ("0x800",)


def test_parse_nvidia_smi_csv() -> None:
    uuids, masks = parse_gpus("0, GPU-a, 0x0000000000000004\n1, GPU-b, [N/A]\n\n")
    assert uuids == {0: "GPU-a", 1: "GPU-b"}
    assert masks == {0: 0x4, 1: None}
    apps = parse_compute_apps("GPU-a, 123, /usr/bin/python3\nGPU-b, [N/A], x\n")
    assert apps == (GpuApp(gpu_uuid="GPU-a", pid=123, name="/usr/bin/python3"),)


def test_gpu_pids_from_another_namespace_are_not_guessed() -> None:
    apps = (GpuApp(gpu_uuid="GPU-a", pid=98765, name="python"),)
    stranger = GpuSample(uuids={0: "GPU-a"}, masks={0: 0}, apps=apps, here=frozenset())
    assert foreign_gpu_apps([stranger], indices=[0], ours={10}) is None
    visible = GpuSample(uuids={0: "GPU-a"}, masks={0: 0}, apps=apps, here=frozenset({98765}))
    assert foreign_gpu_apps([visible], indices=[0], ours={10}) == ("98765 python",)
    assert foreign_gpu_apps([visible], indices=[1], ours={10}) == ()


def fake_nvidia_smi(directory: Path, *, apps: list[str], gpus: list[str], gpu_field: str) -> None:
    """An nvidia-smi that prints ``apps`` for the compute-apps query and ``gpus`` for the GPU query naming
    ``gpu_field``; any other query fails as a driver rejects a field it does not know."""

    def prints(lines: list[str]) -> str:
        return "; ".join(f"printf '%s\\n' '{line}'" for line in lines) or ":"

    script = (
        "#!/bin/sh\n"
        'case "$1" in\n'
        f"  --query-compute-apps=gpu_uuid,pid,process_name) {prints(apps)} ;;\n"
        f"  --query-gpu=index,uuid,{gpu_field}) {prints(gpus)} ;;\n"
        "  *) echo 'not a valid field' >&2; exit 2 ;;\n"
        "esac\n"
    )
    path = directory / "nvidia-smi"
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start child processes; every one is killed and reaped at the end, whatever happened."""
    started: list[subprocess.Popen[bytes]] = []

    def start(code: str) -> subprocess.Popen[bytes]:
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
        started.append(child)
        return child

    try:
        yield start
    finally:
        for child in started:
            child.kill()
        for child in started:
            child.wait()


IDLE = "import time; time.sleep(60)"
BUSY = "while True: pass"


@pytest.mark.parametrize("gpu_field", ["clocks_event_reasons.active", "clocks_throttle_reasons.active"])
def test_fake_nvidia_smi_foreign_process_and_slowdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawn: Spawn, gpu_field: str
) -> None:
    server = spawn(IDLE)
    fake_nvidia_smi(
        tmp_path,
        apps=[f"GPU-aaa, {server.pid}, /usr/bin/python3", "GPU-aaa, 1, /sbin/init", "GPU-bbb, 1, /sbin/init"],
        gpus=["0, GPU-aaa, 0x0000000000000044", "1, GPU-bbb, 0x0000000000000008"],
        gpu_field=gpu_field,
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monitor = DisturbanceMonitor(server_pid=server.pid, server_cpus=None, gpu_indices=[0])
    monitor.start()
    result = monitor.stop()
    assert result.gpu_foreign_processes == ("1 /sbin/init",)
    assert result.gpu_throttle_reasons == ("GPU 0: sw_power_cap", "GPU 0: hw_thermal_slowdown")
    assert "other processes computed on the server's GPUs: 1 /sbin/init (limit 0)" in result.reasons
    assert "GPU clocks were slowed down: GPU 0: hw_thermal_slowdown (limit: none)" in result.reasons
    assert result.disturbed


def test_power_cap_alone_is_recorded_not_a_disturbance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawn: Spawn
) -> None:
    server = spawn(IDLE)
    fake_nvidia_smi(
        tmp_path,
        apps=[f"GPU-aaa, {server.pid}, /usr/bin/python3"],
        gpus=["0, GPU-aaa, 0x0000000000000005"],
        gpu_field="clocks_event_reasons.active",
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monitor = DisturbanceMonitor(server_pid=server.pid, server_cpus=None)
    monitor.start()
    result = monitor.stop()
    assert result.gpu_foreign_processes == ()
    assert result.gpu_throttle_reasons == ("GPU 0: sw_power_cap",)
    assert not any("GPU" in reason for reason in result.reasons)


@pytest.mark.parametrize("tool", ["failing", "absent"])
def test_no_working_nvidia_smi_gives_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawn: Spawn, tool: str
) -> None:
    if tool == "failing":
        fake_nvidia_smi(tmp_path, apps=[], gpus=[], gpu_field="no.such.field")
    monkeypatch.setenv("PATH", str(tmp_path))
    server = spawn(IDLE)
    monitor = DisturbanceMonitor(server_pid=server.pid, server_cpus=None, gpu_indices=[0])
    monitor.start()
    result = monitor.stop()
    assert result.gpu_foreign_processes is None
    assert result.gpu_throttle_reasons is None


# --- the monitor without its tools -----------------------------------------------------------------------------


def test_monitor_without_psutil_gives_none(monkeypatch: pytest.MonkeyPatch, spawn: Spawn) -> None:
    monkeypatch.setattr(disturbance, "_psutil", lambda: None)
    server = spawn(IDLE)
    monitor = DisturbanceMonitor(server_pid=server.pid, server_cpus=[0])
    monitor.start()
    result = monitor.stop()
    assert result.foreign_cpu_s is None
    assert result.foreign_cpu_fraction is None
    assert result.steal_fraction is None
    assert not result.disturbed


def test_remote_server_has_no_local_cpu_figures() -> None:
    monitor = DisturbanceMonitor(server_pid=None, server_cpus=None)
    monitor.start()
    result = monitor.stop(
        counter_deltas={"vllm:request_success_total": 12.0}, sent_requests=10, sent_prompt_tokens=1000
    )
    assert result.foreign_cpu_s is None
    assert result.steal_fraction is None
    assert result.gpu_foreign_processes is None
    assert result.foreign_requests == 2.0
    assert result.reasons == ("the server handled 2 requests this run did not send (limit 1)",)


def test_as_dict_is_json_ready() -> None:
    result = assess(
        window_s=1.0,
        server_cpus=[1, 2],
        core_count=2,
        foreign_cpu_s=0.5,
        steal_s=0.0,
        gpu_foreign_processes=("1 init",),
        gpu_throttle_reasons=(),
    )
    document = result.as_dict()
    assert json.loads(json.dumps(document)) == document
    assert document["server_cpus"] == [1, 2]
    assert document["reasons"][0] == "other processes used 25% of the server's cores 1-2 (limit 10%)"


def test_cpu_list() -> None:
    assert cpu_list([3, 0, 1, 2, 6, 8, 9]) == "0-3,6,8-9"
    assert cpu_list([5]) == "5"


# --- finding a local server by its port -------------------------------------------------------------------


def test_listening_root_is_the_ancestor_of_the_socket_holders() -> None:
    assert listening_root({100: {1}, 101: {100, 1}, 102: {100, 1}}) == 100
    assert listening_root({100: {1}, 200: {1}}) is None  # two unrelated listeners (SO_REUSEPORT)
    assert listening_root({}) is None


def test_find_listening_pid_finds_this_process() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        # None is allowed: some systems refuse to map sockets to pids without root.
        assert find_listening_pid(port) in (os.getpid(), None)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    assert find_listening_pid(free_port) is None


# --- a real measurement ----------------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_busy_neighbour_on_the_server_core_is_measured(spawn: Spawn) -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    core = cores[-1]
    busy = spawn(BUSY)
    idle = spawn(IDLE)
    for child in (busy, idle):
        os.sched_setaffinity(child.pid, {core})
    time.sleep(0.3)  # let both interpreters finish starting

    # One window seen both ways: with the idle process as the server, the busy one is a neighbour; with the busy
    # one as the server, it is not. Whatever else this shared machine runs on the core counts the same in both,
    # and the busy process's share of the core (all of it on an idle machine, a quarter next to three busy
    # processes) is what tells them apart.
    monitors = [
        DisturbanceMonitor(server_pid=server.pid, server_cpus=[core], gpu_indices=()) for server in (idle, busy)
    ]
    busy_before = cpu_s(busy.pid)
    for monitor in monitors:
        monitor.start()
    time.sleep(1.0)
    neighbour, as_server = (monitor.stop() for monitor in monitors)
    busy_s = cpu_s(busy.pid) - busy_before

    assert neighbour.foreign_cpu_fraction is not None
    assert neighbour.foreign_cpu_fraction >= 0.2
    assert neighbour.disturbed
    assert neighbour.reasons[0].startswith("other processes used ")
    assert as_server.foreign_cpu_s is not None
    assert neighbour.foreign_cpu_s is not None
    assert busy_s > 0.1
    # The gap between the views is the busy process's CPU time, but not to the tick: every figure is a difference
    # of 10 ms ticks, the monitors open and close one after the other, and busy_s spans both windows and the
    # sampling around them. So it is at most busy_s plus a few ticks and whatever else ran on the core while the
    # second monitor started (+0.1 s), and at least busy_s less the busy process's CPU outside the second window
    # (milliseconds of sampling, unless this process stalls on a loaded machine: half of busy_s leaves ~0.5 s).
    # Either way far from 0, which a view that missed the neighbour would give.
    gap = neighbour.foreign_cpu_s - as_server.foreign_cpu_s
    assert 0.5 * busy_s <= gap <= busy_s + 0.1
