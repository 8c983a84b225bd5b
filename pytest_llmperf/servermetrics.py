"""What the server says it did during a run: deltas of its Prometheus counters.

``/metrics`` is scraped before and after each run. Every counter that moved is kept (engine-agnostic), and the
figures users ask about most are derived where an engine exports them: preemptions, prefix-cache hit rate,
speculative-decoding acceptance, tokens processed. Parsing uses ``prometheus_client``'s text parser.
"""

from __future__ import annotations

from typing import Any

from pytest_llmperf.spec import Endpoint

_TIMEOUT_S = 10.0

# Derived figures: name -> (numerator counter, denominator counter or None), by engine prefix.
_DERIVED: dict[str, tuple[str, str | None]] = {
    "preemptions": ("vllm:num_preemptions_total", None),
    "prefix_cache_hit_rate": ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
    "spec_decode_acceptance_rate": (
        "vllm:spec_decode_num_accepted_tokens_total",
        "vllm:spec_decode_num_draft_tokens_total",
    ),
    "prompt_tokens": ("vllm:prompt_tokens_total", None),
    "generation_tokens": ("vllm:generation_tokens_total", None),
    "llamacpp_prompt_tokens": ("llamacpp:prompt_tokens_total", None),
    "llamacpp_cached_prompt_tokens": ("llamacpp:prompt_tokens_cached_total", None),
    "llamacpp_generation_tokens": ("llamacpp:tokens_predicted_total", None),
    "llamacpp_spec_decode_acceptance_rate": (
        "llamacpp:spec_decode_num_accepted_tokens_total",
        "llamacpp:spec_decode_num_draft_tokens_total",
    ),
    "sglang_prompt_tokens": ("sglang:prompt_tokens_total", None),
    "sglang_generation_tokens": ("sglang:generation_tokens_total", None),
    "sglang_cached_tokens": ("sglang:cached_tokens_total", None),
    "sim_generation_tokens": ("sim:generation_tokens_total", None),
    "sim_spec_decode_acceptance_rate": (
        "sim:spec_decode_num_accepted_tokens_total",
        "sim:spec_decode_num_draft_tokens_total",
    ),
}


def parse_counters(text: str) -> dict[str, float]:
    """Counter totals by sample name (labels summed), from Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


def scrape(endpoint: Endpoint) -> dict[str, float] | None:
    """The server's counters now, or None when it exposes no parsable ``/metrics``."""
    import httpx

    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    try:
        response = httpx.get(endpoint.base_url + "/metrics", headers=headers, timeout=_TIMEOUT_S, trust_env=False)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return parse_counters(response.text)
    except ValueError:
        return None


def deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Counters that moved between two scrapes, and the derived figures the engine allows."""
    moved = {name: after[name] - before.get(name, 0.0) for name in sorted(after) if after[name] != before.get(name)}
    derived: dict[str, float] = {}
    for name, (numerator, denominator) in _DERIVED.items():
        if numerator not in after:
            continue
        top = moved.get(numerator, 0.0)
        if denominator is None:
            derived[name] = top
        elif moved.get(denominator):
            derived[name] = top / moved[denominator]
    return {"counters": moved, "derived": derived}
