"""Smoke test: the A/B validation benchmark runs end to end in its quick mode and prints its report.

It starts two simulator processes on 127.0.0.1 for a few A/B trials. No figure is asserted: a quick run has too
few replicates and trials, and the committed full report is the evidence.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_validate_ab_quick(tmp_path: Path) -> None:
    results = sorted((BENCHMARKS / "results").glob("*.md"))
    before = [p.stat().st_mtime_ns for p in results]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "validate_ab.py"), "--quick", "--jobs", "2"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    text = proc.stdout
    assert "# A/B mode validation" in text
    assert "| σ_run | σ_session | drift | A/B REGRESSION |" in text
    for section in (
        "## Method",
        "## Part 1: Monte Carlo",
        "### What a REGRESSION needs at each look",
        "### A/A",
        "### Power",
        "## Part 2: real simulators",
        "## Conclusion",
        "## Targets",
    ):
        assert section in text
    assert "| case | trials | verdicts |" in text
    assert "QUICK" in text
    # A quick run leaves the committed report alone and writes nothing elsewhere.
    assert [p.stat().st_mtime_ns for p in results] == before
    assert not list(tmp_path.iterdir())
