"""The result types of :mod:`pytest_llmperf.results` describe the dicts the code actually builds.

A ``TypedDict`` is checked only by mypy, and only where a literal key is written: a key added to a summary or a
field added to a dataclass would go unnoticed by both. These tests hold the types to the real shapes.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterable

import pytest

from pytest_llmperf import results
from pytest_llmperf.judge import baseline, capacity, metrics, prefixcache, slo, verdict
from pytest_llmperf.servers import disturbance
from pytest_llmperf.spec import ClientCheck, Endpoint, RequestRecord, RunRecords, Workload


def keys(typed_dict: type) -> set[str]:
    return set(typed_dict.__required_keys__) | set(typed_dict.__optional_keys__)  # type: ignore[attr-defined]


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def a_run(compat: str = "vllm") -> RunRecords:
    records = []
    for i in range(4):
        start = 10.0 + i
        records.append(
            RequestRecord(
                index=i,
                arrival_s=start,
                input_len=8,
                output_len=4,
                start_s=start,
                status=200,
                event_times_s=[start + 0.25, start + 0.5, start + 0.75],
                event_cum_tokens=[1, 2, 4],
                event_has_text=[True, True, True],
                completion_tokens=4,
                finish_reason="length",
            )
        )
    check = ClientCheck(
        loop_lag_p50_ms=0.1,
        loop_lag_p99_ms=1.0,
        loop_lag_max_ms=2.0,
        client_cpu_s=0.5,
        wall_s=2.0,
        dispatch_lag_p99_ms=0.2,
        client_bound=False,
    )
    workload = Workload(input_len=8, output_len=4, num_prompts=4, compat=compat)  # type: ignore[arg-type]
    return RunRecords(workload=workload, records=records, bench_start_s=10.0, bench_end_s=15.0, client=check)


def summaries() -> Iterable[results.RunSummary]:
    for compat in ("vllm", "sglang"):
        yield metrics.summarize(a_run(compat))
        yield metrics.summarize(
            a_run(compat), gpu_count=2, goodput_slos_ms={"ttft": 500, "e2el": 2000}, gpu_cost_per_hour=2.0
        )


@pytest.mark.parametrize("summary", list(summaries()), ids=["vllm", "vllm-options", "sglang", "sglang-options"])
def test_run_summary_names_every_key_summarize_writes(summary: results.RunSummary) -> None:
    assert set(summary) - keys(results.RunSummary) == set()
    assert set(summary["validity"]) == keys(results.Validity)


def test_percentiles_other_than_the_defaults_are_in_the_summary_all_the_same() -> None:
    summary = metrics.summarize(a_run(), percentiles=(50, 99.9))
    extra = set(summary) - keys(results.RunSummary)
    assert extra == {f"p99.9_{name}_ms" for name in ("ttft", "tpot", "itl", "e2el", "itl_token", "client_queue")}
    assert summary.get(metrics.stat_key("ttft", "p99.9")) is not None


def test_baseline_run_names_every_key_a_baseline_keeps() -> None:
    for summary in summaries():
        reduced = baseline.reduce_summary({**summary, "session_id": "s1"})
        assert set(reduced) - keys(results.BaselineRun) == set()
    assert {"run_id", "recorded_at"} <= keys(results.BaselineRun)


def test_request_detail_is_what_detailed_writes() -> None:
    assert set(metrics.detailed(a_run())) == keys(results.RequestDetail)


@pytest.mark.parametrize(
    ("cls", "typed_dict"),
    [
        (verdict.MetricVerdict, results.MetricVerdictDict),
        (verdict.Verdict, results.VerdictDict),
        (slo.Slo, results.SloDict),
        (slo.SloResult, results.SloResultDict),
        (disturbance.Disturbance, results.DisturbanceDict),
        (baseline.Fingerprint, results.FingerprintDict),
        (Workload, results.WorkloadDict),
        (capacity.Capacity, capacity.CapacityDict),
        (capacity.CapacityRatio, capacity.CapacityRatioDict),
    ],
)
def test_a_dict_form_names_its_dataclass_fields(cls: type, typed_dict: type) -> None:
    extra = {"lower_bound"} if cls is capacity.Capacity else set()  # a property, written out too
    assert keys(typed_dict) == field_names(cls) | extra


def test_endpoint_dict_is_the_public_dict() -> None:
    assert set(Endpoint(url="http://x", model="m").public_dict()) == keys(results.EndpointDict)


def test_prompt_cache_fields_are_what_the_summary_gets() -> None:
    use = prefixcache.CacheUse(cached_tokens=1, prompt_tokens=10, source="usage")
    assert set(prefixcache.summary_fields(use)) == keys(results.PromptCacheFields)
    assert keys(results.PromptCacheFields) <= keys(results.RunSummary)


def test_status_words_are_the_verdicts() -> None:
    assert verdict.REGRESSION is results.REGRESSION
    assert {results.REGRESSION, results.PASS, results.INCONCLUSIVE, results.IMPROVEMENT} == set(
        results.Status.__args__  # type: ignore[attr-defined]
    )


def test_the_types_and_the_reports_import_without_numpy_or_scipy() -> None:
    """The reports name statuses and result types while the plugin loads: they must stay cheap to import."""
    heavy = ("numpy", "scipy")
    code = (
        "import json, sys\n"
        "import pytest_llmperf.results, pytest_llmperf.report.junit, pytest_llmperf.report.terminal\n"
        "import pytest_llmperf.report.markdown, pytest_llmperf.report.tables\n"
        f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_a_verdict_table_reads_the_verdict_or_its_dict_form_alike() -> None:
    """In process the verdict is an object; a result document (another process, a JSON file) holds its dict."""
    from pytest_llmperf.report.tables import render_verdict_table

    first = next(iter(summaries()))
    runs = [{**first, "median_ttft_ms": 10.0 + i} for i in range(3)]
    judged = verdict.judge(runs, runs)
    assert render_verdict_table(judged) == render_verdict_table(judged.as_dict())
    assert verdict.Verdict.from_dict(judged.as_dict()) == judged
