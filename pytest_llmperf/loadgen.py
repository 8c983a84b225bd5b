"""The streaming load generator: one load episode against an OpenAI-compatible server.

Built on aiohttp (C HTTP parser) and uvloop when installed: a load generator that is itself the bottleneck
reports its own latency, not the server's (figures in the README's performance section). Nothing here
computes statistics; it records what the client saw, per request, as :class:`RequestRecord` values.

Timing follows ``vllm bench serve``: ``start_s`` is taken after the concurrency slot is acquired, just before
the request is sent; every output event is stamped with ``time.perf_counter()`` when its read arrives.
"Just before" is taken literally: ``start_s`` is stamped when aiohttp hands the built request to the socket
(:class:`_StampedBody`), not before aiohttp builds it. vLLM stamps before ``session.post``, so its TTFT and
E2E also hold the client's own request-building time (0.1–0.3 ms here, more when many requests start at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler

from pytest_llmperf.errors import RunInterrupted
from pytest_llmperf.selfcheck import LoopMonitor
from pytest_llmperf.spec import Endpoint, Prompt, RequestRecord, RunRecords, Workload
from pytest_llmperf.timing import poll_until, sleep_until

_json_loads: Callable[[bytes], Any]
try:  # orjson parses SSE payloads ~3x faster; optional (extra "fast").
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - depends on the environment
    _json_loads = json.loads

Progress = Callable[[int, "int | None", int], None]
"""Called after each measured request: (requests done, requests planned or None, output events so far)."""

_EXCERPT_CHARS = 300
_CONNECT_TIMEOUT_S = 30.0
_READ_BUFSIZE = 2**20  # aiohttp's 64 KiB default throttles long-context streams (see llm-benchmarks.md §1.5)
_MAX_CONNECTION_RETRIES = 4
_CLOSE_HEADERS = {"Connection": "close"}
_DRAIN_TIMEOUT_S = 1.0
_DISPATCH_SPIN_S = 0.002  # with busy_poll: the last stretch before an open-loop arrival is spun, not timed
_CHAT_OUTPUT_KEYS = ("content", "reasoning", "reasoning_content", "tool_calls", "function_call")


def arrival_offsets(workload: Workload, count: int, rng: random.Random) -> list[float]:
    """Seconds after the start at which each request is due (vLLM semantics).

    Infinite rate: all at 0. Finite rate: gaps ~ Gamma(shape=burstiness, scale=1/(rate*burstiness)),
    cumulated, then rescaled so the last arrival lands exactly at ``count / rate`` (removes seed drift).
    """
    if math.isinf(workload.request_rate) or count == 0:
        return [0.0] * count
    rate, shape = workload.request_rate, workload.burstiness
    offsets: list[float] = []
    total = 0.0
    for _ in range(count):
        total += rng.gammavariate(shape, 1.0 / (rate * shape)) if math.isfinite(shape) else 1.0 / rate
        offsets.append(total)
    scale = (count / rate) / offsets[-1] if offsets[-1] > 0 else 1.0
    return [t * scale for t in offsets]


def request_body(workload: Workload, endpoint: Endpoint, prompt: Prompt) -> bytes:
    """The JSON body for one streamed request, serialized before the run starts."""
    body: dict[str, Any] = {"model": endpoint.model, "stream": True}
    stream_options: dict[str, Any] = {"include_usage": True}
    if workload.per_token_usage:
        stream_options["continuous_usage_stats"] = True
    body["stream_options"] = stream_options
    if workload.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt.prompt}]
        body["max_completion_tokens"] = prompt.output_len
    else:
        body["prompt"] = prompt.prompt
    body["max_tokens"] = prompt.output_len
    if workload.ignore_eos:
        body["ignore_eos"] = True
    if workload.temperature is not None:
        body["temperature"] = workload.temperature
    body.update(endpoint.extra_body)
    return json.dumps(body, separators=(",", ":")).encode()


class _StreamError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


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


def _excerpt(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text[:_EXCERPT_CHARS] + ("…" if len(text) > _EXCERPT_CHARS else "")


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows ``[DONE]`` (the chunked body's end) so the connection goes back to the pool.

    Leaving the body unread makes aiohttp close the connection, and the next request then pays a new TCP
    connection (measured: +0.6 ms inside TTFT at concurrency 1 when ``start_s`` was taken before the connect;
    the server's listen queue overflowed at 256).
    A server that keeps the body open after ``[DONE]`` gets a short grace, then the connection is dropped.
    """

    async def read_rest() -> None:
        async for _ in response.content.iter_any():
            pass

    try:
        await asyncio.wait_for(read_rest(), _DRAIN_TIMEOUT_S)
    except (asyncio.TimeoutError, aiohttp.ClientError):
        response.close()


class _FeedClock(ResponseHandler):
    """aiohttp's connection protocol, noting when each read of a response body arrived from the socket.

    The task that parses a stream runs only after every stream that became readable in the same loop turn has
    been read, and after the tasks woken before it: at concurrency 64 that is up to a millisecond or two after
    its bytes arrived. Stamping here, in ``data_received`` before any task runs, keeps that queueing inside the
    client out of TTFT and ITL. (Where aiohttp's internals differ, :meth:`of` finds no clock and the parsing
    task's own time is used, as before.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (body reader, its bytes so far, perf_counter) after each read; consumed in order by arrival().
        self.feeds: deque[tuple[object, int, float]] = deque()

    def data_received(self, data: bytes) -> None:
        if not data:  # aiohttp resuming its parser after a pause: nothing arrived
            super().data_received(data)
            return
        now = time.perf_counter()
        before = getattr(self, "_payload", None)  # the body being read; None once its end was parsed
        super().data_received(data)
        payload = getattr(self, "_payload", None) or before
        if isinstance(payload, aiohttp.StreamReader):
            self.feeds.append((payload, payload.total_bytes, now))

    def arrival(self, reader: aiohttp.StreamReader, end: int, default: float) -> float:
        """When the body's first ``end`` bytes had all arrived (``default`` when no read recorded it)."""
        feeds = self.feeds
        while feeds and (feeds[0][0] is not reader or feeds[0][1] < end):
            feeds.popleft()
        return min(feeds[0][2], default) if feeds else default

    @staticmethod
    def of(response: aiohttp.ClientResponse) -> _FeedClock | None:
        connection = response.connection
        protocol = connection.protocol if connection is not None else None
        return protocol if isinstance(protocol, _FeedClock) else None


class _Connector(aiohttp.TCPConnector):
    """A TCP connector whose connections use :class:`_FeedClock` as their protocol."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(getattr(self, "_factory", None), functools.partial):
            self._factory = cast("functools.partial[ResponseHandler]", functools.partial(_FeedClock, loop=self._loop))


class _StampedBody(aiohttp.BytesPayload):
    """A request body that sets its record's ``start_s`` the moment aiohttp writes it to the socket.

    aiohttp writes the buffered headers together with the body in that same call, so this is when the request
    leaves the client; the time aiohttp spends building the request before it is not the server's.
    """

    def __init__(self, body: bytes, record: RequestRecord) -> None:
        super().__init__(body, content_type="application/json")
        self._record = record

    async def write(self, writer: Any) -> None:
        self._record.start_s = time.perf_counter()
        await super().write(writer)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        self._record.start_s = time.perf_counter()
        await super().write_with_length(writer, content_length)


class _Client:
    """Sends requests on one shared session and parses their SSE streams into records."""

    def __init__(self, workload: Workload, endpoint: Endpoint, session: aiohttp.ClientSession) -> None:
        self.workload = workload
        self.session = session
        self.chat = workload.api == "chat"
        path = "/v1/chat/completions" if self.chat else "/v1/completions"
        self.url = endpoint.base_url + path
        self.events_seen = 0
        # Set once the server has dropped a kept-alive connection (llama.cpp does after every stream while
        # advertising keep-alive): from then on every request asks for a connection of its own.
        self.close_connections = not endpoint.reuse_connections

    async def send(self, record: RequestRecord, body: bytes) -> None:
        for attempt in range(_MAX_CONNECTION_RETRIES + 1):
            # Until the body is written (a connection error may come first), the attempt starts now.
            record.start_s = time.perf_counter()
            try:
                await self._stream(record, body)
                return
            except aiohttp.ClientConnectorError as exc:
                self._fail(record, "connect", f"cannot connect to {self.url}: {exc.os_error}")
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # Failed before any response byte on a pooled keep-alive connection the server had closed:
                # the request never reached it. A client-side connection event, retried on a fresh
                # connection with a new start time and counted in ``connection_retries``.
                if record.status is None and attempt < _MAX_CONNECTION_RETRIES:
                    record.connection_retries += 1
                    self.close_connections = True
                    continue
                kind = "disconnected" if record.status is not None else "connection"
                self._fail(record, kind, f"{type(exc).__name__}: {exc}")
            except _StreamError as exc:
                self._fail(record, exc.kind, str(exc))
            except aiohttp.ClientPayloadError as exc:
                self._fail(record, "truncated", f"stream ended early: {exc}")
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
                self._fail(
                    record,
                    "timeout",
                    f"no complete response within request_timeout_s={self.workload.request_timeout_s:g}",
                )
            except aiohttp.ClientError as exc:
                self._fail(record, "client_error", f"{type(exc).__name__}: {exc}")
            return

    @staticmethod
    def _fail(record: RequestRecord, kind: str, message: str) -> None:
        record.error_kind = kind
        record.error = message

    async def _stream(self, record: RequestRecord, body: bytes) -> None:
        headers = _CLOSE_HEADERS if self.close_connections else None
        async with self.session.post(self.url, data=_StampedBody(body, record), headers=headers) as response:
            record.status = response.status
            if response.status != 200:
                text = await response.read()
                raise _StreamError(f"http_{response.status}", f"HTTP {response.status}: {_excerpt(text)}")
            done = False
            buffer = b""
            content = response.content
            clock = _FeedClock.of(response)
            received = 0  # body bytes read so far: where each line ends, to find the read that brought it
            async for data in content.iter_any():
                now = time.perf_counter()
                received += len(data)
                buffer += data
                if b"\n" not in data:
                    continue
                *lines, buffer = buffer.split(b"\n")
                end = received - len(buffer) - sum(map(len, lines)) - len(lines)
                arrived = now
                for line in lines:
                    end += len(line) + 1
                    if clock is not None:
                        arrived = clock.arrival(content, end, now)
                    if self._line(record, line, arrived):
                        done = True
                record.last_line_s = arrived
                if done:
                    break
            if not done and buffer.strip():
                # A last line without its newline: accept it, the server may close right after.
                done = self._line(record, buffer, time.perf_counter())
            if not done:
                if not record.event_times_s:
                    raise _StreamError("empty", "stream closed with no output and no [DONE]")
                raise _StreamError("truncated", "stream closed before [DONE]")
            if not record.event_times_s:
                raise _StreamError("empty", "stream finished without any output event")
            await _drain(response)

    def _line(self, record: RequestRecord, line: bytes, now: float) -> bool:
        """Handle one SSE line; True at ``[DONE]``."""
        line = line.strip()
        if not line.startswith(b"data:"):
            return False  # blank separators, comments, "event:" and "id:" fields carry nothing we need
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return True
        try:
            chunk = _json_loads(payload)
        except ValueError:
            raise _StreamError("malformed", f"invalid JSON in stream: {_excerpt(payload)}") from None
        if not isinstance(chunk, dict):
            raise _StreamError("malformed", f"stream chunk is not a JSON object: {_excerpt(payload)}")
        if "error" in chunk:
            raise _StreamError("stream_error", f"server reported an error mid-stream: {_excerpt(payload)}")
        usage = chunk.get("usage")
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            has_text = self._chat_output(choice) if self.chat else True
            if has_text is not None:
                record.event_times_s.append(now)
                text = choice.get("delta", {}).get("content") if self.chat else choice.get("text")
                record.event_has_text.append(bool(text) or (self.chat and has_text))
                if text:
                    record.output_chars += len(text)
                cumulative = _cumulative_tokens(chunk, usage)
                if cumulative is not None:
                    record.event_cum_tokens.append(cumulative)
                self.events_seen += 1
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

    @staticmethod
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


async def _run(
    workload: Workload,
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    warmup_prompts: Sequence[Prompt],
    progress: Progress | None,
    state: dict[str, Any],
    busy_poll: bool,
) -> RunRecords:
    limit = workload.concurrency or 0
    connector = _Connector(
        limit=limit, limit_per_host=limit, enable_cleanup_closed=True, force_close=not endpoint.reuse_connections
    )
    timeout = aiohttp.ClientTimeout(
        total=workload.request_timeout_s,
        sock_connect=_CONNECT_TIMEOUT_S,
        sock_read=workload.request_timeout_s,
    )
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers=headers,
        read_bufsize=_READ_BUFSIZE,
        raise_for_status=False,
    ) as session:
        client = _Client(workload, endpoint, session)
        semaphore = asyncio.Semaphore(workload.concurrency) if workload.concurrency else None

        async def one(record: RequestRecord, body: bytes) -> None:
            if semaphore is None:
                await client.send(record, body)
                return
            async with semaphore:
                await client.send(record, body)

        if warmup_prompts:
            warm = [
                RequestRecord(index=i, arrival_s=time.perf_counter(), input_len=p.input_len, output_len=p.output_len)
                for i, p in enumerate(warmup_prompts)
            ]
            state["warmup"] = warm
            bodies = [request_body(workload, endpoint, p) for p in warmup_prompts]
            await asyncio.gather(*(one(r, b) for r, b in zip(warm, bodies, strict=True)))

        bodies = [request_body(workload, endpoint, p) for p in prompts]
        offsets = arrival_offsets(workload, len(prompts), random.Random(workload.seed + 1))
        records: list[RequestRecord] = []
        state["records"] = records
        tasks: list[asyncio.Task[None]] = []
        state["tasks"] = tasks
        planned = len(prompts) if workload.duration_s is None else None
        done_count = 0

        def finished() -> None:
            nonlocal done_count
            done_count += 1
            if progress is not None:
                progress(done_count, planned, client.events_seen)

        def new_record(i: int, due: float) -> RequestRecord:
            prompt = prompts[i]
            record = RequestRecord(index=i, arrival_s=due, input_len=prompt.input_len, output_len=prompt.output_len)
            records.append(record)
            return record

        monitor = LoopMonitor()
        gc.collect()
        gc.freeze()  # fewer, shorter GC pauses during the measured window
        stop_polling = asyncio.Event()
        poller = asyncio.ensure_future(poll_until(stop_polling)) if busy_poll else None
        monitor.start()
        bench_start = time.perf_counter()
        state["bench_start"] = bench_start
        dispatch_lags: list[float] = []

        def out_of_time() -> bool:
            return workload.duration_s is not None and time.perf_counter() - bench_start >= workload.duration_s

        try:
            if workload.concurrency and math.isinf(workload.request_rate):
                # Closed loop: `concurrency` workers take prompts in dataset order as soon as a slot frees.
                next_index = iter(range(len(prompts)))

                async def worker() -> None:
                    for i in next_index:
                        if out_of_time():
                            return
                        await client.send(new_record(i, bench_start), bodies[i])
                        finished()

                tasks.extend(asyncio.ensure_future(worker()) for _ in range(workload.concurrency))
            else:
                for i, offset in enumerate(offsets):
                    due = bench_start + offset
                    # Loop timers count milliseconds; a polling loop can afford to spin the last one.
                    await sleep_until(due, _DISPATCH_SPIN_S if busy_poll else 0.0)
                    if out_of_time():
                        break
                    dispatch_lags.append(max(0.0, time.perf_counter() - due))
                    task = asyncio.ensure_future(one(new_record(i, due), bodies[i]))
                    task.add_done_callback(lambda _: finished())
                    tasks.append(task)
            await asyncio.gather(*tasks)
        finally:
            bench_end = time.perf_counter()
            monitor.stop()
            stop_polling.set()
            if poller is not None:
                await poller
            gc.unfreeze()
        notes = []
        if client.close_connections and endpoint.reuse_connections:
            notes.append(
                "the server closed kept-alive connections, so requests switched to one connection each "
                "(the connect happens before a request's clock starts, so TTFT excludes it; the server still "
                "pays the new connection)"
            )
        return RunRecords(
            workload=workload,
            records=records,
            bench_start_s=bench_start,
            bench_end_s=bench_end,
            warmup_records=state.get("warmup", []),
            client=monitor.check(dispatch_lags, wall_s=bench_end - bench_start, busy_poll=busy_poll),
            notes=notes,
        )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(
    workload: Workload,
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    *,
    warmup_prompts: Sequence[Prompt] = (),
    progress: Progress | None = None,
    busy_poll: bool = False,
) -> RunRecords:
    """Run one load episode and return every request's record.

    ``busy_poll``: keep the event loop polling during the measured window instead of sleeping in the kernel
    (see :func:`pytest_llmperf.timing.poll_until`), at the cost of a full core.

    Ctrl-C stops the run promptly: in-flight requests are cancelled and recorded as such, and
    :class:`RunInterrupted` carries the partial :class:`RunRecords` so nothing measured is lost.
    """
    state: dict[str, Any] = {}
    loop = _loop_factory()()
    coro: Coroutine[Any, Any, RunRecords] = _run(
        workload, endpoint, prompts, warmup_prompts, progress, state, busy_poll
    )
    main = loop.create_task(coro)
    try:
        return loop.run_until_complete(main)
    except KeyboardInterrupt:
        partial = _cancel_and_collect(loop, main, workload, state)
        raise RunInterrupted(partial) from None
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _cancel_and_collect(
    loop: asyncio.AbstractEventLoop, main: asyncio.Task[RunRecords], workload: Workload, state: dict[str, Any]
) -> RunRecords:
    for task in [*state.get("tasks", []), main]:
        task.cancel()
    with contextlib.suppress(BaseException):
        loop.run_until_complete(asyncio.gather(main, *state.get("tasks", []), return_exceptions=True))
    end = time.perf_counter()
    records: list[RequestRecord] = state.get("records", [])
    for record in records:
        if not record.error and record.finish_reason is None and record.status in (None, 200):
            record.error_kind, record.error = "cancelled", "cancelled by Ctrl-C before it finished"
    return RunRecords(
        workload=workload,
        records=records,
        bench_start_s=state.get("bench_start", end),
        bench_end_s=end,
        warmup_records=state.get("warmup", []),
        interrupted=True,
        notes=["the run was interrupted by Ctrl-C; figures cover the requests finished before it"],
    )
