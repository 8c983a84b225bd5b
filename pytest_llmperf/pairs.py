"""Compare hardware/precision pairs (or engine versions, or server settings) from their session documents:
capacity at SLO and users per GPU, as text and on one chart.

    python -m pytest_llmperf.pairs gb200-fp4.json h200-fp8.json [more.json ...] [--label NAME ...]
                                   [--json comparison.json] [--html overlay.html]

Each file is a ``--llmperf-json`` document of the same perf tests on one configuration, labelled by ``--label``
(once per file, in order) or by its pair and engine version ("h200x8-fp8 · vllm 0.11.0"). For every concurrency
sweep that the first document and another one ran with the same workload, and every latency (or per-user rate)
SLO both carry with the same limit, it prints each configuration's capacity and how many times the users per
GPU of the first are those of each other one: once from the largest measured concurrency that meets the SLO
(how published comparisons state it: "meets 15 s up to 8 users") and once from the interpolated crossing. The
arithmetic is :mod:`pytest_llmperf.judge.capacity`'s; ``--html`` writes the overlay page of
:mod:`pytest_llmperf.report.overlay`.

Sweeps match across documents by test (the node id without its parameters) and workload, leaving out the fields
that size the sample (concurrency, prompt count, warm-up, seed, repeats, tolerance) or do not change the load
(``request_timeout_s``, ``goodput``); a dataset file counts by its file name, not the directory it was read
from. A document whose sweep holds results of more than one configuration (engine, engine version, model, GPU
count, hardware, precision or server command differ between its results, as in files merged by hand) is
refused: its points would be pooled into one curve.

Exit status: 0 when at least one sweep was compared, 1 when the documents share none, 2 for a file that cannot
be read as a session document (or mixes configurations) and for wrong arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf._files import write_text_atomic
from pytest_llmperf.errors import DocumentError
from pytest_llmperf.judge.baseline import LATER_FIELD_DEFAULTS
from pytest_llmperf.judge.capacity import SAMPLE_SIZE_FIELDS, PairComparison, Sweep, sweeps_of
from pytest_llmperf.report.html import file_name
from pytest_llmperf.report.overlay import (
    Configuration,
    SloRow,
    SweepComparison,
    ratio_text,
    render_overlay,
    slo_rows,
)

__all__ = [
    "LOAD_NEUTRAL_FIELDS",
    "check_configurations",
    "default_label",
    "format_comparisons",
    "format_overlay",
    "load_document",
    "main",
    "match_sweeps",
    "matching_workload",
]

# Workload fields that do not change the load the server sees (beyond those that size the sample).
LOAD_NEUTRAL_FIELDS: frozenset[str] = frozenset({"request_timeout_s", "goodput"})
# What makes a result's configuration: where each field is read from (the result's endpoint, then its
# fingerprint). Results of one sweep must agree on every field they state.
_CONFIG_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hardware", ("fingerprint",)),
    ("precision", ("fingerprint",)),
    ("engine", ("endpoint", "fingerprint")),
    ("engine_version", ("endpoint", "fingerprint")),
    ("model", ("endpoint", "fingerprint")),
    ("gpu_count", ("summary", "endpoint")),
    ("server_command_hash", ("fingerprint",)),
)


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


def _endpoint(document: Mapping[str, Any]) -> Mapping[str, Any]:
    endpoint = document.get("endpoint")
    if isinstance(endpoint, Mapping) and endpoint:
        return endpoint
    for result in document.get("results") or ():
        if isinstance(result, Mapping) and isinstance(result.get("endpoint"), Mapping):
            found: Mapping[str, Any] = result["endpoint"]
            return found
    return {}


def default_label(document: Mapping[str, Any], path: Path) -> str:
    """The document's pair and engine version (``h200x8-fp8 · vllm 0.11.0``); the file's stem without a pair."""
    pair = document.get("pair")
    head = str(pair) if isinstance(pair, str) and pair else path.stem
    endpoint = _endpoint(document)
    engine = " ".join(str(v) for v in (endpoint.get("engine"), endpoint.get("engine_version")) if v)
    return f"{head} · {engine}" if engine else head


def _labels(documents: Sequence[Mapping[str, Any]], paths: Sequence[Path], given: Sequence[str] | None) -> list[str]:
    if given:
        return list(given)
    labels = [default_label(d, p) for d, p in zip(documents, paths, strict=True)]
    # Two documents of the same pair and engine (e.g. MTP off and on) get their file names to tell them apart.
    shared = {label for label in labels if labels.count(label) > 1}
    labels = [f"{label} ({path.name})" if label in shared else label for label, path in zip(labels, paths, strict=True)]
    shared = {label for label in labels if labels.count(label) > 1}
    return [f"{label} #{k + 1}" if label in shared else label for k, label in enumerate(labels)]


def _config_value(result: Mapping[str, Any], field: str, sources: tuple[str, ...]) -> str | None:
    for source in sources:
        part = result.get(source)
        if isinstance(part, Mapping) and part.get(field) not in (None, ""):
            return str(part[field])
    return None


def check_configurations(document: Mapping[str, Any], source: str) -> None:
    """Refuse (DocumentError) a document whose sweep holds results of more than one configuration."""
    for sweep in sweeps_of(document):
        for field, sources in _CONFIG_FIELDS:
            values = sorted({v for r in sweep.results if (v := _config_value(r, field, sources)) is not None})
            if len(values) > 1:
                raise DocumentError(
                    f"{source}: sweep {sweep.test} holds results of {len(values)} configurations ({field}: "
                    f"{' vs '.join(values)}); its points would be pooled into one curve. Pass each "
                    "configuration's own --llmperf-json file (split a merged file by configuration)"
                )


def matching_workload(workload: Mapping[str, object]) -> dict[str, object]:
    """The workload fields sweeps are matched on: without the sample size and load-neutral fields, and a dataset
    file by its name (``/data/a/sharegpt.json`` and ``sharegpt.json`` match)."""
    kept = {
        k: v
        for k, v in workload.items()
        if k not in SAMPLE_SIZE_FIELDS
        and k not in LOAD_NEUTRAL_FIELDS
        # Fields added in later releases, at their defaults: a document written before them still matches.
        and not (k in LATER_FIELD_DEFAULTS and v == LATER_FIELD_DEFAULTS[k])
    }
    for field in ("dataset", "trace"):
        path = kept.get(field)
        if isinstance(path, str):
            kept[field] = file_name(path)
    return kept


def _key(sweep: Sweep) -> str:
    return sweep.test + "\x00" + json.dumps(matching_workload(sweep.workload), sort_keys=True, default=str)


def _differences(a: Mapping[str, object], b: Mapping[str, object]) -> list[str]:
    a, b = matching_workload(a), matching_workload(b)
    return [f"{k} {a.get(k, '(unset)')} vs {b.get(k, '(unset)')}" for k in sorted({*a, *b}) if a.get(k) != b.get(k)]


def _why_unmatched(first: Sequence[Sweep], other: Sequence[Sweep], a: str, b: str) -> str:
    """Why no sweep of ``other`` matches one of ``first``: the closest pair's differing workload fields."""
    if not first or not other:
        empty = a if not first else b
        return f"{empty} holds no sweep (one test and workload at two or more concurrencies)"
    candidates = [(_differences(s.workload, o.workload), s.test) for s in first for o in other if s.test == o.test]
    if not candidates:
        tests_a = ", ".join(sorted({s.test for s in first}))
        tests_b = ", ".join(sorted({s.test for s in other}))
        return f"no test in common ({a}: {tests_a}; {b}: {tests_b})"
    diffs, test = min(candidates, key=lambda c: len(c[0]))
    return f"{test}: the workloads differ in {', '.join(diffs)} (first vs second)"


def match_sweeps(documents: Sequence[Mapping[str, Any]]) -> list[SweepComparison]:
    """Sweeps that two or more documents ran with the same workload (see the module docstring), in the order they
    first appear; each comparison holds every document's sweep or None."""
    keyed: list[dict[str, Sweep]] = []
    for document in documents:
        found: dict[str, Sweep] = {}
        for sweep in sweeps_of(document):
            found.setdefault(_key(sweep), sweep)
        keyed.append(found)
    order: list[str] = []
    for found in keyed:
        order += [k for k in found if k not in order]
    out = []
    for key in order:
        sweeps = tuple(found.get(key) for found in keyed)
        present = [s for s in sweeps if s is not None]
        if len(present) >= 2:
            out.append(SweepComparison(present[0].test, present[0].workload, sweeps))
    return out


def _shown_workload(workload: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(workload.items()) if k in ("input_len", "output_len"))


def format_comparisons(
    measured: Sequence[PairComparison], interpolated: Sequence[PairComparison], a: str, b: str
) -> list[str]:
    """Lines for people: one block per sweep and SLO (``measured`` and ``interpolated`` pair up one to one)."""
    lines: list[str] = []
    for m, i in zip(measured, interpolated, strict=True):
        shown = _shown_workload(m.workload)
        lines += [
            f"{m.test}" + (f" ({shown})" if shown else ""),
            f"  {a}: {m.a.describe()}",
            f"  {b}: {m.b.describe()}",
            f"  {ratio_text(m.ratio, a, b)}",
            f"  {ratio_text(i.ratio, a, b)}",
        ]
    return lines


def _compared(comparisons: Sequence[SweepComparison]) -> list[tuple[SweepComparison, SloRow]]:
    """The (sweep, SLO) blocks the text shows: the first document's, where another document has them too."""
    return [
        (c, row)
        for c in comparisons
        if c.sweeps[0] is not None
        for row in slo_rows(c)
        if row.capacities[0] is not None and any(cap is not None for cap in row.capacities[1:])
    ]


def format_overlay(blocks: Sequence[tuple[SweepComparison, SloRow]], labels: Sequence[str]) -> list[str]:
    """Lines for people, per sweep and SLO: each configuration's capacity, then the first one's ratios to the others
    (with two documents, the same lines as :func:`format_comparisons`)."""
    lines: list[str] = []
    for comparison, row in blocks:
        shown = _shown_workload(comparison.workload)
        lines.append(comparison.test + (f" ({shown})" if shown else ""))
        lines += [f"  {labels[k]}: {cap.describe()}" for k, cap in enumerate(row.capacities) if cap is not None]
        for k in range(1, len(labels)):
            for ratio in (row.measured[k], row.interpolated[k]):
                if ratio is not None:
                    lines.append(f"  {ratio_text(ratio, labels[0], labels[k])}")
    return lines


def _json_rows(blocks: Sequence[tuple[SweepComparison, SloRow]], labels: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for comparison, row in blocks:
        first = row.capacities[0]
        assert first is not None  # _compared keeps only those
        for k in range(1, len(labels)):
            cap, measured, interpolated = row.capacities[k], row.measured[k], row.interpolated[k]
            if cap is None or measured is None or interpolated is None:
                continue
            rows.append(
                {
                    "test": comparison.test,
                    "workload": dict(comparison.workload),
                    "slo": row.slo,
                    "limit": row.limit,
                    "against": labels[k],
                    "first": first.as_dict(),
                    "second": cap.as_dict(),
                    "ratio_measured": measured.as_dict(),
                    "ratio_interpolated": interpolated.as_dict(),
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_llmperf.pairs", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "documents",
        type=Path,
        nargs="+",
        metavar="DOCUMENT",
        help="session documents (--llmperf-json), two or more; ratios are the first's over each other one's",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=None,
        metavar="NAME",
        help="name of a document's configuration, once per document in order (default: pair · engine version)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the comparison as JSON")
    parser.add_argument(
        "--html", type=Path, default=None, metavar="PATH", help="also write the overlay page (self-contained HTML)"
    )
    args = parser.parse_args(argv)
    paths: list[Path] = args.documents
    if len(paths) < 2:
        parser.error("give two session documents or more")
    if args.label is not None and len(args.label) != len(paths):
        parser.error(f"--label given {len(args.label)} times for {len(paths)} documents: once per document, or never")
    if args.label is not None and len(set(args.label)) != len(args.label):
        parser.error("--label: each configuration needs its own name")
    if args.html is not None and importlib.util.find_spec("matplotlib") is None:
        parser.error(
            "--html draws its charts with matplotlib, which is not installed: pip install 'pytest-llmperf[html]'"
        )
    try:
        documents = [load_document(path) for path in paths]
        for path, document in zip(paths, documents, strict=True):
            check_configurations(document, str(path))
    except DocumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = _labels(documents, paths, args.label)
    comparisons = match_sweeps(documents)
    blocks = _compared(comparisons)

    notes: list[str] = []  # with the paths as given, for the terminal
    page_notes: list[str] = []  # with file names only, for the page
    first_sweeps = sweeps_of(documents[0])
    for k in range(1, len(paths)):
        if not any(c.sweeps[0] is not None and c.sweeps[k] is not None for c in comparisons):
            other_sweeps = sweeps_of(documents[k])
            for names, out in (((str(paths[0]), str(paths[k])), notes), ((paths[0].name, paths[k].name), page_notes)):
                why = _why_unmatched(first_sweeps, other_sweeps, *names)
                out.append(f"no sweep of {names[0]} and {names[1]} can be compared: {why}")
    if args.html is not None:
        configs = [Configuration(label, path.name, d) for label, path, d in zip(labels, paths, documents, strict=True)]
        write_text_atomic(args.html, render_overlay(configs, comparisons, notes=page_notes))
    for note in notes:
        print(note, file=sys.stderr)
    if not blocks and not notes:
        print(
            f"no sweep of {paths[0]} and {paths[1] if len(paths) == 2 else 'the other documents'} can be compared: "
            "it takes the same test at two or more concurrencies with the same workload and a latency SLO of the "
            "same limit in both",
            file=sys.stderr,
        )
    if not blocks:
        return 1
    others = ", ".join(labels[1:])
    print(f"capacity at SLO, {labels[0]} vs {others}")
    for line in format_overlay(blocks, labels):
        print(line)
    if args.json is not None:
        summary = {"first": labels[0], "second": labels[1], "labels": labels, "comparisons": _json_rows(blocks, labels)}
        write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
