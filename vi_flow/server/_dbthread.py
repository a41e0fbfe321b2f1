"""The single thread that owns the SQLite connection.

A plain daemon thread fed by a queue, rather than a ``ThreadPoolExecutor``, so that the
store still answers inside ``atexit`` handlers (executors refuse work once the
interpreter starts shutting down).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["DBThread", "settle"]

T = TypeVar("T")


def settle(
    future: asyncio.Future[Any], result: Any, error: BaseException | None,
    then: Callable[[], None] | None = None,
) -> None:  # fmt: skip
    """On the loop: run ``then()``, then give ``future`` the result or the error (unless
    its caller was cancelled meanwhile)."""
    if then is not None:
        then()
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class DBThread:
    """Runs callables one at a time, in order, on one dedicated daemon thread."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    async def call(self, fn: Callable[[], T], then: Callable[[], None] | None = None) -> T:
        """Run ``fn`` on the thread and wait for its result without blocking the loop.

        ``then()`` runs on the loop once ``fn`` has run, before the result is handed over,
        even when the caller was cancelled meanwhile (on the thread if the loop closed).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def job() -> None:
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn()
            except BaseException as exc:  # handed over to the awaiting coroutine
                error = exc
            try:
                loop.call_soon_threadsafe(settle, future, result, error, then)
            except RuntimeError:  # the loop closed while the job ran
                if then is not None:
                    then()

        self._jobs.put(job)
        return await future

    def post(self, job: Callable[[], None]) -> None:
        """Queue ``job`` to run on the thread; nobody waits for it here (it reports back
        by itself, and must not raise)."""
        self._jobs.put(job)

    def stop(self) -> None:
        """Finish the queued work, then end the thread (without waiting for it)."""
        self._jobs.put(None)
