"""JUnit ``<properties>`` of a perf test: every metric as ``llmperf.<metric>.<stat>``, the verdict, the SLOs.

In A/B mode the verdict's properties are ``llmperf.ab.<metric>.a|b|ratio|verdict`` (B vs A).

Appended to ``item.user_properties`` (not ``record_property``), so they are written under the default
``junit_family=xunit2`` without a warning and travel with the report under pytest-xdist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from pytest_llmperf.results import RunDocument, RunSummary

Property: TypeAlias = tuple[str, str | float | None]

_LATENCY = ("ttft", "tpot", "itl", "e2e")
_STATS = ("mean", "p50", "p90", "p95", "p99")
_SCALARS = {
    "completed": "completed",
    "failed": "failed",
    "error_rate": "error_rate",
    "request_throughput": "request_s",
    "input_throughput": "input_tok_s",
    "output_throughput": "output_tok_s",
    "total_token_throughput": "total_tok_s",  # vllm mode
    "total_throughput": "total_tok_s",  # sglang mode (a summary has one of the two)
    "input_throughput_per_gpu": "input_tok_s_per_gpu",
    "output_throughput_per_gpu": "output_tok_s_per_gpu",
    "total_token_throughput_per_gpu": "total_tok_s_per_gpu",  # vllm mode
    "total_throughput_per_gpu": "total_tok_s_per_gpu",  # sglang mode
    "interactivity": "tok_s_per_user",
    "request_goodput": "goodput_req_s",  # with the goodput keyword
    "good_requests": "good_requests",
    "duration": "duration_s",
    # with the GPU count and --llmperf-gpu-cost-per-hour
    "gpu_cost_per_hour": "gpu_cost_per_hour",
    "cost_per_million_output_tokens": "cost_per_million_output_tokens",
    "cost_per_million_total_tokens": "cost_per_million_total_tokens",
    "output_tokens_per_dollar": "output_tokens_per_dollar",
    "total_tokens_per_dollar": "total_tokens_per_dollar",
}


def _summary_key(metric: str, stat: str, compat: str) -> str:
    e2e = "e2e_latency" if compat == "sglang" else "e2el"
    name = e2e if metric == "e2e" else metric
    return f"{'median' if stat == 'p50' else stat}_{name}_ms"


def _number(summary: RunSummary, key: str) -> float | None:
    """The figure under a computed key (its name depends on the mode and the statistic), if it is a number."""
    value = summary.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _itl_per_token(summary: RunSummary, compat: str) -> bool:
    """ITL properties are per token when chunks carried more than one token on average (MTP, speculative
    decoding) and per-token figures exist; per chunk (as vLLM prints) otherwise. ``llmperf.itl_ms.source`` says
    which."""
    tokens_per_chunk = summary.get("mean_tokens_per_chunk")
    if not isinstance(tokens_per_chunk, (int, float)) or tokens_per_chunk <= 1.0:
        return False
    return summary.get(_summary_key("itl_token", "p99", compat)) is not None


def properties(document: RunDocument) -> list[Property]:
    """``(name, value)`` pairs for one ``llmperf.run()`` (a result document); missing values are left out."""
    summary: RunSummary = document.get("summary") or {}
    compat = str(summary.get("compat_mode") or "vllm")
    out: list[Property] = [("llmperf.runs", len(document.get("runs") or [summary]))]
    per_token = _itl_per_token(summary, compat)
    for metric in _LATENCY:
        for stat in _STATS:
            source = "itl_token" if metric == "itl" and per_token else metric
            value = _number(summary, _summary_key(source, stat, compat))
            if value is not None:
                out.append((f"llmperf.{metric}_ms.{stat}", round(value, 4)))
    out.append(("llmperf.itl_ms.source", "per_token" if per_token else "per_chunk"))
    for key, name in _SCALARS.items():
        value = _number(summary, key)
        if value is not None:
            out.append((f"llmperf.{name}", round(value, 4)))
    for key in ("cached_prompt_tokens", "cached_prompt_fraction"):
        value = _number(summary, key)
        if value is not None:
            out.append((f"llmperf.{key}", round(value, 4)))
    for turn, figures in (summary.get("ttft_by_turn") or {}).items():  # multi-turn runs
        out.append((f"llmperf.ttft_ms.turn{turn}.p50", round(figures["median_ms"], 4)))
        out.append((f"llmperf.ttft_ms.turn{turn}.p99", round(figures["p99_ms"], 4)))
        if figures["cached_fraction"] is not None:
            out.append((f"llmperf.cached_prompt_fraction.turn{turn}", round(figures["cached_fraction"], 4)))
    runs = document.get("runs") or [summary]
    invalid = [f"run {k + 1}: {why}" for k, run in enumerate(runs) for why in run.get("invalid_reasons") or ()]
    if invalid:
        out.append(("llmperf.invalid", " | ".join(invalid)))
    disturbed = [
        f"run {k + 1}: " + "; ".join((run.get("disturbance") or {}).get("reasons") or ())
        for k, run in enumerate(runs)
        if (run.get("disturbance") or {}).get("disturbed")
    ]
    if disturbed:
        out.append(("llmperf.disturbed", " | ".join(disturbed)))
    verdict = document.get("verdict") or {}
    ab = document.get("ab")
    # A/B mode: the verdict is B vs A, under llmperf.ab.* (the metrics above are B's).
    prefix, labels = ("llmperf.ab.", ("a", "b", "ratio")) if ab else ("llmperf.", ("baseline", "measured", "ratio"))
    if ab:
        out.append(("llmperf.ab.blocks", len(ab.get("blocks") or ())))
        out.append(("llmperf.ab.order", ab.get("order")))
    if verdict:
        out.append((f"{prefix}verdict", verdict.get("status")))
    for m in verdict.get("metrics", ()):
        values = (m.get("baseline_value"), m.get("candidate_value"), m.get("estimate"))
        for value, label in zip(values, labels, strict=True):
            if value is not None:
                out.append((f"{prefix}{m['name']}.{label}", round(float(value), 4)))
        out.append((f"{prefix}{m['name']}.verdict", m["status"]))
    for slo in document.get("slos", ()):
        out.append((f"llmperf.slo.{slo['name']}.limit", slo["limit"]))
        measured = slo.get("measured")
        if measured is not None:
            out.append((f"llmperf.slo.{slo['name']}.measured", round(float(measured), 4)))
        out.append((f"llmperf.slo.{slo['name']}.status", "ok" if slo["passed"] else "breach"))
    return out
