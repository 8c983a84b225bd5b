"""The range-ratio rule as a workload keyword (``range_rule``), apart from the compat mode (issue 16, item 8)."""

from __future__ import annotations

import random

import pytest

from pytest_llmperf.client.datasets import sample_lengths
from pytest_llmperf.errors import SpecError
from pytest_llmperf.harness.markers import build_spec
from pytest_llmperf.judge.baseline import workload_hash
from pytest_llmperf.spec import Workload


def window(w: Workload) -> tuple[int, int]:
    ins = [i for i, _ in sample_lengths(w, 3000, random.Random(0))]
    return min(ins), max(ins)


@pytest.mark.parametrize(
    ("compat", "rule", "expected"),
    [
        # The rule follows compat by default: [floor(L(1−r)), ceil(L(1+r))], and 100·(1 − 0.8) is 19.999… in
        # floating point, so 19 (as vLLM's np.floor gives it).
        ("vllm", None, (19, 180)),
        ("sglang", None, (80, 100)),  # [L·r, L]
        ("vllm", "inferencemax", (80, 100)),  # InferenceMAX's old [0.8L, L] in vLLM mode
        ("vllm", "sglang", (80, 100)),
        ("sglang", "vllm", (19, 180)),
    ],
)
def test_range_rule_picks_the_window(compat: str, rule: str | None, expected: tuple[int, int]) -> None:
    w = Workload(input_len=100, output_len=10, range_ratio=0.8, compat=compat, range_rule=rule)  # type: ignore[arg-type]
    assert window(w) == expected


def test_range_rule_is_a_marker_keyword_and_is_checked() -> None:
    spec = build_spec({"input_len": 100, "range_ratio": 0.2, "range_rule": "inferencemax"}, {})
    assert spec.workload.range_rule == "inferencemax"
    assert spec.workload.as_dict()["range_rule"] == "inferencemax"
    with pytest.raises(SpecError, match=r"range_rule='sharegpt' \(expected one of vllm, sglang, inferencemax"):
        build_spec({"range_rule": "sharegpt"}, {})


def test_the_default_rule_keeps_recorded_baselines_comparable() -> None:
    # Baselines recorded before range_rule existed hash their workload without it.
    w = Workload(input_len=100).as_dict()
    before = {k: v for k, v in w.items() if k != "range_rule"}
    assert workload_hash(w) == workload_hash(before)
    assert workload_hash({**w, "range_rule": "inferencemax"}) != workload_hash(before)
