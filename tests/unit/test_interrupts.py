"""Ctrl-C during a run stops it wherever the loop happens to be, and keeps what was measured."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator

import pytest

from pytest_llmperf import loadgen
from pytest_llmperf.datasets import PromptContext, build_prompts
from pytest_llmperf.errors import RunInterrupted
from pytest_llmperf.interrupts import cancel_on_interrupt
from pytest_llmperf.runner import planned_prompts
from pytest_llmperf.selfcheck import LoopMonitor
from pytest_llmperf.spec import Endpoint, RunRecords, Workload
from pytest_llmperf.sse import StreamParser

LOOPS: dict[str, Callable[[], Callable[[], asyncio.AbstractEventLoop]]] = {
    "asyncio": lambda: asyncio.new_event_loop,
    "uvloop": lambda: pytest.importorskip("uvloop").new_event_loop,  # type: ignore[no-any-return]
}


@pytest.fixture
def python_handles_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM as in a pytest run whose session owns a spawned server, whatever the runner (an xdist
    worker, say) had set; put back afterwards."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in before:
        signal.signal(signum, signal.default_int_handler)
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.fixture(params=sorted(LOOPS))
def loop_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(loadgen, "_loop_factory", LOOPS[request.param])
    return str(request.param)


@pytest.fixture
def sim(start_sim: type) -> str:
    return start_sim("--decode-ms", "2", "--decode-ms-per-seq", "0", "--jitter", "0").url


def run(url: str, workload: Workload) -> RunRecords:
    endpoint = Endpoint(url=url, model="llmperf-sim")
    prompts = build_prompts(workload, planned_prompts(workload), PromptContext(token_pool=list(range(100, 200))))
    return loadgen.run(workload, endpoint, prompts)


def signal_on_call(monkeypatch: pytest.MonkeyPatch, owner: type, name: str, signum: int, call: int) -> None:
    """Deliver ``signum`` to this process from inside the ``call``-th call of ``owner.name``."""
    original = getattr(owner, name)
    calls = 0

    def signalling(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == call:
            os.kill(os.getpid(), signum)  # Python runs the handler right here, inside this call
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, signalling)


LONG = Workload(input_len=8, output_len=300, num_prompts=8, concurrency=2)


@pytest.mark.usefixtures("python_handles_interrupts", "loop_kind")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_inside_the_stream_parser_stops_the_run(
    sim: str, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    """The parser runs inside aiohttp's C HTTP parser, which turns any exception raised there into a payload
    error on that one stream: a KeyboardInterrupt raised there failed one request and the run went on."""
    signal_on_call(monkeypatch, StreamParser, "feed", signum, call=40)
    with pytest.raises(RunInterrupted) as raised:
        run(sim, LONG)
    partial = raised.value.partial
    assert partial.interrupted is True
    kinds = [r.error_kind for r in partial.records]
    assert "cancelled" in kinds
    assert "truncated" not in kinds
    assert all(r.ok or r.error_kind == "cancelled" for r in partial.records)
    assert signal.getsignal(signum) is signal.default_int_handler  # put back


@pytest.mark.usefixtures("python_handles_interrupts", "loop_kind")
def test_ctrl_c_as_the_run_ends_keeps_every_request_and_still_stops(sim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The monitor is read after the last request, in the run's final step: the cancel arrives too late to land.
    signal_on_call(monkeypatch, LoopMonitor, "check", signal.SIGINT, call=1)
    short = Workload(input_len=8, output_len=4, num_prompts=4, concurrency=2)
    with pytest.raises(RunInterrupted) as raised:
        run(sim, short)
    partial = raised.value.partial
    assert partial.interrupted is True
    assert len(partial.records) == 4
    assert all(r.ok for r in partial.records)


@pytest.mark.usefixtures("python_handles_interrupts")
def test_a_second_interrupt_raises_at_once_and_handlers_are_put_back() -> None:
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(asyncio.sleep(3600))
        with cancel_on_interrupt(loop, task) as interrupts:
            os.kill(os.getpid(), signal.SIGINT)
            assert interrupts.received == [signal.SIGINT]
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(asyncio.CancelledError):
                loop.run_until_complete(task)  # the first one cancelled the task
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        loop.close()


def test_handlers_set_by_somebody_else_are_left_alone() -> None:
    def own(signum: int, frame: object) -> None:
        raise AssertionError("not called")

    before = signal.signal(signal.SIGINT, own)
    loop = asyncio.new_event_loop()
    try:
        with cancel_on_interrupt(loop, loop.create_future()) as interrupts:
            assert signal.getsignal(signal.SIGINT) is own
        assert not interrupts
    finally:
        loop.close()
        signal.signal(signal.SIGINT, before)
