"""Per-turn TTFT of multi-turn runs, with known answers: the summary's ``ttft_by_turn`` and first vs later turns,
and how the terminal table, the JUnit properties and the HTML notes show them."""

from __future__ import annotations

import pytest

from pytest_llmperf.judge import metrics
from pytest_llmperf.report import html, junit, terminal
from pytest_llmperf.results import RunDocument
from pytest_llmperf.spec import RequestRecord, RunRecords, Workload


def record(
    index: int, conversation: int | None, turn: int, ttft_ms: float, prompt: int, cached: int | None
) -> RequestRecord:
    r = RequestRecord(
        index=index, arrival_s=0.0, input_len=prompt, output_len=2, start_s=10.0, conversation=conversation, turn=turn
    )
    r.status, r.prompt_tokens, r.completion_tokens, r.cached_tokens = 200, prompt, 2, cached
    r.event_times_s.extend([10.0 + ttft_ms / 1000, 10.0 + ttft_ms / 1000 + 0.01])
    r.event_cum_tokens.extend([1, 2])
    r.event_has_text.extend([True, True])
    return r


# Two conversations of three turns: first turns 100 and 120 ms on 50-token prompts, none cached; later turns
# 20..50 ms on longer prompts, mostly cached.
RECORDS = [
    record(0, 0, 1, 100.0, 50, 0),
    record(1, 0, 2, 20.0, 100, 48),
    record(2, 0, 3, 30.0, 150, 96),
    record(3, 1, 1, 120.0, 50, 0),
    record(4, 1, 2, 40.0, 100, 48),
    record(5, 1, 3, 50.0, 150, 96),
]


def summary(records: list[RequestRecord]) -> dict[str, object]:
    run = RunRecords(workload=Workload(turns=3), records=records, bench_start_s=9.0, bench_end_s=11.0)
    return dict(metrics.summarize(run))


def test_ttft_by_turn_has_each_turns_statistics() -> None:
    s = summary(RECORDS)
    assert s["conversations"] == 2
    by_turn = s["ttft_by_turn"]
    assert isinstance(by_turn, dict)
    assert list(by_turn) == ["1", "2", "3"]
    assert by_turn["1"]["requests"] == 2
    assert by_turn["1"]["median_ms"] == pytest.approx(110.0)
    assert by_turn["1"]["p99_ms"] == pytest.approx(119.8)  # linear: 100 + 0.99 × 20
    assert by_turn["2"]["mean_ms"] == pytest.approx(30.0)
    assert by_turn["3"]["input_len_mean"] == 150.0
    assert by_turn["1"]["cached_fraction"] == 0.0
    assert by_turn["2"]["cached_fraction"] == pytest.approx(0.48)
    assert by_turn["3"]["cached_fraction"] == pytest.approx(0.64)


def test_first_turns_and_later_turns_are_summarized_apart() -> None:
    s = summary(RECORDS)
    assert s["median_ttft_turn1_ms"] == pytest.approx(110.0)
    assert s["median_ttft_later_turns_ms"] == pytest.approx(35.0)  # of 20, 30, 40, 50
    assert s["mean_ttft_later_turns_ms"] == pytest.approx(35.0)
    assert s["median_ttft_ms"] == pytest.approx(45.0)  # the pooled figure mixes both


def test_a_turn_with_an_unreported_cache_count_has_no_cached_fraction_and_failures_are_left_out() -> None:
    failed = record(6, 1, 3, 10.0, 150, None)
    failed.status = 500
    records = [*RECORDS[:5], record(5, 1, 3, 50.0, 150, None), failed]
    by_turn = summary(records)["ttft_by_turn"]
    assert isinstance(by_turn, dict)
    assert by_turn["3"]["cached_fraction"] is None
    assert by_turn["3"]["requests"] == 2


def test_single_requests_get_no_per_turn_keys() -> None:
    s = summary([record(0, None, 1, 100.0, 50, 0)])
    assert "ttft_by_turn" not in s
    assert "median_ttft_turn1_ms" not in s


def document() -> RunDocument:
    s = metrics.summarize(RunRecords(workload=Workload(turns=3), records=RECORDS, bench_start_s=9.0, bench_end_s=11.0))
    s["dataset_lens"] = {"input_len_mean": 100.0, "output_len_mean": 2.0}
    workload = Workload(turns=3, concurrency=2, num_prompts=2).as_dict()
    return {"nodeid": "test_chat.py::test_turns", "workload": workload, "summary": s, "runs": [s]}


def test_the_terminal_row_shows_the_mean_lengths_and_a_note_by_turn() -> None:
    lines = [text for text, _ in terminal.render([document()], pair="cpu-fp32", endpoint=None, verbose=0)]
    row = next(line for line in lines if line.startswith("test_chat.py"))
    assert "3t~100/2 c2" in row
    note = next(line for line in lines if "multi-turn" in line)
    assert note.strip() == (
        "multi-turn: 2 conversations; TTFT50 by turn 1: 110.0, 2: 30.0, 3: 40.0 ms; "
        "prompt cached by turn 1: 0%, 2: 48%, 3: 64%"
    )


def test_junit_properties_carry_ttft_and_cached_share_per_turn() -> None:
    props = dict(junit.properties(document()))
    assert props["llmperf.ttft_ms.turn1.p50"] == pytest.approx(110.0)
    assert props["llmperf.ttft_ms.turn3.p99"] == pytest.approx(49.8)
    assert props["llmperf.cached_prompt_fraction.turn2"] == pytest.approx(0.48)


def test_the_html_notes_list_the_turns() -> None:
    notes = html._notes(document())
    assert "multi-turn, 2 conversations, last run: turn 1: TTFT p50 110 / p99 120 ms" in notes
    assert "3 turns per conversation" in html._workload_text(document()["workload"])
