"""The client's self-check: its verdict from known figures, and its samples of what the sockets left unread."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pytest_llmperf.client import loadgen, selfcheck
from pytest_llmperf.client.datasets import PromptContext, build_prompts
from pytest_llmperf.client.feedclock import ReadyClock, UnreadBytes
from pytest_llmperf.client.selfcheck import LoopMonitor, Unread, assess
from pytest_llmperf.client.sse import StreamParser
from pytest_llmperf.harness.runner import planned_prompts
from pytest_llmperf.spec import ClientCheck, Endpoint, Workload

CALM = {"loop_lags_s": [0.0005] * 100, "dispatch_lags_s": [], "cpu_s": 0.3, "wall_s": 1.0}
UNREAD_REASON = "unread stream data waited in socket buffers"


def test_a_calm_run_is_not_client_bound() -> None:
    check = assess(**CALM, unread=Unread(between_passes_ms=0.3, within_passes_ms=0.1, p99_bytes=30 * 1024, sockets=256))
    assert not check.client_bound
    assert check.reasons == ()
    assert check.unread_wait_mean_ms == pytest.approx(0.4)
    assert check.unread_p99_kib == pytest.approx(30.0)
    assert check.unread_sockets == 256


def test_bytes_left_waiting_in_the_sockets_make_a_run_client_bound_with_the_figures() -> None:
    """The case the other signals miss: timers on time, CPU under the limit, but the client reads bursts so
    slowly that their bytes wait in the kernel, and their events are stamped that much late."""
    check = assess(
        **CALM, unread=Unread(between_passes_ms=20.0, within_passes_ms=3.4, p99_bytes=412 * 1024, sockets=64)
    )
    assert check.client_bound
    assert check.reasons == (f"{UNREAD_REASON} 23.4 ms on average (limit 3 ms): p99 412 KiB unread over 64 sockets",)
    data = check.as_dict()
    assert data["unread_wait_mean_ms"] == pytest.approx(23.4)
    assert data["unread_p99_kib"] == pytest.approx(412.0)
    assert data["unread_sockets"] == 64


def test_the_unread_limit_is_inclusive() -> None:
    limit = selfcheck._UNREAD_WAIT_LIMIT_MS
    # Either part alone can reach it: the within-pass part is what the samples between passes cannot see.
    assert assess(
        **CALM, unread=Unread(between_passes_ms=0.0, within_passes_ms=limit, p99_bytes=0.0, sockets=1)
    ).client_bound
    assert assess(
        **CALM, unread=Unread(between_passes_ms=limit, within_passes_ms=0.0, p99_bytes=0.0, sockets=1)
    ).client_bound
    below = Unread(between_passes_ms=limit * 0.5, within_passes_ms=limit * 0.49, p99_bytes=0.0, sockets=1)
    assert not assess(**CALM, unread=below).client_bound


def test_without_unread_samples_the_figures_are_none_and_the_other_signals_still_count() -> None:
    check = assess([0.05] * 100, [], cpu_s=0.9, wall_s=1.0)
    assert check.unread_wait_mean_ms is None
    assert check.unread_p99_kib is None
    assert check.unread_sockets is None
    assert check.reasons == (
        "client used 90% of a core (limit 85%)",
        "event-loop lag p99 50.0 ms (limit 10 ms)",
    )
    polled = assess([0.0] * 100, [], cpu_s=1.0, wall_s=1.0, busy_poll=True)
    assert not polled.client_bound  # a full core is by design when the loop polls


@dataclass
class FakeSource:
    """Always ``unread`` bytes waiting; ``rate`` bytes read per second of the loop's clock."""

    unread: int
    rate: float

    def sample(self) -> tuple[int, int]:
        return self.unread, 4

    def bytes_read(self) -> int:
        return int(asyncio.get_running_loop().time() * self.rate)

    def late_byte_s(self) -> float:
        return 0.0


def test_the_monitor_turns_unread_samples_into_a_mean_wait_by_littles_law() -> None:
    """10 kB always waiting while 1 MB/s goes through: each byte waited 10 ms on average."""

    async def watch() -> LoopMonitor:
        monitor = LoopMonitor(FakeSource(unread=10_000, rate=1e6))
        monitor.start()
        await asyncio.sleep(0.3)
        monitor.stop()
        return monitor

    monitor = asyncio.run(watch())
    unread = monitor.unread()
    assert unread is not None
    # The samples cover the window up to the last tick (at most 15 ms short of 0.3 s); wide for a loaded machine.
    assert 7.0 < unread.between_passes_ms < 11.0
    assert unread.within_passes_ms == 0.0
    assert unread.p99_bytes == 10_000
    assert unread.sockets == 4
    assert monitor.check([], wall_s=0.3).client_bound


def test_a_monitor_without_a_source_reports_no_unread_figures() -> None:
    async def watch() -> LoopMonitor:
        monitor = LoopMonitor()
        monitor.start()
        await asyncio.sleep(0.03)
        monitor.stop()
        return monitor

    monitor = asyncio.run(watch())
    assert monitor.unread() is None
    assert monitor.check([], wall_s=0.03).unread_wait_mean_ms is None


class Connection:
    """What :class:`UnreadBytes` reads of a connection: its transport, its socket's number, its bytes read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.transport = self
        self.closing = False
        self.bytes_read = 0

    def is_closing(self) -> bool:
        return self.closing


@pytest.fixture
def connections() -> Iterator[list[tuple[Connection, socket.socket]]]:
    """40 connected socket pairs: (the client's end as a connection, the server's end)."""
    pairs = [socket.socketpair() for _ in range(40)]
    yield [(Connection(ours), theirs) for ours, theirs in pairs]
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


def test_unread_bytes_are_asked_of_the_kernel_a_few_sockets_at_a_time(
    connections: list[tuple[Connection, socket.socket]],
) -> None:
    unread = UnreadBytes()
    for connection, theirs in connections:
        unread.add(connection)  # type: ignore[arg-type]
        theirs.sendall(b"x" * 1000)
    # 16 sockets asked (0-15), each holding 1000 bytes, scaled to the 40 open.
    assert unread.sample() == (40_000, 40)
    first = connections[0][0]
    first.bytes_read += len(first.sock.recv(600))
    assert unread.sample() == (40_000, 40)  # 16-31
    assert unread.sample() == ((15 * 1000 + 400) * 40 // 16, 40)  # 32-39 and 0-7, the first one read from
    assert unread.bytes_read() == 600

    unread.discard(first)  # type: ignore[arg-type]
    assert unread.bytes_read() == 600  # what a closed connection read still counts
    assert unread.sample()[1] == 39


def test_a_closing_socket_is_not_asked(connections: list[tuple[Connection, socket.socket]]) -> None:
    """Its number may already belong to another file."""
    unread = UnreadBytes()
    for connection, theirs in connections[:2]:
        unread.add(connection)  # type: ignore[arg-type]
        theirs.sendall(b"x" * 1000)
    connections[1][0].closing = True
    assert unread.sample() == (1000, 2)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_bytes_that_wait_for_earlier_reads_of_their_pass_are_counted_as_they_are_stamped(kind: str) -> None:
    """Three sockets readable at one poll, each read holding the loop 2 ms: the second and third reads come
    2 and 4 ms after the pass began, and their bytes waited that long in the kernel, where no sample between
    passes can see them."""

    async def main() -> tuple[ReadyClock, list[float]]:
        loop = asyncio.get_running_loop()
        clock = ReadyClock(loop, max_age_s=0.001)
        stamps: list[float] = []

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                stamps.append(clock.now(len(data)))
                until = time.perf_counter() + 0.002
                while time.perf_counter() < until:
                    pass

        pairs = [socket.socketpair() for _ in range(3)]
        transports = [(await loop.connect_accepted_socket(Reader, ours))[0] for ours, _ in pairs]
        try:
            for _, theirs in pairs:
                theirs.send(b"x" * 100)
            await asyncio.sleep(0.02)
            return clock, stamps
        finally:
            for transport in transports:
                transport.close()
            for _, theirs in pairs:
                theirs.close()

    loop = pytest.importorskip("uvloop").new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
    try:
        clock, stamps = loop.run_until_complete(main())
    finally:
        loop.close()
    assert len(stamps) == 3
    waited = [stamp - stamps[0] for stamp in stamps]
    assert waited[0] == 0.0
    assert 0.002 <= waited[1] < waited[2]
    assert clock.late_byte_s == pytest.approx(100 * (waited[1] + waited[2]))


def sim_run(url: str, workload: Workload) -> ClientCheck:
    endpoint = Endpoint(url=url, model="llmperf-sim")
    prompts = build_prompts(workload, planned_prompts(workload), PromptContext(token_pool=list(range(100, 200))))
    run = loadgen.run(workload, endpoint, prompts)
    assert all(r.ok for r in run.records)
    assert run.client is not None
    return run.client


def test_a_client_that_cannot_drain_a_bursty_server_is_flagged_with_the_unread_reason(
    start_sim: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulator writes 64 streams as fast as it can; the client is made slower than it per byte (20 µs more
    per 200-byte event, a slower machine's client), so the bytes pile up in its sockets on any machine."""
    sim = start_sim("--decode-ms", "0", "--decode-ms-per-seq", "0", "--max-batch", "64").url
    feed = StreamParser.feed

    def slow_feed(self: StreamParser, data: bytes, now: float) -> bool:
        until = time.perf_counter() + len(data) * 100e-9
        while time.perf_counter() < until:
            pass
        return feed(self, data, now)

    monkeypatch.setattr(StreamParser, "feed", slow_feed)
    check = sim_run(sim, Workload(input_len=8, output_len=300, num_prompts=64, concurrency=64))
    assert check.client_bound
    assert any(reason.startswith(UNREAD_REASON) for reason in check.reasons), check.reasons
    assert check.unread_wait_mean_ms is not None
    assert check.unread_wait_mean_ms >= selfcheck._UNREAD_WAIT_LIMIT_MS
    assert check.unread_p99_kib is not None
    assert check.unread_p99_kib > 0
    assert check.unread_sockets is not None
    assert 1 <= check.unread_sockets <= 64


def test_a_gentle_run_is_not_flagged_for_unread_bytes(start_sim: type) -> None:
    """Eight streams, a chunk each per 5 ms step: each read is done long before the next chunk comes, even on a
    loaded machine (measured under a fifth of the limit there)."""
    sim = start_sim("--decode-ms", "5", "--decode-ms-per-seq", "0", "--jitter", "0").url
    check = sim_run(sim, Workload(input_len=8, output_len=40, num_prompts=16, concurrency=8))
    assert not any(reason.startswith(UNREAD_REASON) for reason in check.reasons), check.reasons
    assert check.unread_wait_mean_ms is not None
    assert check.unread_wait_mean_ms < selfcheck._UNREAD_WAIT_LIMIT_MS
    assert check.unread_sockets is not None
    assert 1 <= check.unread_sockets <= 8
