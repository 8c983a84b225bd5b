"""The record of spawned servers, and the sweep that stops what a killed session left (and nothing else)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pytest_llmperf.servers import registry
from pytest_llmperf.servers.process import ServerProcess, _group_alive, free_port

TOKEN = "t0ken"


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pid: int, wait_s: float = 5.0) -> bool:
    deadline = time.monotonic() + wait_s
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def orphan(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A server-like process on record, as a session killed with SIGKILL leaves it: its owner is dead."""
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    env = {**os.environ, registry.TOKEN_ENV: TOKEN}
    proc = subprocess.Popen(argv, start_new_session=True, env=env)
    path = registry.record(tmp_path, pid=proc.pid, argv=argv, name="sleepy", token=TOKEN, log_path=tmp_path / "l.log")
    assert path is not None
    registry.hand_over(path, dead_pid())
    yield proc, path
    with_group_gone(proc)


def with_group_gone(proc: subprocess.Popen[bytes]) -> None:
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_spawned_server_is_on_record_while_it_runs(tmp_path: Path) -> None:
    port = free_port()
    srv = ServerProcess(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        log_path=tmp_path / "http.log",
        health_url=f"http://127.0.0.1:{port}/",
        startup_timeout_s=20,
        name="http",
        registry_dir=tmp_path / "servers",
    )
    with srv:
        assert srv.record is not None
        entry = json.loads(srv.record.read_text())
        assert entry["pid"] == entry["pgid"] == srv.pid
        assert entry["argv"] == srv.argv == entry["cmdline"]
        assert entry["create_time"] == psutil.Process(srv.pid).create_time()
        assert entry["owner_pid"] == os.getpid()
        assert entry["name"] == "http"
        assert abs(entry["started_at"] - time.time()) < 60
        assert psutil.Process(srv.pid).environ()[registry.TOKEN_ENV] == entry["token"]
    assert not list((tmp_path / "servers").iterdir())  # off the record once stopped


def test_a_server_whose_owner_died_is_stopped(tmp_path: Path, orphan: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, path = orphan
    (found,) = registry.sweep(tmp_path)
    assert not found.warning
    assert found.message.startswith(
        f"llmperf: stopped a server an earlier session left running: sleepy (pid {proc.pid}"
    )
    assert gone(proc.pid)
    assert not path.exists()


def test_a_server_whose_owner_runs_is_left_alone(tmp_path: Path, orphan: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, path = orphan
    registry.hand_over(path, os.getpid())  # another session, still running, owns it
    assert registry.sweep(tmp_path) == []
    assert running(proc.pid)
    assert path.exists()


def test_a_reused_pid_is_never_signalled(tmp_path: Path, orphan: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, path = orphan
    entry = json.loads(path.read_text())
    registry.update(path, create_time=entry["create_time"] - 100)  # the recorded server started earlier
    assert registry.sweep(tmp_path) == []
    assert running(proc.pid)
    assert not path.exists()  # the recorded server is long gone


def test_another_command_under_the_pid_is_a_warning(
    tmp_path: Path, orphan: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, path = orphan
    registry.update(path, argv=["vllm", "serve", "m"], cmdline=["vllm", "serve", "m"])
    (found,) = registry.sweep(tmp_path)
    assert found.warning
    assert f"not stopping pid {proc.pid}" in found.message
    assert f"kill -TERM -- -{proc.pid}" in found.message
    assert running(proc.pid)


def test_what_an_exited_server_left_is_stopped_if_it_bears_the_token(tmp_path: Path) -> None:
    script = f"sleep 60 & env -u {registry.TOKEN_ENV} sleep 61 & wait"
    env = {**os.environ, registry.TOKEN_ENV: TOKEN}
    leader = subprocess.Popen(["sh", "-c", script], start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 10
        while len(children := psutil.Process(leader.pid).children()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        path = registry.record(tmp_path, pid=leader.pid, argv=["sh"], name="sh", token=TOKEN, log_path=tmp_path / "l")
        registry.hand_over(path, dead_pid())
        time.sleep(0.1)  # `env -u` has replaced itself with sleep
        ours = next(c for c in children if registry.TOKEN_ENV in c.environ())
        other = next(c for c in children if c.pid != ours.pid)
        leader.kill()
        leader.wait()
        (found,) = registry.sweep(tmp_path)
        assert f"pids {ours.pid}" in found.message
        assert gone(ours.pid)
        assert running(other.pid)  # in the group, but without the token: not provably ours
    finally:
        with_group_gone(leader)


def test_an_unreadable_record_is_removed(tmp_path: Path) -> None:
    (tmp_path / "123.json").write_text("{not json")
    assert registry.sweep(tmp_path) == []
    assert not (tmp_path / "123.json").exists()
