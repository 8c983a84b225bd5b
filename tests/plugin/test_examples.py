"""The README's main job: ``pytest examples/`` against the embedded llama.cpp engine, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"
BASELINES = ROOT / "baselines" / "cpu-default" / "examples"

pytestmark = pytest.mark.usefixtures("llamacpp")


def llama_servers() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if b"llama-server" in cmdline and state != "Z":
                pids.add(int(entry.name))
    return pids


def test_examples_run_against_the_embedded_engine(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    shutil.copytree(BASELINES, tmp_path / "baselines" / "cpu-default" / "examples")
    before = llama_servers()
    out = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "examples", f"--llmperf-json={out}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "llmperf results" in done.stdout
    assert "llama.cpp" in done.stdout
    document = json.loads(out.read_text())
    assert document["endpoint"]["engine"] == "llama.cpp"
    assert {r["outcome"] for r in document["results"]} == {"passed"}
    # The committed baselines of the embedded pair are read and judged (never "no baseline").
    assert {r["verdict"]["status"] for r in document["results"]} <= {"PASS", "INCONCLUSIVE", "IMPROVEMENT"}
    assert llama_servers() <= before  # the server it started is gone
