"""How many requests each capacity-search probe sends: ``max(num_prompts, ceil(prompts_per_user × c))`` for a
concurrency search, the workload's own count otherwise, and the count recorded with each probe."""

from __future__ import annotations

import inspect

import pytest

from pytest_llmperf.harness.fixtures import LLMPerf
from pytest_llmperf.judge.capacity_search import PROMPTS_PER_USER, probe_prompts, render_probe_table, search_capacity


@pytest.mark.parametrize(
    ("num_prompts", "at", "kwargs", "expected"),
    [
        (80, 1, {}, 80),  # the marker's count is a floor
        (80, 8, {}, 80),
        (80, 9, {}, 90),  # 10 per user above it
        (80, 64, {}, 640),
        (16, 3, {"prompts_per_user": 2.5}, 16),
        (16, 7, {"prompts_per_user": 2.5}, 18),  # ceil(17.5)
        (80, 64, {"prompts_per_user": None}, 80),  # fixed at every probe
        (80, 64, {"prompts_per_user": 0}, 80),
        (80, 64.0, {"vary": "request_rate"}, 80),  # no users to count in an open loop
        (None, 64, {}, None),  # bounded by duration_s (or a trace): left alone
    ],
)
def test_probe_prompts(num_prompts: int | None, at: float, kwargs: dict[str, object], expected: int | None) -> None:
    assert probe_prompts(num_prompts, at, **kwargs) == expected  # type: ignore[arg-type]


def test_the_fixture_default_is_the_modules_rule() -> None:
    default = inspect.signature(LLMPerf.capacity).parameters["prompts_per_user"].default
    assert default == PROMPTS_PER_USER == 10


def test_each_probe_records_its_request_count_in_the_json_and_the_table() -> None:
    def measure(at: float) -> float:
        return 1000.0 * at  # E2E grows with the load: the limit of 8 s lies between c=8 and c=9

    search = search_capacity(
        measure,
        slo="e2e_p50_ms",
        limit=8500,
        low=1,
        high=16,
        prompts_at=lambda at: probe_prompts(32, at, prompts_per_user=10),
        prompts_per_user=10,
    )
    assert search.capacity == 8
    counts = {p["at"]: p["num_prompts"] for p in search.as_dict()["probes"]}
    assert counts == {1: 32, 16: 160, 4: 40, 8: 80, 11: 110, 9: 90}
    assert search.as_dict()["prompts_per_user"] == 10
    header, _, *rows = render_probe_table(search).splitlines()
    assert header.split()[:4] == ["concurrency", "runs", "values", "prompts/run"]
    assert rows[1].split()[0] == "16"
    assert "160" in rows[1].split()


def test_without_counts_the_table_has_no_prompts_column() -> None:
    search = search_capacity(lambda at: 100.0 * at, slo="e2e_p50_ms", limit=450, low=1, high=8)
    assert all(p.num_prompts is None for p in search.probes)
    assert "prompts/run" not in render_probe_table(search)
    assert search.as_dict()["probes"][0]["num_prompts"] is None
