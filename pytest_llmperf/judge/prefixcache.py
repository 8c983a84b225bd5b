"""How much of a run's prompts the server served from its prefix cache, and whether that makes the run invalid.

Pure: no I/O. Engines cache prompt prefixes by default (vLLM's automatic prefix caching, SGLang's radix cache,
TensorRT-LLM's KV-cache reuse, llama.cpp's prompt cache). A run whose prompts were cached measures cached
prefill, not the work the test asked for: on llama.cpp a repeated run's median TTFT fell from 47.9 to 4.1 ms
with 99% of its prompt tokens cached. The plugin sends new prompt contents every run, and this module checks
that it worked.

Sources, best first:

1. the responses: ``usage.prompt_tokens_details.cached_tokens`` (vLLM with prompt-token details, SGLang,
   llama.cpp, the simulator), used only when every successful request of the run reported it;
2. the server's ``/metrics`` counters over the run (warmup included, as the scrape brackets the whole
   episode): vLLM ``prefix_cache_hits``/``prefix_cache_queries``, SGLang ``cached_tokens``/``prompt_tokens``,
   llama.cpp ``prompt_tokens_cached``/``prompt_tokens``, the simulator's ``prefix_cache_hits``/``queries``;
3. otherwise unknown: ``None``, never 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_llmperf.results import PromptCacheFields
from pytest_llmperf.spec import RequestRecord

# More than this share of a run's prompt tokens from cache, when the workload shares no prefix, invalidates the
# run: fresh random prompts hit at most a BOS token or a chat template's first block (well under 5%).
UNREQUESTED_CACHE_LIMIT = 0.05

# (cached-token counter, prompt-token counter) per engine; the second counts every prompt token looked up.
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("vllm", "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
    ("sglang", "sglang:cached_tokens_total", "sglang:prompt_tokens_total"),
    ("llama.cpp", "llamacpp:prompt_tokens_cached_total", "llamacpp:prompt_tokens_total"),
    ("sim", "sim:prefix_cache_hits_total", "sim:prefix_cache_queries_total"),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheUse:
    """Cached prompt tokens of one run and where the figure came from."""

    cached_tokens: int | None
    prompt_tokens: int | None
    source: str  # "usage", "metrics:<engine>" or "unknown: <why>"

    @property
    def fraction(self) -> float | None:
        if self.cached_tokens is None or not self.prompt_tokens:
            return None
        return self.cached_tokens / self.prompt_tokens


def from_usage(records: Sequence[RequestRecord]) -> CacheUse | None:
    """From the responses, when every successful request reported its cached tokens; else None."""
    ok = [r for r in records if r.ok]
    if not ok or any(r.cached_tokens is None for r in ok):
        return None
    cached = sum(int(r.cached_tokens or 0) for r in ok)
    prompts = sum(r.prompt_tokens if r.prompt_tokens else r.input_len for r in ok)
    return CacheUse(cached_tokens=cached, prompt_tokens=prompts, source="usage")


def from_metrics(counters: Mapping[str, float]) -> CacheUse | None:
    """From the deltas of the server's ``/metrics`` counters over the run (the ``counters`` of
    :func:`pytest_llmperf.servers.engine_metrics.deltas`, which lists only counters that moved); None when the
    engine exports no such pair."""
    for engine, cached_name, prompt_name in _COUNTERS:
        prompts = counters.get(prompt_name)
        if prompts:
            cached = counters.get(cached_name, 0.0)
            # llama.cpp counts only the prompt tokens it evaluated; its cached ones come on top.
            total = prompts + cached if engine == "llama.cpp" else prompts
            return CacheUse(cached_tokens=round(cached), prompt_tokens=round(total), source=f"metrics:{engine}")
    return None


def measure(
    records: Sequence[RequestRecord], server_counters: Mapping[str, float] | None, *, metrics_known: bool
) -> CacheUse:
    """The run's cache use from the best source available. ``metrics_known``: the server's ``/metrics`` was
    scraped before and after (so a missing counter pair means the engine does not export one)."""
    found = from_usage(records) or (from_metrics(server_counters) if server_counters else None)
    if found is not None:
        return found
    why = "no cached-token count in the responses" + (
        " and no known prefix-cache counter in /metrics" if metrics_known else " and no /metrics"
    )
    return CacheUse(cached_tokens=None, prompt_tokens=None, source=f"unknown: {why}")


def invalid_reason(use: CacheUse, *, sharing_asked: bool) -> str | None:
    """Why the run cannot count, when the workload shares no prefix but the cache served a real part of it."""
    fraction = use.fraction
    if sharing_asked or fraction is None or fraction <= UNREQUESTED_CACHE_LIMIT:
        return None
    return (
        f"{use.cached_tokens:,} of {use.prompt_tokens:,} prompt tokens ({fraction:.0%}) came from the server's "
        f"prefix cache (source {use.source}) although the workload shares no prefix (limit "
        f"{UNREQUESTED_CACHE_LIMIT:.0%}): its latencies describe cached prompts. Another client may be sending "
        "the same prompts, or the server may ignore the request to skip its cache; the run is left out of the "
        "verdict and of baseline updates"
    )


def summary_fields(use: CacheUse) -> PromptCacheFields:
    """The summary keys of the run's cache use (``None`` when unknown, never 0)."""
    return {
        "cached_prompt_tokens": use.cached_tokens,
        "cached_prompt_fraction": use.fraction,
        "cached_prompt_source": use.source,
    }
