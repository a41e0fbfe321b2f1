"""Being woken when a followed log file is written to, as ``tail -F`` is: Linux inotify.

A log follow reads until the end of the file, then waits for more. Polling alone makes
a choice between lag and wasted wake-ups; :class:`LogChanges` watches the file the
follow has open (through ``/proc/self/fd``, so exactly that file, never a path the task
could redirect) and wakes the waiter on the next write. All follows of an event loop
share one inotify instance (a user may hold only 128 by default, and tasks run as the
server's user; watches are plenty), closed when the last follow stops watching. Where
inotify is not available (not Linux, none left) :meth:`LogChanges.wait` just times out
and the caller's poll does the work. Runs on the event loop: the calls here are a few
non-blocking system calls, no file reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import struct
from typing import Any

from ..clock import wait_event

__all__ = ["LogChanges"]

_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


@functools.cache
def _libc() -> Any:
    """libc with ``inotify_init1``, ``inotify_add_watch``, ``inotify_rm_watch``; ``None``
    where there is no inotify."""
    import ctypes  # here: only a log follow needs it

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _ = (libc.inotify_init1, libc.inotify_add_watch, libc.inotify_rm_watch)
    except (OSError, AttributeError):
        return None
    return libc


class _Inotify:
    """One inotify instance of an event loop: watch descriptor -> the events to set."""

    def __init__(self, libc: Any, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self._libc, self.fd, self.loop = libc, fd, loop
        self._waiters: dict[int, set[asyncio.Event]] = {}
        loop.add_reader(fd, self._on_readable)

    def watch(self, file_fd: int, event: asyncio.Event) -> int | None:
        target = f"/proc/self/fd/{file_fd}".encode()
        wd = int(self._libc.inotify_add_watch(self.fd, target, _IN_MODIFY | _IN_CLOSE_WRITE))
        if wd < 0:
            return None
        self._waiters.setdefault(wd, set()).add(event)  # one inode, one wd: shared
        return wd

    def unwatch(self, wd: int, event: asyncio.Event) -> bool:
        """Forget ``event``; whether nothing is watched any more."""
        events = self._waiters.get(wd, set())
        events.discard(event)
        if not events:
            self._waiters.pop(wd, None)
            self._libc.inotify_rm_watch(self.fd, wd)  # fails harmlessly if already gone
        return not self._waiters

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
        os.close(self.fd)

    def _on_readable(self) -> None:
        with contextlib.suppress(OSError):  # EAGAIN: all read
            while data := os.read(self.fd, 65536):
                for wd in _watch_descriptors(data):
                    for event in self._waiters.get(wd, ()):
                        event.set()


def _watch_descriptors(data: bytes) -> set[int]:
    found, at = set(), 0
    while at + _EVENT.size <= len(data):
        wd, _, _, name_len = _EVENT.unpack_from(data, at)
        found.add(wd)
        at += _EVENT.size + name_len
    return found


_instances: dict[asyncio.AbstractEventLoop, _Inotify] = {}


def _instance() -> _Inotify | None:
    loop = asyncio.get_running_loop()
    found = _instances.get(loop)
    libc = _libc()
    if found is None and libc is not None:
        fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd >= 0:
            found = _instances[loop] = _Inotify(libc, fd, loop)
    return found


class LogChanges:
    """Wakes :meth:`wait` when the watched file is written to (see the module)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._watch: tuple[_Inotify, int] | None = None
        self._tried = False

    def arm(self, file_fd: int | None) -> bool:
        """Start watching the open file ``file_fd`` unless already tried; whether a
        watch started now (then read once more: a write may have come in between)."""
        if self._tried or file_fd is None:
            return False
        self._tried = True
        inotify = _instance()
        wd = inotify.watch(file_fd, self._event) if inotify is not None else None
        if inotify is None or wd is None:
            return False
        self._watch = (inotify, wd)
        return True

    def clear(self) -> None:
        """Forget earlier writes: call it before a read, so one after it is not lost."""
        self._event.clear()

    async def wait(self, timeout: float) -> None:
        """Until the file is written to, at most ``timeout`` seconds."""
        await wait_event(self._event, timeout)

    def close(self) -> None:
        """Stop watching; idempotent. The loop's inotify instance closes with its last watch."""
        watch, self._watch = self._watch, None
        if watch is not None and watch[0].unwatch(watch[1], self._event):
            _instances.pop(watch[0].loop, None)
            watch[0].close()
