"""The in-process local server: the home's server, run inside a client's own process.

Clients use it with ``local_server = "in-process"`` (notebooks, tests); the default is
the home's background server (:mod:`vi_flow.local`). :func:`acquire` starts (or shares)
one server per home per process: the aiohttp application runs on its own daemon thread
with its own event loop, bound to a free loopback port. It takes the home's lock like
every server, so it never runs beside another server of the home: then :func:`acquire`
raises :class:`~vi_flow.server.home.HomeBusyError` and the client attaches to that one.
:func:`release` stops it when the last holder lets go; every server still running is
stopped at interpreter exit, and the work it holds stops with it. After ``os.fork()`` the
child starts its own servers (the parent's threads do not exist there).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from ..models.server import ServerInfo
from .bootstrap import DEFAULT_ORG, read_admin_token
from .home import read_run_file
from .serve import start
from .state import ServerSettings

__all__ = ["EmbeddedServer", "acquire", "release"]

log = logging.getLogger("vi_flow.server")

_START_TIMEOUT = 60.0
#: How long a graceful stop may take before the server's leftover work is cancelled.
#: Every step of the shutdown is bounded by itself; this guards ``close()`` from a
#: step that is not, so a client's ``close()`` never hangs or raises for the server.
_STOP_TIMEOUT = 30.0


class EmbeddedServer:
    """A running in-process server (obtain it with :func:`acquire`).

    Attributes:
        home: The resolved state directory.
        port: The loopback TCP port.
        url_root: ``http://127.0.0.1:PORT``.
        base_url: ``http://127.0.0.1:PORT/v1``.
        api_key: The admin token of the default organization.
        organization_id: ``org_default``.
    """

    def __init__(
        self, home: Path, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self.home = home
        self.port = 0
        self.api_key = ""
        self.organization_id = DEFAULT_ORG
        self._loop = loop
        self._thread = thread
        self._runner: web.AppRunner | None = None
        self._refs = 0
        self._pid = os.getpid()

    @property
    def holders(self) -> int:
        """How many :func:`acquire` calls hold it now: the last :func:`release` stops it."""
        return self._refs

    @property
    def url_root(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return f"{self.url_root}/v1"

    @property
    def running(self) -> bool:
        """Whether the server thread is alive in this process."""
        return self._pid == os.getpid() and self._thread.is_alive() and self._runner is not None

    def _start(self, settings: ServerSettings) -> None:
        future = asyncio.run_coroutine_threadsafe(start(settings), self._loop)
        self._runner, self.port = future.result(timeout=_START_TIMEOUT)
        self.api_key = read_admin_token(self.home) or ""
        info = read_run_file(self.home)
        assert info is not None, "start() publishes the run file before it returns"
        self.info: ServerInfo = info

    def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None and self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop)
            try:
                future.result(timeout=_STOP_TIMEOUT)
            except concurrent.futures.TimeoutError:
                log.warning(
                    "the embedded server for %s did not stop within %.0f s; cancelling what "
                    "is left: %s",
                    self.home,
                    _STOP_TIMEOUT,
                    self._pending_work(),
                )
                future.cancel()
        self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=_START_TIMEOUT)

    def _pending_work(self) -> str:
        """The server loop's unfinished coroutines, for the log (best effort)."""

        async def describe() -> str:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            return ", ".join(sorted(repr(t.get_coro()) for t in tasks)) or "nothing"

        try:
            return asyncio.run_coroutine_threadsafe(describe(), self._loop).result(timeout=5)
        except concurrent.futures.TimeoutError:
            return "unknown (the server loop does not answer)"

    def __repr__(self) -> str:
        return f"<EmbeddedServer {self.base_url} home={str(self.home)!r} refs={self._refs}>"


_lock = threading.Lock()
_servers: dict[Path, EmbeddedServer] = {}


def _loop_main(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        _cancel_leftovers(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def _launch(home: Path, **settings: Any) -> EmbeddedServer:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=_loop_main, args=(loop,), name=f"vi-flow-server:{home.name}", daemon=True
    )
    thread.start()
    server = EmbeddedServer(home, loop, thread)
    try:
        server._start(
            ServerSettings(home=home, host="127.0.0.1", port=0, mode="in-process", **settings)
        )
    except BaseException:
        server._stop()
        raise
    return server


def acquire(home: Path | str, **settings: Any) -> EmbeddedServer:
    """Start, or share, the in-process server for ``home``; blocks until it answers.

    Thread-safe and reference-counted per resolved home: every call must be matched by
    one :func:`release`.

    Args:
        home: The state directory (``VI_FLOW_HOME``).
        **settings: Extra :class:`~vi_flow.server.state.ServerSettings` fields, used
            only when this call starts the server.

    Returns:
        The running server, with its ``base_url`` and ``api_key``.
    """
    key = Path(home).expanduser().resolve()
    with _lock:
        server = _servers.get(key)
        if server is None or not server.running:
            server = _servers[key] = _launch(key, **settings)
        server._refs += 1
        return server


def release(server: EmbeddedServer) -> None:
    """Drop one reference to ``server``; the last one stops it gracefully."""
    with _lock:
        server._refs = max(0, server._refs - 1)
        if server._refs or _servers.get(server.home) is not server:
            return
        del _servers[server.home]
    if server._pid == os.getpid():
        server._stop()


def _stop_all() -> None:
    with _lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        if server._pid == os.getpid():
            server._stop()


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _servers.clear()


atexit.register(_stop_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
