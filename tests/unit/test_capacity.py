"""Capacity at SLO: sweeps from result documents, the interpolated largest concurrency, users per GPU, and the
per-GPU ratio between two pairs, checked against the published GB200-vs-H200 DeepSeek-V3.2 figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf import pairs
from pytest_llmperf.judge.capacity import (
    base_nodeid,
    capacity_at_slo,
    capacity_slo_names,
    compare_capacity,
    compare_documents,
    group_sweeps,
    point_along,
    sweep_capacities,
    sweeps_of,
)

E2E_SLO_MS = 15000.0
# Made-up E2E p50 (ms) per concurrency, consistent with the published facts: GB200 NVFP4 (4 GPUs) meets 15 s up
# to 8 users, H200 FP8 (8 GPUs) only at 1 user. The crossings interpolate to c=12 and c=1.5.
GB200_E2E = {1: 5200.0, 2: 6400.0, 4: 8300.0, 8: 12000.0, 16: 18000.0, 32: 29000.0, 64: 52000.0}
H200_E2E = {1: 11000.0, 2: 19000.0, 4: 26000.0, 8: 40000.0, 16: 61000.0, 32: 98000.0, 64: 170000.0}


def slo_entry(name: str, limit: float, measured: float | None, key: str = "median_e2el_ms") -> dict[str, Any]:
    kind = "min" if name == "tok_s_per_user" else "max"
    passed = measured is not None and (measured <= limit if kind == "max" else measured >= limit)
    return {
        "name": name,
        "limit": limit,
        "kind": kind,
        "unit": "ms",
        "key": key,
        "measured": measured,
        "passed": passed,
    }


def result(
    concurrency: int | None,
    e2e_ms: float | None,
    *,
    test: str = "perf/test_dsv32.py::test_interactive",
    gpus: int | None = None,
    runs: list[float | None] | None = None,
    slo_limit: float | None = E2E_SLO_MS,
    workload: dict[str, Any] | None = None,
    outcome: str = "passed",
) -> dict[str, Any]:
    """One `llmperf.run()` entry of a session document, the way the plugin writes it."""

    def summary(value: float | None) -> dict[str, Any]:
        s: dict[str, Any] = {"median_e2el_ms": value, "completed": 10, "failed": 0, "output_throughput": 1000.0}
        if gpus is not None:
            s["gpu_count"] = gpus
            s["output_throughput_per_gpu"] = 1000.0 / gpus
        return s

    values = runs if runs is not None else [e2e_ms]
    base_workload = {"input_len": 2400, "output_len": 1600, "request_rate": "inf", "api": "completions", "seed": 0}
    base_workload.update(concurrency=concurrency, num_prompts=10 * (concurrency or 1))
    base_workload.update(workload or {})
    return {
        "nodeid": f"{test}[{concurrency}]",
        "outcome": outcome,
        "workload": base_workload,
        "summary": summary(values[-1]),
        "runs": [summary(v) for v in values],
        "slos": [] if slo_limit is None else [slo_entry("e2e_p50_ms", slo_limit, values[-1])],
        "slo_breached": False,
    }


def sweep_results(e2e: dict[int, float], **kwargs: Any) -> list[dict[str, Any]]:
    return [result(c, v, **kwargs) for c, v in e2e.items()]


def document(pair: str, e2e: dict[int, float], gpus: int | None) -> dict[str, Any]:
    endpoint = {"url": "http://node:8000", "model": "deepseek-v3.2", "gpu_count": gpus}
    return {"pair": pair, "endpoint": endpoint, "results": sweep_results(e2e)}


# -- published figures ----------------------------------------------------------------------------------------------


def test_gb200_serves_16x_the_users_per_gpu_of_h200_within_15s() -> None:
    (gb200,) = group_sweeps(sweep_results(GB200_E2E, gpus=4))
    (h200,) = group_sweeps(sweep_results(H200_E2E, gpus=8))
    cap_gb200 = capacity_at_slo(gb200, "e2e_p50_ms")
    cap_h200 = capacity_at_slo(h200, "e2e_p50_ms")

    # As published: the largest measured concurrency that meets 15 s.
    assert cap_gb200.measured_concurrency == 8
    assert cap_h200.measured_concurrency == 1
    assert cap_gb200.measured_users_per_gpu == 2.0
    assert cap_h200.measured_users_per_gpu == 0.125
    measured = compare_capacity(cap_gb200, cap_h200, basis="measured")
    assert measured.ratio == pytest.approx(16.0)
    assert measured.bound == "exact"

    # Interpolated between the bracketing points: c8 (12 s) .. c16 (18 s) → 12; c1 (11 s) .. c2 (19 s) → 1.5.
    assert cap_gb200.bracket == (8, 16)
    assert cap_h200.bracket == (1, 2)
    assert cap_gb200.concurrency == pytest.approx(12.0)
    assert cap_h200.concurrency == pytest.approx(1.5)
    assert cap_gb200.users_per_gpu == pytest.approx(3.0)
    assert cap_h200.users_per_gpu == pytest.approx(0.1875)
    assert compare_capacity(cap_gb200, cap_h200).ratio == pytest.approx(16.0)
    assert "3 users/GPU (4 GPUs)" in cap_gb200.describe()


def test_compare_documents_matches_sweeps_across_pairs() -> None:
    gb200 = document("gb200-fp4", GB200_E2E, 4)
    h200 = document("h200-fp8", H200_E2E, 8)
    (comparison,) = compare_documents(gb200, h200, basis="measured")
    assert comparison.test == "perf/test_dsv32.py::test_interactive"
    assert comparison.a.gpu_count == 4  # from the document's endpoint: the results carry no GPU count
    assert comparison.b.gpu_count == 8
    assert comparison.ratio.ratio == pytest.approx(16.0)
    assert compare_documents(gb200, h200)[0].ratio.ratio == pytest.approx(16.0)
    json.dumps([comparison.ratio.as_dict(), comparison.a.as_dict()])  # plain builtins


def test_compare_documents_skips_sweeps_of_a_different_workload() -> None:
    h200 = document("h200-fp8", H200_E2E, 8)
    for r in h200["results"]:
        r["workload"]["input_len"] = 8192
    assert compare_documents(document("gb200-fp4", GB200_E2E, 4), h200) == []


# -- interpolation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "limit", "expected", "bracket"),
    [
        ({1: 100.0, 2: 200.0, 4: 400.0}, 300.0, 3.0, (2, 4)),
        ({2: 100.0, 4: 300.0, 8: 900.0}, 250.0, 3.5, (2, 4)),
        ({1: 100.0, 2: 150.0, 4: 350.0, 8: 800.0}, 575.0, 6.0, (4, 8)),
        ({1: 100.0, 2: 200.0, 4: 400.0}, 200.0, 2.0, (2, 4)),  # exactly at the limit meets it (<=)
        ({1: 100.0, 2: 200.0, 4: 400.0}, 399.0, 3.99, (2, 4)),
    ],
)
def test_linear_interpolation_known_answers(
    values: dict[int, float], limit: float, expected: float, bracket: tuple[int, int]
) -> None:
    (sweep,) = group_sweeps(sweep_results(values, slo_limit=limit))
    cap = capacity_at_slo(sweep, "e2e_p50_ms")
    assert cap.status == "met"
    assert cap.bracket == bracket
    assert cap.concurrency == pytest.approx(expected)


def test_per_user_rate_slo_is_a_minimum() -> None:
    results = sweep_results({1: 1.0, 2: 2.0, 4: 4.0}, slo_limit=None)
    for r, rate in zip(results, (50.0, 40.0, 20.0), strict=True):
        for run in [r["summary"], *r["runs"]]:
            run["interactivity"] = rate
        r["slos"] = [slo_entry("tok_s_per_user", 30.0, rate, key="interactivity")]
    (sweep,) = group_sweeps(results)
    assert capacity_slo_names(sweep) == ["tok_s_per_user"]
    cap = capacity_at_slo(sweep, "tok_s_per_user")
    assert cap.kind == "min"
    assert cap.concurrency == pytest.approx(3.0)  # 40 → 20 tok/s/user crosses 30 halfway from c2 to c4
    assert "≥ 30" in cap.describe()


def sglang_result(concurrency: int, p90_ms: float, *, tpot_ms: float = 20.0) -> dict[str, Any]:
    """A result as an sglang-mode run writes it: SGLang's keys (``*_e2e_latency_ms``), no vLLM key."""
    run = {
        "compat_mode": "sglang",
        "median_e2e_latency_ms": p90_ms * 0.8,
        "p90_e2e_latency_ms": p90_ms,
        "median_tpot_ms": tpot_ms,
        "completed": 10,
        "failed": 0,
    }
    workload = {"input_len": 128, "output_len": 32, "compat": "sglang", "concurrency": concurrency}
    return {
        "nodeid": f"perf/test_sg.py::test_sweep[{concurrency}]",
        "outcome": "passed",
        "workload": workload,
        "summary": run,
        "runs": [run],
        "slos": [],
    }


def test_sglang_runs_are_read_with_sglang_keys() -> None:
    # The audit's case: c1–c8 measured 145–318 ms at p90, so every point meets e2e_p90_ms ≤ 500.
    measured = {1: 145.0, 2: 190.0, 4: 240.0, 8: 318.0}
    (sweep,) = group_sweeps([sglang_result(c, v) for c, v in measured.items()])
    cap = capacity_at_slo(sweep, "e2e_p90_ms", 500.0)
    assert cap.key == "p90_e2e_latency_ms"
    assert [v for _, v, _ in cap.points] == list(measured.values())
    assert cap.status == "lower_bound"
    assert cap.measured_concurrency == 8
    cap = capacity_at_slo(sweep, "e2e_p90_ms", 200.0)
    assert cap.status == "met"
    assert cap.bracket == (2, 4)
    assert cap.concurrency == pytest.approx(2 + 2 * 10 / 50)  # 190 → 240 ms crosses 200 a fifth of the way


def test_a_run_without_a_mode_is_read_in_its_workloads_mode_or_by_its_keys() -> None:
    with_workload = [sglang_result(c, v) for c, v in {1: 100.0, 2: 300.0}.items()]
    keys_only = [sglang_result(c, v) for c, v in {1: 100.0, 2: 300.0}.items()]
    for r in with_workload + keys_only:
        del r["summary"]["compat_mode"]
    for r in keys_only:
        del r["workload"]["compat"]
    for results in (with_workload, keys_only):
        (sweep,) = group_sweeps(results)
        assert capacity_at_slo(sweep, "e2e_p50_ms", 160.0).concurrency == pytest.approx(1.5)


@pytest.mark.parametrize("compat", ["vllm", "sglang"])
def test_capacity_keys_are_the_slo_checks_keys(compat: str) -> None:
    from pytest_llmperf.judge import capacity, slo

    for name in slo.SLO_NAMES:
        key = capacity._summary_key(name, compat)
        if key is not None:
            assert key == slo.summary_key(name, compat), name


def test_tok_s_per_user_falls_back_on_the_median_tpot() -> None:
    # Documents without ``interactivity`` (older ones, or runs the summary could not rate): 1000 / median TPOT.
    results = [sglang_result(c, 100.0, tpot_ms=tpot) for c, tpot in {1: 20.0, 2: 25.0, 4: 50.0}.items()]
    (sweep,) = group_sweeps(results)
    cap = capacity_at_slo(sweep, "tok_s_per_user", 30.0)
    assert [v for _, v, _ in cap.points] == [50.0, 40.0, 20.0]
    assert cap.status == "met"
    assert cap.concurrency == pytest.approx(3.0)


def test_a_point_is_the_median_of_its_runs() -> None:
    results = [
        result(1, None, runs=[900.0, 1000.0, 5000.0], slo_limit=2000.0),
        result(2, None, runs=[3000.0, 1000.0, 3000.0], slo_limit=2000.0),
    ]
    (sweep,) = group_sweeps(results)
    cap = capacity_at_slo(sweep, "e2e_p50_ms")
    assert [v for _, v, _ in cap.points] == [1000.0, 3000.0]
    assert cap.concurrency == pytest.approx(1.5)


# -- edge cases ------------------------------------------------------------------------------------------------------


def test_no_point_meets_the_slo() -> None:
    (sweep,) = group_sweeps(sweep_results({1: 16000.0, 2: 20000.0}, gpus=8))
    cap = capacity_at_slo(sweep, "e2e_p50_ms")
    assert cap.status == "none"
    assert cap.concurrency == 0.0
    assert cap.measured_concurrency is None
    assert cap.users_per_gpu == 0.0  # a real zero: the GPU count is known and no load level meets the SLO
    assert "no measured concurrency meets it" in cap.describe()
    assert "c1 already breaches" in cap.note


def test_every_point_meets_the_slo_is_a_lower_bound() -> None:
    (sweep,) = group_sweeps(sweep_results({1: 1000.0, 8: 2000.0, 64: 9000.0}, gpus=4))
    cap = capacity_at_slo(sweep, "e2e_p50_ms")
    assert cap.status == "lower_bound"
    assert cap.lower_bound
    assert cap.concurrency == 64.0
    assert cap.measured_concurrency == 64
    assert cap.users_per_gpu == 16.0
    assert "at least c64" in cap.describe()
    assert "≥ 16 users/GPU" in cap.describe()


def test_ratio_bounds_follow_lower_bounds() -> None:
    (exact,) = group_sweeps(sweep_results(GB200_E2E, gpus=4))
    (unbounded,) = group_sweeps(sweep_results({1: 1000.0, 2: 2000.0}, gpus=1))
    (nothing,) = group_sweeps(sweep_results({1: 99999.0, 2: 99999.0}, gpus=1))
    cap_exact = capacity_at_slo(exact, "e2e_p50_ms")
    cap_lower = capacity_at_slo(unbounded, "e2e_p50_ms")
    cap_none = capacity_at_slo(nothing, "e2e_p50_ms")
    assert compare_capacity(cap_lower, cap_exact).bound == "at_least"
    assert compare_capacity(cap_exact, cap_lower).bound == "at_most"
    assert compare_capacity(cap_lower, cap_lower).bound == "unknown"
    none_below = compare_capacity(cap_exact, cap_none)
    assert none_below.ratio is None
    assert "no concurrency" in none_below.reason
    assert compare_capacity(cap_none, cap_exact).ratio == 0.0


def test_unknown_gpu_count_omits_users_per_gpu() -> None:
    (sweep,) = group_sweeps(sweep_results(GB200_E2E))
    cap = capacity_at_slo(sweep, "e2e_p50_ms")
    assert cap.gpu_count is None
    assert cap.users_per_gpu is None
    assert cap.measured_users_per_gpu is None
    assert cap.concurrency == pytest.approx(12.0)
    assert "users/GPU unknown" in cap.describe()
    ratio = compare_capacity(cap, cap)
    assert ratio.ratio is None
    assert "GPU count unknown" in ratio.reason
    # An explicit GPU count fills it in.
    assert capacity_at_slo(sweep, "e2e_p50_ms", gpu_count=4).users_per_gpu == pytest.approx(3.0)


def test_non_monotonic_sweep_stops_at_the_first_breach() -> None:
    (sweep,) = group_sweeps(sweep_results({1: 1000.0, 2: 3000.0, 4: 1500.0, 8: 5000.0}, slo_limit=2000.0))
    cap = capacity_at_slo(sweep, "e2e_p50_ms")
    assert cap.bracket == (1, 2)
    assert cap.concurrency == pytest.approx(1.5)
    assert cap.non_monotonic
    assert "non-monotonic" in cap.describe()


def test_unmeasured_point_breaches_without_interpolation() -> None:
    (sweep,) = group_sweeps(
        [*sweep_results({1: 1000.0, 2: 1500.0}, slo_limit=2000.0), result(4, None, slo_limit=2000.0)]
    )
    cap = capacity_at_slo(sweep, "e2e_p50_ms")
    assert cap.bracket == (2, 4)
    assert cap.concurrency == 2.0
    assert "not measured" in cap.note


def test_explicit_limit_and_invalid_slos() -> None:
    (sweep,) = group_sweeps(sweep_results(GB200_E2E, slo_limit=None))
    assert capacity_slo_names(sweep) == []
    assert sweep_capacities(sweep) == []
    assert capacity_at_slo(sweep, "e2e_p50_ms", 9000.0).bracket == (4, 8)
    with pytest.raises(ValueError, match="pass its limit"):
        capacity_at_slo(sweep, "e2e_p50_ms")
    with pytest.raises(ValueError, match="latency SLO"):
        capacity_at_slo(sweep, "output_tok_s", 100.0)
    with pytest.raises(ValueError, match="> 0"):
        capacity_at_slo(sweep, "ttft_p99_ms", 0.0)
    # Other latency statistics map to their summary keys.
    results = sweep_results({1: 1.0, 2: 2.0}, slo_limit=None)
    for r, value in zip(results, (100.0, 300.0), strict=True):
        r["runs"][0]["p99_ttft_ms"] = value
    (ttft,) = group_sweeps(results)
    assert capacity_at_slo(ttft, "ttft_p99_ms", 200.0).concurrency == pytest.approx(1.5)


# -- grouping --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodeid", "expected"),
    [
        ("a/test_x.py::test_sweep[8]", "a/test_x.py::test_sweep"),
        ("a/test_x.py::TestC::test_sweep[8-fp8]", "a/test_x.py::TestC::test_sweep"),
        ("a/test_x.py::test_sweep[a::b[1]]", "a/test_x.py::test_sweep"),
        ("a/test_x.py::test_plain", "a/test_x.py::test_plain"),
        ("a/test_ü.py::test_日本[✓]", "a/test_ü.py::test_日本"),
    ],
)
def test_test_of_strips_the_parametrization(nodeid: str, expected: str) -> None:
    assert base_nodeid(nodeid) == expected


def test_grouping_ignores_concurrency_and_sample_size() -> None:
    results = sweep_results({8: 1.0, 1: 1.0, 4: 1.0})  # num_prompts = 10·c differs per point; order shuffled
    results += sweep_results({1: 1.0, 2: 1.0}, workload={"input_len": 8192})
    results += sweep_results({1: 1.0, 2: 1.0}, test="perf/test_dsv32.py::test_other")
    results.append(result(None, 1.0, workload={"request_rate": 4.0}))  # open loop: not a concurrency sweep
    results.append(result(16, 1.0, outcome="interrupted"))  # partial run: left out
    results.append(result(2, 1.0, workload={"seed": 99, "warmup": 5}))
    sweeps = group_sweeps(results)
    assert [(s.test, s.workload["input_len"], s.concurrencies) for s in sweeps] == [
        ("perf/test_dsv32.py::test_interactive", 2400, (1, 2, 4, 8)),
        ("perf/test_dsv32.py::test_interactive", 8192, (1, 2)),
        ("perf/test_dsv32.py::test_other", 2400, (1, 2)),
    ]
    assert "num_prompts" not in sweeps[0].workload
    assert "concurrency" not in sweeps[0].workload
    assert group_sweeps(results[:1]) == []
    assert len(group_sweeps(results[:1], min_points=1)) == 1


def test_repeated_concurrency_pools_runs() -> None:
    results = [
        result(1, 1000.0),
        result(2, None, runs=[1000.0]),
        result(2, None, runs=[3000.0, 5000.0]),
        result(4, 90000.0),
    ]
    (sweep,) = group_sweeps(results, min_points=1)
    assert sweep.concurrencies == (1, 2, 4)
    assert len(sweep.points[1].results) == 2
    assert sweep.points[1].value("median_e2el_ms") == 3000.0


def test_gpu_count_sources() -> None:
    assert group_sweeps(sweep_results({1: 1.0, 2: 1.0}, gpus=4))[0].gpu_count == 4
    assert group_sweeps(sweep_results({1: 1.0, 2: 1.0}), gpu_count=8)[0].gpu_count == 8
    mixed = [result(1, 1.0, gpus=4), result(2, 1.0, gpus=8)]
    assert group_sweeps(mixed, gpu_count=8)[0].gpu_count is None  # disagreeing points: unknown, not a guess
    with_endpoint = sweep_results({1: 1.0, 2: 1.0})
    for r in with_endpoint:
        r["endpoint"] = {"gpu_count": 2}
    assert group_sweeps(with_endpoint)[0].gpu_count == 2
    doc = document("x", {1: 1.0, 2: 1.0}, None)
    doc["endpoint"]["gpu_count"] = True  # not a count
    assert sweeps_of(doc)[0].gpu_count is None


def test_baseline_values_and_point_along() -> None:
    r = result(1, 1000.0)
    r["baseline"] = {"runs": [{"median_e2el_ms": 900.0}, {"median_e2el_ms": 1100.0}, {"median_e2el_ms": None}]}
    (sweep,) = group_sweeps([r], min_points=1)
    assert sweep.points[0].baseline_value("median_e2el_ms") == 1000.0
    assert sweep.points[0].baseline_value("p99_ttft_ms") is None
    assert point_along([(1, 10.0), (4, 40.0)], 2.5) == pytest.approx(25.0)
    assert point_along([(1, 10.0), (4, None)], 2.5) is None
    assert point_along([(1, 10.0), (4, 40.0)], 4) == 40.0
    assert point_along([(1, 10.0), (4, 40.0)], 8) is None


# -- the command line: python -m pytest_llmperf.pairs A.json B.json ------------------------------------------------


def write_documents(tmp_path: Path) -> tuple[Path, Path]:
    gb200, h200 = tmp_path / "gb200.json", tmp_path / "h200.json"
    gb200.write_text(json.dumps(document("gb200-fp4", GB200_E2E, 4)))
    h200.write_text(json.dumps(document("h200-fp8", H200_E2E, 8)))
    return gb200, h200


def test_pairs_command_prints_the_published_16x(tmp_path: Path) -> None:
    gb200, h200 = write_documents(tmp_path)
    out = tmp_path / "cmp.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest_llmperf.pairs", str(gb200), str(h200), "--json", str(out)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "capacity at SLO, gb200-fp4 vs h200-fp8"
    assert "perf/test_dsv32.py::test_interactive (input_len=2400, output_len=1600)" in lines
    assert any(line.startswith("  gb200-fp4: e2e_p50_ms ≤ 15000: up to c≈12") for line in lines)
    assert "  measured: gb200-fp4 serves 16× the users per GPU of h200-fp8" in lines
    assert "  interpolated: gb200-fp4 serves 16× the users per GPU of h200-fp8" in lines
    (row,) = json.loads(out.read_text())["comparisons"]
    assert row["ratio_measured"]["ratio"] == pytest.approx(16.0)
    assert row["first"]["measured_concurrency"] == 8
    assert row["second"]["measured_concurrency"] == 1


def test_pairs_command_says_what_is_wrong_with_its_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gb200, h200 = write_documents(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"pair": "x", "results": [')
    assert pairs.main([str(gb200), str(broken)]) == 2
    assert "broken.json: not JSON" in capsys.readouterr().err
    assert pairs.main([str(gb200), str(tmp_path / "missing.json")]) == 2
    assert "missing.json: cannot read it" in capsys.readouterr().err
    other = document("h200-fp8", H200_E2E, 8)
    for r in other["results"]:
        r["workload"]["input_len"] = 8192
    h200.write_text(json.dumps(other))
    assert pairs.main([str(gb200), str(h200)]) == 1
    assert "can be compared" in capsys.readouterr().err
    h200.write_text(json.dumps({"results": "no"}))
    assert pairs.main([str(gb200), str(h200)]) == 2
    assert "no 'results' list" in capsys.readouterr().err
