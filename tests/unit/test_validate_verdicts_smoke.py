"""Smoke test: the verdict validation benchmark runs end to end in its quick mode and prints its report.

No figure is asserted: a quick run has too few replicates, and the committed full report is the evidence.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_validate_verdicts_quick(tmp_path: Path) -> None:
    results = sorted((BENCHMARKS / "results").glob("*.md"))
    before = [p.stat().st_mtime_ns for p in results]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "validate_verdicts.py"), "--quick", "--jobs", "2"],
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
    assert "# Verdict validation" in text
    assert "| noise | δ | k | REGRESSION (family) |" in text
    sections = ("## Noise calibration", "## Session family", "## Session offsets", "## Interval coverage", "## Power")
    for section in (*sections, "## Targets"):
        assert section in text
    assert "| σ_run | σ_session | S (runs) | false REGRESSION | per-run model |" in text
    assert "QUICK" in text
    # A quick run leaves the committed report alone and writes nothing elsewhere.
    assert [p.stat().st_mtime_ns for p in results] == before
    assert not list(tmp_path.iterdir())
