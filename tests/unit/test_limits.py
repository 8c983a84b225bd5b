"""The size checks made before any load: known answers for memory and sockets against given limits."""

from __future__ import annotations

import math

from pytest_llmperf.client import limits
from pytest_llmperf.client.limits import Limits, check, in_flight, memory_estimate
from pytest_llmperf.harness.runner import planned_prompts
from pytest_llmperf.spec import Workload

ROOMY = Limits(available_bytes=16 * 10**9, fd_limit=1024, fds_open=20)


def test_memory_estimate_counts_tokens_and_requests() -> None:
    w = Workload(input_len=128, output_len=64, num_prompts=10)
    assert memory_estimate(w, 10) == 10 * (1024 + 16 * 128 + 80 * 64)  # 81920 bytes
    # A length spread of ±50 % can reach 1.5× the lengths: the estimate covers the longest.
    assert memory_estimate(w.replace(range_ratio=0.5), 10) == 10 * (1024 + 24 * 128 + 120 * 64)


def test_an_ordinary_workload_passes() -> None:
    w = Workload(input_len=2048, output_len=512, num_prompts=500, concurrency=64)
    assert check(w, planned_prompts(w), ROOMY) == limits.Findings()


def test_ten_million_prompts_are_refused_with_the_figure_the_limit_and_what_to_do() -> None:
    w = Workload(num_prompts=10**7, concurrency=8)
    found = check(w, planned_prompts(w), ROOMY)
    assert found.warnings == ()
    (message,) = found.refusals
    assert "num_prompts=10000000 with input_len=128 and output_len=64 would hold about 81.9 GB" in message
    assert "more than 50% of the 16.0 GB available" in message
    assert "lower num_prompts, or bound the run by time with duration_s" in message


def test_a_duration_bound_run_names_its_duration() -> None:
    w = Workload(num_prompts=None, duration_s=60, request_rate=1000, input_len=100_000, output_len=10)
    (message,) = check(w, planned_prompts(w), ROOMY).refusals
    assert message.startswith("duration_s=60 (60001 prompts) with input_len=100000")
    assert "shorten duration_s or the lengths" in message


def test_concurrency_above_the_open_file_limit_is_refused() -> None:
    w = Workload(input_len=8, output_len=8, num_prompts=20_000, concurrency=15_000)
    found = check(w, planned_prompts(w), ROOMY)
    (message,) = found.refusals
    assert message.startswith("concurrency=15000 keeps 15000 requests in flight, one socket each")
    assert "can open only 940 more files (ulimit -n is 1024, 20 open, 64 kept in reserve)" in message
    assert "ulimit -n 65536" in message


def test_requests_in_flight_per_load_shape() -> None:
    closed = Workload(num_prompts=100, concurrency=8)
    assert in_flight(closed, 100)[:2] == (8, True)
    assert in_flight(closed.replace(concurrency=500), 100)[:2] == (100, True)  # never more than the prompts
    burst = Workload(num_prompts=5000)  # request_rate=inf, no concurrency: everything at once
    assert in_flight(burst, 5000) == (5000, True, "sending all 5000 prompts at once keeps 5000 requests in flight")
    paced = Workload(num_prompts=5000, request_rate=2, request_timeout_s=600)
    assert in_flight(paced, 5000)[:2] == (1200, False)  # at worst rate × timeout, if the server falls behind
    warm = Workload(num_prompts=4, concurrency=2, warmup=50)
    assert in_flight(warm, 4)[:2] == (2, True)  # the warmup also waits for the concurrency
    assert in_flight(warm.replace(concurrency=None), 4)[:2] == (50, True)
    timed = Workload(num_prompts=None, duration_s=30, concurrency=64)
    assert in_flight(timed, planned_prompts(timed))[:2] == (64, True)


def test_an_open_loop_that_may_exceed_the_limit_is_a_warning() -> None:
    w = Workload(num_prompts=5000, request_rate=10, request_timeout_s=600, input_len=8, output_len=8)
    found = check(w, planned_prompts(w), ROOMY)
    assert found.refusals == ()
    (message,) = found.warnings
    assert "request_rate=10 with request_timeout_s=600 may keep up to 5000 requests in flight" in message


def test_unknown_limits_check_nothing() -> None:
    w = Workload(num_prompts=10**7, concurrency=10**6)
    assert check(w, planned_prompts(w), Limits(available_bytes=None, fd_limit=None)) == limits.Findings()


def test_machine_limits_reads_this_process() -> None:
    found = limits.machine_limits()
    assert found.available_bytes is None or found.available_bytes > 0
    assert found.fd_limit is None or found.fd_limit > found.fds_open > 0
    assert not math.isnan(found.fds_open)
