"""What the server says it did during a run: deltas of its Prometheus counters.

``/metrics`` is scraped before and after each run. Every counter that moved is kept (engine-agnostic), and the
figures users ask about most are derived where an engine exports them: preemptions, prefix-cache hit rate,
speculative-decoding acceptance (overall and per draft position), tokens processed. Parsing uses
``prometheus_client``'s text parser.

Counters are summed over their labels, except that a per-position counter (``…_per_pos_total{position="i"}``,
vLLM's and llama.cpp's accepted tokens by draft position) is also kept per position, under the sample name with
that one label (``vllm:spec_decode_num_accepted_tokens_per_pos_total{position="0"}``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pytest_llmperf.results import RunSummary, ServerMetrics
from pytest_llmperf.spec import Endpoint

_TIMEOUT_S = 10.0

# Gauges of requests a server is still working on (running or queued), by engine. A/B mode waits for their sum
# to reach zero before the other server runs, so one server's tail never overlaps the other's measurement.
BUSY_GAUGES: tuple[str, ...] = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
    "llamacpp:requests_processing",
    "llamacpp:requests_deferred",
    "sim:num_requests_running",
    "sim:num_requests_waiting",
)

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
                position = sample.labels.get("position")
                if position is not None and sample.name.endswith("_per_pos_total"):
                    key = f'{sample.name}{{position="{position}"}}'  # summed over the other labels (engines)
                    totals[key] = totals.get(key, 0.0) + float(sample.value)
    return totals


def busy_requests(text: str) -> float | None:
    """Requests still running or queued according to the :data:`BUSY_GAUGES` in ``text`` (None: none exported)."""
    from prometheus_client.parser import text_string_to_metric_families

    total: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in BUSY_GAUGES:
                total = (total or 0.0) + float(sample.value)
    return total


def _fetch(endpoint: Endpoint) -> str | None:
    import httpx

    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    try:
        response = httpx.get(endpoint.base_url + "/metrics", headers=headers, timeout=_TIMEOUT_S, trust_env=False)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def scrape(endpoint: Endpoint) -> dict[str, float] | None:
    """The server's counters now, or None when it exposes no parsable ``/metrics``."""
    text = _fetch(endpoint)
    if text is None:
        return None
    try:
        return parse_counters(text)
    except ValueError:
        return None


def wait_idle(endpoint: Endpoint, *, timeout_s: float, poll_s: float = 0.05) -> float | None:
    """Wait until the server reports no running or queued request; the seconds waited, or None when it exports
    no such gauge (then nothing can be known beyond the client's own view: every stream has ended).
    Gives up after ``timeout_s`` and returns the wait so far (the caller reports it)."""
    import time

    started = time.monotonic()
    while True:
        text = _fetch(endpoint)
        try:
            busy = busy_requests(text) if text is not None else None
        except ValueError:
            busy = None
        waited = time.monotonic() - started
        if busy is None:
            return None
        if busy <= 0 or waited >= timeout_s:
            return waited
        time.sleep(poll_s)


def deltas(before: Mapping[str, float], after: Mapping[str, float]) -> ServerMetrics:
    """Counters that moved between two scrapes, and the derived figures the engine allows."""
    moved = {name: after[name] - before.get(name, 0.0) for name in sorted(after) if after[name] != before.get(name)}
    # Every draft position of an engine that drafted, zeros too: a position nothing was accepted at during the run
    # is a rate of 0 (vLLM lists it so), and the positions' count is the draft length.
    for name in sorted(after):
        prefix = name.partition(":")[0]
        if "{position=" in name and name not in moved and moved.get(f"{prefix}:spec_decode_num_drafts_total"):
            moved[name] = after[name] - before.get(name, 0.0)
    moved = dict(sorted(moved.items()))
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


# Engine prefixes whose speculative-decoding counters follow vLLM's names.
_SPEC_DECODE_PREFIXES = ("vllm:", "llamacpp:", "sim:")


def add_spec_decode(summary: RunSummary, metrics: ServerMetrics) -> None:
    """Speculative-decoding acceptance over a run into ``summary``, under the keys ``vllm bench serve
    --save-result`` writes: ``spec_decode_draft_tokens``, ``spec_decode_accepted_tokens``,
    ``spec_decode_acceptance_rate`` (percent of the draft tokens accepted) and, where the engine counts drafts,
    ``spec_decode_num_drafts``, ``spec_decode_acceptance_length`` (1 + accepted / drafts: tokens per decode
    step) and, where it also counts accepted tokens by draft position, ``spec_decode_per_position_acceptance_rates``
    (a fraction per position, in position order: the drafts whose token at that position was accepted, as
    ``vllm bench serve`` computes it from the same counters' deltas). Nothing is added when the server drafted
    nothing during the run (absent, never 0: a run without speculative decoding accepted nothing)."""
    moved = metrics.get("counters") or {}
    for prefix in _SPEC_DECODE_PREFIXES:
        drafted = moved.get(f"{prefix}spec_decode_num_draft_tokens_total", 0.0)
        if drafted <= 0:
            continue
        accepted = moved.get(f"{prefix}spec_decode_num_accepted_tokens_total", 0.0)
        summary["spec_decode_draft_tokens"] = int(drafted)
        summary["spec_decode_accepted_tokens"] = int(accepted)
        summary["spec_decode_acceptance_rate"] = accepted / drafted * 100.0
        drafts = moved.get(f"{prefix}spec_decode_num_drafts_total", 0.0)
        if drafts > 0:
            summary["spec_decode_num_drafts"] = int(drafts)
            summary["spec_decode_acceptance_length"] = 1.0 + accepted / drafts
            per_position = re.compile(
                re.escape(f"{prefix}spec_decode_num_accepted_tokens_per_pos_total") + r'\{position="(\d+)"\}'
            )
            positions = sorted(
                (int(found[1]), value) for name, value in moved.items() if (found := per_position.fullmatch(name))
            )
            if positions:
                summary["spec_decode_per_position_acceptance_rates"] = [value / drafts for _, value in positions]
        return
