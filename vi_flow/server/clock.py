"""The server's clock: :func:`now_ms`, the time every record, event and update carries,
and :func:`wait_event`, the one way the server sleeps until something changes.

One definition, so records, events and provider updates agree on the unit (integer
milliseconds since the epoch) and a test can replace the clock in one place.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["now_ms", "wait_event"]


def now_ms() -> int:
    """The current time in milliseconds since the epoch."""
    return int(time.time() * 1000)


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set, ``seconds`` at most (None: no limit); False when time ran out.

    Not ``asyncio.wait_for``: on Python 3.10 and 3.11 it drops a cancellation that
    arrives as the event is set, and a loop around it (a poller, a follow) then never
    stops — ``close()`` waited for ever. ``asyncio.wait`` cancels nothing when its time
    runs out, so a cancellation of this task is the only one there is, and it is raised.
    """
    if event.is_set():
        return True
    if seconds is None:
        await event.wait()
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait((waiter,), timeout=seconds)
    finally:
        waiter.cancel()  # nothing when it is done; else it no longer waits on `event`
    return bool(done)
