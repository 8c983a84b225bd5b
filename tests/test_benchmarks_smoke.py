"""The benchmark scripts still run end to end (``--quick``). No timing assertions: the figures belong in
``benchmarks/results/``, and a CI machine is too noisy for them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "header"),
    [
        ("client_capacity.py", "| scenario | variant | runs | events | client µs/event |"),
        ("fidelity.py", "| conc | metric | n | meas p50 | intended p50 |"),
        ("prefix_cache.py", "| target | mode | session | run | cached prompt tokens |"),
    ],
    ids=["client_capacity", "fidelity", "prefix_cache"],
)
def test_quick_run_prints_its_table(script: str, header: str, tmp_path: Path) -> None:
    results = sorted((BENCHMARKS / "results").glob("*.md"))
    before = [p.stat().st_mtime_ns for p in results]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert header in proc.stdout
    assert "Traceback" not in proc.stderr
    # A quick run must leave the committed figures alone.
    assert [p.stat().st_mtime_ns for p in results] == before
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_help_describes_the_options(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout
    assert "--quick" in proc.stdout or "--check" in proc.stdout
