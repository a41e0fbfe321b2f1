"""Open files: the server's limit, raised once at start, and what happens past it.

Every connection, log follow and SSH session holds file descriptors. At start,
:func:`raise_open_file_limit` lifts the soft ``RLIMIT_NOFILE`` to the hard one (the
figure is logged; a systemd unit sets the hard one with ``LimitNOFILE``). Past the
limit the server answers rather than stalls:

- :func:`guard_middleware` answers new requests ``503 SERVER_OVERLOADED`` with
  ``Retry-After`` (and closes the connection) while the open descriptors, counted once a
  second off the event loop, are within :attr:`FileBudget.reserve` of the limit;
- when ``accept()`` itself fails with "too many open files", :func:`install_accept_guard`
  frees a spare descriptor kept for the purpose, accepts the waiting connections and
  answers each the same 503, instead of leaving them queued while asyncio retries;
- either case is logged at most once a minute, with how many were refused since.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from .helpers import Handler

__all__ = [
    "BUDGET_KEY",
    "RETRY_AFTER",
    "FileBudget",
    "guard_middleware",
    "install_accept_guard",
    "open_file_limit",
    "raise_open_file_limit",
    "setup_limits",
]

log = logging.getLogger("vi_flow.server")

RETRY_AFTER = 1
"""Seconds a refused client is told to wait (``Retry-After``)."""

_COUNT_EVERY = 1.0
_LOG_EVERY = 60.0
_FD_DIRS = (Path("/proc/self/fd"), Path("/dev/fd"))
_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one; return ``(soft, hard)`` as now set."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else _system_max(soft)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):  # macOS caps it below "unlimited"
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _system_max(soft: int) -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return max(soft, 65536)


def _open_files(limit: int) -> int | None:
    """Descriptors open now (``limit`` when none is left to count them with); ``None``
    where the system has no descriptor table to read."""
    directory = next((d for d in _FD_DIRS if d.is_dir()), None)
    if directory is None:
        return None
    try:
        return len(os.listdir(directory)) - 1  # the listing's own descriptor
    except OSError as exc:
        return limit if exc.errno in _OUT_OF_FILES else None


class FileBudget:
    """How close the process is to its open-file limit, and the once-a-minute warning.

    Args:
        limit: The soft open-file limit.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserve = max(16, limit // 10)
        """Descriptors kept for what the server opens itself (logs, database, SSH)."""
        self.open_files = 0
        self.refused = 0
        self._logged_at = -_LOG_EVERY
        self._spare: int | None = None

    @property
    def exhausted(self) -> bool:
        """Whether new requests should be refused now."""
        return self.open_files >= self.limit - self.reserve

    def refusing(self, count: int = 1) -> None:
        """Count refused connections; say so in the log at most once a minute."""
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            log.warning(
                "open-file limit %d reached (%d open): new connections get 503 with "
                "Retry-After; %d were refused since the last such line; raise LimitNOFILE",
                self.limit,
                self.open_files,
                self.refused,
            )
            self._logged_at, self.refused = now, 0
        self.refused += count

    async def watch(self) -> None:
        """Count the open descriptors once a second, in a thread, until cancelled."""
        while True:
            count = await asyncio.to_thread(_open_files, self.limit)
            if count is None:
                return  # no descriptor table to read: only the accept guard applies
            self.open_files = count
            await asyncio.sleep(_COUNT_EVERY)

    def hold_spare(self) -> None:
        """Keep one descriptor open to free when ``accept()`` runs out."""
        if self._spare is None:
            with contextlib.suppress(OSError):
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def release_spare(self) -> None:
        """Close the spare descriptor (while refusing, or for good)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            os.close(spare)


BUDGET_KEY = web.AppKey("vi_flow.file_budget", FileBudget)
"""The application's :class:`FileBudget`."""


def _busy_body(budget: FileBudget) -> bytes:
    message = f"the server is at its open-file limit ({budget.limit}); retry shortly"
    return orjson.dumps(
        {"error": {"code": "SERVER_OVERLOADED", "message": message, "requestId": ""}}
    )


def _busy_headers() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER), "Connection": "close"}


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 503 with ``Retry-After`` while the open-file budget is spent."""
    budget = request.app[BUDGET_KEY]
    if not budget.exhausted:
        return await handler(request)
    budget.refusing()
    return web.Response(
        status=503,
        body=_busy_body(budget),
        content_type="application/json",
        headers=_busy_headers(),
    )


def _raw_busy(budget: FileBudget) -> bytes:
    body = _busy_body(budget)
    head = f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "Connection: close\r\n\r\n").encode() + body


def _refuse_waiting(listener: socket.socket, budget: FileBudget) -> int:
    """Accept and answer 503 to every connection waiting on ``listener``; how many."""
    refused = 0
    budget.release_spare()
    try:
        while refused < 1000:
            try:
                conn, _ = listener.accept()
            except OSError:  # none left waiting, or still out of descriptors
                break
            with conn, contextlib.suppress(OSError):
                conn.setblocking(False)
                conn.send(_raw_busy(budget))
                conn.recv(65536)  # what the client sent: unread, the close would reset
                conn.shutdown(socket.SHUT_WR)
            refused += 1
    finally:
        budget.hold_spare()
    return refused


def install_accept_guard(loop: asyncio.AbstractEventLoop, budget: FileBudget) -> None:
    """Answer 503 to connections ``accept()`` could not take for want of descriptors, and
    log it at most once a minute (asyncio would log every retry, every second)."""
    previous = loop.get_exception_handler()
    budget.hold_spare()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc, sock = context.get("exception"), context.get("socket")
        if not isinstance(exc, OSError) or exc.errno not in _OUT_OF_FILES or sock is None:
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        budget.open_files = budget.limit  # refuse in the middleware too until the next count
        listener = socket.socket(fileno=sock.fileno())  # the same descriptor, no new one
        try:
            budget.refusing(_refuse_waiting(listener, budget))
        finally:
            listener.detach()

    loop.set_exception_handler(handler)


async def _budget_ctx(app: web.Application) -> AsyncIterator[None]:
    watcher = asyncio.ensure_future(app[BUDGET_KEY].watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        app[BUDGET_KEY].release_spare()


def open_file_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` of this process (a large number for "unlimited")."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def setup_limits(app: web.Application) -> None:
    """Give ``app`` a :class:`FileBudget` for the current limit, its watcher and the 503
    middleware (outermost, so refusals cost nothing and flood no access log)."""
    app[BUDGET_KEY] = FileBudget(open_file_limit())
    app.middlewares.insert(0, guard_middleware)
    app.cleanup_ctx.append(_budget_ctx)
