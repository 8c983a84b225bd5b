"""A request record's per-event storage: packed (at most 16 bytes an event), picklable, and read alike by the
metrics whether it was filled by the parser or built from lists."""

from __future__ import annotations

import json
import pickle
import sys
from array import array

import pytest

from pytest_llmperf.client.sse import StreamParser
from pytest_llmperf.errors import StreamError
from pytest_llmperf.judge.metrics import per_request, summarize
from pytest_llmperf.spec import RequestRecord, RunRecords, Workload

EVENTS = 10_000


def new_record() -> RequestRecord:
    return RequestRecord(index=0, arrival_s=0.0, input_len=8, output_len=EVENTS, start_s=0.5, status=200)


def chunk(i: int) -> bytes:
    # Continuous usage stats on every chunk, so that all three per-event sequences grow.
    usage = f'"usage":{{"prompt_tokens":8,"completion_tokens":{i + 1}}}'
    return f'data: {{"id":"r","choices":[{{"text":"t{i}","finish_reason":null}}],{usage}}}\n\n'.encode()


def streamed(events: int = EVENTS) -> RequestRecord:
    """A record the parser filled with ``events`` events, a few per read, each read with a time of its own."""
    parser = StreamParser(new_record(), chat=False)
    for start in range(0, events, 4):
        parser.feed(b"".join(chunk(i) for i in range(start, min(start + 4, events))), 1.0 + start / 1000)
    assert parser.feed(b"data: [DONE]\n\n", 99.0)
    parser.finish(99.0)
    return parser.record


def event_storage_bytes(record: RequestRecord) -> int:
    return sum(sys.getsizeof(s) for s in (record.event_times_s, record.event_cum_tokens, record.event_has_text))


def test_the_parser_stores_an_event_in_at_most_16_bytes() -> None:
    record = streamed()
    assert (len(record.event_times_s), len(record.event_cum_tokens), len(record.event_has_text)) == (EVENTS,) * 3
    # 8 (time) + 4 (count) + 1 (has text) = 13 bytes an event, plus the arrays' growth slack and headers.
    assert event_storage_bytes(record) / EVENTS <= 16
    assert record.event_cum_tokens[-1] == EVENTS
    assert record.event_times_s[-1] == 1.0 + (EVENTS - 4) / 1000


def test_lists_given_to_a_record_are_packed() -> None:
    record = RequestRecord(
        index=0,
        arrival_s=0.0,
        input_len=1,
        output_len=2,
        event_times_s=[1.0, 2.0],
        event_cum_tokens=[1, 2],
        event_has_text=[True, False],
    )
    assert record.event_times_s == array("d", [1.0, 2.0])
    assert record.event_cum_tokens == array("i", [1, 2])
    assert record.event_has_text == bytearray([1, 0])


def test_a_record_survives_pickle() -> None:
    record = streamed(1000)
    record.finish_reason, record.response_id = "length", "r"
    data = pickle.dumps(record)
    again = pickle.loads(data)
    assert again == record
    assert type(again.event_times_s) is array
    assert type(again.event_has_text) is bytearray
    assert again.event_cum_tokens.typecode == "i"
    assert len(data) < 16 * 1000 + 1000  # sent between processes as packed bytes, not one object per event


def test_as_dict_gives_json_ready_lists() -> None:
    record = RequestRecord(
        index=0, arrival_s=0.0, input_len=1, output_len=2, event_times_s=[0.5, 0.75], event_cum_tokens=[1, 3]
    )
    record.event_has_text.extend([1, 0])
    data = record.as_dict()
    assert data["event_times_s"] == [0.5, 0.75]
    assert type(data["event_times_s"]) is list
    assert data["event_cum_tokens"] == [1, 3]
    assert all(type(n) is int for n in data["event_cum_tokens"])
    assert data["event_has_text"] == [True, False]
    assert all(type(b) is bool for b in data["event_has_text"])
    assert json.loads(json.dumps(data))["event_has_text"] == [True, False]
    assert data["index"] == 0
    assert data["error"] == ""


def test_a_count_too_large_for_the_record_fails_the_request_and_adds_no_event() -> None:
    parser = StreamParser(new_record(), chat=False)
    parser.feed(chunk(0), 1.0)
    with pytest.raises(StreamError, match="out of range") as raised:
        parser.feed(b'data: {"choices":[{"text":"x"}],"usage":{"completion_tokens":4294967296}}\n', 2.0)
    assert raised.value.kind == "malformed"
    record = parser.record
    assert (len(record.event_times_s), len(record.event_cum_tokens), len(record.event_has_text)) == (1, 1, 1)


@pytest.mark.parametrize("compat", ["vllm", "sglang"])
def test_metrics_are_the_same_for_packed_and_list_records(compat: str) -> None:
    times = [10.5, 10.75, 11.0, 11.0, 11.5, 11.625]
    cums = [1, 3, 4, 4, 6, 7]
    texts = [False, True, True, False, True, True]

    def record(index: int) -> RequestRecord:
        return RequestRecord(index=index, arrival_s=9.75, input_len=8, output_len=7, start_s=10.0, status=200)

    packed = record(0)
    packed.event_times_s.extend(times)
    packed.event_cum_tokens.extend(cums)
    packed.event_has_text.extend(texts)
    built = RequestRecord(
        index=0,
        arrival_s=9.75,
        input_len=8,
        output_len=7,
        start_s=10.0,
        status=200,
        event_times_s=times,
        event_cum_tokens=cums,
        event_has_text=texts,
    )
    plain = record(0)  # lists set after construction (as older tools do) are read as they are
    plain.event_times_s, plain.event_cum_tokens, plain.event_has_text = times, cums, texts  # type: ignore[assignment]
    assert type(plain.event_times_s) is list

    expected = per_request(plain, compat)
    assert per_request(packed, compat) == expected
    assert per_request(built, compat) == expected
    workload = Workload(input_len=8, output_len=7, compat=compat)
    summaries = [
        summarize(RunRecords(workload=workload, records=[r], bench_start_s=10.0, bench_end_s=12.0))
        for r in (plain, packed, built)
    ]
    texts_of = [json.dumps(s, sort_keys=True, default=str) for s in summaries]  # NaN != NaN: compared as text
    assert texts_of[0] == texts_of[1] == texts_of[2]
    assert summaries[0]["median_ttft_ms"] == pytest.approx(750.0 if compat == "sglang" else 500.0)
