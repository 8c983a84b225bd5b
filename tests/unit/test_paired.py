"""A/B mode's pure parts: the paired comparison, the paired verdict, block orders and the block loop."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import scipy.stats as sst  # type: ignore[import-untyped]

from pytest_llmperf.harness import judging
from pytest_llmperf.harness.markers import build_spec
from pytest_llmperf.harness.runner import Result
from pytest_llmperf.judge import stats, verdict
from pytest_llmperf.report import junit, terminal
from pytest_llmperf.report.tables import render_verdict_table
from pytest_llmperf.servers.engine_metrics import busy_requests
from pytest_llmperf.spec import RunRecords


def runs(count: int, *, noise: float = 0.01, seed: int = 0, factors: list[float] | None = None) -> list[dict[str, Any]]:
    """Run summaries of one server: each run's latencies × its run effect (given, or log-normal noise)."""
    rng = random.Random(seed)
    effects = factors if factors is not None else [math.exp(rng.gauss(0, noise)) for _ in range(count)]
    return [
        {
            "compat_mode": "vllm",
            "median_ttft_ms": 100.0 * f,
            "median_tpot_ms": 20.0 * f,
            "median_e2el_ms": 5000.0 * f,
            "output_throughput": 800.0 / f,
            "p99_ttft_ms": 300.0 * f,
            "p99_tpot_ms": 30.0 * f,
            "p99_itl_ms": 40.0 * f,
            "p99_e2el_ms": 8000.0 * f,
            "completed": 500,
            "failed": 0,
            "error_rate": 0.0,
        }
        for f in effects
    ]


def test_paired_t_matches_hand_computation_and_scipy() -> None:
    d = [0.05, 0.03, 0.06, 0.02]
    c = stats.compare_paired(d)
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    assert c.method == "paired"
    assert c.delta == pytest.approx(0.04)
    assert c.se == pytest.approx(sd / 2)
    assert c.df == 3
    assert c.sigma == pytest.approx(sd)
    # scipy's one-sample t test on the differences, one-sided "greater".
    assert c.p_greater() == pytest.approx(sst.ttest_1samp(d, 0.0, alternative="greater").pvalue)
    assert c.upper(0.05) == pytest.approx(mean + sst.t.ppf(0.95, 3) * sd / 2)


def test_paired_needs_two_blocks() -> None:
    with pytest.raises(ValueError, match="at least 2 blocks"):
        stats.compare_paired([0.1])


def test_blocks_needed() -> None:
    z = stats.normal_quantile(0.99) + stats.normal_quantile(0.8)
    assert stats.blocks_needed(0.02, 0.05, alpha=0.01) == pytest.approx((z * 0.02 / 0.05) ** 2)
    assert math.isinf(stats.blocks_needed(0.02, 0.0, alpha=0.01))
    assert stats.blocks_needed(0.04, 0.05, alpha=0.01) > stats.blocks_needed(0.02, 0.05, alpha=0.01)


def _shifted(
    base: list[dict[str, Any]], factor: float, noise: float, seed: int, per_block: list[float] | None = None
) -> list[dict[str, Any]]:
    """B's runs: A's, latencies × ``factor`` × a small per-block noise or ``per_block`` (throughput ÷ the same)."""
    rng = random.Random(seed)
    blocks = per_block or [math.exp(rng.gauss(0, noise)) for _ in base]
    out = []
    for run, effect in zip(base, blocks, strict=True):
        f = factor * effect
        b = dict(run)
        for key in ("median_ttft_ms", "median_tpot_ms", "median_e2el_ms"):
            b[key] = run[key] * f
        b["output_throughput"] = run["output_throughput"] / f
        out.append(b)
    return out


def test_drift_cancels_in_pairs() -> None:
    # A drifts by ±10 % between blocks, far beyond any tolerance; B tracks it within 0.2 %. Paired: PASS.
    a = runs(4, factors=[1.0, 1.1, 0.9, 1.05])
    b = _shifted(a, 1.0, 0.002, seed=3)
    v = verdict.judge_paired(a, b)
    assert v.status == verdict.PASS
    assert v.reference == "A"
    assert "4 A/B blocks" in v.reason
    # The same numbers judged as unpaired samples cannot rule out a 5 % slowdown.
    unpaired = verdict.judge(b, a)
    assert unpaired.status == verdict.INCONCLUSIVE


def test_paired_regression_names_b_and_a() -> None:
    a = runs(5, factors=[1.0, 1.08, 0.95, 1.02, 0.97])
    b = _shifted(a, 1.10, 0.003, seed=4)
    v = verdict.judge_paired(a, b, looks=4)
    assert v.status == verdict.REGRESSION
    tpot = v.metric("tpot_p50")
    assert tpot.status == verdict.REGRESSION
    assert tpot.method == "paired"
    assert 1.08 < tpot.estimate < 1.12  # type: ignore[operator]
    assert "× A [90% CI" in tpot.reason
    throughput = v.metric("output_tok_s")
    assert throughput.status == verdict.REGRESSION  # lower throughput is worse
    table = render_verdict_table(v.as_dict())
    assert table.startswith("B vs A verdict: REGRESSION")
    assert "B/A [90% CI]" in table
    assert "blocks: 5" in table


def test_paired_inconclusive_asks_for_blocks() -> None:
    a = runs(2, factors=[1.0, 1.0])
    b = _shifted(a, 1.0, 0.0, seed=5, per_block=[1.01, 1.07])  # B/A 1.01 and 1.07: too spread to decide
    v = verdict.judge_paired(a, b)
    assert v.status == verdict.INCONCLUSIVE
    undecided = [m for m in v.gating if m.status == verdict.INCONCLUSIVE]
    assert undecided
    assert all(not m.futile and m.more_runs for m in undecided)
    assert "A/B block(s)" in v.hint


def test_improvement_has_no_update_hint() -> None:
    a = runs(4, factors=[1.0, 1.02, 0.98, 1.01])
    b = _shifted(a, 0.85, 0.002, seed=6)
    v = verdict.judge_paired(a, b)
    assert v.status == verdict.IMPROVEMENT
    assert "--llmperf-update" not in v.hint + "".join(m.hint for m in v.metrics)


def test_judge_paired_rejects_unpaired_input() -> None:
    a = runs(3)
    with pytest.raises(ValueError, match="one A run and one B run per block"):
        verdict.judge_paired(a, a[:2])
    with pytest.raises(ValueError, match="at least 2 blocks"):
        verdict.judge_paired(a[:1], a[:1])


def test_paired_verdict_round_trips_and_survives_holm() -> None:
    a = runs(4, factors=[1.0, 1.05, 0.95, 1.0])
    v = verdict.judge_paired(a, _shifted(a, 1.0, 0.002, seed=7))
    again = verdict.Verdict.from_dict(v.as_dict())
    assert again == v
    (held,) = verdict.apply_holm([v])
    assert held.reference == "A"
    assert held.status == v.status


@pytest.mark.parametrize(("order", "expected"), [("abba", ["AB", "BA", "AB", "BA", "AB"])])
def test_abba_alternates(order: str, expected: list[str]) -> None:
    assert judging.block_orders(order, 5, seed=0) == expected


def test_random_order_is_seeded() -> None:
    first = judging.block_orders("random", 40, seed=11)
    assert first == judging.block_orders("random", 40, seed=11)
    assert set(first) == {"AB", "BA"}
    assert first != judging.block_orders("random", 40, seed=12)
    with pytest.raises(ValueError, match="abba, random"):
        judging.block_orders("sideways", 2, seed=0)


class FakeServers:
    """Run summaries on demand: B = A × ``factor``; records the call sequence and the pauses."""

    def __init__(self, factor: float, *, tpot_b: float | None = None, noise: float = 0.0) -> None:
        self.factor = factor
        self.tpot_b = tpot_b
        self.rng = random.Random(13)
        self.noise = noise
        self.calls: list[str] = []
        self.a = runs(20, noise=0.02, seed=9)

    def measure(self, server: str) -> Result:
        self.calls.append(server)
        index = self.calls.count(server) - 1
        summary = dict(self.a[index])
        if server == "B":
            factor = self.factor * math.exp(self.rng.gauss(0, self.noise))
            for key in ("median_ttft_ms", "median_tpot_ms", "median_e2el_ms"):
                summary[key] *= factor
            summary["output_throughput"] /= factor
            if self.tpot_b is not None:
                summary["median_tpot_ms"] = self.tpot_b
        spec = build_spec({}, {})
        records = RunRecords(workload=spec.workload, records=[], bench_start_s=0.0, bench_end_s=1.0)
        return Result(workload=spec.workload, summary=summary, run=records)


def test_block_loop_stops_at_two_blocks_when_decided() -> None:
    servers = FakeServers(1.0)
    judgement = judging.run_ab_until_decided(
        build_spec({"repeats": 6}, {}),
        servers.measure,
        budget=6,
        order="abba",
        global_tolerance=None,
        family_size=None,
    )
    assert judgement.verdict.status == verdict.PASS
    assert servers.calls == ["A", "B", "B", "A"]
    assert judgement.orders == ["AB", "BA"]
    assert len(judgement.a_results) == len(judgement.b_results) == 2
    assert judgement.results is judgement.b_results


def test_random_order_looks_after_every_block_up_to_the_budget() -> None:
    servers = FakeServers(1.03, noise=0.05)  # noisy and near the tolerance: not decided in three blocks
    judgement = judging.run_ab_until_decided(
        build_spec({}, {}),
        servers.measure,
        budget=3,
        order="random",
        global_tolerance=None,
        family_size=None,
    )
    assert judgement.verdict.status == verdict.INCONCLUSIVE
    assert len(judgement.a_results) == len(judgement.b_results) == 3
    assert judgement.verdict.looks == 2  # after blocks 2 and 3


def test_abba_looks_after_complete_pairs_only() -> None:
    # With ABBA a look after an odd block count would weigh one position (first or second in a block) more.
    assert judging.look_points("abba", 6) == [2, 4, 6]
    assert judging.look_points("random", 4) == [2, 3, 4]
    servers = FakeServers(1.03, noise=0.05)
    judgement = judging.run_ab_until_decided(
        build_spec({}, {}),
        servers.measure,
        budget=5,  # rounded down to 4 blocks: two AB+BA pairs
        order="abba",
        global_tolerance=None,
        family_size=None,
    )
    assert judgement.budget == 4
    assert judgement.orders == ["AB", "BA", "AB", "BA"]
    assert judgement.verdict.looks == 2


def test_slo_breach_of_b_stops_the_blocks() -> None:
    servers = FakeServers(1.0, tpot_b=500.0)
    judgement = judging.run_ab_until_decided(
        build_spec({"tpot_p50_ms": 100}, {}),
        servers.measure,
        budget=5,
        order="abba",
        global_tolerance=None,
        family_size=None,
    )
    assert servers.calls == ["A", "B"]
    assert judgement.breaches
    assert judgement.verdict.status == verdict.INCONCLUSIVE
    assert "before a paired comparison" in judgement.verdict.reason
    assert "B breached an SLO" in judgement.notes[0]


def test_error_rate_plan_grows_both_sides() -> None:
    # One failed request in one A run and in every B run: more blocks add requests to A as well as B, so the
    # plan asks for blocks; it is not "futile" as it would be against a fixed stored baseline.
    a = runs(2, factors=[1.0, 1.0])
    a[0] = {**a[0], "failed": 1, "completed": 499, "error_rate": 0.002}
    b = [{**run, "failed": 1, "completed": 499, "error_rate": 0.002} for run in a]
    err = verdict.judge_paired(a, b).metric("error_rate")
    assert err.status == verdict.INCONCLUSIVE
    assert not err.futile
    assert err.more_runs
    assert "A/B block(s)" in err.reason


def test_busy_gauges_are_summed() -> None:
    text = (
        '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} 3\n'
        '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="m"} 2\n'
        "# TYPE vllm:other gauge\nvllm:other 7\n"
    )
    assert busy_requests(text) == 5
    assert busy_requests("# TYPE x counter\nx_total 1\n") is None


def _ab_document(status: str) -> dict[str, Any]:
    a = runs(3, factors=[1.0, 1.02, 0.99])
    v = verdict.judge_paired(a, _shifted(a, 1.0, 0.002, seed=8))
    return {
        "nodeid": "t.py::test_x",
        "summary": a[-1],
        "runs": a,
        "workload": {"input_len": 10, "output_len": 20, "concurrency": 4},
        "verdict": {**v.as_dict(), "status": status},
        "ab": {
            "a": {"engine": "sim", "url": "http://127.0.0.1:1"},
            "b": {"engine": "sim", "url": "http://127.0.0.1:2"},
            "order": "abba",
            "blocks": ["AB", "BA", "AB"],
        },
    }


def test_junit_properties_of_an_ab_result() -> None:
    props = dict(junit.properties(_ab_document("PASS")))
    assert props["llmperf.ab.blocks"] == 3
    assert props["llmperf.ab.order"] == "abba"
    assert props["llmperf.ab.verdict"] == "PASS"
    assert props["llmperf.ab.tpot_p50.verdict"] == "PASS"
    assert {"llmperf.ab.tpot_p50.a", "llmperf.ab.tpot_p50.b", "llmperf.ab.tpot_p50.ratio"} <= set(props)
    assert "llmperf.verdict" not in props  # the stored-baseline names stay free


def test_terminal_has_a_b_vs_a_section() -> None:
    lines = [text for text, _ in terminal.render([_ab_document("PASS")], pair="cpu-default", endpoint={}, verbose=0)]
    start = lines.index("B vs A (ratios B/A; a REGRESSION means B is worse than A beyond the tolerance)")
    assert lines[start + 1].startswith("A: sim")
    assert lines[start + 2].startswith("B: sim")
    row = lines[start + 4]
    assert row.startswith("t.py::test_x")
    assert row.split()[1] == "3"  # blocks
    assert row.endswith("PASS")
    assert terminal.render_ab([{"nodeid": "x", "verdict": {}}]) == []


def test_reports_never_show_url_credentials() -> None:
    from pytest_llmperf.spec import Endpoint

    endpoint = Endpoint(url="http://user:s3cret@127.0.0.1:8001", model="m", api_key="k3y")
    public = endpoint.public_dict()
    assert public["url"] == "http://127.0.0.1:8001"
    assert "s3cret" not in repr(public)
    assert "k3y" not in repr(public)
