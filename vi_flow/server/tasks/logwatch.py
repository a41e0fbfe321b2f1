"""Being woken when a followed log file is written to, as ``tail -F`` is: Linux inotify.

A log follow reads until the end of the file, then waits for more. Polling alone makes
a choice between lag and wasted wake-ups; :class:`LogChanges` watches the file the
follow has open (through ``/proc/self/fd``, so exactly that file, never a path the task
could redirect) and wakes the waiter on the next write. Where inotify is not available
(not Linux, no watches left) :meth:`LogChanges.wait` just times out and the caller's
poll does the work. Runs on the event loop: the calls here are a few non-blocking
system calls, no file reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

from ..clock import wait_event

__all__ = ["LogChanges"]

_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008


@functools.cache
def _inotify() -> tuple[Callable[[int], int], Callable[[int, bytes, int], int]] | None:
    """libc's ``inotify_init1`` and ``inotify_add_watch``; ``None`` where there are none."""
    import ctypes  # here: only a log follow needs it

    try:
        libc: Any = ctypes.CDLL(None, use_errno=True)
        return libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None


class LogChanges:
    """Wakes :meth:`wait` when the watched file is written to (see the module)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tried = False

    def arm(self, file_fd: int | None) -> bool:
        """Start watching the open file ``file_fd`` unless already tried; whether a
        watch started now (then read once more: a write may have come in between)."""
        if self._tried or file_fd is None:
            return False
        self._tried = True
        calls = _inotify()
        if calls is None:
            return False
        init, add_watch = calls
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return False
        target = f"/proc/self/fd/{file_fd}".encode()
        if add_watch(fd, target, _IN_MODIFY | _IN_CLOSE_WRITE) < 0:
            os.close(fd)
            return False
        self._fd, self._loop = fd, asyncio.get_running_loop()
        self._loop.add_reader(fd, self._on_event)
        return True

    def clear(self) -> None:
        """Forget earlier writes: call it before a read, so one after it is not lost."""
        self._event.clear()

    async def wait(self, timeout: float) -> None:
        """Until the file is written to, at most ``timeout`` seconds."""
        await wait_event(self._event, timeout)

    def _on_event(self) -> None:
        with contextlib.suppress(OSError):  # drain the queued events; their content is moot
            while os.read(self._fd, 4096):
                pass
        self._event.set()

    def close(self) -> None:
        """Stop watching; idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0 and self._loop is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(fd)
            os.close(fd)
