"""The SSE parser under Hypothesis: any JSON under the keys it reads, fed in any pieces.

Only :class:`StreamError` may ever escape (anything else would end the whole run), and the record never
depends on how the bytes were split into reads.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmperf.client import sse
from pytest_llmperf.client.sse import StreamError, StreamParser
from pytest_llmperf.spec import RequestRecord

FUZZ = settings(max_examples=200, deadline=None, database=None)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=2**40)
    | st.integers()  # beyond 64 bits too: orjson refuses those
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def maybe(shape: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the expected shape, sometimes any JSON value in its place."""
    return st.one_of(shape, shape, anything)


def some(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


counts = maybe(st.integers(min_value=0, max_value=10_000))
texts = maybe(st.text(max_size=6))
delta = maybe(some(content=texts, role=texts, reasoning_content=texts, tool_calls=anything))
choice = maybe(some(text=texts, delta=delta, finish_reason=maybe(st.sampled_from(["length", "stop"]))))
usage = maybe(
    some(prompt_tokens=counts, completion_tokens=counts, prompt_tokens_details=maybe(some(cached_tokens=counts)))
)
chunk = maybe(
    some(id=texts, choices=maybe(st.lists(choice, max_size=2)), usage=usage, timings=maybe(some(predicted_n=counts)))
)


def data_line(value: Any) -> bytes:
    return b"data: " + json.dumps(value, ensure_ascii=False).encode() + b"\n\n"


def stream_of(chunks: list[Any], done: bool) -> bytes:
    return b"".join(data_line(c) for c in chunks) + (b"data: [DONE]\n\n" if done else b"")


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def outcome(data: list[bytes], chat: bool) -> tuple[str, Any]:
    """What parsing ``data`` read by read gives: the record, or the StreamError (anything else escapes)."""
    parser = StreamParser(RequestRecord(index=0, arrival_s=0.0, input_len=1, output_len=1), chat)
    try:
        for read in data:
            parser.feed(read, 1.0)
        parser.finish(2.0)
    except StreamError as exc:
        return exc.kind, str(exc)
    return "ok", (parser.record.as_dict(), parser.events)


@FUZZ
@given(st.lists(chunk, max_size=4), st.booleans(), st.booleans(), st.lists(st.integers(min_value=0), max_size=6))
def test_any_chunk_shape_in_any_pieces_only_ever_raises_stream_error(
    chunks: list[Any], chat: bool, done: bool, cuts: list[int]
) -> None:
    data = stream_of(chunks, done)
    whole = outcome([data], chat)  # a non-StreamError exception fails the test here
    assert outcome(pieces(data, cuts), chat) == whole
    if whole[0] == "ok":
        record = whole[1][0]
        assert len(record["event_times_s"]) == len(record["event_has_text"])
        for key in ("prompt_tokens", "completion_tokens", "cached_tokens"):
            assert record[key] is None or type(record[key]) is int
        assert all(type(n) is int for n in record["event_cum_tokens"])
        assert record["finish_reason"] is None or isinstance(record["finish_reason"], str)


# Well-formed streams only: every one parses, to the same record whatever the split.
good_text = st.text(max_size=6)
good_usage = some(prompt_tokens=st.integers(0, 10_000), completion_tokens=st.integers(0, 10_000))
good_choice = some(text=good_text, finish_reason=st.sampled_from(["length", "stop"]))
good_delta = some(content=good_text)
good_chat_choice = some(delta=good_delta, finish_reason=st.sampled_from(["length", "stop"]))


@FUZZ
@given(
    st.booleans(),
    st.data(),
    st.lists(st.integers(min_value=0), max_size=8),
    st.booleans(),
)
def test_a_well_formed_stream_gives_the_same_record_however_it_is_split(
    chat: bool, data: st.DataObject, cuts: list[int], crlf: bool
) -> None:
    choice = good_chat_choice if chat else good_choice
    first = {"id": "r1", "choices": [{"delta": {"content": "a"}} if chat else {"text": "a"}]}
    rest = data.draw(st.lists(some(choices=st.lists(choice, min_size=1, max_size=1), usage=good_usage), max_size=5))
    stream = stream_of([first, *rest], done=True)
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")
    whole = outcome([stream], chat)
    assert whole[0] == "ok", whole
    assert outcome(pieces(stream, cuts), chat) == whole
    assert outcome([bytes([b]) for b in stream], chat) == whole  # one byte per read


def test_deeply_nested_json_is_malformed_not_a_recursion_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "_json_loads", json.loads)  # the parser without orjson (its own depth limit)
    payload = b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n"
    kind, _ = outcome([payload], chat=False)
    assert kind == "malformed"
