"""Prometheus counter deltas between two scrapes."""

from __future__ import annotations

import pytest

from pytest_llmperf.servers.engine_metrics import deltas, parse_counters

BEFORE = """# HELP vllm:num_preemptions_total Preemptions.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{model_name="m"} 2.0
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{model_name="m"} 100.0
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{model_name="m"} 400.0
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{model_name="m",engine="0"} 30.0
vllm:spec_decode_num_draft_tokens_total{model_name="m",engine="1"} 10.0
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{model_name="m"} 20.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
"""

AFTER = BEFORE.replace(" 2.0", " 5.0").replace(" 100.0", " 160.0").replace(" 400.0", " 500.0")
AFTER = AFTER.replace('engine="0"} 30.0', 'engine="0"} 70.0').replace(" 20.0", " 50.0")


def test_counters_sum_over_labels_and_skip_gauges() -> None:
    counters = parse_counters(BEFORE)
    assert counters["vllm:spec_decode_num_draft_tokens_total"] == 40.0
    assert "vllm:num_requests_running" not in counters


def test_deltas_and_derived_figures() -> None:
    result = deltas(parse_counters(BEFORE), parse_counters(AFTER))
    assert result["counters"]["vllm:num_preemptions_total"] == 3.0
    derived = result["derived"]
    assert derived["preemptions"] == 3.0
    assert derived["prefix_cache_hit_rate"] == pytest.approx(60 / 100)
    assert derived["spec_decode_acceptance_rate"] == pytest.approx(30 / 40)


def test_llamacpp_names() -> None:
    text = "# TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total 10\n"
    later = text.replace(" 10", " 74")
    assert deltas(parse_counters(text), parse_counters(later))["derived"]["llamacpp_generation_tokens"] == 64.0


def test_rate_without_denominator_movement_is_omitted() -> None:
    result = deltas(parse_counters(BEFORE), parse_counters(BEFORE))
    assert result["counters"] == {}
    assert "prefix_cache_hit_rate" not in result["derived"]
