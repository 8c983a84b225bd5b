"""Prefill and total throughput per GPU, goodput asked for with the ``goodput`` keyword, and the cost of tokens.

Known answers: the published figures (GB300's prefill per GPU, InferenceX's per-GPU division and its price of
an hour of GPUs) come out of the functions the summary is built with.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.errors import SpecError
from pytest_llmperf.harness.markers import build_spec, parse_goodput, scale_spec
from pytest_llmperf.judge.metrics import cost_figures, per_gpu_figures, summarize
from pytest_llmperf.judge.slo import check_slos, parse_slos
from pytest_llmperf.report import junit, terminal
from pytest_llmperf.report.html import render_html
from pytest_llmperf.servers.profiles import load_profiles
from pytest_llmperf.spec import RequestRecord, RunRecords, Workload


def request(
    index: int, *, prompt: int, out: int, start: float = 0.0, ttft: float = 0.1, e2e: float = 1.0
) -> RequestRecord:
    """A successful request: ``prompt`` tokens in, ``out`` tokens out over ``out`` events from ``ttft`` to ``e2e``."""
    step = (e2e - ttft) / max(1, out - 1)
    return RequestRecord(
        index=index,
        arrival_s=start,
        input_len=prompt,
        output_len=out,
        start_s=start,
        status=200,
        event_times_s=[start + ttft + k * step for k in range(out)],
        prompt_tokens=prompt,
        completion_tokens=out,
        finish_reason="length",
    )


def run(*records: RequestRecord, duration_s: float, compat: str = "vllm") -> RunRecords:
    workload = Workload(input_len=8, output_len=4, compat=compat)  # type: ignore[arg-type]
    return RunRecords(workload=workload, records=list(records), bench_start_s=0.0, bench_end_s=duration_s)


# --- 2. per-GPU throughput --------------------------------------------------------------------------------


@pytest.mark.parametrize("compat", ["vllm", "sglang"])
def test_gb300_prefill_per_gpu_comes_out_in_both_modes(compat: str) -> None:
    # 8 GPUs take 8 prompts of 73,600 tokens in 10 s: 58,880 tok/s of prefill, 7,360 tok/s per GPU (GB300's figure).
    records = [request(i, prompt=73_600, out=100, start=0.0, e2e=9.0) for i in range(8)]
    s = summarize(run(*records, duration_s=10.0, compat=compat), gpu_count=8)
    assert s["input_throughput"] == pytest.approx(58_880)
    assert s["input_throughput_per_gpu"] == pytest.approx(7_360)
    assert s["output_throughput_per_gpu"] == pytest.approx(10)  # 8 × 100 / 10 s / 8
    total_key = "total_throughput_per_gpu" if compat == "sglang" else "total_token_throughput_per_gpu"
    assert s[total_key] == pytest.approx(7_370)  # type: ignore[literal-required]
    results = check_slos(parse_slos({"input_tok_s_per_gpu": 7_000, "total_tok_s_per_gpu": 7_500}), s)
    assert [(r.name, r.passed) for r in results] == [
        ("input_tok_s_per_gpu", True),
        ("total_tok_s_per_gpu", False),
        ("error_rate", True),
    ]
    assert results[0].measured == pytest.approx(7_360)


def test_vllm_mode_keeps_its_keys_and_adds_input_throughput() -> None:
    s = summarize(run(request(0, prompt=100, out=10), duration_s=2.0), gpu_count=2)
    for key in ("request_throughput", "output_throughput", "total_token_throughput", "total_token_throughput_per_gpu"):
        assert key in s
    assert "total_throughput" not in s
    assert s["input_throughput"] == 50.0
    assert s["input_throughput_per_gpu"] == 25.0


def test_inferencex_per_gpu_division_of_a_saved_result() -> None:
    # InferenceX's process_result.py: tput_per_gpu = total/num_gpus, input_tput_per_gpu = (total − output)/num_gpus.
    # A vLLM result file has no input_throughput: it is total − output then.
    saved = {"compat_mode": "vllm", "output_throughput": 2_000.0, "total_token_throughput": 24_528.0}
    assert per_gpu_figures(saved, 8) == {
        "input_throughput_per_gpu": 2_816.0,
        "output_throughput_per_gpu": 250.0,
        "total_token_throughput_per_gpu": 3_066.0,
    }
    sglang = {"compat_mode": "sglang", "input_throughput": 7_360.0, "output_throughput": None, "total_throughput": None}
    assert per_gpu_figures(sglang, 1) == {
        "input_throughput_per_gpu": 7_360.0,
        "output_throughput_per_gpu": None,
        "total_throughput_per_gpu": None,
    }
    with pytest.raises(SpecError, match="gpu_count=0"):
        per_gpu_figures(saved, 0)


@pytest.mark.parametrize("name", ["input_tok_s_per_gpu", "total_tok_s_per_gpu"])
@pytest.mark.parametrize("compat", ["vllm", "sglang"])
def test_per_gpu_slos_without_a_gpu_count_say_they_cannot_be_checked(name: str, compat: str) -> None:
    s = summarize(run(request(0, prompt=100, out=10), duration_s=2.0, compat=compat))
    (result,) = check_slos(parse_slos({name: 1}, default_error_rate=None), s)
    assert result.measured is None
    assert not result.passed
    assert "GPU count is unknown" in result.reason


# --- 3. goodput -------------------------------------------------------------------------------------------


def test_goodput_keyword_becomes_the_slos_summarize_takes() -> None:
    spec = build_spec({"goodput": {"ttft_ms": 2000, "tpot_ms": 50}, "goodput_req_s": 1.5}, {})
    assert spec.goodput_slos_ms == {"ttft": 2000.0, "tpot": 50.0}
    assert [s.name for s in spec.slos] == ["goodput_req_s", "error_rate"]
    assert parse_goodput({"e2el_ms": 15000}) == {"e2el": 15000.0}
    assert parse_goodput({"e2e_ms": 15000}) == {"e2el": 15000.0}
    # run() overrides win, as for every keyword
    assert build_spec({"goodput": {"ttft_ms": 1}}, {"goodput": {"tpot_ms": 9}}).goodput_slos_ms == {"tpot": 9.0}
    assert build_spec({}, {}).goodput_slos_ms is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"ttft": 2000}, "unknown key 'ttft' (did you mean 'ttft_ms'?)"),
        ({"ttft_ms": -1}, "ttft_ms=-1 (expected a finite number of milliseconds > 0)"),
        ({"ttft_ms": True}, "ttft_ms=True"),
        ({"e2e_ms": 1, "e2el_ms": 2}, "both 'e2e_ms' and 'e2el_ms'"),
        ({}, 'expected a dict such as {"ttft_ms": 2000, "tpot_ms": 50}'),
        ("ttft:2000", 'expected a dict such as {"ttft_ms": 2000, "tpot_ms": 50}'),
    ],
)
def test_a_bad_goodput_keyword_says_what_it_takes(value: object, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        build_spec({"goodput": value}, {})
    assert message in str(caught.value)


def test_goodput_req_s_without_the_goodput_keyword_is_refused() -> None:
    with pytest.raises(SpecError, match=r"goodput_req_s needs .*goodput=\{"):
        build_spec({"goodput_req_s": 1}, {})


def test_scaling_shrinks_the_ttft_and_e2e_limits_of_goodput_not_tpot() -> None:
    spec = build_spec({"goodput": {"ttft_ms": 2000, "tpot_ms": 50, "e2el_ms": 10_000}}, {})
    assert scale_spec(spec, 0.5).goodput_slos_ms == {"ttft": 1000.0, "tpot": 50.0, "e2el": 5000.0}


def test_request_goodput_is_vllms_good_requests_per_second() -> None:
    # Over 4 s: two requests meet TTFT <= 2000 ms and TPOT <= 50 ms, one is too slow to start, one decodes too slowly.
    good = [request(i, prompt=10, out=11, ttft=0.5, e2e=0.9) for i in range(2)]  # TPOT 40 ms
    late = request(2, prompt=10, out=11, ttft=2.5, e2e=2.9)
    slow = request(3, prompt=10, out=11, ttft=0.5, e2e=1.5)  # TPOT 100 ms
    spec = build_spec({"goodput": {"ttft_ms": 2000, "tpot_ms": 50}, "goodput_req_s": 0.4}, {})
    s = summarize(run(*good, late, slow, duration_s=4.0), goodput_slos_ms=spec.goodput_slos_ms)
    assert s["good_requests"] == 2
    assert s["request_goodput"] == 0.5
    results = check_slos(spec.slos, s)
    assert results[0].name == "goodput_req_s"
    assert results[0].passed
    assert results[0].measured == 0.5


def test_goodput_slo_without_goodput_in_the_summary_is_not_measured() -> None:
    s = summarize(run(request(0, prompt=10, out=4), duration_s=1.0))
    (result,) = check_slos(parse_slos({"goodput_req_s": 1}, default_error_rate=None), s)
    assert result.measured is None
    assert not result.passed
    assert "goodput=" in result.reason


# --- 4. cost ----------------------------------------------------------------------------------------------


def test_cost_of_a_million_tokens_as_inferencex_prices_it() -> None:
    # 1,000 output tok/s on 8 GPUs at $2 per GPU-hour: $16/h for 3.6 M tok/h, so $4.444 per million.
    figures = cost_figures({"output_throughput": 1_000.0, "total_token_throughput": 4_000.0}, 8, 2.0)
    assert figures["cost_per_million_output_tokens"] == pytest.approx(16 / 3.6)
    assert figures["cost_per_million_total_tokens"] == pytest.approx(16 / 14.4)
    assert figures["output_tokens_per_dollar"] == pytest.approx(225_000)
    assert figures["total_tokens_per_dollar"] == pytest.approx(900_000)
    # An InferenceX-style point: 3,066 tok/s/GPU total on 8 GPUs at $3.50 per GPU-hour -> $0.3171 per M tokens.
    inferencex = cost_figures({"output_throughput": 2_000.0, "total_throughput": 24_528.0}, 8, 3.5)
    assert inferencex["cost_per_million_total_tokens"] == pytest.approx(0.31710, abs=5e-6)


def test_cost_keys_are_absent_when_the_price_or_the_gpu_count_is_unknown() -> None:
    records = run(request(0, prompt=10, out=4), duration_s=1.0)
    cost_keys = {"cost_per_million_output_tokens", "cost_per_million_total_tokens", "output_tokens_per_dollar"}
    assert not cost_keys & set(summarize(records, gpu_count=8))
    assert not cost_keys & set(summarize(records, gpu_cost_per_hour=2.0))
    assert cost_figures({"output_throughput": 1.0}, None, 2.0) == {}
    assert cost_figures({"output_throughput": 1.0}, 8, None) == {}
    priced = summarize(records, gpu_count=2, gpu_cost_per_hour=2.0)
    assert cost_keys <= set(priced)
    assert priced["gpu_cost_per_hour"] == 2.0
    # 4 output tokens per second on 2 GPUs at $2/h: $4 buys 14,400 tokens an hour.
    assert priced["cost_per_million_output_tokens"] == pytest.approx(4 / 14_400 * 1e6)


def test_a_run_without_output_costs_nothing_known_per_token() -> None:
    failed = RequestRecord(index=0, arrival_s=0.0, input_len=8, output_len=4, status=500, error="boom")
    s = summarize(run(failed, duration_s=1.0), gpu_count=1, gpu_cost_per_hour=2.0)
    assert s["cost_per_million_output_tokens"] is None  # never 0, never infinite
    assert s["output_tokens_per_dollar"] == 0.0


@pytest.mark.parametrize("price", [0, -1.0, math.inf, math.nan, True])
def test_a_bad_price_is_refused(price: Any) -> None:
    with pytest.raises(SpecError, match="gpu_cost_per_hour"):
        summarize(run(request(0, prompt=10, out=4), duration_s=1.0), gpu_count=1, gpu_cost_per_hour=price)


def test_a_profile_can_name_the_price_of_its_gpus(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text("profiles:\n  mine:\n    extends: sim\n    gpus_per_server: 8\n    gpu_cost_per_hour: 2.5\n")
    assert load_profiles(path)["mine"].gpu_cost_per_hour == 2.5
    path.write_text("profiles:\n  mine:\n    extends: sim\n    gpu_cost_per_hour: free\n")
    with pytest.raises(SpecError, match=r"gpu_cost_per_hour.*a price in USD per GPU-hour > 0"):
        load_profiles(path)


# --- reports ----------------------------------------------------------------------------------------------


def _document() -> dict[str, Any]:
    records = [request(i, prompt=1_000, out=11, ttft=0.5, e2e=0.9) for i in range(4)]
    s = summarize(run(*records, duration_s=2.0), gpu_count=8, gpu_cost_per_hour=2.0, goodput_slos_ms={"ttft": 2000})
    return {
        "nodeid": "perf/test_x.py::test_priced",
        "outcome": "passed",
        "workload": {"input_len": 1000, "output_len": 11, "concurrency": 4},
        "summary": s,
        "runs": [s],
        "verdict": {"status": "NO_BASELINE", "reason": "", "metrics": []},
        "slos": [],
    }


def test_junit_properties_carry_per_gpu_goodput_and_cost() -> None:
    props = dict(junit.properties(_document()))  # type: ignore[arg-type]
    assert props["llmperf.input_tok_s"] == 2_000.0
    assert props["llmperf.input_tok_s_per_gpu"] == 250.0
    assert props["llmperf.total_tok_s_per_gpu"] == 252.75  # (4,000 + 44) / 2 s / 8
    assert props["llmperf.goodput_req_s"] == 2.0
    assert props["llmperf.good_requests"] == 4
    assert props["llmperf.gpu_cost_per_hour"] == 2.0
    assert props["llmperf.cost_per_million_output_tokens"] == pytest.approx(16 / (22 * 3600) * 1e6, abs=1e-4)
    assert "llmperf.cost_per_million_total_tokens" in props
    assert "llmperf.output_tokens_per_dollar" in props


def test_terminal_and_html_show_goodput_and_cost() -> None:
    document = _document()
    lines = [text for text, _ in terminal.render([document], pair="cpu-default", endpoint=None, verbose=0)]  # type: ignore[list-item]
    assert any(line.startswith("    goodput: 2 req/s (4/4 requests met ttft <= 2000 ms)") for line in lines), lines
    cost = next(line for line in lines if line.startswith("    cost:"))
    assert "$202 per million output tokens" in cost  # $16/h for 22 tok/s
    assert "($2 per GPU-hour × 8 GPUs)" in cost
    html = render_html({"results": [document]})
    assert "<th>goodput req/s</th><th>$ per M output tok</th>" in html
    assert "in 250 · total 253" in html  # input and total tok/s per GPU below the output's
    assert ">202</span>" in html
