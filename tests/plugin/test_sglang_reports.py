"""Reports as a user gets them (issue 16, item 8): an sglang-mode sweep's JUnit properties and HTML capacity read
with SGLang's keys, the vLLM result keys users diff, a custom metric added in the result hook."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

SGLANG_SWEEP = """
import pytest

@pytest.mark.perf(input_len=16, output_len=8, compat="sglang", e2e_p90_ms=60000, tok_s_per_user=1,
                  slo_gating=False)
@pytest.mark.parametrize("c", [1, 2])
def test_sweep(llmperf, c):
    llmperf.run(concurrency=c, num_prompts=4 * c)
"""


def test_an_sglang_sweep_reports_with_sglang_keys(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(SGLANG_SWEEP)
    out, junit, report = (pytester.path / name for name in ("r.json", "j.xml", "r.html"))
    result = pytester.runpytest(
        f"--llmperf-endpoint={sim_url}", f"--llmperf-json={out}", f"--junitxml={junit}", f"--llmperf-report={report}"
    )
    result.assert_outcomes(passed=2)
    document = json.loads(out.read_text())
    for r in document["results"]:
        assert r["summary"]["compat_mode"] == "sglang"
        assert "total_token_throughput" not in r["summary"]
    props = {
        (case.get("name"), p.get("name")): p.get("value")
        for case in ET.parse(junit).getroot().iter("testcase")
        for p in case.iter("property")
    }
    for c in ("1", "2"):
        total = props[(f"test_sweep[{c}]", "llmperf.total_tok_s")]
        assert total is not None
        assert float(total) > 0
    html = report.read_text()
    assert "capacity at SLO</b> e2e_p90_ms ≤ 60000: at least c2" in html
    assert "capacity at SLO</b> tok_s_per_user ≥ 1: at least c2" in html
    assert "no measured concurrency meets it" not in html


def test_vllm_result_keys_users_diff(pytester: pytest.Pytester, start_sim: Any) -> None:
    # MTP-like decoding: 3 tokens a step at most, each draft accepted with probability 0.5.
    sim = start_sim("--decode-ms", "1", "--jitter", "0", "--tokens-per-chunk", "3", "--accept-rate", "0.5")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perf(input_len=16, output_len=24, num_prompts=8, concurrency=4)
        def test_mtp(llmperf):
            llmperf.run()

        @pytest.mark.perf(input_len=16, output_len=4, num_prompts=4, request_rate=50.0)
        def test_open_loop(llmperf):
            llmperf.run()
        """
    )
    out = pytester.path / "r.json"
    result = pytester.runpytest(f"--llmperf-endpoint={sim.url}", f"--llmperf-json={out}")
    result.assert_outcomes(passed=2)
    document = json.loads(out.read_text())
    mtp, open_loop = (r["summary"] for r in document["results"])
    assert re.fullmatch(r"\d{8}-\d{6}", mtp["date"])  # as vllm bench serve --save-result writes it
    assert mtp["model_id"] == document["endpoint"]["model"] != ""
    assert mtp["max_concurrency"] == 4
    assert open_loop["max_concurrency"] is None  # no limit, as vLLM writes it
    drafted, accepted = mtp["spec_decode_draft_tokens"], mtp["spec_decode_accepted_tokens"]
    assert 0 < accepted < drafted
    assert mtp["spec_decode_acceptance_rate"] == pytest.approx(accepted / drafted * 100)


CUSTOM_METRIC = """
import pytest

def pytest_llmperf_result(item, result):
    summary = result["summary"]
    summary["joules_per_token"] = 0.25  # say, from a power meter
    item.user_properties.append(("llmperf.joules_per_token", summary["joules_per_token"]))
"""


def test_a_custom_metric_reaches_json_junit_and_html(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makeconftest(CUSTOM_METRIC)
    pytester.makepyfile("def test_power(llmperf):\n    llmperf.run(input_len=8, output_len=4, num_prompts=4)\n")
    out, junit, report = (pytester.path / name for name in ("r.json", "j.xml", "r.html"))
    result = pytester.runpytest(
        f"--llmperf-endpoint={sim_url}", f"--llmperf-json={out}", f"--junitxml={junit}", f"--llmperf-report={report}",
        "-o", "junit_family=xunit2", "-W", "error",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    (document,) = json.loads(out.read_text())["results"]
    assert document["summary"]["joules_per_token"] == 0.25
    assert 'name="llmperf.joules_per_token" value="0.25"' in junit.read_text()
    assert '<div class="muted small custom-metrics">joules_per_token 0.25</div>' in report.read_text()


def test_range_rule_asks_for_inferencemaxs_window_in_vllm_mode(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.perf(input_len=20, output_len=4, range_ratio=0.8, num_prompts=40, seed=3)
        @pytest.mark.parametrize("rule", [None, "inferencemax"])
        def test_lengths(llmperf, rule):
            llmperf.run(range_rule=rule)
        """
    )
    out = pytester.path / "r.json"
    pytester.runpytest(f"--llmperf-endpoint={sim_url}", f"--llmperf-json={out}").assert_outcomes(passed=2)
    default, inferencemax = json.loads(out.read_text())["results"]
    assert inferencemax["workload"]["range_rule"] == "inferencemax"
    assert inferencemax["workload"]["compat"] == "vllm"
    assert 16 <= min(inferencemax["detail"]["input_lens"]) <= max(inferencemax["detail"]["input_lens"]) <= 20
    assert max(default["detail"]["input_lens"]) > 20  # vLLM's [L(1−r), L(1+r)]
