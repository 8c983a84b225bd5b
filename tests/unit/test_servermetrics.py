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


def test_spec_decode_fields_use_vllms_result_keys() -> None:
    from pytest_llmperf.results import RunSummary
    from pytest_llmperf.servers.engine_metrics import add_spec_decode

    # Between BEFORE and AFTER: 40 draft tokens proposed (30 → 70 on engine 0), 30 accepted (20 → 50).
    moved = deltas(parse_counters(BEFORE), parse_counters(AFTER))
    summary: RunSummary = {}
    add_spec_decode(summary, moved)
    assert summary == {
        "spec_decode_draft_tokens": 40,
        "spec_decode_accepted_tokens": 30,
        "spec_decode_acceptance_rate": pytest.approx(75.0),  # percent, as vLLM writes it
    }
    # With the drafts counted (vLLM's spec_decode_num_drafts_total): acceptance length 1 + accepted / drafts.
    with_drafts: RunSummary = {}
    add_spec_decode(with_drafts, {"counters": {**moved["counters"], "vllm:spec_decode_num_drafts_total": 20.0}})
    assert with_drafts["spec_decode_num_drafts"] == 20
    assert with_drafts["spec_decode_acceptance_length"] == pytest.approx(1 + 30 / 20)
    # Nothing drafted: absent, never 0 %.
    none: RunSummary = {}
    add_spec_decode(none, {"counters": {"vllm:num_preemptions_total": 3.0}, "derived": {}})
    assert none == {}
