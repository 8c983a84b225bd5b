"""Ctrl-C during a run stops it wherever the loop happens to be, and keeps what was measured."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_llmperf.client import loadgen
from pytest_llmperf.client.datasets import PromptContext, build_prompts
from pytest_llmperf.client.interrupts import cancel_on_interrupt, deferred
from pytest_llmperf.client.selfcheck import LoopMonitor
from pytest_llmperf.client.sse import StreamParser
from pytest_llmperf.errors import RunInterrupted
from pytest_llmperf.harness.runner import planned_prompts
from pytest_llmperf.spec import Endpoint, RunRecords, Workload

LOOPS: dict[str, Callable[[], Callable[[], asyncio.AbstractEventLoop]]] = {
    "asyncio": lambda: asyncio.new_event_loop,
    "uvloop": lambda: pytest.importorskip("uvloop").new_event_loop,
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


SHORT = Workload(input_len=8, output_len=4, num_prompts=4, concurrency=2)
ENDED = "Ctrl-C came as the run ended: every request finished, but the session stops here"


@pytest.fixture
def cleanups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of the path that cancels what is left of a run and collects its records."""
    calls: list[int] = []
    collect = loadgen._cancel_and_collect

    def counting(*args: Any) -> RunRecords:
        calls.append(1)
        return collect(*args)

    monkeypatch.setattr(loadgen, "_cancel_and_collect", counting)
    return calls


def assert_complete_but_interrupted(partial: RunRecords) -> None:
    assert partial.interrupted is True
    assert len(partial.records) == 4
    assert all(r.ok for r in partial.records)
    assert partial.client is not None  # the self-check of the finished run is kept
    assert ENDED in partial.notes


@pytest.mark.usefixtures("python_handles_interrupts", "loop_kind")
def test_ctrl_c_while_the_session_closes_keeps_the_finished_run(
    sim: str, monkeypatch: pytest.MonkeyPatch, cleanups: list[int]
) -> None:
    # The monitor is read after the last request; the cancel then lands in the session's close.
    signal_on_call(monkeypatch, LoopMonitor, "check", signal.SIGINT, call=1)
    with pytest.raises(RunInterrupted) as raised:
        run(sim, SHORT)
    assert_complete_but_interrupted(raised.value.partial)
    assert cleanups == [1]  # the cancel landed: the finished run was taken from what it had stored


@pytest.mark.usefixtures("python_handles_interrupts")
def test_ctrl_c_after_the_run_task_ended_still_stops(
    sim: str, loop_kind: str, monkeypatch: pytest.MonkeyPatch, cleanups: list[int]
) -> None:
    # Async generators are shut down after the run's task has returned: the cancel has nothing left to cancel.
    make_loop = LOOPS[loop_kind]()

    def signalling_loop() -> asyncio.AbstractEventLoop:
        loop = make_loop()
        shutdown = loop.shutdown_asyncgens

        async def signalling_shutdown() -> None:
            os.kill(os.getpid(), signal.SIGINT)
            await shutdown()

        loop.shutdown_asyncgens = signalling_shutdown  # type: ignore[method-assign]
        return loop

    monkeypatch.setattr(loadgen, "_loop_factory", lambda: signalling_loop)
    with pytest.raises(RunInterrupted) as raised:
        run(sim, SHORT)
    assert_complete_but_interrupted(raised.value.partial)
    assert cleanups == []  # nothing was left to cancel


@pytest.mark.usefixtures("python_handles_interrupts")
def test_a_second_interrupt_raises_out_of_the_loop_a_third_at_once() -> None:
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(asyncio.sleep(3600))
        with cancel_on_interrupt(loop, task) as interrupts:
            os.kill(os.getpid(), signal.SIGINT)
            assert interrupts.received == [signal.SIGINT]
            with pytest.raises(asyncio.CancelledError):
                loop.run_until_complete(task)  # the first one cancels the task

            stubborn = loop.create_task(asyncio.sleep(3600))
            os.kill(os.getpid(), signal.SIGINT)  # the second one, raised by a callback of the loop
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(stubborn)
            assert not stubborn.done()

            with pytest.raises(KeyboardInterrupt):  # the third one, right where it lands
                os.kill(os.getpid(), signal.SIGINT)
            stubborn.cancel()
            with pytest.raises(asyncio.CancelledError):
                loop.run_until_complete(stubborn)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        loop.close()


@pytest.mark.usefixtures("python_handles_interrupts")
def test_sigterm_is_named_in_the_notes(sim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    signal_on_call(monkeypatch, StreamParser, "feed", signal.SIGTERM, call=40)
    with pytest.raises(RunInterrupted) as raised:
        run(sim, LONG)
    partial = raised.value.partial
    assert partial.notes == ["the run was interrupted by SIGTERM; figures cover the requests finished before it"]
    cancelled = [r for r in partial.records if r.error_kind == "cancelled"]
    assert cancelled
    assert {r.error for r in cancelled} == {"cancelled by SIGTERM before it finished"}


def test_handlers_set_by_somebody_else_are_left_alone() -> None:
    def own(signum: int, frame: object) -> None:
        raise AssertionError("not called")

    before = signal.signal(signal.SIGINT, own), signal.signal(signal.SIGTERM, signal.SIG_DFL)
    loop = asyncio.new_event_loop()
    try:
        with cancel_on_interrupt(loop, loop.create_future()) as interrupts:
            assert signal.getsignal(signal.SIGINT) is own
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # SIGTERM that ends the process stays so
        assert not interrupts
    finally:
        loop.close()
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


@pytest.mark.usefixtures("python_handles_interrupts")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_deferred_holds_an_interrupt_until_the_step_is_done(signum: signal.Signals) -> None:
    done: list[str] = []

    def step() -> None:
        with deferred():
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # bytecodes enough for the handler to have run
                pass
            done.append("the step")

    with pytest.raises(KeyboardInterrupt):
        step()
    assert done == ["the step"]
    assert signal.getsignal(signum) is signal.default_int_handler  # put back


@pytest.mark.usefixtures("python_handles_interrupts")
def test_deferred_can_leave_the_interrupt_to_the_caller() -> None:
    with deferred(reraise=False) as held:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
    assert held.received == [signal.SIGINT]
