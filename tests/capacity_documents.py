"""Result documents holding capacity searches, as a session writes them, for the report tests."""

from __future__ import annotations

from typing import Any

from pytest_llmperf.judge.capacity_search import CapacitySearch


def capacity_document(*searches: CapacitySearch, pair: str, gpu_count: int) -> dict[str, Any]:
    """One passed test per search (``perf/test_capacity.py::test_search[k]``), at 2400/1600 × 80 prompts."""
    results = [
        {
            "nodeid": f"perf/test_capacity.py::test_search[{k}]",
            "outcome": "passed",
            "workload": {"input_len": 2400, "output_len": 1600, "num_prompts": 80},
            "summary": {"completed": 80, "failed": 0},
            "runs": [],
            "notes": [s.statement],
            "capacity_search": s.as_dict(),
        }
        for k, s in enumerate(searches)
    ]
    return {"pair": pair, "endpoint": {"url": "http://gpu:8000", "gpu_count": gpu_count}, "results": results}
