"""Unit tests of pytest_llmperf.judge.slo: parsing, checking against real summaries, the breach table."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from pytest_llmperf.errors import SpecError
from pytest_llmperf.judge.metrics import summarize
from pytest_llmperf.judge.slo import (
    SLO_NAMES,
    Slo,
    check_slos,
    parse_slos,
    render_slo_table,
    split_slo_kwargs,
    summary_key,
)
from pytest_llmperf.spec import RequestRecord, RunRecords, Workload


def record(index: int, start: float, *, ok: bool = True) -> RequestRecord:
    # Four output events 0.25 s apart after a 0.5 s TTFT; usage says 4 completion tokens.
    return RequestRecord(
        index=index,
        arrival_s=start,
        input_len=8,
        output_len=4,
        start_s=start,
        status=200 if ok else 500,
        event_times_s=[start + 0.5, start + 0.75, start + 1.0, start + 1.25] if ok else [],
        event_has_text=[True] * 4 if ok else [],
        prompt_tokens=8,
        completion_tokens=4 if ok else None,
        finish_reason="length" if ok else None,
        error="" if ok else "HTTP 500",
    )


def summary(
    *, compat: str = "vllm", gpu_count: int | None = None, failures: int = 0, goodput: bool = False
) -> dict[str, Any]:
    records = [record(i, 10.0 + i * 0.5) for i in range(4)]
    records += [record(10 + i, 11.0, ok=False) for i in range(failures)]
    run = RunRecords(
        workload=Workload(input_len=8, output_len=4), records=records, bench_start_s=10.0, bench_end_s=13.0
    )
    return summarize(run, compat=compat, gpu_count=gpu_count, goodput_slos_ms={"ttft": 1e9} if goodput else None)


def test_slo_names_are_complete() -> None:
    assert len(SLO_NAMES) == 4 * 5 + 8 + 1
    assert "e2e_p50_ms" in SLO_NAMES
    assert "itl_p99_ms" in SLO_NAMES
    assert "tok_s_per_user" in SLO_NAMES
    assert "error_rate" in SLO_NAMES
    assert len(set(SLO_NAMES)) == len(SLO_NAMES)


@pytest.mark.parametrize("name", SLO_NAMES)
def test_every_slo_name_parses(name: str) -> None:
    value = 0.5 if name == "error_rate" else 100
    (slo, *rest) = parse_slos({name: value}, default_error_rate=None)
    assert rest == []
    assert slo == Slo(name, float(value), "max" if name.endswith("_ms") or name == "error_rate" else "min", slo.unit)
    assert type(slo.limit) is float


@pytest.mark.parametrize("compat", ["vllm", "sglang"])
@pytest.mark.parametrize("name", SLO_NAMES)
def test_every_slo_reads_a_real_summary_key(name: str, compat: str) -> None:
    s = summary(compat=compat, gpu_count=2, goodput=True)
    (result,) = check_slos(parse_slos({name: 1e9 if name.endswith("_ms") else 1e-9}, default_error_rate=None), s)
    assert result.key in s, result.key
    assert result.measured is not None, result.reason
    assert result.passed


def test_default_error_rate_slo() -> None:
    slos = parse_slos({"e2e_p50_ms": 15000})
    assert [s.name for s in slos] == ["e2e_p50_ms", "error_rate"]
    assert slos[1].implicit
    assert slos[1].limit == 0.0
    assert [s.name for s in parse_slos({}, default_error_rate=None)] == []
    explicit = parse_slos({"error_rate": 0.01})
    assert len(explicit) == 1
    assert not explicit[0].implicit


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"ttft_p99_ms": 0}, "expected a finite number > 0"),
        ({"ttft_p99_ms": -5}, "expected a finite number > 0"),
        ({"ttft_p99_ms": math.inf}, "expected a finite number > 0"),
        ({"ttft_p99_ms": math.nan}, "expected a finite number > 0"),
        ({"output_tok_s": "fast"}, "has type str, expected a number > 0"),
        ({"tpot_p50_ms": True}, "has type bool"),
        ({"request_s": None}, "has type NoneType"),
        ({"error_rate": 1.5}, "expected a fraction in [0, 1]"),
        ({"error_rate": -0.1}, "expected a fraction in [0, 1]"),
        ({"error_rate": "1%"}, "expected a number in [0, 1]"),
        ({"ttft_p98_ms": 10}, "did you mean"),
    ],
)
def test_bad_values_and_types(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_slos(kwargs)
    message = str(info.value)
    assert expected in message
    assert next(iter(kwargs)) in message


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(SpecError) as info:
        parse_slos({"ttft_p99_ms": -1, "error_rate": 2})
    assert "ttft_p99_ms" in str(info.value)
    assert "error_rate" in str(info.value)


def test_split_slo_kwargs() -> None:
    slos, rest = split_slo_kwargs({"concurrency": 4, "e2e_p50_ms": 100, "error_rate": 0.1})
    assert slos == {"e2e_p50_ms": 100, "error_rate": 0.1}
    assert rest == {"concurrency": 4}


def test_breach_table_content() -> None:
    s = {"compat_mode": "vllm", "median_e2el_ms": 16234.1, "p99_ttft_ms": 1800.0, "output_throughput": 50.0}
    s["error_rate"] = 0.02
    results = check_slos(parse_slos({"e2e_p50_ms": 15000, "ttft_p99_ms": 2000, "output_tok_s": 40}), s)
    by_name = {r.name: r for r in results}
    e2e = by_name["e2e_p50_ms"]
    assert not e2e.passed
    assert e2e.measured == 16234.1
    assert e2e.margin == pytest.approx((15000 - 16234.1) / 15000)
    assert by_name["ttft_p99_ms"].passed
    assert by_name["output_tok_s"].margin == pytest.approx(0.25)
    assert not by_name["error_rate"].passed
    assert by_name["error_rate"].margin == pytest.approx(-0.02)

    table = render_slo_table(results)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "limit", "measured", "margin", "status"]
    e2e_line = next(line for line in lines if line.startswith("e2e_p50_ms"))
    assert "<= 15000 ms" in e2e_line
    assert "16234 ms" in e2e_line
    assert "-8.2%" in e2e_line
    assert e2e_line.rstrip().endswith("BREACH")
    assert next(line for line in lines if line.startswith("ttft_p99_ms")).rstrip().endswith("ok")
    assert ">= 40.0 tok/s" in table
    err_line = next(line for line in lines if line.startswith("error_rate (default)"))
    assert "2.00%" in err_line
    assert "-2.00 pp" in err_line
    assert table.isascii()  # reads the same in a terminal and in a JUnit <failure>


def test_per_gpu_without_gpu_count_is_not_measured_and_fails() -> None:
    s = summary()  # no gpu_count: no per-GPU keys
    (result,) = check_slos(parse_slos({"output_tok_s_per_gpu": 1}, default_error_rate=None), s)
    assert result.measured is None
    assert result.margin is None
    assert not result.passed
    assert "GPU count is unknown" in result.reason
    table = render_slo_table([result])
    assert "NOT MEASURED" in table
    assert "GPU count is unknown" in table


def test_no_successful_request_is_not_measured() -> None:
    s = summary(failures=3)
    s["median_ttft_ms"] = None
    (ttft, err) = check_slos(parse_slos({"ttft_p50_ms": 1000, "error_rate": 0.5}), s)
    assert ttft.measured is None
    assert not ttft.passed
    assert "no data" in ttft.reason
    assert err.measured == pytest.approx(3 / 7)
    assert err.passed


def test_sglang_key_mapping() -> None:
    assert summary_key("e2e_p50_ms", "sglang") == "median_e2e_latency_ms"
    assert summary_key("e2e_p99_ms", "sglang") == "p99_e2e_latency_ms"
    assert summary_key("e2e_p50_ms", "vllm") == "median_e2el_ms"
    assert summary_key("total_tok_s", "sglang") == "total_throughput"
    assert summary_key("total_tok_s", "vllm") == "total_token_throughput"
    assert summary_key("ttft_p50_ms") == "median_ttft_ms"
    assert summary_key("itl_mean_ms") == "mean_itl_ms"
    assert summary_key("tok_s_per_user") == "interactivity"
    s = summary(compat="sglang")
    (result,) = check_slos(parse_slos({"e2e_p50_ms": 10_000}, default_error_rate=None), s)
    assert result.key == "median_e2e_latency_ms"
    assert result.measured == pytest.approx(1250.0)  # E2E of every request: 1.25 s


def test_results_are_builtins() -> None:
    results = check_slos(parse_slos({"e2e_p50_ms": 1000, "output_tok_s_per_gpu": 1}), summary())
    data = [r.as_dict() for r in results]
    json.dumps(data, allow_nan=False)
    for d in data:
        assert all(type(v) in (str, float, int, bool, type(None)) for v in d.values())
