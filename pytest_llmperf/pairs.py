"""Compare two hardware/precision pairs from their session documents: capacity at SLO and users per GPU.

    python -m pytest_llmperf.pairs gb200-fp4.json h200-fp8.json [--json comparison.json]

Each file is a ``--llmperf-json`` document of the same perf tests on one pair. For every concurrency sweep that
both ran with the same workload, and every latency (or per-user rate) SLO both carry with the same limit, it
prints each pair's capacity and how many times the users per GPU of the first pair are those of the second:
once from the largest measured concurrency that meets the SLO (how published comparisons state it: "meets 15 s
up to 8 users") and once from the interpolated crossing. The arithmetic is :mod:`pytest_llmperf.judge.capacity`'s.

Exit status: 0 when at least one sweep was compared, 1 when the documents share none, 2 for a file that cannot
be read as a session document.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf._files import write_text_atomic
from pytest_llmperf.errors import DocumentError
from pytest_llmperf.judge.capacity import CapacityRatio, PairComparison, compare_documents

__all__ = ["format_comparisons", "load_document", "main"]


def load_document(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DocumentError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise DocumentError(f"{path}: not JSON ({exc}); pass the file written by --llmperf-json") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise DocumentError(f"{path}: no 'results' list; pass the file written by --llmperf-json")
    return document


def _label(document: Mapping[str, Any], path: Path) -> str:
    pair = document.get("pair")
    return str(pair) if isinstance(pair, str) and pair else path.stem


def _ratio_text(ratio: CapacityRatio, a: str, b: str) -> str:
    if ratio.ratio is None:
        return f"{ratio.basis}: no ratio ({ratio.reason})"
    qualifier = {"exact": "", "at_least": "at least ", "at_most": "at most ", "unknown": "bounds only, "}
    return f"{ratio.basis}: {a} serves {qualifier[ratio.bound]}{ratio.ratio:.3g}× the users per GPU of {b}"


def format_comparisons(
    measured: Sequence[PairComparison], interpolated: Sequence[PairComparison], a: str, b: str
) -> list[str]:
    """Lines for people: one block per sweep and SLO (``measured`` and ``interpolated`` pair up one to one)."""
    lines: list[str] = []
    for m, i in zip(measured, interpolated, strict=True):
        shown = ", ".join(f"{k}={v}" for k, v in sorted(m.workload.items()) if k in ("input_len", "output_len"))
        lines += [
            f"{m.test}" + (f" ({shown})" if shown else ""),
            f"  {a}: {m.a.describe()}",
            f"  {b}: {m.b.describe()}",
            f"  {_ratio_text(m.ratio, a, b)}",
            f"  {_ratio_text(i.ratio, a, b)}",
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_llmperf.pairs", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("first", type=Path, help="session document of the first pair (--llmperf-json)")
    parser.add_argument("second", type=Path, help="session document of the pair to compare it with")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the comparison as JSON")
    args = parser.parse_args(argv)
    try:
        first, second = load_document(args.first), load_document(args.second)
    except DocumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    a, b = _label(first, args.first), _label(second, args.second)
    measured = compare_documents(first, second, basis="measured")
    interpolated = compare_documents(first, second, basis="interpolated")
    if not measured:
        print(
            f"no sweep of {args.first} and {args.second} can be compared: it takes the same test at two or more "
            "concurrencies with the same workload and a latency SLO of the same limit in both",
            file=sys.stderr,
        )
        return 1
    print(f"capacity at SLO, {a} vs {b}")
    for line in format_comparisons(measured, interpolated, a, b):
        print(line)
    if args.json is not None:
        rows = [
            {
                "test": m.test,
                "workload": dict(m.workload),
                "slo": m.a.slo,
                "limit": m.a.limit,
                "first": m.a.as_dict(),
                "second": m.b.as_dict(),
                "ratio_measured": m.ratio.as_dict(),
                "ratio_interpolated": i.ratio.as_dict(),
            }
            for m, i in zip(measured, interpolated, strict=True)
        ]
        write_text_atomic(args.json, json.dumps({"first": a, "second": b, "comparisons": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
