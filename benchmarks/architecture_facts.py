"""Facts about the package's shape that anyone can recompute: modules per package, the longest functions and
classes, ``Any`` in the signatures of the core modules, and the path a reader follows through one
``llmperf.run()``.

The path is traced, not guessed: a throw-away perf test runs against the simulator with a profiler that records
every call into ``pytest_llmperf`` (the simulator runs in another process and is not traced) from the test's
setup to its verdict. Printed:

- **files**: distinct package files entered;
- **stops**: distinct functions entered (not module bodies run on import, not comprehensions);
- **climbs back**: in the order functions are first entered, how often the reader returns to a file already
  opened after leaving it.

Usage: ``python benchmarks/architecture_facts.py [--core client,judge,servers] [--core-modules a,b] [--no-trace]``
(``--core-modules`` names flat modules instead of packages, to measure a layout before the packages existed).
"""

from __future__ import annotations

import ast
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _common import make_parser, run_pytest, write_project

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_llmperf"


@dataclass(frozen=True)
class Span:
    name: str
    path: str
    lines: int


def package_modules() -> dict[str, list[Path]]:
    by_package: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        package = path.parent.relative_to(PACKAGE.parent).as_posix()
        by_package.setdefault(package, []).append(path)
    return by_package


def spans(path: Path) -> tuple[list[Span], list[Span]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(PACKAGE.parent).as_posix()
    functions: list[Span] = []
    classes: list[Span] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        size = (node.end_lineno or node.lineno) - node.lineno + 1
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.append(Span(node.name, rel, size))
        else:
            classes.append(Span(node.name, rel, size))
    return functions, classes


def any_in_signatures(path: Path) -> int:
    """Count ``Any`` in parameter and return annotations of every function of one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    count = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        args = node.args
        annotations = [a.annotation for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
        annotations += [args.vararg.annotation if args.vararg else None]
        annotations += [args.kwarg.annotation if args.kwarg else None, node.returns]
        for annotation in annotations:
            if annotation is None:
                continue
            text = ast.unparse(annotation)
            count += sum(1 for token in _tokens(text) if token == "Any")
    return count


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    word = ""
    for ch in text:
        if ch.isalnum() or ch == "_":
            word += ch
        else:
            if word:
                out.append(word)
            word = ""
    if word:
        out.append(word)
    return out


TRACED_TEST = """
import pytest

@pytest.mark.perf(concurrency=2, input_len=32, output_len=8, num_prompts=8, warmup=0, repeats=1)
def test_one_run(llmperf):
    llmperf.run()
"""

TRACER = """
import json, os, sys
import pytest

PACKAGE = os.environ["FACTS_PACKAGE"]
SIM = os.path.join(PACKAGE, "sim") + os.sep
calls = []
# Module bodies run on import and comprehensions belong to their function: neither is a stop.
SKIPPED = {"<module>", "<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>"}

def _profile(frame, event, arg):
    if event != "call" or frame.f_code.co_name in SKIPPED:
        return
    path = frame.f_code.co_filename
    if path.startswith(PACKAGE) and not path.startswith(SIM):
        calls.append((os.path.relpath(path, os.path.dirname(PACKAGE)), frame.f_code.co_qualname))

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    sys.setprofile(_profile)
    try:
        return (yield)
    finally:
        sys.setprofile(None)
        with open(os.environ["FACTS_OUT"], "w") as fh:
            json.dump(calls, fh)
"""


@dataclass(frozen=True)
class TracedPath:
    files: int
    stops: int
    climbs_back: int
    calls: list[tuple[str, str]]


def trace_one_run() -> TracedPath:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ini = "[pytest]\nllmperf_environment_guard = off\n"
        write_project(root, {"test_traced.py": TRACED_TEST, "conftest.py": TRACER, "pytest.ini": ini})
        out = root / "calls.json"
        env = {**os.environ, "FACTS_PACKAGE": str(PACKAGE), "FACTS_OUT": str(out)}
        proc = run_pytest(root, ["--llmperf-server=sim", "test_traced.py"], timeout_s=300, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"the traced test failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
        calls = [tuple(c) for c in json.loads(out.read_text(encoding="utf-8"))]
    first_calls: list[tuple[str, str]] = list(dict.fromkeys(calls))  # each function once, in first-call order
    return _path_facts(first_calls)


def _path_facts(first_calls: list[tuple[str, str]]) -> TracedPath:
    opened: set[str] = set()
    climbs = 0
    current = None
    for path, _ in first_calls:
        if path != current:
            if path in opened:
                climbs += 1
            opened.add(path)
            current = path
    return TracedPath(files=len(opened), stops=len(first_calls), climbs_back=climbs, calls=first_calls)


def orchestration(traced: TracedPath, modules: list[str]) -> TracedPath:
    """The same path seen only in the orchestrating modules (where a reader follows the flow between the
    pure parts): ``modules`` are file paths or folders relative to the package's parent."""
    kept = [call for call in traced.calls if any(call[0] == m or call[0].startswith(m + "/") for m in modules)]
    return _path_facts(kept)


def main() -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--core", default="client,judge,servers", help="core packages (comma-separated)")
    parser.add_argument("--core-modules", default="", help="core flat modules instead (comma-separated names)")
    parser.add_argument(
        "--orchestration",
        default="pytest_llmperf/harness",
        help="orchestrating files or folders, comma-separated, relative to the package's parent",
    )
    parser.add_argument("--no-trace", action="store_true", help="skip tracing one llmperf.run()")
    parser.add_argument("--quick", action="store_true", help="the static facts only (same as --no-trace)")
    args = parser.parse_args()

    by_package = package_modules()
    print("| package | modules |")
    print("|---|---:|")
    for package, paths in by_package.items():
        print(f"| `{package}` | {len(paths)} |")

    functions: list[Span] = []
    classes: list[Span] = []
    for paths in by_package.values():
        for path in paths:
            f, c = spans(path)
            functions += f
            classes += c
    print("\n| longest | name | file | lines |")
    print("|---|---|---|---:|")
    for kind, items in (("function", functions), ("class", classes)):
        for span in sorted(items, key=lambda s: -s.lines)[:3]:
            print(f"| {kind} | `{span.name}` | `{span.path}` | {span.lines} |")

    if args.core_modules:
        core_paths = [PACKAGE / f"{name}.py" for name in args.core_modules.split(",")]
    else:
        core_paths = [p for name in args.core.split(",") for p in sorted((PACKAGE / name).rglob("*.py"))]
    per_module = Counter({p.relative_to(PACKAGE.parent).as_posix(): any_in_signatures(p) for p in core_paths})
    print(f"\n`Any` in the signatures of {len(core_paths)} core modules: {sum(per_module.values())}")
    for module, count in per_module.most_common():
        if count:
            print(f"- `{module}`: {count}")

    if not (args.no_trace or args.quick):
        traced = trace_one_run()
        print(
            f"\nOne llmperf.run(), traced: {traced.files} files, {traced.stops} stops, {traced.climbs_back} climbs back"
        )
        harness = orchestration(traced, args.orchestration.split(","))
        print(
            f"The same path in the orchestration ({args.orchestration}): {harness.files} files, "
            f"{harness.stops} stops, {harness.climbs_back} climbs back"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
