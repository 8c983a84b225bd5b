"""The streaming load generator: one load episode against an OpenAI-compatible server.

Built on aiohttp (C HTTP parser) and uvloop when installed: a load generator that is itself the bottleneck
reports its own latency, not the server's (figures in the README's performance section). Nothing here
computes statistics; it records what the client saw, per request, as :class:`RequestRecord` values.

Timing follows ``vllm bench serve``: ``start_s`` is taken after the concurrency slot is acquired, just before
the request is sent; every output event is stamped with ``time.perf_counter()`` when its read arrives
(the first read of the loop's pass over its ready sockets, :class:`~pytest_llmperf.client.feedclock.ReadyClock`).
"Just before" is taken literally: ``start_s`` is stamped when aiohttp hands the built request to the socket
(:class:`_StampedBody`), not before aiohttp builds it. vLLM stamps before ``session.post``, so its TTFT and
E2E also hold the client's own request-building time (0.1–0.3 ms here, more when many requests start at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.abc import AbstractStreamWriter

from pytest_llmperf.client.conversations import messages
from pytest_llmperf.client.feedclock import Connector, FeedClock
from pytest_llmperf.client.interrupts import Interrupts, RemoteInterrupt, cancel_on_interrupt
from pytest_llmperf.client.pacing import SendPacer
from pytest_llmperf.client.selfcheck import LoopMonitor
from pytest_llmperf.client.shards import conversation_groups
from pytest_llmperf.client.sse import StreamParser, excerpt, not_sse, not_sse_error
from pytest_llmperf.client.timing import poll_until, sleep_until
from pytest_llmperf.errors import RunInterrupted, StreamError
from pytest_llmperf.spec import Endpoint, Prompt, RequestRecord, RunRecords, Workload, redact_url

Progress = Callable[[int, "int | None", int], None]
"""Called after each measured request: (requests done, requests planned or None, output events so far)."""

StartInstant = Callable[[], float]
"""For a run that is one shard of a larger run: called once the warmup is done, it blocks until every shard is
ready and returns the common start instant (this process's ``time.perf_counter()`` seconds)."""

_CONNECT_TIMEOUT_S = 30.0
# aiohttp reads at most 64 KiB at a time by default; on long-context streams at high concurrency that made a
# benchmark client report several times less throughput than the server gave (vllm#39963).
_READ_BUFSIZE = 2**20
_MAX_CONNECTION_RETRIES = 4
_CLOSE_HEADERS = {"Connection": "close"}
_DRAIN_TIMEOUT_S = 1.0
_DISPATCH_SPIN_S = 0.002  # with busy_poll: the last stretch before an open-loop arrival is spun, not timed
_SENDS_PER_ITERATION = 4  # about half a millisecond of request building between two polls of the sockets
_CANCEL_GRACE_S = 5.0  # how long the cancelled requests of an interrupted run get to wind down


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
        body["messages"] = messages(prompt.history, str(prompt.prompt))  # earlier turns, then the new message
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


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows ``[DONE]`` (the chunked body's end) so the connection goes back to the pool.

    Leaving the body unread makes aiohttp close the connection, and the next request then pays a new TCP
    connection (measured: +0.6 ms inside TTFT at concurrency 1 when ``start_s`` was taken before the connect;
    the server's listen queue overflowed at 256).
    A server that keeps the body open after ``[DONE]`` gets a short grace, then the connection is dropped.
    """
    if response.content.is_eof():  # the usual case: the body's end came with [DONE]; no timer, no task
        return

    async def read_rest() -> None:
        async for _ in response.content.iter_any():
            pass

    try:
        await asyncio.wait_for(read_rest(), _DRAIN_TIMEOUT_S)
    except (asyncio.TimeoutError, aiohttp.ClientError):
        response.close()


class _StampedBody(aiohttp.BytesPayload):
    """A request body that sets its record's ``start_s`` the moment aiohttp writes it to the socket.

    aiohttp writes the buffered headers together with the body in that same call, so this is when the request
    leaves the client; the time aiohttp spends building the request before it is not the server's.
    """

    def __init__(self, body: bytes, record: RequestRecord) -> None:
        super().__init__(body, content_type="application/json")
        self._record = record

    async def write(self, writer: AbstractStreamWriter) -> None:
        self._record.start_s = time.perf_counter()
        await super().write(writer)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
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
        self.pacer = SendPacer(_SENDS_PER_ITERATION)
        # Set once the server has dropped a kept-alive connection (llama.cpp does after every stream while
        # advertising keep-alive): from then on every request asks for a connection of its own.
        self.close_connections = not endpoint.reuse_connections

    async def send(self, record: RequestRecord, body: bytes) -> None:
        await self.pacer.wait()
        for attempt in range(_MAX_CONNECTION_RETRIES + 1):
            # Until the body is written (a connection error may come first), the attempt starts now.
            record.start_s = time.perf_counter()
            try:
                await self._stream(record, body)
                return
            except aiohttp.ClientConnectorError as exc:
                self._fail(record, "connect", f"cannot connect to {redact_url(self.url)}: {exc.os_error}")
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
            except StreamError as exc:
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
    async def _read_in_task(content: aiohttp.StreamReader, parser: StreamParser) -> None:
        async for data in content.iter_any():
            if parser.feed(data, time.perf_counter()):
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
                raise StreamError(f"http_{response.status}", f"HTTP {response.status}: {excerpt(text)}")
            if not_sse(response.content_type) is not None:  # e.g. a JSON body: the server ignored stream=true
                raise not_sse_error(response.content_type, await response.read())
            parser = StreamParser(record, self.chat)
            try:
                clock = FeedClock.of(response)
                if clock is not None:
                    time_left = self.workload.request_timeout_s - (time.perf_counter() - record.start_s)
                    await clock.stream_into(response.content, parser, max(0.0, time_left))
                else:
                    await self._read_in_task(response.content, parser)
                parser.finish(time.perf_counter())
            finally:
                self.events_seen += parser.events
            await _drain(response)


def prompt_offsets(workload: Workload, prompts: Sequence[Prompt]) -> list[float]:
    """Seconds after the start at which each prompt is due (:func:`arrival_offsets` over the run's requests).

    A trace's prompts carry their own. In a multi-turn run the conversations arrive at the rate, so every turn of
    a conversation gets its conversation's arrival; only the first turn is sent then, each later one when the turn
    before it has ended (plus ``turn_gap_s``).
    """
    if workload.trace is not None:
        return [p.arrival_s or 0.0 for p in prompts]
    rng = random.Random(workload.seed + 1)
    if workload.turns == 1:
        return arrival_offsets(workload, len(prompts), rng)
    groups = conversation_groups(prompts)
    out = [0.0] * len(prompts)
    for group, offset in zip(groups, arrival_offsets(workload, len(groups), rng), strict=True):
        for i in group:
            out[i] = offset
    return out


@dataclass(frozen=True, slots=True)
class _Conversing:
    """Sends the turns of conversations in order: each turn once the one before it has ended and ``gap_s`` has
    passed (the user's think time). A concurrency slot is held by a conversation for all its turns, gaps
    included: ``concurrency`` is how many users talk at once."""

    client: _Client
    bodies: Sequence[bytes]
    record: Callable[[int, float], RequestRecord]  # (prompt index, due time) -> the request's new record
    gap_s: float
    should_stop: Callable[[], bool]
    finished: Callable[[], None]

    async def converse(self, group: Sequence[int], due: float) -> None:
        """One conversation, its first turn due at ``due``. A failed turn ends it, as vLLM's multi-turn benchmark
        drops a conversation whose request failed: a user whose request failed does not go on as if answered."""
        for n, i in enumerate(group):
            if n:
                due = time.perf_counter() + self.gap_s
                if self.gap_s:
                    await sleep_until(due, 0.0)
            if self.should_stop():
                return
            record = self.record(i, due)
            await self.client.send(record, self.bodies[i])
            self.finished()
            if not record.ok:
                return

    async def dispatch(
        self,
        groups: Sequence[Sequence[int]],
        offsets: Sequence[float],
        tasks: list[asyncio.Task[None]],
        semaphore: asyncio.Semaphore | None,
        start: float,
        dispatch_lags: list[float],
        *,
        slots: int | None,
        spin_s: float,
    ) -> None:
        """Start the conversations as tasks in ``tasks``: with ``slots`` (closed loop) that many workers take the
        next conversation as soon as theirs ends; otherwise each starts at its first prompt's offset."""
        if slots:
            queue = iter(groups)

            async def worker() -> None:
                for group in queue:
                    if self.should_stop():
                        return
                    await self.converse(group, start)

            tasks.extend(asyncio.ensure_future(worker()) for _ in range(slots))
            return
        for group in groups:
            due = start + offsets[group[0]]
            await sleep_until(due, spin_s)
            if self.should_stop():
                break
            dispatch_lags.append(max(0.0, time.perf_counter() - due))
            tasks.append(asyncio.ensure_future(_in_slot(semaphore, self.converse(group, due))))


async def _in_slot(semaphore: asyncio.Semaphore | None, work: Coroutine[Any, Any, None]) -> None:
    if semaphore is None:
        await work
        return
    async with semaphore:
        await work


@dataclass(slots=True)
class _RunState:
    """What a run has got to, shared between its task and :func:`run`, so that an interrupt (which cancels the
    task) still finds every record made so far."""

    warmup: list[RequestRecord] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    bench_start: float | None = None  # None until the measured window opens
    interrupts: Interrupts | None = None
    result: RunRecords | None = None  # set once the run is complete


async def _run(
    workload: Workload,
    endpoint: Endpoint,
    prompts: Sequence[Prompt],
    warmup_prompts: Sequence[Prompt],
    progress: Progress | None,
    state: _RunState,
    busy_poll: bool,
    offsets_given: Sequence[float] | None,
    start_instant: StartInstant | None,
) -> RunRecords:
    limit = workload.concurrency or 0
    connector = Connector(
        limit=limit, limit_per_host=limit, enable_cleanup_closed=True, force_close=not endpoint.reuse_connections
    )
    timeout = aiohttp.ClientTimeout(
        total=workload.request_timeout_s,
        sock_connect=_CONNECT_TIMEOUT_S,
        # No per-read timeout: aiohttp would cancel and re-arm a timer on every read (about a tenth of the
        # client's CPU per event), and request_timeout_s, which covers the whole request, always ends sooner.
        sock_read=None,
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
            # Not _in_slot(semaphore, client.send(...)): a task cancelled before it starts would leave that
            # send coroutine never awaited.
            await _in_slot(semaphore, client.send(record, body))

        if warmup_prompts:
            warm = [
                RequestRecord(
                    index=i,
                    arrival_s=time.perf_counter(),
                    input_len=p.input_len,
                    output_len=p.output_len,
                    conversation=p.conversation,
                    turn=p.turn,
                )
                for i, p in enumerate(warmup_prompts)
            ]
            state.warmup = warm
            bodies = [request_body(workload, endpoint, p) for p in warmup_prompts]
            if workload.turns > 1:  # a conversation's turns in order, each conversation holding a slot
                talk = _Conversing(
                    client, bodies, lambda i, _: warm[i], workload.turn_gap_s, lambda: False, lambda: None
                )
                now = time.perf_counter()
                await asyncio.gather(
                    *(_in_slot(semaphore, talk.converse(g, now)) for g in conversation_groups(warmup_prompts))
                )
            else:
                await asyncio.gather(*(one(r, b) for r, b in zip(warm, bodies, strict=True)))

        bodies = [request_body(workload, endpoint, p) for p in prompts]
        # A shard gets its share of the run's schedule (and runs open loop: see shards.arrival_schedule).
        offsets = list(offsets_given) if offsets_given is not None else prompt_offsets(workload, prompts)
        # Closed loop: this many workers (users), each sending as soon as its previous request ended.
        slots = workload.concurrency if workload.closed_loop and offsets_given is None else None
        records: list[RequestRecord] = []
        state.records = records
        tasks: list[asyncio.Task[None]] = []
        planned = len(prompts) if workload.duration_s is None else None
        done_count = 0

        def finished() -> None:
            nonlocal done_count
            done_count += 1
            if progress is not None:
                progress(done_count, planned, client.events_seen)

        def new_record(i: int, due: float) -> RequestRecord:
            prompt = prompts[i]
            record = RequestRecord(
                index=i,
                arrival_s=due,
                input_len=prompt.input_len,
                output_len=prompt.output_len,
                conversation=prompt.conversation,
                turn=prompt.turn,
            )
            records.append(record)
            return record

        monitor = LoopMonitor(connector.unread)
        gc.collect()
        gc.freeze()  # fewer, shorter GC pauses during the measured window
        stop_polling = asyncio.Event()
        poller = asyncio.ensure_future(poll_until(stop_polling)) if busy_poll else None
        if start_instant is not None:  # every shard opens its window at the same instant, whenever its warmup ended
            shared_start = start_instant()
            await sleep_until(shared_start, _DISPATCH_SPIN_S)
        monitor.start()  # after the wait: its CPU and wall time are the window's
        bench_start = time.perf_counter() if start_instant is None else shared_start
        state.bench_start = bench_start
        dispatch_lags: list[float] = []

        def should_stop() -> bool:
            # An interrupt also cancels this task, but a cancellation can be lost on Python < 3.12 (wait_for
            # returning a result that came in the same iteration), so no new request starts after one.
            if state.interrupts:
                return True
            return workload.duration_s is not None and time.perf_counter() - bench_start >= workload.duration_s

        try:
            if workload.turns > 1:
                # Multi-turn: a conversation's turns go in order, each once the previous reply has ended.
                talk = _Conversing(client, bodies, new_record, workload.turn_gap_s, should_stop, finished)
                await talk.dispatch(
                    conversation_groups(prompts),
                    offsets,
                    tasks,
                    semaphore,
                    bench_start,
                    dispatch_lags,
                    slots=slots,
                    spin_s=_DISPATCH_SPIN_S if busy_poll else 0.0,
                )
            elif slots:
                # Closed loop: `concurrency` workers take prompts in dataset order as soon as a slot frees.
                next_index = iter(range(len(prompts)))

                async def worker() -> None:
                    for i in next_index:
                        if should_stop():
                            return
                        await client.send(new_record(i, bench_start), bodies[i])
                        finished()

                tasks.extend(asyncio.ensure_future(worker()) for _ in range(slots))
            else:
                for i, offset in enumerate(offsets):
                    due = bench_start + offset
                    # Loop timers count milliseconds; a polling loop can afford to spin the last one.
                    await sleep_until(due, _DISPATCH_SPIN_S if busy_poll else 0.0)
                    if should_stop():
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
        result = RunRecords(
            workload=workload,
            records=records,
            bench_start_s=bench_start,
            bench_end_s=bench_end,
            warmup_records=state.warmup,
            client=monitor.check(dispatch_lags, wall_s=bench_end - bench_start, busy_poll=busy_poll),
            notes=notes,
        )
        state.result = result  # for an interrupt that lands while the session closes: the run is complete
        return result


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
    offsets: Sequence[float] | None = None,
    start_instant: StartInstant | None = None,
    remote_interrupt: RemoteInterrupt | None = None,
) -> RunRecords:
    """Run one load episode and return every request's record.

    ``busy_poll``: keep the event loop polling during the measured window instead of sleeping in the kernel
    (see :func:`pytest_llmperf.client.timing.poll_until`), at the cost of a full core.

    Ctrl-C (or SIGTERM mapped to it) stops the run promptly: the run is cancelled at its next ``await`` (see
    :mod:`pytest_llmperf.client.interrupts`), in-flight requests are recorded as cancelled, and
    :class:`RunInterrupted` carries the partial :class:`RunRecords` so nothing measured is lost.

    A shard of a larger run (:mod:`pytest_llmperf.client.shards`) passes its share of the arrival schedule as
    ``offsets`` (open loop), ``start_instant`` to open its window with the other shards, and, when it runs
    outside the main thread, a ``remote_interrupt`` that stops it as Ctrl-C would.
    """
    state = _RunState()
    loop = _loop_factory()()
    coro: Coroutine[Any, Any, RunRecords] = _run(
        workload, endpoint, prompts, warmup_prompts, progress, state, busy_poll, offsets, start_instant
    )
    main = loop.create_task(coro)
    try:
        with cancel_on_interrupt(loop, main) as interrupts:
            state.interrupts = interrupts
            if remote_interrupt is not None:
                remote_interrupt.attach(loop, main, interrupts)
            try:
                records = loop.run_until_complete(main)
            except BaseException as exc:
                # Once interrupted, whatever ended the run (the cancellation, a second interrupt raised out of
                # the loop, or an error on the way out) ends it as an interrupted run with what it measured.
                if not interrupts and not isinstance(exc, KeyboardInterrupt):
                    raise
                raise RunInterrupted(_cancel_and_collect(loop, main, workload, state, interrupts)) from None
            finally:
                if remote_interrupt is not None:
                    remote_interrupt.detach()
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()  # after the handlers are back: an interrupt never finds the loop closed
    if interrupts:  # it came as the run's task returned: nothing was cancelled
        raise RunInterrupted(_ended_by(records, interrupts))
    return records


def _ended_by(records: RunRecords, interrupts: Interrupts) -> RunRecords:
    """A complete run that an interrupt reached as it ended: kept whole, and the interrupt still stops pytest."""
    records.interrupted = True
    records.notes.append(f"{interrupts.name} came as the run ended: every request finished, but the session stops here")
    return records


def _cancel_and_collect(
    loop: asyncio.AbstractEventLoop,
    main: asyncio.Task[RunRecords],
    workload: Workload,
    state: _RunState,
    interrupts: Interrupts,
) -> RunRecords:
    # Every task of this loop, not just main: in open-loop mode a cancel that lands between two dispatches never
    # reaches the requests in flight, and the monitor and the poller must end before the loop closes too.
    pending = [main, *asyncio.all_tasks(loop)]
    for task in pending:
        task.cancel()
    with contextlib.suppress(BaseException):  # a further interrupt only cuts this short
        loop.run_until_complete(asyncio.wait(pending, timeout=_CANCEL_GRACE_S))
    finished = state.result
    if finished is not None:  # the run was complete; the interrupt landed while the session closed
        return _ended_by(finished, interrupts)
    name = interrupts.name
    end = time.perf_counter()
    records, warmup = state.records, state.warmup
    for record in [*warmup, *records]:
        if not record.error and record.finish_reason is None and record.status in (None, 200):
            record.error_kind, record.error = "cancelled", f"cancelled by {name} before it finished"
    return RunRecords(
        workload=workload,
        records=records,
        bench_start_s=end if state.bench_start is None else state.bench_start,
        bench_end_s=end,
        warmup_records=warmup,
        interrupted=True,
        notes=[f"the run was interrupted by {name}; figures cover the requests finished before it"],
    )
