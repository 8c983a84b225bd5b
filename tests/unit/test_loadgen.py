"""The load generator against the simulator: faults become failed requests with reasons, never 0 ms successes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import aiohttp
import httpx
import pytest

from pytest_llmperf.client import loadgen, tokenizer
from pytest_llmperf.client.datasets import PromptContext, build_prompts
from pytest_llmperf.client.feedclock import Connector, FeedClock, ReadyClock
from pytest_llmperf.client.sse import StreamParser
from pytest_llmperf.harness.runner import planned_prompts
from pytest_llmperf.judge import metrics
from pytest_llmperf.spec import Endpoint, RequestRecord, RunRecords, Workload


def run(url: str, workload: Workload, *, reuse: bool = True) -> RunRecords:
    endpoint = Endpoint(url=url, model="llmperf-sim", reuse_connections=reuse)
    prompts = build_prompts(workload, planned_prompts(workload), PromptContext(token_pool=list(range(100, 200))))
    return loadgen.run(workload, endpoint, prompts)


def set_faults(url: str, *faults: str) -> None:
    httpx.post(f"{url}/sim/config", json={"faults": list(faults)}, timeout=10).raise_for_status()


@pytest.fixture
def sim(start_sim: type) -> str:
    return start_sim("--decode-ms", "1", "--decode-ms-per-seq", "0", "--jitter", "0").url


W = Workload(input_len=8, output_len=6, num_prompts=10, concurrency=2)


def test_clean_run_has_exact_records(sim: str) -> None:
    records = run(sim, W).records
    assert all(r.ok for r in records)
    assert {r.completion_tokens for r in records} == {6}
    assert {r.prompt_tokens for r in records} == {8}
    assert {len(r.event_times_s) for r in records} == {6}
    assert all(r.start_s >= r.arrival_s and r.event_times_s[0] > r.start_s for r in records)
    assert {r.finish_reason for r in records} == {"length"}


def test_a_request_starts_when_its_bytes_are_written() -> None:
    record = RequestRecord(index=0, arrival_s=0.0, input_len=1, output_len=1)

    class Writer:
        async def write(self, chunk: bytes) -> None:
            self.at, self.chunk = time.perf_counter(), chunk

    writer = Writer()
    before = time.perf_counter()
    asyncio.run(loadgen._StampedBody(b'{"prompt": [1]}', record).write_with_length(writer, None))
    assert before <= record.start_s <= writer.at
    assert writer.chunk == b'{"prompt": [1]}'


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """(entered, left) of every ``FeedClock.data_received`` call the test makes: when each read was handled."""
    noted: list[tuple[float, float]] = []
    data_received = FeedClock.data_received

    def noting(self: FeedClock, data: bytes) -> None:
        entered = time.perf_counter()
        data_received(self, data)
        noted.append((entered, time.perf_counter()))

    monkeypatch.setattr(FeedClock, "data_received", noting)
    return noted


def test_times_agree_with_the_servers_clock_and_events_are_stamped_on_arrival(
    sim: str, reads: list[tuple[float, float]]
) -> None:
    """One host, one monotonic clock: a request starts before the simulator has received it, and each event
    carries a time taken while its bytes came off the socket (inside the protocol's data_received, before
    any task ran), not the later time at which a task happened to run."""
    records = run(sim, W).records
    seen = {e["id"]: e for e in httpx.get(f"{sim}/sim/requests", timeout=10).json()["requests"]}

    def during_a_read(t: float) -> bool:
        return any(entered <= t <= left for entered, left in reads)

    for r in records:
        assert r.arrival_s <= r.start_s < seen[r.response_id]["received_at"] < r.event_times_s[0]
        assert all(during_a_read(t) for t in r.event_times_s)
    # Reads in one pass over the ready sockets share its first stamp; a stamp kept past its pass would give
    # the whole run, a few dozen decode steps, one time.
    assert len({t for r in records for t in r.event_times_s}) > 1


def test_a_stream_that_ended_before_its_task_ran_is_stamped_with_its_reads(
    start_sim: type, reads: list[tuple[float, float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One-token streams from a server with no decode delay often end in the read that brought their headers,
    and aiohttp has given the connection back before the request's task runs: the events still carry the
    time of that read, never the later time at which the task got to them."""
    url = start_sim("--decode-ms", "0", "--decode-ms-per-seq", "0", "--jitter", "0").url
    released: list[bool] = []
    of = FeedClock.of

    def finding(response: aiohttp.ClientResponse) -> FeedClock | None:
        released.append(response.connection is None)
        return of(response)

    monkeypatch.setattr(FeedClock, "of", staticmethod(finding))
    # Whether a stream ends with its headers depends on scheduling: on a loaded machine a run may have none, so
    # runs repeat (every one checked) until the case under test has occurred, for up to 30 s.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = run(url, Workload(input_len=4, output_len=1, num_prompts=40, concurrency=4)).records
        assert all(r.ok for r in records)
        assert all(any(a <= t <= b for a, b in reads) for r in records for t in r.event_times_s)
        if any(released):
            break
    assert any(released), "no stream ended with its headers: the case under test did not occur"


def test_the_clock_of_a_response_whose_connection_is_back_in_the_pool_is_still_found() -> None:
    clock = feed_clock()

    class Released:
        connection = None
        _protocol = clock

    class Elsewhere:
        connection = None
        _protocol = object()

    assert FeedClock.of(Released()) is clock  # type: ignore[arg-type]
    assert FeedClock.of(Elsewhere()) is None  # type: ignore[arg-type]


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        return pytest.importorskip("uvloop").new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def stamps_of_reads(kind: str, clock_max_age_s: float, hold_s: float = 0.0) -> list[list[float]]:
    """Stamps that three sockets' reads get: a first pass (all three written before the loop polls), then a
    second pass (one of them written again). Each read may hold the loop for ``hold_s``."""

    async def main() -> list[list[float]]:
        loop = asyncio.get_running_loop()
        clock = ReadyClock(loop, max_age_s=clock_max_age_s)
        stamps: list[float] = []

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                stamps.append(clock.now())
                until = time.perf_counter() + hold_s
                while time.perf_counter() < until:
                    pass

        pairs = [socket.socketpair() for _ in range(3)]
        transports = [(await loop.connect_accepted_socket(Reader, ours))[0] for ours, _ in pairs]
        try:
            for _, theirs in pairs:
                theirs.send(b"x")  # all three readable by the loop's next poll
            await asyncio.sleep(0.01)
            first = list(stamps)
            pairs[0][1].send(b"y")
            await asyncio.sleep(0.01)
            return [first, stamps[len(first) :]]
        finally:
            for transport in transports:
                transport.close()
            for _, theirs in pairs:
                theirs.close()

    loop = new_loop(kind)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_reads_in_one_pass_over_the_ready_sockets_share_its_first_stamp(kind: str) -> None:
    first, second = stamps_of_reads(kind, clock_max_age_s=1.0)
    assert len(first) == 3
    assert len(set(first)) == 1  # one poll found all three readable
    assert len(second) == 1
    assert second[0] > first[0]  # a later pass stamps afresh


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_long_pass_is_restamped_as_it_goes(kind: str) -> None:
    """Bytes that arrive while a pass goes on can be returned by one of its reads: a stamp is never older than
    its limit, so such bytes are never stamped more than that early."""
    first, _ = stamps_of_reads(kind, clock_max_age_s=0.001, hold_s=0.002)
    assert len(set(first)) == 3


def test_all_connections_of_a_run_share_one_ready_clock() -> None:
    async def two_protocols() -> tuple[object, object]:
        connector = Connector()
        try:
            return connector._factory(), connector._factory()  # what each new connection gets
        finally:
            await connector.close()

    first, second = asyncio.run(two_protocols())
    assert isinstance(first, FeedClock)
    assert isinstance(second, FeedClock)
    assert isinstance(first._now.__self__, ReadyClock)  # type: ignore[attr-defined]
    assert first._now.__self__ is second._now.__self__  # type: ignore[attr-defined]


def test_busy_poll_keeps_the_loop_polling_and_records_it(sim: str) -> None:
    endpoint = Endpoint(url=sim, model="llmperf-sim")
    workload = W.replace(request_rate=200.0, concurrency=None)
    prompts = build_prompts(workload, planned_prompts(workload), PromptContext(token_pool=list(range(100, 200))))
    polled = loadgen.run(workload, endpoint, prompts, busy_poll=True)
    assert all(r.ok for r in polled.records)
    assert polled.client is not None
    assert polled.client.busy_poll
    assert not any("of a core" in reason for reason in polled.client.reasons)  # a full core is by design here
    plain = loadgen.run(workload, endpoint, prompts)
    assert plain.client is not None
    assert not plain.client.busy_poll


class BufferedBody(aiohttp.StreamReader):
    """Only what ``FeedClock.replay`` touches: buffered bytes, and how many the body has had in all."""

    def __init__(self, chunks: list[bytes], earlier_bytes: int = 0) -> None:
        self.chunks = chunks
        self.total_bytes = earlier_bytes + sum(map(len, chunks))

    def exception(self) -> BaseException | None:
        return None

    def read_nowait(self, n: int = -1) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def feed_clock() -> FeedClock:
    loop = asyncio.new_event_loop()
    try:
        return FeedClock(loop=loop)
    finally:
        loop.close()


def test_reads_from_before_the_parser_was_attached_keep_their_arrival_times() -> None:
    """The first chunk often comes with the headers, before the request's task attaches its parser: each
    line is replayed with the time of the read that completed it, matched by body offset."""

    chunks = [b'data: {"choices":[{"text":"a"}]}\n\ndata: {"ch', b'oices":[{"text":"b"}]}\n\n']
    clock = feed_clock()
    reader, other = BufferedBody(chunks, earlier_bytes=40), object()  # 40 bytes: an earlier line
    first, second = 40 + len(reader.chunks[0]), reader.total_bytes
    clock.feeds.extend([(other, 99, 0.5), (reader, 40, 0.75), (reader, first, 1.0), (reader, second, 2.0)])
    record = RequestRecord(index=0, arrival_s=0.0, input_len=1, output_len=2)
    parser = StreamParser(record, chat=False)
    clock.replay(reader, parser)
    assert list(record.event_times_s) == [1.0, 2.0]  # "b" was completed by the second read
    assert record.output_chars == 2
    assert not clock.feeds


def test_a_body_that_came_whole_with_its_headers_gets_the_time_of_that_read() -> None:
    """Headers and the whole (short) body in one read: the protocol cannot tell which reader that read fed,
    so the bytes no noted read accounts for take the time of the last read."""

    clock = feed_clock()
    clock.feeds.extend([(object(), 10, 0.5), (None, 0, 3.0)])
    record = RequestRecord(index=0, arrival_s=0.0, input_len=1, output_len=1)
    parser = StreamParser(record, chat=False)
    clock.replay(BufferedBody([b'data: {"choices":[{"text":"a"}]}\n\ndata: [DONE]\n\n']), parser)
    assert list(record.event_times_s) == [3.0]
    assert parser.done


@pytest.mark.parametrize(
    ("fault", "kind", "text"),
    [
        ("http_500:every=2", "http_500", "HTTP 500"),
        ("http_429:every=2", "http_429", "HTTP 429"),
        ("disconnect:every=2,after=2", "truncated", ""),
        ("malformed:every=2,after=1", "malformed", "invalid JSON"),
        ("empty:every=2", "empty", "without any output"),
        ("truncated:every=2", "truncated", ""),
    ],
)
def test_each_fault_is_a_failed_request_with_a_reason(sim: str, fault: str, kind: str, text: str) -> None:
    set_faults(sim, fault)
    run_records = run(sim, W)
    failed = [r for r in run_records.records if not r.ok]
    assert len(failed) == 5  # every 2nd of 10
    assert {r.error_kind for r in failed} == {kind}
    assert all(text in r.error for r in failed)
    summary = metrics.summarize(run_records)
    assert summary["completed"] == 5
    assert summary["failed"] == 5
    assert summary["error_rate"] == 0.5
    assert summary["errors"] == {kind: 5}


@pytest.mark.parametrize("fault", ["", "malformed:every=2,after=1", "disconnect:every=2,after=2"])
def test_without_the_protocol_hook_the_task_reads_the_body_to_the_same_records(
    sim: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where aiohttp's internals differ, the request's task parses the stream itself: same events, same
    failures."""
    if fault:
        set_faults(sim, fault)
    hooked = run(sim, W).records
    monkeypatch.setattr(FeedClock, "of", staticmethod(lambda response: None))
    plain = run(sim, W).records

    def outcomes(records: list[RequestRecord]) -> list[tuple[bool, str, int, int | None]]:
        # Sorted: the simulator counts "every 2nd" over all requests it has served, so the faulty ones
        # are not at the same positions in both runs.
        return sorted((r.ok, r.error_kind, len(r.event_times_s), r.completion_tokens) for r in records)

    assert outcomes(plain) == outcomes(hooked)
    assert any(r.ok for r in plain)


def test_http_error_keeps_an_excerpt_of_the_body(sim: str) -> None:
    set_faults(sim, "http_503:every=1")
    (record, *_) = run(sim, W.replace(num_prompts=1)).records
    assert record.status == 503
    assert record.error.startswith("HTTP 503: {")


def test_hung_stream_times_out_and_the_run_goes_on(sim: str) -> None:
    set_faults(sim, "hang:every=3,after=1,seconds=30")
    records = run(sim, W.replace(num_prompts=6, request_timeout_s=1.5)).records
    hung = [r for r in records if r.error_kind == "timeout"]
    assert len(hung) == 2
    assert "request_timeout_s=1.5" in hung[0].error
    assert sum(r.ok for r in records) == 4


def test_unreachable_server_fails_every_request_with_connect() -> None:
    records = run("http://127.0.0.1:9", W.replace(num_prompts=3)).records
    assert {r.error_kind for r in records} == {"connect"}
    assert "cannot connect to http://127.0.0.1:9/v1/completions" in records[0].error


def test_warmup_is_excluded_from_the_measured_records(sim: str) -> None:
    workload = W.replace(warmup=3)
    endpoint = Endpoint(url=sim, model="llmperf-sim")
    prompts = build_prompts(workload, 10, PromptContext(token_pool=list(range(100, 200))))
    result = loadgen.run(workload, endpoint, prompts, warmup_prompts=prompts[:3])
    assert len(result.records) == 10
    assert len(result.warmup_records) == 3
    assert result.bench_start_s >= max(r.event_times_s[-1] for r in result.warmup_records)


def test_duration_bounded_closed_loop_stops_dispatching(sim: str) -> None:
    workload = Workload(
        input_len=8, output_len=20, num_prompts=None, duration_s=1.0, concurrency=2, request_timeout_s=10
    )
    result = run(sim, workload.replace(num_prompts=None))
    assert 2 <= len(result.records) < 1000
    assert [r.error for r in result.records if not r.ok] == []
    # Each worker checks the clock before each request, so past the 1 s at most one request per worker (sent
    # when its check came just before the end) starts: a count, not a time, so a stalled loop cannot fail it.
    late = [r for r in result.records if r.start_s - result.bench_start_s >= 1.0]
    assert len(late) <= 2


def test_open_loop_requests_start_on_schedule(sim: str) -> None:
    result = run(sim, Workload(input_len=8, output_len=2, num_prompts=20, request_rate=40.0))
    offsets = [r.arrival_s - result.bench_start_s for r in result.records]
    assert offsets[-1] == pytest.approx(20 / 40.0)  # vLLM rescaling: the last arrival lands at N/rate
    assert all(r.start_s >= r.arrival_s for r in result.records)


def test_chat_role_chunk_is_not_an_output_event(sim: str) -> None:
    records = run(sim, W.replace(api="chat", num_prompts=2)).records
    assert all(r.ok for r in records)
    assert {len(r.event_times_s) for r in records} == {6}  # 6 tokens, the role-only chunk excluded


def test_per_chunk_token_counts_with_multi_token_chunks(start_sim: type) -> None:
    url = start_sim("--decode-ms", "2", "--tokens-per-chunk", "3", "--accept-rate", "1").url
    records = run(url, Workload(input_len=8, output_len=9, num_prompts=2)).records
    for record in records:
        # The prefill step yields the first token; each decode step then 3 (the last one capped at 9).
        assert list(record.event_cum_tokens) == [1, 4, 7, 9]
        m = metrics.per_request(record)
        assert m.itl_token_s is not None
        assert len(m.itl_token_s) == 8  # three gaps, split over 3, 3 and 2 tokens
        assert len(m.itl_chunk_s) == 3


def test_events_a_server_writes_at_once_share_the_stamp_of_the_read_that_carried_them(start_sim: type) -> None:
    """A server whose chunks reach the socket in bursts (here 4 decode steps of 30 ms per write): every event of
    a burst is stamped with the read that carried it, never before the server wrote it, the ITL inside a burst
    is 0, and no event gets a time of its own invented between the writes."""
    url = start_sim("--decode-ms", "30", "--decode-ms-per-seq", "0", "--jitter", "0", "--chunks-per-write", "4").url
    records = run(url, Workload(input_len=8, output_len=12, num_prompts=2, concurrency=2)).records
    written = {e["id"]: e for e in httpx.get(f"{url}/sim/requests", timeout=10).json()["requests"]}
    for r in records:
        assert r.ok
        assert len(r.event_times_s) == 12
        server = written[r.response_id]
        actual_s = [server["received_at"] + ms / 1000.0 for ms in server["actual_chunk_times_ms"]]
        stamps = list(r.event_times_s)
        for stamp, write in zip(stamps, actual_s, strict=True):
            # The server notes a write once its send has returned, so the client, on another core, can read the
            # bytes a little before that note; it can never have them a burst (90 ms) early.
            assert write - 0.002 <= stamp < write + 0.5
        # The first event comes alone (the prefill step), then bursts of 4 steps: [1..4], [5..8], [9..11] (3 steps:
        # the final chunk ends it), each written 90-120 ms after the one before.
        bursts = [stamps[1:5], stamps[5:9], stamps[9:12]]
        assert [len(set(b)) for b in bursts] == [1, 1, 1]
        assert len(set(stamps)) == 4
        itl = metrics.per_request(r).itl_chunk_s
        assert itl is not None
        assert sum(1 for gap in itl if gap == 0.0) == 8


def test_exact_prompt_lengths_via_tokenize(sim: str) -> None:
    endpoint = Endpoint(url=sim, model="llmperf-sim")
    with tokenizer.control_client(endpoint) as client:
        for api in ("completions", "chat"):
            workload = Workload(api=api, input_len=50, output_len=2, num_prompts=4, range_ratio=0.3)
            context = tokenizer.prompt_context(workload, endpoint, client)
            prompts = build_prompts(workload, 4, context)
            records = loadgen.run(workload, endpoint, prompts).records
            assert [r.prompt_tokens for r in records] == [p.input_len for p in prompts]


class _DroppingServer:
    """Advertises keep-alive, then drops the next request on that connection unanswered (as llama.cpp can)."""

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
        b"keep-alive: timeout=5, max=100\r\n\r\n"
    )
    CHUNK = b'data: {"id":"x","choices":[{"index":0,"text":" a","finish_reason":"length"}]}\n\ndata: [DONE]\n\n'

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(
                    v
                    for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                    if k.strip().lower() == b"content-length"
                )
            )
            await reader.readexactly(length)
            body = self.CHUNK
            writer.write(self.RESPONSE + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
            await writer.drain()
            # A request that arrives on this kept-alive connection is dropped unanswered.
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> str:
        self.thread.start()
        self.ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _shutdown(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.server.wait_closed()


def test_dropped_keep_alive_connections_are_retried_and_reported() -> None:
    with _DroppingServer() as url:
        result = run(url, Workload(input_len=4, output_len=1, num_prompts=12, concurrency=2, per_token_usage=False))
    assert all(r.ok for r in result.records)
    assert sum(r.connection_retries for r in result.records) >= 1
    assert any("one connection each" in note for note in result.notes)
    assert metrics.summarize(result)["connection_retries"] >= 1


def test_servers_known_to_drop_connections_get_one_per_request() -> None:
    with _DroppingServer() as url:
        result = run(url, Workload(input_len=4, output_len=1, num_prompts=12, concurrency=2), reuse=False)
    assert all(r.ok for r in result.records)
    assert sum(r.connection_retries for r in result.records) == 0
