"""The server's one way to sleep until something changes never loses a cancellation."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from vi_flow.server.clock import wait_event

pytestmark = pytest.mark.anyio


async def test_a_cancel_that_arrives_as_the_event_is_set_stops_the_loop() -> None:
    """The race that hung a provider's close(): its poller was cancelled in the same
    loop turn as a submit woke it. ``asyncio.wait_for`` (3.10, 3.11) returned the
    event's result and dropped the cancel, so the poller went on polling for ever."""
    event = asyncio.Event()
    rounds = 0

    async def poller() -> None:
        nonlocal rounds
        while True:
            await wait_event(event, 10)
            event.clear()
            rounds += 1

    task = asyncio.create_task(poller())
    await asyncio.sleep(0)  # the poller now waits on the event
    event.set()
    task.cancel()
    with anyio.fail_after(5), pytest.raises(asyncio.CancelledError):
        await task
    assert rounds == 0


async def test_it_says_whether_the_event_came_or_the_time_ran_out() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True
    assert await wait_event(event, None) is True  # already set: at once
