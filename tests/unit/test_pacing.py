"""The send pacer: bursts of sends are spread over event-loop iterations, in order, and cancellation is safe."""

from __future__ import annotations

import asyncio

import pytest

from pytest_llmperf.pacing import SendPacer


async def passes(pacer: SendPacer, callers: int, cancel: frozenset[int] = frozenset()) -> list[tuple[int, int]]:
    """(caller, loop iteration it went on in) for ``callers`` that all call wait() in the same iteration."""
    loop = asyncio.get_running_loop()
    iteration = 0

    def tick() -> None:
        nonlocal iteration
        iteration += 1
        loop.call_soon(tick)

    loop.call_soon(tick)
    went: list[tuple[int, int]] = []

    async def caller(i: int) -> None:
        await pacer.wait()
        went.append((i, iteration))

    tasks = [asyncio.ensure_future(caller(i)) for i in range(callers)]
    await asyncio.sleep(0)  # every caller is now waiting or through
    for i in cancel:
        tasks[i].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return went


def test_a_burst_goes_on_a_few_per_iteration_in_arrival_order() -> None:
    pacer = SendPacer(3)
    went = asyncio.run(passes(pacer, 10))
    assert [i for i, _ in went] == list(range(10))
    per_iteration: dict[int, int] = {}
    for _, iteration in went:
        per_iteration[iteration] = per_iteration.get(iteration, 0) + 1
    assert max(per_iteration.values()) <= 3
    assert len(per_iteration) >= 4  # 10 callers, 3 an iteration
    assert pacer.held_back == 7


def test_callers_spread_out_in_time_are_never_held_back() -> None:
    async def spread() -> SendPacer:
        pacer = SendPacer(1)
        for _ in range(5):
            await pacer.wait()
            await asyncio.sleep(0.001)
        return pacer

    assert asyncio.run(spread()).held_back == 0


def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    went = asyncio.run(passes(SendPacer(2), 6, cancel={3}))
    assert [i for i, _ in went] == [0, 1, 2, 4, 5]


def test_per_iteration_must_be_positive() -> None:
    with pytest.raises(ValueError, match="per_iteration must be >= 1"):
        SendPacer(0)
