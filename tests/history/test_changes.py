"""Change points over the per-session series (history/changes.py): seeded series with known steps, the
acknowledgement and failure rules, and the printed lines. The detection and false-change rates over many seeds,
and the speed, are measured by ``benchmarks/history_changes.py``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from pytest_llmperf.history.changes import (
    MIN_SESSIONS,
    acknowledge,
    find_changes,
    format_changes,
    is_gating,
    metric_direction,
    should_fail,
    unacknowledged,
)
from pytest_llmperf.history.model import Acknowledgement, Change, Series, SeriesKey, SessionPoint

T0 = dt.datetime(2026, 1, 5, 2, 30, tzinfo=dt.timezone.utc)
TEST_ID = "perf/test_serve.py::test_decode[sim]"


FloatArray = npt.NDArray[np.float64]


def series(values: Sequence[float] | FloatArray, metric: str = "median_tpot_ms", test_id: str = TEST_ID) -> Series:
    """One session a day from ``T0``; the engine version changes at session 40."""
    points = tuple(
        SessionPoint(
            session_id=f"s{i:03d}",
            at=T0 + dt.timedelta(days=i),
            value=float(v),
            runs=3,
            git_commit=f"{i:03d}abcdef0123456789",
            git_branch="main",
            engine_version="0.9.0" if i < 40 else "0.9.1",
            epoch_key="e1",
        )
        for i, v in enumerate(values)
    )
    return Series(SeriesKey(test_id, "cpu-fp32", "0123456789abcdef", metric), points)


def noisy(n: int, seed: int, *, level: float = 100.0, step_at: int | None = None, step: float = 1.0) -> FloatArray:
    """``n`` sessions with 2 % log-normal noise; from ``step_at`` on the level is multiplied by ``step``."""
    values = np.asarray(level * np.exp(np.random.default_rng(seed).normal(0.0, 0.02, n)), dtype=np.float64)
    if step_at is not None:
        values[step_at:] *= step
    return values


# --- find_changes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_five_percent_latency_step_is_found_where_it_is(seed: int) -> None:
    s = series(noisy(100, seed, step_at=40, step=1.05))
    (change,) = find_changes(s)
    assert abs(change.index - 40) <= 2
    assert change.key == s.key
    assert change.before == s.points[change.index - 1]
    assert change.after == s.points[change.index]
    assert change.at == change.after.at
    assert change.ratio == pytest.approx(1.05, abs=0.01)
    assert change.ratio == pytest.approx(change.mean_after / change.mean_before)
    assert change.mean_before == pytest.approx(100, rel=0.01)
    assert change.mean_after == pytest.approx(105, rel=0.01)
    assert change.p_value < 1e-10
    assert change.worse
    assert change.gating


def test_the_means_are_geometric_means_of_the_segments() -> None:
    values = noisy(60, 7, step_at=30, step=1.2)
    (change,) = find_changes(series(values))
    assert change.index == 30
    assert change.mean_before == pytest.approx(math.exp(np.mean(np.log(values[:30]))))
    assert change.mean_after == pytest.approx(math.exp(np.mean(np.log(values[30:]))))


@pytest.mark.parametrize(
    ("metric", "step", "worse"),
    [
        ("median_tpot_ms", 1.05, True),  # latency up
        ("median_tpot_ms", 0.95, False),  # latency down
        ("output_throughput", 0.95, True),  # throughput down
        ("output_throughput", 1.05, False),  # throughput up
        ("median_e2e_latency_ms", 1.05, True),  # the SGLang spelling
    ],
)
def test_worse_follows_the_metric_direction(metric: str, step: float, worse: bool) -> None:
    (change,) = find_changes(series(noisy(100, 11, step_at=40, step=step), metric))
    assert change.worse is worse
    assert (change.ratio > 1) is (step > 1)
    assert change.gating


def test_a_metric_without_direction_is_never_worse() -> None:
    (change,) = find_changes(series(noisy(100, 12, step_at=40, step=1.1), "duration"))
    assert not change.worse
    assert not change.gating


def test_a_step_and_its_return_are_two_changes() -> None:
    values = noisy(120, 13)
    values[40:80] *= 1.08
    first, second = find_changes(series(values))
    assert abs(first.index - 40) <= 2
    assert abs(second.index - 80) <= 2
    assert first.worse
    assert not second.worse
    assert first.ratio == pytest.approx(1.08, abs=0.015)
    assert second.ratio == pytest.approx(1 / 1.08, abs=0.015)


def test_a_clean_step_is_placed_exactly() -> None:
    # Otava's windows alone place it a few sessions off at times; the least-squares refinement does not.
    values = noisy(100, 14, step_at=37, step=1.3)
    assert [c.index for c in find_changes(series(values))] == [37]


def test_a_change_names_the_sessions_around_it_and_its_gating_may_be_given() -> None:
    s = series(noisy(100, 14, step_at=37, step=1.3))
    (change,) = find_changes(s)
    assert change.nearby == tuple(p.session_id for p in s.points[35:40])
    assert change.gating  # TPOT gates by default
    (advisory,) = find_changes(s, gating=False)  # as a test's stored verdict may say
    assert not advisory.gating


def test_a_step_otava_merge_step_would_lose_is_found() -> None:
    # Seeded case where Otava 0.8's compute_change_points(max_pvalue=1e-4) keeps a change point with the stale
    # statistics of a dropped neighbour's segment and then drops it too; the merge redone here keeps it.
    changes = find_changes(series(noisy(100, 40218, step_at=40, step=1.05)), max_pvalue=1e-4)
    assert len(changes) == 1
    assert changes[0].p_value < 1e-20


@pytest.mark.parametrize("seed", range(5))
def test_a_flat_series_has_no_change(seed: int) -> None:
    assert find_changes(series(noisy(200, 100 + seed))) == []


def test_a_constant_series_has_no_change() -> None:
    assert find_changes(series([12.5] * 50)) == []
    assert find_changes(series([0.0] * 50, "error_rate")) == []


def test_one_odd_session_at_the_end_is_no_change() -> None:
    values = noisy(100, 15)
    values[-1] *= 1.2  # ten noise SDs
    assert find_changes(series(values)) == []
    values = np.append(values, [120.0, 121.0])
    (change,) = find_changes(series(values))  # three sessions: a persistent shift
    assert change.index == 99


def test_short_series_have_no_change() -> None:
    step = [100.0, 100.1, 99.9, 200.0, 200.2, 199.8]
    assert find_changes(series(step[1:])) == []  # 5 sessions
    assert [c.index for c in find_changes(series(step))] == [3]  # 2 × MIN_SESSIONS
    assert MIN_SESSIONS == 3
    assert find_changes(series([])) == []
    assert find_changes(series([100.0])) == []


def test_failed_sessions_are_left_out_and_indices_stay_those_of_the_series() -> None:
    values = noisy(100, 16, step_at=40, step=0.9)
    values[10] = 0.0  # nothing completed: throughput 0
    values[39] = 0.0
    values[55] = math.nan
    s = series(values, "output_throughput")
    (change,) = find_changes(s)
    assert change.index == 40
    assert change.before == s.points[38]  # the last session used before it
    assert change.after == s.points[40]
    assert change.worse
    assert change.mean_before == pytest.approx(math.exp(np.mean(np.log(np.delete(values[:40], [10, 39])))))


def test_an_error_rate_from_zero_is_analysed_on_its_own_scale() -> None:
    rng = np.random.default_rng(17)
    values = np.where(rng.random(100) < 0.1, 0.01, 0.0)
    values[60:] += 0.05
    s = series(values, "error_rate")
    (change,) = find_changes(s)
    assert change.index == 60
    assert change.mean_before == pytest.approx(np.mean(values[:60]))
    assert change.mean_after == pytest.approx(np.mean(values[60:]))
    assert change.worse
    assert change.gating
    zero_before = find_changes(series([0.0] * 30 + [0.02] * 30, "error_rate"))
    assert [(c.index, c.ratio, c.mean_before, c.worse) for c in zero_before] == [(30, math.inf, 0.0, True)]


def test_min_magnitude_drops_small_changes() -> None:
    s = series(noisy(100, 18, step_at=40, step=1.05))
    (change,) = find_changes(s)
    assert find_changes(s, min_magnitude=change.ratio - 1 - 0.001) == [change]
    assert find_changes(s, min_magnitude=change.ratio - 1 + 0.001) == []
    # Otava's measure is symmetric, max(after/before, before/after) − 1: a fall by x is a magnitude of 1/x − 1.
    down_series = series(noisy(100, 18, step_at=40, step=0.95))
    (down,) = find_changes(down_series)
    assert find_changes(down_series, min_magnitude=1 / down.ratio - 1 - 0.001) == [down]
    assert find_changes(down_series, min_magnitude=1 / down.ratio - 1 + 0.001) == []


def test_a_stricter_p_value_needs_a_larger_step() -> None:
    s = series(noisy(100, 19, step_at=50, step=1.01))  # half a noise SD
    assert find_changes(s) == []
    assert find_changes(series(noisy(100, 19, step_at=50, step=1.03))) != []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_pvalue": 0.0},
        {"max_pvalue": 1.0},
        {"min_magnitude": -0.1},
        {"min_magnitude": math.nan},
        {"window_len": 1},
        {"min_sessions": 0},
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        find_changes(series(noisy(20, 1)), **kwargs)  # type: ignore[arg-type]


# --- directions and gating -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "direction"),
    [
        ("median_ttft_ms", "lower"),
        ("median_e2el_ms", "lower"),
        ("median_e2e_latency_ms", "lower"),
        ("p99_itl_ms", "lower"),
        ("std_tpot_ms", "lower"),
        ("max_itl_ms", "lower"),
        ("error_rate", "lower"),
        ("failed", "lower"),
        ("connection_retries", "lower"),
        ("output_throughput", "higher"),
        ("total_token_throughput", "higher"),
        ("output_throughput_per_gpu", "higher"),
        ("request_throughput", "higher"),
        ("request_goodput", "higher"),
        ("interactivity", "higher"),
        ("max_output_tokens_per_s", "higher"),
        ("slo_attainment", "higher"),
        ("duration", None),
        ("completed", None),
        ("concurrency", None),
        ("mean_tokens_per_chunk", None),
        ("cost_per_million_output_tokens", "lower"),
        ("output_tokens_per_dollar", "higher"),
    ],
)
def test_metric_direction(key: str, direction: str | None) -> None:
    assert metric_direction(key) == direction


def test_the_gating_keys_in_both_spellings() -> None:
    gating = {"median_ttft_ms", "median_tpot_ms", "median_e2el_ms", "median_e2e_latency_ms", "output_throughput"}
    for key in [*gating, "error_rate"]:
        assert is_gating(key), key
    for key in ["p99_tpot_ms", "mean_tpot_ms", "total_token_throughput", "interactivity", "failed", "duration"]:
        assert not is_gating(key), key


# --- acknowledgements and the CI gate --------------------------------------------------------------------------


def a_change(
    *, test_id: str = TEST_ID, metric: str = "median_tpot_ms", day: int = 40, worse: bool = True, gating: bool = True
) -> Change:
    s = series([100.0] * 50, metric, test_id)
    return Change(
        key=s.key,
        index=day,
        before=s.points[day - 1],
        after=s.points[day],
        mean_before=100.0,
        mean_after=105.0 if worse == (metric_direction(metric) != "higher") else 95.0,
        ratio=1.05 if worse == (metric_direction(metric) != "higher") else 0.95,
        p_value=3e-12,
        worse=worse,
        gating=gating,
        nearby=tuple(p.session_id for p in s.points[day - 2 : day + 3]),
    )


def ack(change: Change, *, reason: str = "known", day: int | None = None) -> Acknowledgement:
    """The acknowledgement of ``change`` (as found on ``day``, when given: its place may have moved since)."""
    found = change if day is None else a_change(test_id=change.key.test_id, metric=change.key.metric, day=day)
    return acknowledge(found, by="alice", reason=reason, now=T0)


def test_an_acknowledgement_covers_its_change_and_no_other() -> None:
    change = a_change()
    assert unacknowledged([change], []) == [change]
    assert unacknowledged([change], [ack(change)]) == []
    # The same change found a session or two off as later sessions arrived is still the one acknowledged.
    assert unacknowledged([change], [ack(change, day=38)]) == []
    assert unacknowledged([change], [ack(change, day=42)]) == []
    # A change further on, another metric or another test is not.
    assert unacknowledged([change], [ack(change, day=37)]) == [change]
    assert unacknowledged([change], [ack(a_change(metric="median_ttft_ms"))]) == [change]
    assert unacknowledged([change], [ack(a_change(test_id="perf/test_other.py::test_x"))]) == [change]
    # The gap the date rule left: a step acknowledged before it showed (its change dated before the ack) fails.
    later = a_change(day=46)
    assert unacknowledged([change, later], [ack(change)]) == [later]


def test_should_fail_on_unacknowledged_worse_gating_changes() -> None:
    worse = a_change()
    better = a_change(worse=False)
    advisory = a_change(metric="p99_tpot_ms", gating=False)
    throughput_down = a_change(metric="output_throughput")
    changes = [worse, better, advisory, throughput_down]
    assert should_fail(changes, []) == [worse, throughput_down]
    assert should_fail(changes, [], fail_on="any") == [worse, better, throughput_down]
    assert should_fail(changes, [ack(worse)]) == [throughput_down]
    assert should_fail(changes, [ack(c) for c in changes], fail_on="any") == []
    assert should_fail([], []) == []
    with pytest.raises(ValueError, match="fail_on"):
        should_fail(changes, [], fail_on="better")  # type: ignore[arg-type]


# --- the printed lines -----------------------------------------------------------------------------------------


def test_the_printed_block_holds_the_numbers() -> None:
    s = series(noisy(100, 1, step_at=40, step=1.05))
    (change,) = find_changes(s)
    lines = format_changes([change])
    assert len(lines) == 3
    head, when, size = lines
    assert head == f"{TEST_ID} · median_tpot_ms (gating) · pair cpu-fp32 · workload 0123456789"
    at = change.at.strftime("%Y-%m-%d %H:%M")
    i = change.index
    assert when == (
        f"  {at} UTC: session s{i - 1:03d} (commit {i - 1:03d}abcdef0, engine {change.before.engine_version}) "
        f"→ session s{i:03d} (commit {i:03d}abcdef0, engine {change.after.engine_version})"
    )
    percent = (change.ratio - 1) * 100
    assert size == (
        f"  {percent:+.1f}% (worse): geometric mean {change.mean_before:.4g} ms → {change.mean_after:.4g} ms, "
        f"p = {change.p_value:.2g}"
    )


def test_the_word_follows_from_the_sign_and_the_direction() -> None:
    cases = [
        ("median_tpot_ms", 1.06, "worse"),
        ("median_tpot_ms", 0.94, "better"),
        ("output_throughput", 0.94, "worse"),
        ("output_throughput", 1.06, "better"),
        ("duration", 1.06, "change"),
    ]
    for metric, step, word in cases:
        (change,) = find_changes(series(noisy(80, 2, step_at=40, step=step), metric))
        size = format_changes([change])[2]
        match = re.match(r"  ([+-]\d+\.\d)% \((\w+)\): ", size)
        assert match, size
        assert match.group(2) == word
        assert (match.group(1)[0] == "+") is (step > 1)


def test_units_and_edge_values() -> None:
    throughput = find_changes(series(noisy(80, 3, level=2345.0, step_at=40, step=0.9), "output_throughput"))
    assert " tok/s → " in format_changes(throughput)[2]
    assert format_changes(throughput)[2].endswith(" tok/s, p = " + f"{throughput[0].p_value:.2g}")
    requests = find_changes(series(noisy(80, 3, level=12345.0, step_at=40, step=0.9), "request_throughput"))
    assert f"geometric mean {requests[0].mean_before:.0f} req/s" in format_changes(requests)[2]
    errors = find_changes(series([0.0] * 30 + [0.02] * 30, "error_rate"))
    # Nothing before: the difference, not a percentage; a p-value below what a float holds.
    assert format_changes(errors)[2] == "  +0.02 (worse): mean 0 → 0.02, p < 1e-300"
    tiny = Change(
        key=errors[0].key,
        index=30,
        before=errors[0].before,
        after=errors[0].after,
        mean_before=100.0,
        mean_after=100.04,
        ratio=1.0004,
        p_value=1e-6,
        worse=True,
        gating=True,
    )
    assert format_changes([tiny])[2].startswith("  +0.04% (worse): ")


def test_unknown_commit_and_engine_are_left_out() -> None:
    s = series(noisy(80, 4, step_at=40, step=1.1))
    (change,) = find_changes(s)
    bare = SessionPoint("x1", change.before.at, 1.0, 1, None, None, None, "e1")
    engine_only = SessionPoint("x2", change.after.at, 1.0, 1, None, None, "0.9.1", "e1")
    line = format_changes([dataclasses.replace(change, before=bare, after=engine_only)])[1]
    assert line.endswith(": session x1 → session x2 (engine 0.9.1)")


def test_acknowledged_changes_say_so() -> None:
    change = a_change()
    lines = format_changes([change, a_change(day=45)], [ack(change, reason="new engine")])
    assert len(lines) == 7
    assert lines[3] == f"  acknowledged by alice on {T0:%Y-%m-%d %H:%M} UTC: new engine"
    assert not any("acknowledged" in line for line in lines[4:])
