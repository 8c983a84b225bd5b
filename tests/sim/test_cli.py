"""``python -m pytest_llmperf.sim`` as a parent process uses it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pytest_llmperf.sim.__main__ import build_parser

READY = "LLMPERF_SIM_READY "


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_llmperf.sim", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(READY):
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"no ready line: {line!r} {err}")
    return proc, line[len(READY) :].strip()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ready_line_port_file_and_clean_exit_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port_file = tmp_path / "port"
    proc, url = start("--port-file", str(port_file), "--decode-ms", "1", "--fault", "http_500:every=2")
    try:
        assert url.startswith("http://127.0.0.1:")
        assert port_file.read_text() == url.rsplit(":", 1)[1] + "\n"
        config = httpx.get(url + "/sim/config").json()
        assert config["decode_ms"] == 1.0
        assert config["faults"] == ["http_500:every=2"]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == ""  # exactly one line on stdout: the ready line, already read


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "http_500:every=0"], "every=0 must be an int >= 1"),
        (["--max-batch", "0"], "max_batch=0"),
        (["--usage-style", "openai"], "invalid choice"),
        (["--decode-ms", "fast"], "invalid float value"),
    ],
)
def test_bad_flags_exit_2_with_a_message(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_llmperf.sim.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_config_field_has_a_flag() -> None:
    flags = {a.dest for a in build_parser()._actions}
    from pytest_llmperf.sim import SimConfig

    assert set(SimConfig().as_dict()) <= flags


def idle_seconds(*args: str) -> tuple[float, float]:
    """What a simulator started with ``args`` does in about a second with no request to serve: the CPU seconds
    it burns, and the seconds its main thread is runnable (on a core, or waiting in the run queue for one)."""
    import os
    import time

    proc, url = start("--decode-ms", "1", *args)
    try:
        assert httpx.get(url + "/sim/config").json()["busy_poll"] is ("--busy-poll" in args)
        ticks = os.sysconf("SC_CLK_TCK")

        def sample() -> tuple[float, float]:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            on_cpu_ns, queued_ns, _ = map(int, Path(f"/proc/{proc.pid}/schedstat").read_text().split())
            return (int(fields[11]) + int(fields[12])) / ticks, (on_cpu_ns + queued_ns) / 1e9  # utime + stime

        cpu_before, runnable_before = sample()
        time.sleep(1.0)
        cpu_after, runnable_after = sample()
        return cpu_after - cpu_before, runnable_after - runnable_before
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.skipif(not Path("/proc/self/schedstat").exists(), reason="reads CPU and run-queue time from /proc")
def test_busy_poll_keeps_the_idle_loop_polling() -> None:
    """The switch is for benchmark rigs: an idle simulator then spins instead of sleeping until a request wakes
    it. Spinning shows as a thread that is always runnable, whatever share of a core it gets: on a loaded
    machine it waits in the run queue for much of the second (measured: 0.25 s on a core, 0.75 s queued, next to
    three busy processes), so the CPU it burns says little there; a sleeping loop is neither on a core nor
    queued, and burns next to nothing, however busy the machine."""
    cpu_s, runnable_s = idle_seconds()
    assert cpu_s < 0.1
    assert runnable_s < 0.1
    _, runnable_s = idle_seconds("--busy-poll")
    assert runnable_s > 0.8  # of about a second
