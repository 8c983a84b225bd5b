"""The SSE parser on hand-made streams: each line carries the time of the read that completed it."""

from __future__ import annotations

import re

import pytest

from pytest_llmperf.spec import RequestRecord
from pytest_llmperf.sse import StreamError, StreamParser


def parser(chat: bool = False) -> StreamParser:
    return StreamParser(RequestRecord(index=0, arrival_s=0.0, input_len=1, output_len=3), chat)


def text_event(text: str, **extra: str) -> bytes:
    more = "".join(f',"{k}":{v}' for k, v in extra.items())
    return b'data: {"id":"r1","choices":[{"text":"' + text.encode() + b'"}]' + more.encode() + b"}\n\n"


def test_a_line_split_across_reads_is_stamped_by_the_read_that_completes_it() -> None:
    p = parser()
    stream = text_event("ab") + text_event("c")
    first_line_end = stream.index(b"\n") + 1
    assert not p.feed(stream[:10], 1.0)
    assert not p.feed(stream[10:first_line_end], 2.0)
    assert not p.feed(stream[first_line_end:], 3.0)
    assert p.feed(b"data: [DONE]\n\n", 4.0)
    assert p.record.event_times_s == [2.0, 3.0]
    assert p.record.output_chars == 3
    assert p.record.response_id == "r1"
    assert p.record.last_line_s == 4.0
    assert p.events == 2
    p.finish(5.0)


def test_crlf_lines_comments_and_fields_carry_no_events() -> None:
    p = parser()
    stream = b": keep-alive\r\n\r\nevent: message\r\nid: 7\r\n" + text_event("x").replace(b"\n", b"\r\n")
    p.feed(stream + b"data: [DONE]\r\n\r\n", 1.0)
    assert p.done
    assert p.record.event_times_s == [1.0]


def test_nothing_after_done_is_parsed() -> None:
    p = parser()
    assert p.feed(text_event("a") + b"data: [DONE]\n\n" + b"data: not json\n\n", 1.0)
    assert p.feed(text_event("b"), 2.0)
    assert p.record.event_times_s == [1.0]


def test_usage_and_cumulative_tokens_are_recorded() -> None:
    p = parser()
    p.feed(text_event("a", usage='{"prompt_tokens":5,"completion_tokens":2}'), 1.0)
    p.feed(b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}\n\n', 2.0)
    assert p.record.event_cum_tokens == [2]
    assert (p.record.prompt_tokens, p.record.completion_tokens) == (5, 3)


def test_chat_role_delta_is_not_an_event_but_an_empty_content_is() -> None:
    p = parser(chat=True)
    p.feed(b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n', 1.0)
    p.feed(b'data: {"choices":[{"delta":{"content":""}}]}\n\n', 2.0)
    p.feed(b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n', 3.0)
    assert p.record.event_times_s == [2.0, 3.0]
    assert p.record.event_has_text == [False, True]
    assert p.record.finish_reason == "stop"


def test_a_last_line_without_newline_is_accepted_at_the_end() -> None:
    p = parser()
    p.feed(text_event("a") + b"data: [DONE]", 1.0)
    assert not p.done
    p.finish(2.0)
    assert p.done


@pytest.mark.parametrize(
    ("stream", "kind", "text"),
    [
        (b"", "empty", "no output and no [DONE]"),
        (b"data: [DONE]\n\n", "empty", "without any output event"),
        (text_event("a"), "truncated", "before [DONE]"),
    ],
)
def test_incomplete_streams_fail_at_the_end(stream: bytes, kind: str, text: str) -> None:
    p = parser()
    p.feed(stream, 1.0)
    with pytest.raises(StreamError, match=re.escape(text)) as caught:
        p.finish(2.0)
    assert caught.value.kind == kind


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"data: {not json\n", "malformed"),
        (b"data: [1, 2]\n", "malformed"),
        (b'data: {"error": {"message": "boom"}}\n', "stream_error"),
    ],
)
def test_bad_chunks_fail_at_once_with_an_excerpt(line: bytes, kind: str) -> None:
    p = parser()
    with pytest.raises(StreamError) as caught:
        p.feed(line, 1.0)
    assert caught.value.kind == kind
    assert line[6:].strip().decode() in str(caught.value)
