"""Around the prompts of a run: scaling keeps enough requests, llama.cpp's cache switch, invalid runs left out
of the verdict, and baselines that stay comparable when a workload field is added."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmperf.harness import judging
from pytest_llmperf.harness.markers import build_spec, scale_spec
from pytest_llmperf.harness.runner import Result, with_prompt_cache
from pytest_llmperf.judge import verdict
from pytest_llmperf.judge.baseline import workload_hash
from pytest_llmperf.spec import Endpoint, RunRecords, Workload


@pytest.mark.parametrize(
    ("concurrency", "asked", "expected"),
    [(1, 10, 8), (2, 20, 8), (8, 80, 16), (64, 640, 128), (1, 400, 20), (1, 5, 5)],
)
def test_scaling_keeps_at_least_eight_requests_and_never_adds_any(concurrency: int, asked: int, expected: int) -> None:
    spec = scale_spec(build_spec({"concurrency": concurrency, "num_prompts": asked}, {}), 0.05)
    assert spec.workload.num_prompts == expected


def test_llamacpp_gets_its_prompt_cache_only_when_sharing_is_asked() -> None:
    llama = Endpoint(url="http://127.0.0.1:1", model="m", engine="llama.cpp")
    assert with_prompt_cache(llama, False).extra_body == {"cache_prompt": False}
    assert with_prompt_cache(llama, True).extra_body == {"cache_prompt": True}
    profiled = Endpoint(
        url="http://127.0.0.1:1", model="m", engine="llama.cpp", extra_body={"cache_prompt": False, "x": 1}
    )
    assert with_prompt_cache(profiled, True).extra_body == {"cache_prompt": True, "x": 1}
    assert with_prompt_cache(profiled, False) is profiled
    vllm = Endpoint(url="http://127.0.0.1:1", model="m", engine="vllm")
    assert with_prompt_cache(vllm, False) is vllm


def test_a_later_field_at_its_default_keeps_old_hashes() -> None:
    now = Workload().as_dict()
    before_the_field = {k: v for k, v in now.items() if k != "prefix_reuse"}
    assert workload_hash(now) == workload_hash(before_the_field)
    assert workload_hash({**now, "prefix_reuse": True}) != workload_hash(before_the_field)


def _result(summary: dict[str, Any]) -> Result:
    records = RunRecords(workload=Workload(), records=[], bench_start_s=0.0, bench_end_s=1.0)
    return Result(workload=Workload(), summary=summary, run=records)


def _summary(scale: float, invalid: list[str] | None = None) -> dict[str, Any]:
    return {
        "compat_mode": "vllm",
        "median_ttft_ms": 100.0 * scale,
        "median_tpot_ms": 20.0 * scale,
        "median_e2el_ms": 5000.0 * scale,
        "output_throughput": 800.0 / scale,
        "completed": 100,
        "failed": 0,
        "error_rate": 0.0,
        "invalid_reasons": invalid or [],
    }


BASELINE = judging.BaselineView(runs=[_summary(f) for f in (0.99, 1.0, 1.01, 1.0, 0.995)], where="b.yaml::t")


def _judge(summaries: list[dict[str, Any]]) -> judging.Judgement:
    spec = build_spec({}, {})
    queue = iter(summaries)
    return judging.run_until_decided(
        spec,
        lambda: _result(next(queue)),
        BASELINE,
        budget=len(summaries),
        global_tolerance=None,
        family_size=None,
        record_all=True,
    )


def test_an_invalid_run_is_left_out_of_the_verdict() -> None:
    # The cached run looks 3× faster; left in, it would be an IMPROVEMENT and widen every interval.
    judged = _judge([_summary(1.0), _summary(0.33, ["cached"]), _summary(1.0), _summary(1.0)])
    assert judged.verdict.runs_candidate == 3
    assert judged.verdict.status != verdict.IMPROVEMENT
    assert any("run 2: cached (left out of the verdict)" in n for n in judged.notes)


def test_only_invalid_runs_give_an_inconclusive_verdict_with_the_reason() -> None:
    judged = _judge([_summary(0.3, ["99% cached"]), _summary(0.3, ["98% cached"])])
    assert judged.verdict.status == verdict.INCONCLUSIVE
    assert "99% cached" in judged.verdict.reason
    assert "98% cached" in judged.verdict.reason
