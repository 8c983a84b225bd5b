"""A/A across sessions on a real engine: do verdicts hold when the server restarts between sessions?

The embedded llama.cpp engine (``--llmperf-server=llamacpp-tiny``: each pytest session starts it and stops it) runs
one perf test per concurrency (128/64 tokens, 24 prompts, ``--llmperf-scale=1``). First ``--baseline-sessions``
sessions record a baseline with ``--llmperf-update`` (the default budget of 5 runs each) into a throw-away
directory; then ``--candidate-sessions`` sessions judge the same, unchanged server against it, as a CI job would:
every REGRESSION is a false alarm. Each candidate session is judged by the plugin at ``--tolerance`` (default 5 %),
and its runs are judged again, offline with the same ``verdict.judge``, at the embedded engine's default tolerance.

Printed and written (``--out``): per concurrency and tolerance the counts of PASS / INCONCLUSIVE / REGRESSION /
IMPROVEMENT, the false-REGRESSION rate with its Clopper–Pearson 95 % upper bound, the between-session and
within-session spread of log median TPOT measured from the runs, and what the verdicts say would decide them.

Usage: ``python benchmarks/validate_sessions_llamacpp.py [--baseline-sessions 3] [--candidate-sessions 8]
[--concurrency 1,4,8] [--tolerance 0.05] [--out PATH] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import make_parser, print_report, provenance_line, pytest_json, write_project

from pytest_llmperf.results import IMPROVEMENT, INCONCLUSIVE, PASS, REGRESSION

TEST_FILE = """
import pytest


@pytest.mark.perf(input_len=128, output_len=64, num_prompts=24)
@pytest.mark.parametrize("concurrency", [{concurrency}])
def test_aa(llmperf, concurrency):
    llmperf.run(concurrency=concurrency)
"""


@dataclass(frozen=True, slots=True)
class Judged:
    concurrency: int
    tolerance: str
    status: str
    reason: str


def run_session(workdir: Path, session: int, args: argparse.Namespace, *, update: bool) -> dict[str, Any]:
    """One pytest session against a freshly started embedded engine; its JSON document."""
    argv = ["-W", "ignore::UserWarning", str(workdir / "test_aa.py"), "--llmperf-server=llamacpp-tiny"]
    argv += ["--llmperf-scale=1", f"--llmperf-baselines={workdir / 'baselines'}"]
    argv.append(f"--llmperf-environment-guard={args.guard}")
    if update:
        argv.append("--llmperf-update")
    else:
        argv.append(f"--llmperf-tolerance={args.tolerance}")
    out = workdir / f"session{session}.json"
    return pytest_json(workdir, argv, out=out, what=f"session {session}", timeout_s=1800)


def concurrency_of(result: dict[str, Any]) -> int:
    return int(result["workload"]["concurrency"])


def offline_verdict(result: dict[str, Any], tolerance: float) -> str:
    """The same candidate runs judged again by ``verdict.judge`` at another tolerance (looks, family and the
    between-session prior as the plugin uses them on the embedded engine)."""
    from pytest_llmperf.harness.session import EMBEDDED_SESSION_SPREAD
    from pytest_llmperf.judge.verdict import BUDGET, judge, planned_looks, resolve_tolerances

    baseline = result["baseline"]["runs"]
    verdict = judge(
        result["runs"],
        baseline or None,
        tolerances=resolve_tolerances(tolerance),
        looks=planned_looks(BUDGET, 1),
        family_size=result["verdict"]["family_size"] or None,
        session_prior=EMBEDDED_SESSION_SPREAD,  # as the plugin judges the embedded engine
    )
    return verdict.status


def spreads(documents: list[dict[str, Any]], concurrency: int) -> tuple[float, float]:
    """(between-session SD of the session means, pooled within-session SD) of log median TPOT."""
    sessions = []
    for document in documents:
        for result in document["results"]:
            if concurrency_of(result) == concurrency:
                values = [math.log(r["median_tpot_ms"]) for r in result["runs"] if r.get("median_tpot_ms")]
                if values:
                    sessions.append(values)
    means = [statistics.fmean(s) for s in sessions]
    between = statistics.stdev(means) if len(means) > 1 else math.nan
    within_ss = sum(sum((v - statistics.fmean(s)) ** 2 for v in s) for s in sessions)
    within_df = sum(len(s) - 1 for s in sessions)
    return between, math.sqrt(within_ss / within_df) if within_df else math.nan


def report(
    args: argparse.Namespace,
    judged: list[Judged],
    documents: list[dict[str, Any]],
    reasons: dict[int, str],
    disturbed: int,
    elapsed_s: float,
) -> str:
    from pytest_llmperf.judge.stats import clopper_pearson

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    lines = [
        "# A/A across sessions on the embedded llama.cpp engine",
        "",
        f"{provenance_line()} · {elapsed_s / 60:.0f} min · `python benchmarks/"
        f"validate_sessions_llamacpp.py --baseline-sessions {args.baseline_sessions} --candidate-sessions "
        f"{args.candidate_sessions} --concurrency {args.concurrency} --tolerance {args.tolerance}`",
        "",
        f"128/64 tokens, 24 prompts per run; the server restarts with every session. Baseline: "
        f"{args.baseline_sessions} sessions of `--llmperf-update` (5 runs each). Candidates: "
        f"{args.candidate_sessions} sessions of the unchanged server, judged by the plugin at δ = "
        f"{args.tolerance:g} and offline at the embedded default δ = {args.embedded_tolerance:g}. "
        f"Environment guard {args.guard}; runs it flagged disturbed (not recorded into the baseline, no "
        f"REGRESSION): {disturbed}.",
        "",
        "| concurrency | δ | PASS | INCONCLUSIVE | REGRESSION | IMPROVEMENT | other | false REGRESSION [CP-95 upper] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tolerance in (f"{args.tolerance:g}", *(f"{t:g}" for t in _offline_tolerances(args)), "all"):
        for c in [*concurrencies, 0]:
            rows = [j for j in judged if (tolerance == "all" or j.tolerance == tolerance) and c in (0, j.concurrency)]
            if not rows or (tolerance == "all" and c != 0):
                continue
            counts = Counter(j.status for j in rows)
            _, upper = clopper_pearson(counts[REGRESSION], len(rows))
            label = "all" if c == 0 else str(c)
            lines.append(
                f"| {label} | {tolerance} | {counts[PASS]} | {counts[INCONCLUSIVE]} | {counts[REGRESSION]} | "
                f"{counts[IMPROVEMENT]} | {_other(counts)} | {counts[REGRESSION] / len(rows):.1%} [{upper:.1%}] |"
            )
    lines += ["", "| concurrency | between-session SD of log median TPOT | within-session SD |", "|---|---|---|"]
    for c in concurrencies:
        between, within = spreads(documents, c)
        lines.append(f"| {c} | {between:.1%} | {within:.1%} |")
    lines += ["", "What the verdicts say would decide them (first candidate session, median TPOT):", ""]
    lines += [f"- c = {c}: {reasons[c]}" for c in sorted(reasons)]
    return "\n".join(lines) + "\n"


def _offline_tolerances(args: argparse.Namespace) -> list[float]:
    return [args.embedded_tolerance, *(float(t) for t in args.also.split(",") if t.strip())]


def _other(counts: Counter[str]) -> str:
    rest = {k: v for k, v in counts.items() if k not in (PASS, INCONCLUSIVE, REGRESSION, IMPROVEMENT)}
    return ", ".join(f"{k} {v}" for k, v in sorted(rest.items())) or "0"


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--baseline-sessions", type=int, default=3)
    parser.add_argument("--candidate-sessions", type=int, default=8)
    parser.add_argument("--concurrency", default="1,4,8", help="comma-separated concurrencies (one test each)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="δ the plugin judges with")
    parser.add_argument("--embedded-tolerance", type=float, default=None, help="default: the plugin's")
    parser.add_argument("--also", default="", help="more tolerances to judge offline, comma-separated (e.g. 0.25,0.3)")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here too")
    parser.add_argument("--guard", choices=("on", "off"), default="on", help="--llmperf-environment-guard")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 baseline and 1 candidate session, c=1")
    args = parser.parse_args()
    if args.quick:
        args.baseline_sessions, args.candidate_sessions, args.concurrency = 1, 1, "1"
    if args.embedded_tolerance is None:
        from pytest_llmperf.harness.session import EMBEDDED_TOLERANCE

        args.embedded_tolerance = EMBEDDED_TOLERANCE
    started = time.monotonic()
    judged: list[Judged] = []
    reasons: dict[int, str] = {}
    documents: list[dict[str, Any]] = []
    disturbed = 0
    with tempfile.TemporaryDirectory(prefix="llmperf-aa-") as tmp:
        workdir = Path(tmp)
        write_project(workdir, {"test_aa.py": TEST_FILE.format(concurrency=args.concurrency)})
        total = args.baseline_sessions + args.candidate_sessions
        for session in range(1, total + 1):
            update = session <= args.baseline_sessions
            document = run_session(workdir, session, args, update=update)
            documents.append(document)
            for result in document["results"]:
                disturbed += sum(bool((r.get("disturbance") or {}).get("disturbed")) for r in result["runs"])
                if update:
                    continue
                c = concurrency_of(result)
                judged.append(
                    Judged(c, f"{args.tolerance:g}", result["verdict"]["status"], result["verdict"]["reason"])
                )
                for tolerance in _offline_tolerances(args):
                    judged.append(Judged(c, f"{tolerance:g}", offline_verdict(result, tolerance), ""))
                tpot = next((m for m in result["verdict"]["metrics"] if m["name"] == "tpot_p50"), None)
                if tpot is not None and c not in reasons:
                    reasons[c] = tpot["status"] + ": " + tpot["reason"]
            print(f"session {session}/{total} done ({'baseline' if update else 'candidate'})", file=sys.stderr)
    print_report(report(args, judged, documents, reasons, disturbed, time.monotonic() - started), args.out)


if __name__ == "__main__":
    main()
