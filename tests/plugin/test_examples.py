"""The README's main job: ``pytest examples/`` against the embedded llama.cpp engine, as a user runs it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"


def embedded_pair() -> str:
    """The pair the embedded engine runs under on this machine: its CPU model and the cores it is pinned to."""
    from pytest_llmperf.servers.hardware import detect
    from pytest_llmperf.servers.profiles import get_profile

    pinned = get_profile("llamacpp-tiny").pinned_cpus()
    return f"{detect(len(pinned) if pinned else None).id}-default"


pytestmark = pytest.mark.usefixtures("llamacpp")


def llama_servers(working_in: Path) -> set[int]:
    """The live llama-server processes whose working directory is ``working_in`` or below it: the ones a run
    started there (spawned servers inherit it). Others, e.g. another xdist worker's, are not this test's."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                cwd = (entry / "cwd").resolve()
            except OSError:
                continue
            if b"llama-server" in cmdline and state != "Z" and cwd.is_relative_to(working_in.resolve()):
                pids.add(int(entry.name))
    return pids


def test_examples_run_against_the_embedded_engine(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    pair = embedded_pair()
    committed = ROOT / "baselines" / pair / "examples"
    if committed.is_dir():  # baselines were committed from a machine like this one
        shutil.copytree(committed, tmp_path / "baselines" / pair / "examples")
    out = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "examples", f"--llmperf-json={out}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # Timings are the one thing this suite may not assert: here the engine shares two cores with another
    # xdist worker, so a tail-latency SLO or a verdict can honestly go either way. Anything else is a bug.
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert "llmperf results" in done.stdout
    assert "llama.cpp" in done.stdout
    document = json.loads(out.read_text())
    assert document["endpoint"]["engine"] == "llama.cpp"
    results = document["results"]
    # One result per example (the README's command 1 counts them): whatever examples/ holds, every test is in it.
    ran = sum(int(n) for n, _ in re.findall(r"(\d+) (passed|failed)", done.stdout.splitlines()[-1]))
    assert ran >= 17, done.stdout
    assert len({result["nodeid"] for result in results}) == ran, done.stdout
    assert document["pair"] == pair
    for result in results:
        if "capacity_search" in result:  # a capacity search is decided by its probes, not against a baseline
            assert result["capacity_search"]["capacity"] >= 1, result["nodeid"]
        elif committed.is_dir():  # the committed baselines of this machine's pair are read and judged
            judged = {"PASS", "INCONCLUSIVE", "IMPROVEMENT", "REGRESSION"}
            assert result["verdict"]["status"] in judged, result["nodeid"]
        else:  # another kind of machine: no baseline, and the summary says how to record one
            assert result["verdict"]["status"] == "NO_BASELINE", result["nodeid"]
            assert "--llmperf-update" in result["verdict"]["hint"]
        assert result["summary"]["failed"] == 0, result["nodeid"]
        if result["outcome"] != "passed":
            assert result["slo_breached"] or result["verdict"]["status"] == "REGRESSION", result["nodeid"]
            assert result["outcome"] == "failed", result["nodeid"]
    failed = [r for r in results if r["outcome"] == "failed"]
    assert (done.returncode == 1) == bool(failed), done.stdout
    assert not llama_servers(tmp_path)  # the server it started is gone
