"""Parses an OpenAI-compatible SSE stream into a :class:`RequestRecord`, read by read, as the bytes arrive.

Pure: no I/O and no clock of its own. The caller hands over each read with the time it came off the socket, so
the same parser serves the load generator's fast path (fed inside the connection's ``data_received``) and its
fallback (fed by the request's task). Every line is stamped with the time of the read that completed it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pytest_llmperf.errors import StreamError
from pytest_llmperf.spec import RequestRecord

_json_loads: Callable[[bytes], Any]
try:  # orjson parses SSE payloads ~3x faster; optional (extra "fast").
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - depends on the environment
    _json_loads = json.loads

EXCERPT_CHARS = 300
_SSE_FIELDS = (b":", b"event:", b"id:", b"retry:")  # lines of an SSE stream that carry no data
_NDJSON = frozenset({"application/x-ndjson", "application/jsonl", "application/json-seq"})
# What a non-SSE answer to a streamed request is -> what to check.
_NOT_SSE_HINTS = {
    "a JSON body": "it ignored stream=true (a non-streamed completion, or an error sent with status 200); "
    "check that the endpoint serves OpenAI-compatible streaming",
    "newline-delimited JSON": "that is a native streaming API, not OpenAI's; point the plugin at the server's "
    "OpenAI-compatible API",
    "an HTML page": "a web page, e.g. from a proxy or a login page, stands in front of the server; check the URL",
}
_CHAT_OTHER_OUTPUT = ("reasoning", "reasoning_content", "tool_calls", "function_call")  # output besides content


def excerpt(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "")


def not_sse(media_type: str) -> str | None:
    """What the answer to a streamed request is when its media type (lower case, no parameters) cannot be an
    SSE stream, else None. Types that may be a mislabelled stream (text/plain, none) are left to the parser."""
    if media_type == "application/json" or media_type.endswith("+json"):
        return "a JSON body"
    if media_type in _NDJSON:
        return "newline-delimited JSON"
    if media_type == "text/html":
        return "an HTML page"
    return None


def not_sse_error(media_type: str, body: bytes) -> StreamError:
    """The failure of a streamed request answered with ``body`` of a type :func:`not_sse` refuses."""
    what = not_sse(media_type) or f"a {media_type} body"
    hint = _NOT_SSE_HINTS.get(what, "check that the endpoint serves OpenAI-compatible streaming")
    return StreamError(
        "not_sse",
        f"the server answered with {what} (Content-Type: {media_type}), not an SSE stream: {hint}. "
        f"Body: {excerpt(body.strip())}",
    )


class _Shape(TypeError):
    """A known key of a chunk holds a value of the wrong type (turned into a ``malformed`` stream)."""


def _count(value: object, name: str) -> int | None:
    """A token count as the server sent it; None when absent. Anything but an int >= 0 would skew the numbers."""
    if value is None or (type(value) is int and value >= 0):  # exact type: a bool is no count
        return value
    raise _Shape(f"{name}={_short(value)} is not a token count")


def _string(value: object, name: str) -> str | None:
    if value is None or type(value) is str:
        return value
    raise _Shape(f"{name}={_short(value)} is not a string")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _chat_output(delta: Any, text: str | None) -> bool | None:
    """True/False when the delta (unchecked JSON, see ``StreamParser._chunk``) is an output event (with/without
    text); None when it is not one.

    The role-only opening delta is not output; an empty ``content`` without ``role`` is (a special token
    decoded to nothing), as in vLLM.
    """
    if text:
        return True
    for key in _CHAT_OTHER_OUTPUT:
        if delta.get(key):
            return True
    if text == "" and "role" not in delta:
        return False
    return None


class StreamParser:
    """One response body: :meth:`feed` each read, then :meth:`finish` once the body has ended."""

    __slots__ = ("_buffer", "_foreign", "_silent", "chat", "done", "events", "record")

    def __init__(self, record: RequestRecord, chat: bool) -> None:
        self.record = record
        self.chat = chat
        self.done = False  # ``data: [DONE]`` seen
        self.events = 0  # output events recorded
        self._buffer = b""  # the unfinished last line
        self._foreign = b""  # the start of any lines that are not SSE at all, for the message if nothing else came
        self._silent = b""  # the chunks that came before any output event, for the message if none ever came

    def feed(self, data: bytes, now: float) -> bool:
        """Take one read that arrived at ``now``; True once ``[DONE]`` has been seen (later bytes are ignored)."""
        if self.done:
            return True
        if b"\n" not in data:
            self._buffer += data
            return False
        lines = (self._buffer + data if self._buffer else data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            # Blank separators (and a lone CR of CRLF streams) carry nothing: skipped before any other work.
            if len(line) > 1 and self._line(line, now):
                self.done = True
                break
        self.record.last_line_s = now
        return self.done

    def finish(self, now: float) -> None:
        """The body has ended: accept a last line without its newline, then check the stream was complete."""
        if not self.done and self._buffer.strip():
            # The server may close right after a last line it did not terminate.
            self.done = self._line(self._buffer, now)
            self._buffer = b""
        if not self.done:
            if not self.record.event_times_s:
                if self._foreign:
                    raise StreamError(
                        "not_sse",
                        "the body is not an SSE stream (no 'data:' line): the server ignored stream=true or is not "
                        "OpenAI-compatible; check that the endpoint serves OpenAI-compatible streaming. Body: "
                        + excerpt(self._foreign.strip()),
                    )
                raise StreamError("empty", "stream closed with no output and no [DONE]")
            raise StreamError("truncated", "stream closed before [DONE]")
        if not self.record.event_times_s:
            chunks = f": the server sent {excerpt(self._silent.strip())}" if self._silent else ""
            raise StreamError("empty", f"stream finished without any output event{chunks}")

    def _line(self, line: bytes, now: float) -> bool:
        """Handle one SSE line; True at ``[DONE]``."""
        if not line.startswith(b"data:"):
            line = line.lstrip()  # rare: indented lines; comments, "event:" and "id:" fields carry nothing
            if not line.startswith(b"data:"):
                if line.rstrip() and not line.startswith(_SSE_FIELDS) and len(self._foreign) < EXCERPT_CHARS:
                    self._foreign += line + b"\n"  # e.g. a JSON body: kept for the message
                return False
        payload = line[5:]  # the JSON parser skips the space after the colon and a CR at the end itself
        if len(payload) < 16 and payload.strip() == b"[DONE]":
            return True
        try:
            chunk = _json_loads(payload)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON (the stdlib parser)
            raise StreamError("malformed", f"invalid JSON in stream: {excerpt(payload.strip())}") from None
        if chunk.__class__ is not dict:  # the JSON parsers give plain dicts
            raise StreamError("malformed", f"stream chunk is not a JSON object: {excerpt(payload.strip())}")
        if "error" in chunk:
            raise StreamError("stream_error", f"server reported an error mid-stream: {excerpt(payload.strip())}")
        try:
            self._chunk(chunk, now)
        except (TypeError, AttributeError, KeyError, IndexError) as exc:
            # Valid JSON of another shape ({"choices": [null]}, "usage": "lots", ...): this request fails, the
            # run goes on. Checking every type up front would cost every event; a wrong shape raises by itself.
            why = str(exc) if isinstance(exc, _Shape) else f"{type(exc).__name__}: {exc}"
            raise StreamError(
                "malformed", f"stream chunk of an unexpected shape ({why}): {excerpt(payload.strip())}"
            ) from None
        if not self.events and len(self._silent) < EXCERPT_CHARS:  # only until the first output
            self._silent += payload.strip() + b"\n"
        return False

    def _chunk(self, chunk: dict[str, Any], now: float) -> None:
        """Record one chunk. Everything is read and checked before the record changes, so a chunk that raises
        (see :meth:`_line`) leaves no partial event behind.

        ``chunk`` is parsed JSON whose shape is not checked up front (that would cost every event): a value of
        the wrong type raises here and fails the request, hence ``Any`` rather than a JSON type to narrow."""
        # Every event goes through here: counts are checked inline (a valid one passes the first test) and
        # _count(), which gives the message, runs only for None or a wrong value.
        usage = chunk.get("usage")
        prompt_tokens = completion_tokens = cached_tokens = None
        if usage is not None:
            prompt_tokens = usage.get("prompt_tokens")
            if prompt_tokens.__class__ is not int or prompt_tokens < 0:
                prompt_tokens = _count(prompt_tokens, "usage.prompt_tokens")
            completion_tokens = usage.get("completion_tokens")
            if completion_tokens.__class__ is not int or completion_tokens < 0:
                completion_tokens = _count(completion_tokens, "usage.completion_tokens")
            details = usage.get("prompt_tokens_details")
            if details is not None:
                cached_tokens = details.get("cached_tokens")
                if cached_tokens.__class__ is not int or cached_tokens < 0:
                    cached_tokens = _count(cached_tokens, "usage.prompt_tokens_details.cached_tokens")
        # vLLM and SGLang send usage on every chunk with continuous_usage_stats; llama.cpp ignores that option
        # but reports timings.predicted_n per chunk with timings_per_token.
        cumulative = completion_tokens
        timings = chunk.get("timings")
        if timings is not None:
            predicted = _count(timings.get("predicted_n"), "timings.predicted_n")
            cumulative = predicted if cumulative is None else cumulative
        record = self.record
        response_id = _string(chunk.get("id"), "id") if record.response_id is None else None
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            chat = self.chat
            if chat:
                delta = choice.get("delta")
                text = None if delta is None else delta.get("content")
            else:
                delta, text = None, choice.get("text")
            # Inline, not _string(): this runs for every event.
            if text is not None and text.__class__ is not str:
                raise _Shape(f"{'delta.content' if chat else 'text'}={_short(text)} is not a string")
            # An output event (completions: every chunk with choices) with or without text; None: none.
            has_text = bool(text) if not chat else None if delta is None else _chat_output(delta, text)
            reason = choice.get("finish_reason")
            if reason is not None and reason.__class__ is not str:
                raise _Shape(f"finish_reason={_short(reason)} is not a string")
            if has_text is not None:
                if cumulative is not None:  # first: a count too large for the record leaves no partial event
                    try:
                        record.event_cum_tokens.append(cumulative)
                    except OverflowError:
                        raise _Shape(f"a count of {_short(cumulative)} tokens is out of range") from None
                record.event_times_s.append(now)
                record.event_has_text.append(has_text)
                if text:
                    record.output_chars += len(text)
                self.events += 1
            if reason:
                record.finish_reason = reason
        if prompt_tokens is not None:
            record.prompt_tokens = prompt_tokens
        if completion_tokens is not None:
            record.completion_tokens = completion_tokens
        if cached_tokens is not None:
            record.cached_tokens = cached_tokens
        if record.response_id is None:
            record.response_id = response_id
