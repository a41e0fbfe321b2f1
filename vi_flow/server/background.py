"""Background tasks that a server object starts and keeps until they end.

The event loop holds only a weak reference to a task: one started and not kept may be
collected half-way. :func:`spawn` keeps it in its owner's set until it is done, so the
owner can also cancel what is still running when it closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["spawn"]

T = TypeVar("T")


def spawn(kept: set[asyncio.Task[T]], work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run ``work`` as a task on the running loop, in ``kept`` until it is done."""
    task = asyncio.get_running_loop().create_task(work)
    kept.add(task)
    task.add_done_callback(kept.discard)
    return task
