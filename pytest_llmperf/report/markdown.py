"""A Markdown summary for ``$GITHUB_STEP_SUMMARY``: the same table as the terminal, as a GitHub job sees it."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_llmperf.report.terminal import status
from pytest_llmperf.results import EndpointDict, RunDocument


def _cell(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def step_summary(results: Sequence[RunDocument], *, pair: str, endpoint: EndpointDict | None) -> str:
    endpoint = endpoint or {}
    lines = [
        f"### pytest-llmperf · {_escape(pair)}",
        "",
        f"{_escape(str(endpoint.get('engine', 'unknown')))} {_escape(str(endpoint.get('engine_version') or ''))}"
        f" · model `{_escape(str(endpoint.get('model', '?')))}`",
        "",
        "| test | runs | failed | TTFT p50 ms | TPOT p50 ms | E2E p50 ms | output tok/s | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        s = r.get("summary") or {}
        e2e = s.get("median_e2el_ms", s.get("median_e2e_latency_ms"))
        lines.append(
            f"| `{_escape(r['nodeid'])}` | {len(r.get('runs') or [s])} | {s.get('failed', 0)} | "
            f"{_cell(s.get('median_ttft_ms'))} | {_cell(s.get('median_tpot_ms'))} | {_cell(e2e)} | "
            f"{_cell(s.get('output_throughput'))} | **{status(r)}** |"
        )
    return "\n".join(lines) + "\n"
