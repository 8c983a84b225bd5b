"""Open-loop arrival schedules follow vLLM: gamma gaps, rescaled so the last arrival is at N/rate."""

from __future__ import annotations

import math
import random
import statistics

from pytest_llmperf.client.loadgen import arrival_offsets
from pytest_llmperf.spec import Workload


def gaps(offsets: list[float]) -> list[float]:
    return [b - a for a, b in zip([0.0, *offsets[:-1]], offsets, strict=True)]


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets(Workload(), 5, random.Random(0)) == [0.0] * 5


def test_last_arrival_is_exactly_n_over_rate() -> None:
    offsets = arrival_offsets(Workload(request_rate=4.0), 200, random.Random(0))
    assert math.isclose(offsets[-1], 200 / 4.0)
    assert offsets == sorted(offsets)


def test_poisson_gaps_have_unit_coefficient_of_variation() -> None:
    g = gaps(arrival_offsets(Workload(request_rate=10.0, burstiness=1.0), 5000, random.Random(1)))
    cv = statistics.pstdev(g) / statistics.fmean(g)
    assert 0.93 < cv < 1.07  # exponential gaps: CV = 1; 5000 samples put the estimate within a few %


def test_burstiness_sets_the_gap_variability() -> None:
    # Gamma(shape=k): CV = 1/sqrt(k). k=4 is smoother than Poisson, k=0.25 burstier.
    smooth = gaps(arrival_offsets(Workload(request_rate=10.0, burstiness=4.0), 5000, random.Random(2)))
    bursty = gaps(arrival_offsets(Workload(request_rate=10.0, burstiness=0.25), 5000, random.Random(2)))
    assert abs(statistics.pstdev(smooth) / statistics.fmean(smooth) - 0.5) < 0.05
    assert abs(statistics.pstdev(bursty) / statistics.fmean(bursty) - 2.0) < 0.2


def test_infinite_burstiness_is_a_constant_rate() -> None:
    offsets = arrival_offsets(Workload(request_rate=5.0, burstiness=math.inf), 10, random.Random(0))
    assert all(math.isclose(g, 0.2) for g in gaps(offsets))


def test_schedule_is_reproducible_from_the_seed() -> None:
    w = Workload(request_rate=3.0)
    assert arrival_offsets(w, 50, random.Random(7)) == arrival_offsets(w, 50, random.Random(7))
