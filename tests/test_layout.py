"""The package's imports run one way: the layout the README's "Architecture" section draws is the one the code has.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a lazy import is still a
dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "pytest_llmperf"

# What each subpackage may import from the project besides itself. The shared bottom layer (value objects,
# errors, result types, file writers, the version) is open to all.
BOTTOM = {"spec", "errors", "results", "status", "_files", "__version__"}
ALLOWED: dict[str, set[str]] = {
    "client": BOTTOM,
    "judge": BOTTOM,
    "servers": BOTTOM | {"client"},  # the lifecycle defers Ctrl-C with the client's interrupt guard
    "report": BOTTOM | {"judge"},  # verdict statuses, capacity curves
    "sim": BOTTOM | {"client"},  # precise sleeps (client.timing)
    "history": BOTTOM | {"judge", "report"},  # metric directions and spreads; the trend report's charts
}
CORE = ("client", "judge", "servers")


def _unit(module: str) -> str:
    """The subpackage or top-level module a dotted name belongs to: ``pytest_llmperf.judge.stats`` → ``judge``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pytest_llmperf"):
            if node.module == "pytest_llmperf":
                yield from (f"pytest_llmperf.{alias.name}" for alias in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _modules(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_subpackage_imports_only_what_sits_below_it(package: str) -> None:
    wrong = sorted(
        f"{path.relative_to(PACKAGE.parent).as_posix()} imports {module}"
        for path in _modules(package)
        for module in _imports(path)
        if module.startswith("pytest_llmperf") and _unit(module) not in ALLOWED[package] | {package}
    )
    assert not wrong, "\n".join(wrong)


def test_the_bottom_layer_imports_only_itself() -> None:
    # Value objects, result types, errors and the file writer: everything may import them because they import
    # nothing above them.
    wrong = sorted(
        f"{name}.py imports {module}"
        for name in sorted(BOTTOM - {"__version__"})
        for module in _imports(PACKAGE / f"{name}.py")
        if module.startswith("pytest_llmperf") and _unit(module) not in BOTTOM
    )
    assert not wrong, wrong


@pytest.mark.parametrize("package", CORE)
def test_core_packages_do_not_import_pytest(package: str) -> None:
    # The core runs in benchmarks, the simulator and (later) client processes on other hosts, without pytest.
    wrong = sorted(
        path.relative_to(PACKAGE.parent).as_posix()
        for path in _modules(package)
        for module in _imports(path)
        if module == "pytest" or module.startswith(("_pytest", "pytest."))
    )
    assert not wrong, wrong


def test_every_subpackage_is_placed() -> None:
    # A new subpackage must be given its place (and its row in the README's table of packages).
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages <= set(ALLOWED) | {"harness"}, subpackages - set(ALLOWED) - {"harness"}


def test_the_readme_tables_every_subpackage() -> None:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    architecture = readme.partition("## Architecture")[2].partition("\n## ")[0]
    assert architecture, "README.md has no '## Architecture' section"
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    missing = [name for name in subpackages if f"`{name}/`" not in architecture]
    assert not missing, missing


def test_test_files_have_unique_basenames() -> None:
    # The tests directory has no __init__.py files: pytest imports each test module by its basename, and two
    # files of one name are an "import file mismatch" error that ends the run.
    names = Counter(path.name for path in Path(__file__).parent.rglob("test_*.py"))
    assert not [name for name, count in names.items() if count > 1]
