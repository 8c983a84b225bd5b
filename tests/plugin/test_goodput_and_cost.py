"""Per-GPU prefill and total throughput, goodput and cost as a user asks for them: marker keywords, options, a
profile field, against the simulator; the figures land in the JSON, the JUnit properties and the reports."""

from __future__ import annotations

import json

import pytest

PRICED_TEST = """
import pytest

@pytest.mark.perf(
    input_len=64, output_len=8, num_prompts=12, concurrency=4,
    goodput={"ttft_ms": 60000, "tpot_ms": 10000},
    goodput_req_s=0.001, input_tok_s_per_gpu=0.001, total_tok_s_per_gpu=0.001,
)
def test_priced(llmperf):
    result = llmperf.run()
    assert result["request_goodput"] == result["request_throughput"]  # every request meets limits this loose
    assert result["good_requests"] == 12
"""


def test_goodput_per_gpu_and_cost_reach_every_output(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(PRICED_TEST)
    out, junit, report = pytester.path / "r.json", pytester.path / "j.xml", pytester.path / "r.html"
    result = pytester.runpytest(
        f"--llmperf-endpoint={sim_url}",
        "--llmperf-gpus=8",
        "--llmperf-gpu-cost-per-hour=2",
        f"--llmperf-json={out}",
        f"--llmperf-report={report}",
        f"--junitxml={junit}",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*goodput: * req/s (12/12 requests met ttft <= 60000 ms and tpot <= 10000 ms)*"])
    result.stdout.fnmatch_lines(
        ["*cost: $* per million output tokens, $* per million total tokens*($2 per GPU-hour × 8 GPUs)*"]
    )
    (document,) = json.loads(out.read_text())["results"]
    s = document["summary"]
    assert s["goodput_slos_ms"] == {"ttft": 60000.0, "tpot": 10000.0}
    assert s["input_throughput_per_gpu"] == pytest.approx(s["input_throughput"] / 8)
    assert s["total_token_throughput_per_gpu"] == pytest.approx(s["total_token_throughput"] / 8)
    assert s["cost_per_million_output_tokens"] == pytest.approx(16 / (s["output_throughput"] * 3600) * 1e6)
    assert s["output_tokens_per_dollar"] == pytest.approx(s["output_throughput"] * 3600 / 16)
    assert document["endpoint"]["gpu_cost_per_hour"] == 2.0
    assert {slo["name"]: slo["passed"] for slo in document["slos"]} == {
        "goodput_req_s": True,
        "input_tok_s_per_gpu": True,
        "total_tok_s_per_gpu": True,
        "error_rate": True,
    }
    text = junit.read_text()
    for name in (
        "llmperf.goodput_req_s",
        "llmperf.input_tok_s_per_gpu",
        "llmperf.total_tok_s_per_gpu",
        "llmperf.cost_per_million_output_tokens",
        "llmperf.cost_per_million_total_tokens",
        "llmperf.output_tokens_per_dollar",
        "llmperf.slo.goodput_req_s.status",
    ):
        assert f'name="{name}"' in text, name
    page = report.read_text(encoding="utf-8")
    assert "<th>goodput req/s</th><th>$ per M output tok</th>" in page
    assert "12 good" in page


def test_without_gpu_count_or_price_the_slos_say_so_and_no_cost_appears(
    pytester: pytest.Pytester, sim_url: str
) -> None:
    pytester.makepyfile(PRICED_TEST)
    out = pytester.path / "r.json"
    result = pytester.runpytest(
        f"--llmperf-endpoint={sim_url}", "--llmperf-gpu-cost-per-hour=2", f"--llmperf-json={out}"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*input_tok_s_per_gpu: not measured: the GPU count is unknown*"])
    s = json.loads(out.read_text())["results"][0]["summary"]
    assert "input_throughput" in s  # the figure itself needs no GPU count
    assert not {k for k in s if k.startswith("cost_") or k.endswith("_per_dollar") or k.endswith("_per_gpu")}


def test_goodput_req_s_without_goodput_fails_the_test_saying_what_to_add(
    pytester: pytest.Pytester, sim_url: str
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perf(num_prompts=2, goodput_req_s=1)
        def test_x(llmperf):
            llmperf.run()
        """
    )
    result = pytester.runpytest(f"--llmperf-endpoint={sim_url}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*goodput_req_s needs the per-request SLOs*goodput={*ttft_ms*"])


def test_a_profile_prices_its_gpus_and_the_option_wins(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # the profile's 4 GPUs (the simulator uses none)
    profiles = pytester.path / "profiles.yaml"
    profiles.write_text("profiles:\n  priced:\n    extends: sim\n    gpus_per_server: 4\n    gpu_cost_per_hour: 3\n")
    pytester.makepyfile(
        """
        def test_priced(llmperf):
            result = llmperf.run(input_len=8, output_len=4, num_prompts=4)
            price = llmperf.endpoint.gpu_cost_per_hour
            assert result["gpu_cost_per_hour"] == price
            assert result["cost_per_million_output_tokens"] == (
                price * 4 / (result["output_throughput"] * 3600) * 1e6
            )
            print("PRICE", price)
        """
    )
    result = pytester.runpytest("-s", "--llmperf-server=priced", f"--llmperf-profiles={profiles}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*PRICE 3.0*"])
    result = pytester.runpytest(
        "-s", "--llmperf-server=priced", f"--llmperf-profiles={profiles}", "--llmperf-gpu-cost-per-hour=1.5"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*PRICE 1.5*"])
