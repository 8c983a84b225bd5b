"""The send pacer: bursts of sends are spread over event-loop iterations, in order, and cancellation is safe."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from pytest_llmperf.client.pacing import SendPacer

T = TypeVar("T")


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    uvloop = pytest.importorskip("uvloop")
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@pytest.fixture(params=["asyncio", "uvloop"])
def run_on(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Runs a coroutine on asyncio's loop or on uvloop: the pacer leans on call_soon ordering, so both."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop_factory()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        loop = factory()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()

    return run


async def passes(pacer: SendPacer, arrivals: list[int], cancel: frozenset[int] = frozenset()) -> list[tuple[int, int]]:
    """(caller, loop iteration it went on in), for ``arrivals[k]`` callers starting in iteration k."""
    loop = asyncio.get_running_loop()
    iteration = 0
    went: list[tuple[int, int]] = []
    tasks: list[asyncio.Task[None]] = []

    async def caller(i: int) -> None:
        await pacer.wait()
        went.append((i, iteration))

    def tick() -> None:
        nonlocal iteration
        iteration += 1
        if iteration - 1 < len(arrivals):
            tasks.extend(asyncio.ensure_future(caller(len(tasks))) for _ in range(arrivals[iteration - 1]))
        if iteration < len(arrivals) + 100:
            loop.call_soon(tick)

    loop.call_soon(tick)
    while len(tasks) < sum(arrivals):
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # every caller has now called wait() once
    for i in cancel:
        tasks[i].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return went


def test_a_burst_goes_on_a_few_per_iteration_in_arrival_order(run_on: Callable[..., Any]) -> None:
    pacer = SendPacer(3)
    went = run_on(passes(pacer, [10]))
    assert [i for i, _ in went] == list(range(10))
    per_iteration = Counter(iteration for _, iteration in went)
    assert max(per_iteration.values()) <= 3
    assert len(per_iteration) >= 4  # 10 callers, 3 an iteration
    assert pacer.held_back == 7


def test_callers_arriving_while_others_wait_queue_behind_them(run_on: Callable[..., Any]) -> None:
    """New callers keep coming while a backlog drains: none overtakes an earlier one, and an iteration never
    lets more than twice the pace through."""
    went = run_on(passes(SendPacer(4), [9, 3, 5, 0, 6, 1, 1, 8]))
    assert [i for i, _ in went] == list(range(33))
    assert max(Counter(iteration for _, iteration in went).values()) <= 8


def test_callers_spread_out_in_time_are_never_held_back(run_on: Callable[..., Any]) -> None:
    async def spread() -> SendPacer:
        pacer = SendPacer(1)
        for _ in range(5):
            await pacer.wait()
            await asyncio.sleep(0.001)
        return pacer

    assert run_on(spread()).held_back == 0


def test_a_cancelled_waiter_gives_its_place_to_the_next(run_on: Callable[..., Any]) -> None:
    went = dict(run_on(passes(SendPacer(2), [6], cancel=frozenset({3}))))
    assert sorted(went) == [0, 1, 2, 4, 5]
    assert went[4] == went[2]  # 3's place went to 4, in the same iteration


def test_per_iteration_must_be_positive() -> None:
    with pytest.raises(ValueError, match="per_iteration must be >= 1"):
        SendPacer(0)
