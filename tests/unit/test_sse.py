"""The SSE parser on hand-made streams: each line carries the time of the read that completed it."""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from threaded_app import ThreadedApp

from pytest_llmperf.client import loadgen
from pytest_llmperf.client.sse import StreamError, StreamParser, not_sse, not_sse_error
from pytest_llmperf.spec import Endpoint, Prompt, RequestRecord, Workload


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
    assert list(p.record.event_times_s) == [2.0, 3.0]
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
    assert list(p.record.event_times_s) == [1.0]


def test_nothing_after_done_is_parsed() -> None:
    p = parser()
    assert p.feed(text_event("a") + b"data: [DONE]\n\n" + b"data: not json\n\n", 1.0)
    assert p.feed(text_event("b"), 2.0)
    assert list(p.record.event_times_s) == [1.0]


def test_usage_and_cumulative_tokens_are_recorded() -> None:
    p = parser()
    p.feed(text_event("a", usage='{"prompt_tokens":5,"completion_tokens":2}'), 1.0)
    p.feed(b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}\n\n', 2.0)
    assert list(p.record.event_cum_tokens) == [2]
    assert (p.record.prompt_tokens, p.record.completion_tokens) == (5, 3)


def test_chat_role_delta_is_not_an_event_but_an_empty_content_is() -> None:
    p = parser(chat=True)
    p.feed(b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n', 1.0)
    p.feed(b'data: {"choices":[{"delta":{"content":""}}]}\n\n', 2.0)
    p.feed(b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n', 3.0)
    assert list(p.record.event_times_s) == [2.0, 3.0]
    assert list(p.record.event_has_text) == [False, True]
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


def test_a_stream_without_output_says_what_the_server_sent_instead() -> None:
    # A chat stream whose only chunks are the role and the finish: the message shows them, so a user can tell a
    # model that said nothing from a parser that missed something.
    p = parser(chat=True)
    p.feed(b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n', 1.0)
    p.feed(b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\ndata: [DONE]\n\n', 2.0)
    with pytest.raises(StreamError, match="without any output event") as caught:
        p.finish(3.0)
    assert caught.value.kind == "empty"
    assert '"role":"assistant"' in str(caught.value)
    assert '"finish_reason":"length"' in str(caught.value)


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


# Valid JSON of an unexpected shape: each fails its request as malformed instead of raising out of the run.
ODD_CHUNKS = [
    '{"choices":[null]}',
    '{"choices":"x"}',
    '{"choices":{"0":{"text":"a"}}}',
    '{"choices":5}',
    '{"choices":[["a"]]}',
    '{"choices":[{"text":"a"}],"usage":"lots"}',
    '{"choices":[{"text":"a"}],"usage":[1]}',
    '{"choices":[{"text":5}]}',
    '{"choices":[{"text":["a","b"]}]}',
    '{"choices":[{"text":"a","finish_reason":3}]}',
    '{"choices":[{"text":"a"}],"usage":{"prompt_tokens_details":"x"}}',
    '{"choices":[{"text":"a"}],"usage":{"prompt_tokens_details":{"cached_tokens":"2"}}}',
    '{"choices":[{"text":"a"}],"usage":{"completion_tokens":"7"}}',
    '{"choices":[{"text":"a"}],"usage":{"completion_tokens":true}}',
    '{"choices":[{"text":"a"}],"usage":{"completion_tokens":-1}}',
    '{"choices":[{"text":"a"}],"usage":{"prompt_tokens":1.5}}',
    '{"choices":[{"text":"a"}],"timings":"x"}',
    '{"choices":[{"text":"a"}],"timings":{"predicted_n":"3"}}',
    '{"id":7,"choices":[{"text":"a"}]}',
]
ODD_CHAT_CHUNKS = [
    '{"choices":[{"delta":[]}]}',
    '{"choices":[{"delta":"hi"}]}',
    '{"choices":[{"delta":{"content":5}}]}',
    '{"choices":[{"delta":{"content":["hi"]}}]}',
    '{"choices":[{"delta":{"content":"hi"},"finish_reason":{"why":"stop"}}]}',
]


@pytest.mark.parametrize(
    ("chunk", "chat"), [(c, False) for c in ODD_CHUNKS] + [(c, True) for c in ODD_CHAT_CHUNKS], ids=str
)
def test_chunks_of_an_unexpected_shape_fail_the_request_as_malformed(chunk: str, chat: bool) -> None:
    p = parser(chat)
    good = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n' if chat else b'data: {"choices":[{"text":"a"}]}\n\n'
    p.feed(good, 1.0)
    before = copy.deepcopy(p.record)
    with pytest.raises(StreamError) as caught:
        p.feed(f"data: {chunk}\n\n".encode(), 2.0)
    assert caught.value.kind == "malformed"
    assert chunk in str(caught.value)  # the excerpt of the chunk
    # Nothing of the odd chunk was recorded (no half-written event).
    assert (p.record.event_times_s, p.record.completion_tokens) == (before.event_times_s, before.completion_tokens)


def test_a_null_count_keeps_the_one_already_reported() -> None:
    p = parser()
    p.feed(text_event("a", usage='{"prompt_tokens":5,"completion_tokens":1}'), 1.0)
    p.feed(b'data: {"choices":[],"usage":{"prompt_tokens":null,"completion_tokens":null}}\n\n', 2.0)
    assert (p.record.prompt_tokens, p.record.completion_tokens) == (5, 1)


def test_a_json_body_instead_of_a_stream_says_what_came_back() -> None:
    p = parser()
    body = b'{"id":"c1","object":"text_completion","choices":[{"text":"hello","finish_reason":"length"}]}'
    p.feed(body, 1.0)
    with pytest.raises(StreamError) as caught:
        p.finish(2.0)
    assert caught.value.kind == "not_sse"
    assert "not an SSE stream" in str(caught.value)
    assert '"text":"hello"' in str(caught.value)


@pytest.mark.parametrize(
    ("media_type", "what"),
    [
        ("application/json", "a JSON body"),
        ("application/problem+json", "a JSON body"),
        ("application/x-ndjson", "newline-delimited JSON"),
        ("text/html", "an HTML page"),
        ("text/event-stream", None),
        ("text/plain", None),  # may be a mislabelled stream: left to the parser
        ("application/octet-stream", None),
    ],
)
def test_media_types_that_cannot_be_a_stream(media_type: str, what: str | None) -> None:
    assert not_sse(media_type) == what


def test_the_not_sse_message_names_the_type_the_body_and_what_to_check() -> None:
    error = not_sse_error("application/json", b'{"choices":[{"text":"hi"}]}')
    assert error.kind == "not_sse"
    assert "Content-Type: application/json" in str(error)
    assert "ignored stream=true" in str(error)
    assert '{"choices":[{"text":"hi"}]}' in str(error)


# --- through the load generator: a tiny server in a thread of its own (the load generator runs its own loop) ---

Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


def _serving(handler: Handler) -> ThreadedApp:
    """A loopback server whose ``/v1/completions`` passes each request and its number (0-based) to ``handler``."""
    count = itertools.count()

    def make_app() -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            await request.read()
            return await handler(request, next(count))

        app = web.Application()
        app.router.add_post("/v1/completions", handle)
        return app

    return ThreadedApp(make_app)


def run_against(handler: Handler, num_prompts: int = 6) -> list[RequestRecord]:
    workload = Workload(input_len=4, output_len=3, num_prompts=num_prompts, concurrency=2, per_token_usage=False)
    prompts = [Prompt(prompt=[1, 2, 3, 4], input_len=4, output_len=3)] * num_prompts
    with _serving(handler) as url:
        return loadgen.run(workload, Endpoint(url=url, model="m"), prompts).records


@pytest.mark.parametrize("odd", ['{"choices":[null]}', '{"choices":[{"text":"b"}],"usage":"lots"}'])
def test_the_load_generator_fails_only_the_request_with_an_odd_chunk(odd: str) -> None:
    async def stream(request: web.Request, number: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            chunk = odd if number == 2 and i == 1 else json.dumps({"id": "r", "choices": [{"text": "a"}]})
            await response.write(f"data: {chunk}\n\n".encode())
        usage = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}
        await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    records = run_against(stream)
    assert len(records) == 6
    failed = [r for r in records if not r.ok]
    assert [r.error_kind for r in failed] == ["malformed"]
    assert odd in failed[0].error
    assert {r.completion_tokens for r in records if r.ok} == {3}


def test_a_json_answer_to_a_stream_request_is_not_sse_with_what_came_back() -> None:
    async def non_streamed(request: web.Request, number: int) -> web.StreamResponse:
        return web.json_response({"id": "c1", "choices": [{"text": "all at once", "finish_reason": "length"}]})

    records = run_against(non_streamed, num_prompts=2)
    assert {r.error_kind for r in records} == {"not_sse"}
    message = records[0].error
    assert "Content-Type: application/json" in message
    assert "ignored stream=true" in message
    assert "all at once" in message
