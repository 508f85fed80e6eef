"""Background-task plumbing every service relies on to shut down."""

from __future__ import annotations

import asyncio

import pytest

from services.core.tasks import Supervisor, wait_set


async def _loop_on(event: asyncio.Event, rounds: list[int]) -> None:
    """The shape of every service loop: work, then wait (bounded) to be woken."""
    while True:
        rounds.append(1)
        event.clear()
        await wait_set(event, 1.0)


async def test_a_loop_stops_even_when_cancelled_as_it_is_woken() -> None:
    # asyncio.wait_for (Python 3.11) returns the result instead of raising when
    # the cancellation and the wake-up land in the same loop iteration: the loop
    # then ran on after its owner had stopped.
    event = asyncio.Event()
    rounds: list[int] = []
    tasks = Supervisor("test")
    task = tasks.spawn("loop", _loop_on(event, rounds))
    await asyncio.sleep(0.01)
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await task
    assert task.cancelled()
    await tasks.close(timeout=1)


async def test_wait_set_tells_set_from_timed_out() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_set(event, 2.0) is True
    assert await wait_set(event, 0) is True  # already set: no wait at all
