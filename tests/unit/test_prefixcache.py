"""Cached prompt tokens per run, from the responses or /metrics, and when they make a run invalid."""

from __future__ import annotations

import pytest

from pytest_llmperf.judge import prefixcache
from pytest_llmperf.spec import RequestRecord


def record(index: int, *, cached: int | None, prompt: int | None = 100, ok: bool = True) -> RequestRecord:
    r = RequestRecord(index=index, arrival_s=0.0, input_len=100, output_len=4, prompt_tokens=prompt)
    r.cached_tokens = cached
    if ok:
        r.status = 200
        r.event_times_s = [0.1]
    else:
        r.error, r.error_kind = "boom", "http_500"
    return r


def test_usage_is_used_when_every_successful_request_reports_it() -> None:
    records = [record(0, cached=96), record(1, cached=0), record(2, cached=None, ok=False)]
    use = prefixcache.from_usage(records)
    assert use is not None
    assert (use.cached_tokens, use.prompt_tokens, use.source) == (96, 200, "usage")
    assert use.fraction == pytest.approx(0.48)


def test_usage_missing_on_one_request_is_not_used() -> None:
    assert prefixcache.from_usage([record(0, cached=96), record(1, cached=None)]) is None
    assert prefixcache.from_usage([]) is None


def test_prompt_length_falls_back_to_the_requested_one() -> None:
    use = prefixcache.from_usage([record(0, cached=10, prompt=None)])
    assert use is not None
    assert use.prompt_tokens == 100


@pytest.mark.parametrize(
    ("counters", "expected"),
    [
        ({"vllm:prefix_cache_hits_total": 300.0, "vllm:prefix_cache_queries_total": 1000.0}, (300, 1000, "vllm")),
        ({"sglang:cached_tokens_total": 50.0, "sglang:prompt_tokens_total": 500.0}, (50, 500, "sglang")),
        # llama.cpp counts the tokens it evaluated; the cached ones come on top.
        (
            {"llamacpp:prompt_tokens_cached_total": 8128.0, "llamacpp:prompt_tokens_total": 64.0},
            (8128, 8192, "llama.cpp"),
        ),
        ({"sim:prefix_cache_queries_total": 640.0}, (0, 640, "sim")),
    ],
)
def test_metrics_counters_per_engine(counters: dict[str, float], expected: tuple[int, int, str]) -> None:
    use = prefixcache.from_metrics(counters)
    assert use is not None
    assert (use.cached_tokens, use.prompt_tokens, use.source) == (expected[0], expected[1], f"metrics:{expected[2]}")


def test_unknown_is_none_never_zero() -> None:
    use = prefixcache.measure([record(0, cached=None)], {"other_total": 1.0}, metrics_known=True)
    assert use.cached_tokens is None
    assert use.fraction is None
    assert use.source.startswith("unknown")
    assert "/metrics" in use.source
    fields = prefixcache.summary_fields(use)
    assert fields["cached_prompt_tokens"] is None
    assert fields["cached_prompt_fraction"] is None


def test_usage_wins_over_metrics() -> None:
    use = prefixcache.measure(
        [record(0, cached=0)],
        {"vllm:prefix_cache_hits_total": 9.0, "vllm:prefix_cache_queries_total": 10.0},
        metrics_known=True,
    )
    assert use.source == "usage"
    assert use.cached_tokens == 0
    assert use.fraction == 0.0


def test_an_unrequested_hit_above_the_limit_is_invalid() -> None:
    high = prefixcache.CacheUse(cached_tokens=8128, prompt_tokens=8192, source="metrics:llama.cpp")
    reason = prefixcache.invalid_reason(high, sharing_asked=False)
    assert reason is not None
    assert "8,128 of 8,192" in reason
    assert "99%" in reason
    assert "metrics:llama.cpp" in reason
    assert prefixcache.invalid_reason(high, sharing_asked=True) is None


def test_the_limit_is_five_percent() -> None:
    at = prefixcache.CacheUse(cached_tokens=5, prompt_tokens=100, source="usage")
    above = prefixcache.CacheUse(cached_tokens=6, prompt_tokens=100, source="usage")
    unknown = prefixcache.CacheUse(cached_tokens=None, prompt_tokens=None, source="unknown")
    assert prefixcache.invalid_reason(at, sharing_asked=False) is None
    assert prefixcache.invalid_reason(above, sharing_asked=False) is not None
    assert prefixcache.invalid_reason(unknown, sharing_asked=False) is None
