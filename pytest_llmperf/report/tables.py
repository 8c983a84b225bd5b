"""Plain-text tables of verdicts, readable in a terminal and inside a JUnit ``<failure>`` (ASCII only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pytest_llmperf.results import INCONCLUSIVE, PASS, MetricVerdictDict, VerdictDict

if TYPE_CHECKING:
    from pytest_llmperf.judge.verdict import Verdict  # scipy: only for the annotation


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "fraction":
        return f"{value * 100:.2f}%"
    return f"{value:.4g} {unit}".strip()


def _ratio(m: MetricVerdictDict) -> str:
    estimate, lower, upper = m.get("estimate"), m.get("lower"), m.get("upper")
    if estimate is None:
        return "-"
    if m.get("scale") == "difference":
        text = f"{estimate * 100:+.2f}pp"
        if lower is not None and upper is not None:
            text += f" [{lower * 100:+.2f}, {upper * 100:+.2f}]"
        return text
    text = f"{estimate:.3f}"
    if lower is not None and upper is not None:
        text += f" [{lower:.3f}, {upper:.3f}]"
    return text


def _unit(m: MetricVerdictDict) -> str:
    key = str(m.get("key", ""))
    if key.endswith("_ms"):
        return "ms"
    if m.get("scale") == "difference":
        return "fraction"
    return "tok/s" if "throughput" in key else ""


def _tolerance(m: MetricVerdictDict) -> str:
    tol = float(m.get("tolerance", 0.0))
    return f"{tol * 100:.2g}pp" if m.get("scale") == "difference" else f"{tol * 100:.3g}%"


def server_label(info: Mapping[str, object]) -> str:
    """ "engine version · url" of an endpoint's public dict (an EndpointDict, or one read back from JSON), for
    the A/B sections of every report."""
    engine = " ".join(str(x) for x in (info.get("engine") or "unknown", info.get("engine_version")) if x)
    return f"{engine} · {info.get('url', '?')}"


def render_verdict_table(verdict: Verdict | VerdictDict) -> str:
    """metric | baseline | measured | ratio [90% interval] | tolerance | verdict, then the reasons that matter.

    A/B verdicts (``reference == "A"``) read metric | A | B | B/A [90% interval] | tolerance | verdict. Takes the
    verdict, or its dict form as a result document carries it (from another process or a JSON file).
    """
    verdict = verdict if isinstance(verdict, dict) else verdict.as_dict()
    ab = verdict.get("reference") == "A"
    header = (
        ("metric", "A", "B", "B/A [90% CI]", "tolerance", "verdict")
        if ab
        else ("metric", "baseline", "measured", "ratio [90% CI]", "tolerance", "verdict")
    )
    rows = []
    for m in verdict.get("metrics", ()):
        unit = _unit(m)
        status = m["status"] + ("" if m.get("gating") else " (advisory)")
        if _slo_governs(m):
            status += " (SLO governs)"
        elif _advisory_beyond(m):
            status = "WORSE (advisory)"
        rows.append(
            (
                str(m.get("label") or m["name"]),
                _value(m.get("baseline_value"), unit),
                _value(m.get("candidate_value"), unit),
                _ratio(m),
                _tolerance(m),
                status,
            )
        )
    # With metrics the per-metric reasons below say it all; without (no baseline, not comparable) the reason.
    headline = f"{'B vs A ' if ab else ''}verdict: {verdict['status']}" + ("" if rows else f" - {verdict['reason']}")
    runs = (
        f"blocks: {verdict.get('runs_candidate', 0)} (each one run of A and one of B, interleaved)"
        if ab
        else f"runs: {verdict.get('runs_candidate', 0)} now vs {verdict.get('runs_baseline', 0)} in the baseline"
    )
    lines = [headline, runs]
    if rows:
        lines += _table(header, rows)
    for m in verdict.get("metrics", ()):
        explain = (m.get("gating") and m["status"] != PASS) or _slo_governs(m) or _advisory_beyond(m)
        if explain and m.get("reason"):
            label = str(m.get("label") or m["name"])
            reason = str(m["reason"])
            lines.append(reason if reason.startswith(f"{label}:") else f"{label}: {reason}")
    for diff in verdict.get("hard_diffs", ()):
        lines.append(f"not comparable: {diff}")
    for diff in verdict.get("soft_diffs", ()):
        lines.append(f"changed since the baseline: {diff}")
    if verdict.get("hint"):
        lines.append(f"hint: {verdict['hint']}")
    return "\n".join(lines)


def _slo_governs(m: MetricVerdictDict) -> bool:
    """A PASS of the error rate that its interval does not support (no failure, too few requests)."""
    upper = m.get("upper")
    return (
        m.get("scale") == "difference"
        and m.get("status") == PASS
        and upper is not None
        and upper > float(m.get("tolerance", 0.0))
    )


def _advisory_beyond(m: MetricVerdictDict) -> bool:
    """An advisory metric whose whole interval lies beyond its tolerance (worse at 90% confidence)."""
    lower = m.get("effect_lower")
    return not m.get("gating") and m.get("status") == INCONCLUSIVE and lower is not None and lower > m.get("bound", 0)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
