"""aiohttp's connection protocol, extended to parse a streamed response body inside ``data_received``.

Read by the request's task, an event would be stamped only after every stream that became readable in the same
loop turn had been read and after the tasks woken before it: at concurrency 64, up to a millisecond or two
after its bytes arrived. Here each read is parsed, and its events stamped, as it comes off the socket, before
any task runs, and no task wakes per event; reads the loop handles in one pass share the time of its first
(:class:`ReadyClock`). The request's task waits once, for the stream's end
(:meth:`FeedClock.stream_into`). These hooks lean on aiohttp internals; where those differ,
:meth:`FeedClock.of` finds no clock and the load generator falls back to reading the body in its task.

The connections also tell the client's self-check how far behind their sockets it reads
(:class:`UnreadBytes`): a client that keeps up leaves little in the kernel's receive buffers.
"""

from __future__ import annotations

import array
import asyncio
import functools
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler

from pytest_llmperf.client.sse import StreamParser

if sys.platform != "win32":  # Windows: the unread bytes are not sampled
    from fcntl import ioctl
    from termios import FIONREAD

_SOCKETS_PER_SAMPLE = 16  # an ioctl costs about a microsecond: at concurrency 256, all of them every tick would
# cost a few percent of a core


def _expire(ended: asyncio.Future[None]) -> None:
    if not ended.done():
        ended.set_exception(asyncio.TimeoutError())


class _BodyListener:
    """Feeds one response body to its parser from inside the connection's ``data_received``.

    Two ways, the same records: *direct* (the body's reader hands each decoded piece straight over, see
    :class:`_DirectBody`, and the read's pieces are parsed together once it has been decoded), or else by
    draining the reader's buffer after each read.
    """

    __slots__ = ("_taking", "content", "direct", "ended", "parser", "pieces")

    def __init__(self, content: aiohttp.StreamReader, parser: StreamParser, ended: asyncio.Future[None]) -> None:
        self.content = content
        self.parser = parser
        self.ended = ended  # settled at [DONE], at the body's end, or with the error that broke it
        self.direct = False
        # The decoded pieces of the read being handled, in the direct way: a server writes each event as an HTTP
        # chunk of its own, so a bursty read holds many; one parser call for all of them, with the read's time.
        self.pieces: list[bytes] = []
        self._taking = False

    def take(self, now: float) -> None:
        """After a read (it arrived at ``now``): parse what the reader holds; settle once the stream is over."""
        # Reading can resume aiohttp's paused parser, which feeds the reader again and calls back in here:
        # the outer call keeps reading until the reader is empty, so the inner one leaves it alone.
        if self._taking or self.ended.done():
            return
        self._taking = True
        content = self.content
        try:
            if self.direct:
                if pieces := self.pieces:
                    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                    pieces.clear()
                    if self.parser.feed(data, now):
                        self.ended.set_result(None)
                        return
                if (error := content.exception()) is not None:
                    raise error
            else:
                while data := content.read_nowait():  # raises the reader's own error: a cut-off body, a timeout
                    if self.parser.feed(data, now):
                        self.ended.set_result(None)
                        return
            if content.is_eof():
                self.ended.set_result(None)
        except Exception as exc:  # also a malformed stream, from the parser
            self.ended.set_exception(exc)
        finally:
            self._taking = False


class _DirectBody(aiohttp.StreamReader):
    """aiohttp's body reader, made to hand each decoded piece to the attached parser instead of buffering it.

    A body reader's instance gets this class (same layout, no new slots) while its parser is attached, and
    aiohttp's class back when it is detached (:func:`_make_direct`, :func:`_unmake_direct`): the buffering,
    chunk bookkeeping and read-back that nothing here needs cost about a sixth of the client's CPU per event.
    Meanwhile its connection's listener is its own, so these calls, made for every HTTP chunk (every event),
    need not look for it.
    """

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        if data:
            self.total_bytes += len(data)
            # Parsed once the read is decoded (_BodyListener.take).
            self._protocol.listener.pieces.append(data)  # type: ignore[attr-defined]  # a FeedClock (_make_direct)
        return False

    def end_http_chunk_receiving(self) -> None:
        pass  # no chunk boundaries are kept for a later read: nothing reads this body back


def _make_direct(content: aiohttp.StreamReader, protocol: FeedClock) -> bool:
    """Give ``content``, a body read by ``protocol``, the :class:`_DirectBody` behaviour; False where this
    aiohttp's reader differs."""
    if type(content) is not aiohttp.StreamReader or getattr(content, "_protocol", None) is not protocol:
        return False
    try:
        content.__class__ = _DirectBody
    except TypeError:
        return False
    return True


def _unmake_direct(content: aiohttp.StreamReader) -> None:
    """aiohttp's own reader again: whatever still arrives for the body (its end) is handled as aiohttp does."""
    if type(content) is _DirectBody:
        cast(Any, content).__class__ = aiohttp.StreamReader


def _unclocked(size: int) -> float:
    return time.perf_counter()


class ReadyClock:
    """One timestamp for the reads the event loop handles in the same pass over its ready sockets.

    The loop learns from one poll which sockets hold data, then reads them one after another. A read stamped
    when the loop gets to it is late by the time spent on the reads before it in that pass: at concurrency 64,
    where a decode step's chunks all arrive together, up to about a millisecond on the README's VM. The data
    that made each of those sockets readable was there when the pass began, so the time of the pass's first
    read is the better stamp for all of them. A read can also return bytes that arrived while the pass went on;
    those get a stamp up to the pass's length early, so a stamp is never older than ``max_age_s``: a long pass
    (an overloaded client) is restamped as it goes. The stamp is dropped by a callback that runs after the pass,
    before the next pass's reads.
    """

    __slots__ = ("_loop", "_max_age_s", "_stamp", "_start", "late_byte_s")

    def __init__(self, loop: asyncio.AbstractEventLoop, max_age_s: float = 0.001) -> None:
        self._loop = loop
        self._max_age_s = max_age_s
        self._stamp: float | None = None
        self._start = 0.0  # when the pass began
        self.late_byte_s = 0.0  # Σ bytes × how much later than their pass's start they were stamped

    def now(self, size: int = 0) -> float:
        """The stamp for a read of ``size`` bytes."""
        stamp = self._stamp
        if stamp is None:
            stamp = self._stamp = self._start = time.perf_counter()
            self._loop.call_soon(self._forget)
            return stamp
        if self._max_age_s < (now := time.perf_counter()) - stamp:
            stamp = self._stamp = now  # the callback already scheduled still clears it after the pass
        if stamp != self._start:  # restamped: its bytes waited for the reads before it in this pass
            self.late_byte_s += (stamp - self._start) * size
        return stamp

    def _forget(self) -> None:
        self._stamp = None


class UnreadBytes:
    """Bytes that arrived on the client's connections and wait unread in the kernel's receive buffers.

    Sampled from outside the hot path (the self-check's timer asks :meth:`sample`), never per read: each sample
    asks ``ioctl(FIONREAD)`` of at most ``_SOCKETS_PER_SAMPLE`` open connections, the next ones in turn, and
    scales their sum to all of them. Each connection counts the bytes it read (:meth:`bytes_read`), so the
    self-check can relate what waited to what went through.
    """

    __slots__ = ("_clock", "_closed_bytes", "_count", "_next", "_open")

    def __init__(self, clock: ReadyClock | None = None) -> None:
        self._clock = clock
        self._open: list[FeedClock] = []
        self._next = 0
        self._closed_bytes = 0
        self._count = array.array("i", [0])  # the ioctl's result

    @staticmethod
    def supported() -> bool:
        return sys.platform != "win32"

    def add(self, connection: FeedClock) -> None:
        self._open.append(connection)

    def discard(self, connection: FeedClock) -> None:
        if connection in self._open:
            self._open.remove(connection)
            self._closed_bytes += connection.bytes_read

    def bytes_read(self) -> int:
        """Bytes read from every connection so far, closed ones included."""
        return self._closed_bytes + sum(c.bytes_read for c in self._open)

    def late_byte_s(self) -> float:
        """Σ bytes × how long they waited for earlier reads of their pass (:class:`ReadyClock`), so far."""
        return self._clock.late_byte_s if self._clock is not None else 0.0

    def sample(self) -> tuple[int, int]:
        """(unread bytes, estimated over all open connections; how many are open)."""
        connections = self._open
        n = len(connections)
        if n == 0:
            return 0, n
        count = min(n, _SOCKETS_PER_SAMPLE)
        start = self._next % n
        self._next = start + count
        total = 0
        for i in range(start, start + count):
            total += self._unread(connections[i % n])
        return total * n // count, n

    def _unread(self, connection: FeedClock) -> int:
        transport = connection.transport
        if sys.platform == "win32" or transport is None or transport.is_closing() or connection.fd < 0:
            return 0  # a closed socket's number may already belong to another file
        try:
            ioctl(connection.fd, FIONREAD, self._count)
        except OSError:
            return 0
        return self._count[0]


class FeedClock(ResponseHandler):
    """aiohttp's connection protocol, extended to parse a streamed body as each read comes off the socket.

    With aiohttp's per-read timer off, this took 40 → 32 µs per event on the README's VM. Reads that arrive
    before the request's task has attached its parser (the first chunk often comes with the headers) are noted
    in ``feeds`` and replayed with their own arrival times.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        ready_clock: ReadyClock | None = None,
        unread: UnreadBytes | None = None,
    ) -> None:
        super().__init__(loop)
        # (body reader or None, its bytes so far, perf_counter) after each read while no parser is attached.
        self.feeds: deque[tuple[object, int, float]] = deque()
        self.listener: _BodyListener | None = None
        self._now: Callable[[int], float] = ready_clock.now if ready_clock is not None else _unclocked
        self._unread = unread
        self.bytes_read = 0
        self.fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._unread is not None:
            sock = transport.get_extra_info("socket")
            self.fd = sock.fileno() if sock is not None else -1
            self._unread.add(self)

    def data_received(self, data: bytes) -> None:
        size = len(data)
        self.bytes_read += size
        # An empty call is aiohttp resuming its paused parser from a task, not a read of a pass: own stamp.
        now = self._now(size) if size else time.perf_counter()
        listener = self.listener
        if listener is not None:
            super().data_received(data)
            listener.take(now)
            return
        if not data:  # aiohttp resuming its parser after a pause: nothing arrived
            super().data_received(data)
            return
        before = getattr(self, "_payload", None)  # the body being read; None once its end was parsed
        super().data_received(data)
        payload = getattr(self, "_payload", None) or before
        if isinstance(payload, aiohttp.StreamReader):
            self.feeds.append((payload, payload.total_bytes, now))
        else:  # headers and a whole body in this one read: its reader is already out of reach
            self.feeds.append((None, 0, now))

    def resume_reading(self, resume_parser: bool = True) -> None:
        # aiohttp calls this after every read from a body's buffer. With nothing paused there is nothing to
        # resume (its parser pauses only together with the transport), and the empty parser pass it would
        # run costs about a tenth of the client's CPU per event.
        if getattr(self, "_reading_paused", True) or getattr(self, "_buffer_paused", False):
            super().resume_reading(resume_parser)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._unread is not None:
            self._unread.discard(self)
        super().connection_lost(exc)
        if self.listener is not None:  # the reader now holds the error (or its end): settle the stream
            self.listener.take(time.perf_counter())

    async def stream_into(self, content: aiohttp.StreamReader, parser: StreamParser, timeout_s: float) -> None:
        """Parse ``content`` into ``parser`` as it arrives, until it ends; raises what broke it."""
        self.replay(content, parser)
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        listener = _BodyListener(content, parser, ended)
        listener.take(time.perf_counter())  # settles at once when the body had already ended
        if ended.done():
            ended.result()  # raises what broke the body
            return
        # No await from here to ``await ended``: a direct reader and this listener come and go together.
        listener.direct = _make_direct(content, self)
        self.listener = listener
        expiry = asyncio.get_running_loop().call_later(timeout_s, _expire, ended)
        try:
            await ended
        finally:
            self.listener = None
            _unmake_direct(content)
            expiry.cancel()

    def replay(self, content: aiohttp.StreamReader, parser: StreamParser) -> None:
        """Feed the bytes ``content`` holds to ``parser``, each read with the time it arrived."""
        feeds = self.feeds
        if content.exception() is None:
            # Bytes no read of this body accounts for came in the last read (with the headers, all at once).
            last_read = feeds[-1][2] if feeds else time.perf_counter()
            buffered = content.read_nowait()
            position = content.total_bytes - len(buffered)  # the body offset of buffered[0]
            while buffered:
                while feeds and (feeds[0][0] is not content or feeds[0][1] <= position):
                    feeds.popleft()
                end, at = (feeds[0][1], feeds[0][2]) if feeds else (content.total_bytes, last_read)
                size = end - position
                parser.feed(buffered[:size], at)
                buffered, position = buffered[size:], end
        feeds.clear()

    @staticmethod
    def of(response: aiohttp.ClientResponse) -> FeedClock | None:
        connection = response.connection
        # A body that ended in the read that brought its headers has already given its connection back (no
        # await since, so no other request can be on it yet: that holds while the session has no trace
        # configs, middlewares or async raise_for_status): its protocol still holds that read's time.
        protocol = connection.protocol if connection is not None else getattr(response, "_protocol", None)
        return protocol if isinstance(protocol, FeedClock) else None


class Connector(aiohttp.TCPConnector):
    """aiohttp's TCP connector, with :class:`FeedClock` as the protocol of its connections.

    ``unread`` samples what its connections leave unread; None where this aiohttp's connector differs.
    """

    def __init__(self, **kwargs: Any) -> None:  # aiohttp.TCPConnector's keyword arguments, passed on as they are
        super().__init__(**kwargs)
        self.unread: UnreadBytes | None = None
        if isinstance(getattr(self, "_factory", None), functools.partial):
            # One ready clock for all connections: a pass over the ready sockets spans them all.
            clock = ReadyClock(self._loop)
            self.unread = UnreadBytes(clock) if UnreadBytes.supported() else None
            factory = functools.partial(FeedClock, loop=self._loop, ready_clock=clock, unread=self.unread)
            self._factory = cast("functools.partial[ResponseHandler]", factory)
