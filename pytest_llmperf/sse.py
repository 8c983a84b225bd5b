"""Parses an OpenAI-compatible SSE stream into a :class:`RequestRecord`, read by read, as the bytes arrive.

Pure: no I/O and no clock of its own. The caller hands over each read with the time it came off the socket, so
the same parser serves the load generator's fast path (fed inside the connection's ``data_received``) and its
fallback (fed by the request's task). Every line is stamped with the time of the read that completed it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pytest_llmperf.spec import RequestRecord

_json_loads: Callable[[bytes], Any]
try:  # orjson parses SSE payloads ~3x faster; optional (extra "fast").
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - depends on the environment
    _json_loads = json.loads

EXCERPT_CHARS = 300
_CHAT_OUTPUT_KEYS = ("content", "reasoning", "reasoning_content", "tool_calls", "function_call")


class StreamError(Exception):
    """The stream itself is wrong (malformed, an error chunk, empty, cut short); ``kind`` names the failure."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def excerpt(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "")


def _cumulative_tokens(chunk: dict[str, Any], usage: Any) -> int | None:
    """Completion tokens so far, when the server says so per chunk.

    vLLM and SGLang send ``usage`` on every chunk with ``continuous_usage_stats``; llama.cpp ignores that
    option but reports ``timings.predicted_n`` per chunk with ``timings_per_token``.
    """
    if usage and isinstance(usage.get("completion_tokens"), int):
        return int(usage["completion_tokens"])
    timings = chunk.get("timings")
    if isinstance(timings, dict) and isinstance(timings.get("predicted_n"), int):
        return int(timings["predicted_n"])
    return None


def _chat_output(choice: dict[str, Any]) -> bool | None:
    """True/False when the delta is an output event (with/without text); None when it is not one.

    The role-only opening delta is not output; an empty ``content`` without ``role`` is (a special token
    decoded to nothing), as in vLLM.
    """
    delta = choice.get("delta") or {}
    for key in _CHAT_OUTPUT_KEYS:
        if delta.get(key):
            return True
    if delta.get("content") == "" and "role" not in delta:
        return False
    return None


class StreamParser:
    """One response body: :meth:`feed` each read, then :meth:`finish` once the body has ended."""

    __slots__ = ("_buffer", "chat", "done", "events", "record")

    def __init__(self, record: RequestRecord, chat: bool) -> None:
        self.record = record
        self.chat = chat
        self.done = False  # ``data: [DONE]`` seen
        self.events = 0  # output events recorded
        self._buffer = b""  # the unfinished last line

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
                raise StreamError("empty", "stream closed with no output and no [DONE]")
            raise StreamError("truncated", "stream closed before [DONE]")
        if not self.record.event_times_s:
            raise StreamError("empty", "stream finished without any output event")

    def _line(self, line: bytes, now: float) -> bool:
        """Handle one SSE line; True at ``[DONE]``."""
        if not line.startswith(b"data:"):
            line = line.lstrip()  # rare: indented lines; comments, "event:" and "id:" fields carry nothing
            if not line.startswith(b"data:"):
                return False
        payload = line[5:]  # the JSON parser skips the space after the colon and a CR at the end itself
        if len(payload) < 16 and payload.strip() == b"[DONE]":
            return True
        try:
            chunk = _json_loads(payload)
        except ValueError:
            raise StreamError("malformed", f"invalid JSON in stream: {excerpt(payload.strip())}") from None
        if not isinstance(chunk, dict):
            raise StreamError("malformed", f"stream chunk is not a JSON object: {excerpt(payload.strip())}")
        if "error" in chunk:
            raise StreamError("stream_error", f"server reported an error mid-stream: {excerpt(payload.strip())}")
        record = self.record
        usage = chunk.get("usage")
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            has_text = _chat_output(choice) if self.chat else True
            if has_text is not None:
                record.event_times_s.append(now)
                text = choice.get("delta", {}).get("content") if self.chat else choice.get("text")
                record.event_has_text.append(bool(text) or (self.chat and has_text))
                if text:
                    record.output_chars += len(text)
                if usage or "timings" in chunk:
                    cumulative = _cumulative_tokens(chunk, usage)
                    if cumulative is not None:
                        record.event_cum_tokens.append(cumulative)
                self.events += 1
            reason = choice.get("finish_reason")
            if reason:
                record.finish_reason = reason
        if usage:
            record.prompt_tokens = usage.get("prompt_tokens", record.prompt_tokens)
            record.completion_tokens = usage.get("completion_tokens", record.completion_tokens)
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and details.get("cached_tokens") is not None:
                record.cached_tokens = details["cached_tokens"]
        if record.response_id is None:
            record.response_id = chunk.get("id")
        return False
