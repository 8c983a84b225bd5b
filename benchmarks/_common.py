"""Helpers the benchmark scripts share: the machine and its pinned cores, the simulator process, pytest run in a
throw-away project, Markdown tables, and the options and report handling several scripts have in common.

Not a script: the scripts import it as a sibling (run as ``python benchmarks/NAME.py``, their directory is on
``sys.path``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
READY_PREFIX = "LLMPERF_SIM_READY "
# Other processes on the pinned cores distort every figure: each run records their load just before it.
QUIET_LIMIT = 0.10


# --- options and reports ---------------------------------------------------------------------------------------


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of the script's docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)


def add_core_options(parser: argparse.ArgumentParser) -> None:
    """Where client and simulator run, and where the results file goes (client_capacity, fidelity)."""
    parser.add_argument("--client-core", type=int, default=None, help="core for the client (default: first)")
    parser.add_argument("--server-core", type=int, default=None, help="core for the simulator (default: second)")
    parser.add_argument("--results", type=Path, default=None, help="results file (default: results/ on full runs)")
    parser.add_argument("--no-results", action="store_true", help="print only")


def add_source_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--source LABEL=DIR`` (repeatable): ``what`` is done with the ``pytest_llmperf`` of another checkout too."""
    parser.add_argument("--source", action="append", default=[], metavar="LABEL=DIR", help=what + " (repeatable)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # the scripts' own child processes


def checkouts(args: argparse.Namespace) -> dict[str, str]:
    """The ``--source`` checkouts: label -> absolute directory."""
    found = {}
    for item in args.source:
        label, _, directory = item.partition("=")
        found[label] = str(Path(directory).resolve())
    return found


def add_quiet_options(parser: argparse.ArgumentParser, unit: str) -> None:
    """Waiting for and repeating ``unit`` ("run", "level") while other processes load the pinned cores."""
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help=f"before each {unit}, wait up to S seconds for both cores to be "
        f"< {QUIET_LIMIT * 100:.0f} %% busy (default 0)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=None,
        metavar="N",
        help=f"repeat a {unit} up to N times while other processes load the pinned cores "
        f"by >= {QUIET_LIMIT * 100:.0f} %% "
        "(default 3; quick 0)",
    )


def pinned_cores(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """(client core, simulator core): the options, else the first two usable cores; warns when they coincide."""
    cores = usable_cores()
    client_core = args.client_core if args.client_core is not None else (cores[0] if cores else None)
    server_core = args.server_core if args.server_core is not None else (cores[1] if len(cores) > 1 else client_core)
    if client_core is not None and client_core == server_core:
        print("warning: one usable core; client and simulator share it (figures are not comparable)")
    return client_core, server_core


def results_path(args: argparse.Namespace, default: Path) -> Path | None:
    """Where to write the results: ``--results``, else ``default`` on a full run; None with ``--no-results``."""
    if args.no_results:
        return None
    path: Path | None = args.results or (None if args.quick else default)
    return path


def print_report(text: str, out: Path | None) -> None:
    """Print the report, and write it to ``out`` (``--out``) too when given."""
    print(text)
    if out is not None:
        out.write_text(text)


def publish_report(text: str, out: Path, *, quick: bool, committed: Path) -> None:
    """Print the report and write it to ``out``, except a quick run's to the committed full report."""
    print(text)
    if not quick or out != committed:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
        print(f"\nreport written to {out}", file=sys.stderr)


def table_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table_rule(header: str) -> str:
    """The Markdown separator line under a header line."""
    return "|" + "---|" * (header.count("|") - 1)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = table_row(header)
    return "\n".join([head, table_rule(head), *(table_row(row) for row in rows)])


def targets_section(met: Mapping[str, bool], quick_caveat: str | None) -> list[str]:
    """A validation report's ``## Targets`` lines; ``quick_caveat`` says why a quick run's verdicts mean little."""
    lines = ["## Targets", "", *(f"- {'MET' if ok else 'MISSED'}: {name}" for name, ok in met.items())]
    if quick_caveat:
        lines += ["", f"(quick run: {quick_caveat} for the MET/MISSED lines to mean anything)"]
    return lines


def percentile(values: Sequence[float], q: float) -> float:
    """Linear percentile ``q`` (0–100) of ``values``; NaN when empty."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else math.nan


def parallel_map(fn: Callable[[T], R], items: Sequence[T], jobs: int) -> list[R]:
    """``fn`` over ``items`` in ``jobs`` worker processes (in this process when ``jobs`` is 1), in order."""
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(fn, items))
    return [fn(item) for item in items]


# --- the machine -----------------------------------------------------------------------------------------------


def usable_cores() -> list[int]:
    """The cores this process may run on (Linux; elsewhere nothing is pinned)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return sorted(getaffinity(0)) if getaffinity is not None else []


def pin_to(core: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``core`` (None: leave it unpinned)."""
    setaffinity = getattr(os, "sched_setaffinity", None)
    if core is None or setaffinity is None:
        return None

    def pin() -> None:
        setaffinity(0, {core})

    return pin


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def module_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str:
    """The checkout's commit, noting uncommitted changes to the package (they are what was measured)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=HERE
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "pytest_llmperf"], cwd=HERE.parent).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes in pytest_llmperf/" if dirty else "")


def machine_info(client_core: int | None, server_core: int | None) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "kernel": f"{platform.system()} {platform.release()}",
        "aiohttp": module_version("aiohttp"),
        "uvloop": module_version("uvloop"),
        "orjson": module_version("orjson"),
        "client_core": client_core,
        "server_core": server_core,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def machine_banner(machine: Mapping[str, Any]) -> str:
    """The one line a pinned benchmark prints before it starts."""
    return (
        f"machine: {machine['cpu']}, nproc {machine['nproc']}, Python {machine['python']}, "
        f"client core {machine['client_core']}, simulator core {machine['server_core']}"
    )


def machine_line() -> str:
    """CPU, CPU count, OS and Python, for a report's header."""
    return (
        f"{cpu_model()}, {os.cpu_count()} CPU(s), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def provenance_line() -> str:
    """Date, commit, CPU and Python, the start of a session benchmark's report line."""
    return (
        f"{datetime.date.today().isoformat()} · commit {git_commit()} · {cpu_model()} · {os.cpu_count()} CPUs · "
        f"Python {platform.python_version()}"
    )


def core_busy_ticks(core: int | None) -> tuple[int, int] | None:
    """(busy, total) jiffies of one core from /proc/stat."""
    if core is None:
        return None
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{core} "):
                fields = [int(x) for x in line.split()[1:]]
                idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
                return sum(fields) - idle, sum(fields)
    except OSError:
        pass
    return None


def busy_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def background_busy(cores: Sequence[int | None], seconds: float = 0.5) -> list[float | None]:
    """Busy fraction of each core over ``seconds`` while we are idle: other processes' load."""
    before = [core_busy_ticks(c) for c in cores]
    time.sleep(seconds)
    return [busy_fraction(b, core_busy_ticks(c)) for b, c in zip(before, cores, strict=True)]


def wait_until_quiet(cores: Sequence[int | None], limit: float, timeout_s: float) -> list[float | None]:
    """Sample the cores' background load until every core is below ``limit`` or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = background_busy(cores)
        if all(b is None or b < limit for b in busy) or time.monotonic() >= deadline:
            return busy


def foreign_load(core_busy: float | None, own_fraction: float | None) -> float | None:
    """Busy fraction of a pinned core not explained by the process pinned there: other processes' load."""
    if core_busy is None or own_fraction is None:
        return None
    return max(0.0, core_busy - own_fraction)


def process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of another process, from /proc/<pid>/stat."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- processes -------------------------------------------------------------------------------------------------


@contextmanager
def simulator(args: Sequence[str], core: int | None) -> Iterator[tuple[str, int]]:
    """Start ``python -m pytest_llmperf.sim`` pinned to ``core``; yield its URL and pid; stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_llmperf.sim", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=pin_to(core),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"the simulator did not start (exit code {proc.poll()}, said {line!r})")
        yield line[len(READY_PREFIX) :].strip(), proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def write_project(root: Path, files: Mapping[str, str]) -> None:
    """Write a throw-away pytest project: file name → text (dedented)."""
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text), encoding="utf-8")


def run_pytest(
    workdir: Path,
    args: Sequence[str],
    *,
    timeout_s: float,
    launcher: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``pytest -q`` without its cache in ``workdir``, in a child Python (``launcher``, e.g. taskset, before it)."""
    argv = [*launcher, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def pytest_json(
    workdir: Path, args: Sequence[str], *, out: Path, what: str, timeout_s: float, launcher: Sequence[str] = ()
) -> dict[str, Any]:
    """:func:`run_pytest` with ``--llmperf-json=out``; the document it wrote, or exit naming ``what``."""
    done = run_pytest(workdir, [*args, f"--llmperf-json={out}"], timeout_s=timeout_s, launcher=launcher)
    if not out.is_file():
        raise SystemExit(
            f"{what} wrote no JSON (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}"
        )
    document: dict[str, Any] = json.loads(out.read_text())
    return document
