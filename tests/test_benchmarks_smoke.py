"""The benchmark scripts still run end to end in their quick mode and print their report. No figure is asserted:
a quick run has too few replicates for its figures to mean anything, a CI machine is too noisy for timings, and
the committed full reports in ``benchmarks/results/`` are the evidence."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Names starting with "_" are the scripts' shared helpers, not scripts.
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


@dataclass(frozen=True)
class Quick:
    script: str
    args: tuple[str, ...]
    expected: tuple[str, ...]  # lines (or their start) the output must hold
    timeout_s: float = 120
    needs_llamacpp: bool = False


QUICK = [
    Quick("architecture_facts.py", ("--quick",), ("| package | modules |", "| longest | name | file | lines |")),
    Quick("client_capacity.py", ("--quick",), ("| scenario | variant | runs | events | client µs/event |",)),
    Quick(
        "client_memory.py",
        ("--quick",),
        ("# Client memory", "| code | requests × tokens | events | peak RSS MB |", "Target: ≤ 16 B of peak RSS"),
    ),
    Quick(
        "client_scaling.py",
        ("--quick",),
        ("# Client scaling", "| configuration | shards | requests | events |", "## Targets", "QUICK"),
        timeout_s=300,
    ),
    Quick("fidelity.py", ("--quick",), ("| conc | metric | n | meas p50 | intended p50 |",)),
    Quick(
        "history_changes.py",
        ("--quick",),
        (
            "# `history changes` validation",
            "## Tuning",
            "| setting | flat 200 (any change) |",
            "## Detection at the defaults",
            "| step | noise SDs | found at 40 ± 2 | any change |",
            "## False changes",
            "## Speed",
            "| 1 series × 10,000 sessions, flat |",
            "## Targets",
            "QUICK",
        ),
    ),
    Quick(
        "history_write.py",
        ("--quick",),
        (
            "# History database speed",
            "## Write",
            "| database | tests × runs | figures per run | rows per session | s per session | min | max |",
            "## Read",
            "| database | sessions | query | series | points | s |",
            "| database | sessions stored | tests × runs | figures per run | rows per session | s per session |",
            "## Targets",
            "QUICK",
        ),
    ),
    Quick("prefix_cache.py", ("--quick",), ("| target | mode | session | run | cached prompt tokens |",)),
    Quick(
        "validate_ab.py",
        ("--quick", "--jobs", "2"),
        (
            "# A/B mode validation",
            "## Method",
            "## Part 1: Monte Carlo",
            "### What a REGRESSION needs at each look",
            "### A/A",
            "| σ_run | σ_session | drift | A/B REGRESSION |",
            "### Power",
            "## Part 2: real simulators",
            "| case | trials | verdicts |",
            "## Conclusion",
            "## Targets",
            "QUICK",
        ),
        timeout_s=300,
    ),
    Quick(
        "validate_sessions_llamacpp.py",
        ("--quick",),
        (
            "# A/A across sessions on the embedded llama.cpp engine",
            "| concurrency | δ | PASS | INCONCLUSIVE | REGRESSION | IMPROVEMENT |",
            "| concurrency | between-session SD of log median TPOT | within-session SD |",
        ),
        timeout_s=600,
        needs_llamacpp=True,
    ),
    Quick(
        "validate_verdicts.py",
        ("--quick", "--jobs", "2"),
        (
            "# Verdict validation",
            "## Noise calibration",
            "| noise | δ | k | REGRESSION (family) |",
            "## Session family",
            "## Session offsets",
            "| σ_run | σ_session | S (runs) | false REGRESSION | per-run model |",
            "## Interval coverage",
            "## Power",
            "## Targets",
            "QUICK",
        ),
        timeout_s=300,
    ),
]


def test_every_script_has_a_quick_run() -> None:
    assert sorted(q.script for q in QUICK) == SCRIPTS


@pytest.mark.parametrize("quick", QUICK, ids=[q.script.removesuffix(".py") for q in QUICK])
def test_quick_run_prints_its_report(quick: Quick, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if quick.needs_llamacpp:
        request.getfixturevalue("llamacpp")
    results = sorted((BENCHMARKS / "results").glob("*.md"))
    before = [p.stat().st_mtime_ns for p in results]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / quick.script), *quick.args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=quick.timeout_s,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for text in quick.expected:
        assert text in proc.stdout
    # A quick run leaves the committed reports alone and writes nothing where it is run.
    assert [p.stat().st_mtime_ns for p in results] == before
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_the_options(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout
    assert "--quick" in proc.stdout or "--check" in proc.stdout
