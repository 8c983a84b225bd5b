"""The terminal summary's table: test names that stay readable, and the lines that say what to do next."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmperf.report.terminal import TEST_WIDTH, _short, render


@pytest.mark.parametrize(
    ("nodeid", "shown"),
    [
        ("test_a.py::test_latency", "test_a.py::test_latency"),
        # The directories go first, then the middle of the longest part: file and function stay readable.
        ("examples/test_progressive_against_a_baseline.py::test_repeat", "test_progress…a_baseline.py::test_repeat"),
        (
            "examples/test_deepseek_v32_interactive.py::test_interactive_sweep[4]",
            "test_dee…ctive.py::test_inte…ve_sweep[4]",
        ),
        # Long parameters are cut before the names.
        (
            "tests/perf/test_sweep.py::test_sweep[concurrency=64-input_len=2048-output_len=512]",
            "test_sweep.py::test_sweep[concur…en=512]",
        ),
    ],
)
def test_long_test_names_keep_their_file_and_function(nodeid: str, shown: str) -> None:
    assert _short(nodeid, TEST_WIDTH) == shown
    assert len(shown) <= TEST_WIDTH


def test_a_name_that_cannot_keep_every_part_still_fits() -> None:
    nodeid = "a/test_" + "x" * 60 + ".py::Test" + "C" * 30 + "::test_" + "y" * 60 + "[" + "p" * 40 + "]"
    text = _short(nodeid, TEST_WIDTH)
    assert len(text) == TEST_WIDTH
    assert text.startswith("test_")
    assert text.endswith("]")


def result(nodeid: str, status: str, **verdict: Any) -> dict[str, Any]:
    return {
        "nodeid": nodeid,
        "workload": {"input_len": 8, "output_len": 4, "concurrency": 2},
        "summary": {"failed": 0, "median_ttft_ms": 1.0},
        "verdict": {"status": status, **verdict},
    }


def texts(results: list[dict[str, Any]], **options: Any) -> list[str]:
    return [text for text, _ in render(results, pair="cpu-default", endpoint=None, verbose=0, **options)]


def test_tests_without_a_baseline_are_counted_with_how_to_record_them() -> None:
    lines = texts(
        [result("t.py::test_a", "NO_BASELINE"), result("t.py::test_b", "NO_BASELINE"), result("t.py::test_c", "PASS")]
    )
    assert lines[-1] == (
        "2 tests have no baseline for pair cpu-default: record with --llmperf-update, then review and commit it"
    )
    assert "1 test has no baseline" in texts([result("t.py::test_a", "NO_BASELINE")])[-1]
    assert not any("no baseline" in line for line in texts([result("t.py::test_a", "PASS")]))
    # Recording them right now: nothing to suggest.
    assert not any("no baseline" in line for line in texts([result("t.py::test_a", "NO_BASELINE")], recording=True))


def test_an_improvement_says_how_to_re_record() -> None:
    hint = "re-record the baseline with --llmperf-update (then review and commit it)"
    lines = texts([result("t.py::test_a", "IMPROVEMENT", hint=hint)])
    row = next(i for i, line in enumerate(lines) if line.startswith("t.py::test_a"))
    assert lines[row + 1] == f"    better than its baseline: {hint}"
