"""Lint and type checks run with the suite, so the README's test commands cover them; and CI runs exactly those
commands."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    "argv",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        [sys.executable, "-m", "mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(argv: list[str]) -> None:
    if argv[0] == "ruff" and shutil.which("ruff") is None:
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def readme_test_commands() -> tuple[str, list[str]]:
    """The install line and the pytest lines of the README's command 2, as written."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# 2. The test suite"))
    block = lines[start : lines.index("```", start)]
    steps = [step.strip() for line in block if not line.startswith("#") for step in line.split(" && ")]
    install = next(step for step in steps if step.startswith("pip install "))
    return install.removeprefix("pip install "), [step for step in steps if step.startswith("python -m pytest ")]


def test_ci_runs_exactly_the_test_commands_the_readme_gives() -> None:
    install, commands = readme_test_commands()
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ci_commands = [line.removeprefix("run ") for line in script if line.startswith("run python -m pytest ")]
    assert len(commands) == 2  # the suite, then the idle-machine tests
    assert ci_commands == commands
    assert any(line.endswith(f"pip install --quiet {install}") for line in script), install
