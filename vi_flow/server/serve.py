"""Serving the application: start it on a TCP port, publish it, and run it as a process.

:func:`start` is shared by every way of serving (``vi-flow serve``, the background
server, the in-process one): it builds the app (which takes the home's lock), binds the
port and publishes the run file. :func:`run_server` blocks until SIGTERM, SIGINT, an
admin's ``POST /v1/server/shutdown`` or the idle timeout, then shuts down cleanly.

A connection with no request in progress that goes ``settings.head_deadline`` seconds
without a complete request head is closed (slowloris; see :class:`_HeadDeadline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest

from .. import __version__
from ..models.server import ServerInfo
from .app import create_app
from .endpoints import public_base_url
from .helpers import Handler
from .home import publish
from .limits import BUDGET_KEY, install_accept_guard, raise_open_file_limit
from .logs import MALFORMED_REQUEST_ID, malformed_reason
from .middleware import new_request_id
from .routes.lifecycle import LIFECYCLE_KEY
from .state import IDENTITY_KEY, REPLICA_KEY, ServerSettings
from .tasks import TASKS_KEY

__all__ = ["answer_malformed_as_json", "run_server", "start", "url_of"]

log = logging.getLogger("vi_flow.server")

GIL_SWITCH_INTERVAL = 0.0005
"""Seconds a busy thread keeps the GIL while another waits for it, while a server runs.

The event loop holds the GIL while it makes events; the database thread needs it back
between its compression and SQLite calls, each of which releases it. At Python's
default (5 ms), and since every voluntary release by the loop restarts the waiter's
clock, a commit waited 5-15 ms for each of those hand-backs, so the loop and the writer
took turns instead of working at once (issue 15: a live run's event rate rose ~25 %).
"""


class _Handler(web.RequestHandler):
    """A connection, whose answer to a request aiohttp cannot read (a header line over
    8 KiB, a bad byte) is the wire's JSON error with the reason only, and a request id
    (in the answer, its ``X-Request-Id`` and the log's line) as every other error has.
    aiohttp's own is plain text quoting what it read of the request: an
    ``Authorization`` header too long came back in it, API key and all."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not 400 <= status < 500:
            return super().handle_error(request, status, exc, message)
        reason = malformed_reason(exc)
        request_id = new_request_id()  # its headers are not read: none sent is trusted
        named = MALFORMED_REQUEST_ID.set(request_id)
        try:
            answer = super().handle_error(request, status, exc, reason)  # logs, closes after
        finally:
            MALFORMED_REQUEST_ID.reset(named)
        if isinstance(answer, web.Response):
            error = {
                "code": "INVALID_REQUEST",
                "message": f"the request could not be read: {reason}",
                "requestId": request_id,
            }
            answer.body = orjson.dumps({"error": error})
            answer.content_type = "application/json"
            answer.headers["X-Request-Id"] = request_id
        return answer


class _Server(web.Server):
    """The server of :class:`_Handler` connections (set as ``runner.server``'s class)."""

    __slots__ = ()

    def __call__(self) -> web.RequestHandler:
        handler = super().__call__()
        handler.__class__ = _Handler
        return handler


def answer_malformed_as_json(runner: web.AppRunner) -> None:
    """Make the connections of ``runner`` (set up) answer a request they cannot read as
    the wire's JSON error, with a request id and without a byte of the request."""
    assert runner.server is not None
    runner.server.__class__ = _Server


class _HeadDeadline:
    """Closes connections that send no complete first request head within ``seconds``.

    aiohttp's keep-alive timer (the runner's ``keepalive_timeout``, set to the same
    ``seconds``) closes a connection that waits for a request, idle or part-way through
    a head, and never one whose request is being handled (streams, slow uploads). But
    aiohttp 3.10, our floor, arms that timer only when a first request is done: a
    connection that never finishes its first head was held for good (3.14 arms it at
    connect too, and this is then a backstop). So a sweep, every tenth of ``seconds``,
    times each of the server's connections from when it first sees it until a request
    of it reaches the app; public API only (``Server.connections``, ``force_close``).
    """

    def __init__(self, runner: web.AppRunner, seconds: float) -> None:
        self._runner = runner
        self._seconds = seconds
        self._headed: set[web.RequestHandler] = set()
        self._waiting: dict[web.RequestHandler, float] = {}

    def install(self, app: web.Application) -> None:
        """Add the middleware that marks connections with a request, and the sweeper."""
        headed = self._headed

        @web.middleware
        async def mark(request: web.Request, handler: Handler) -> web.StreamResponse:
            headed.add(request.protocol)
            return await handler(request)

        app.middlewares.insert(0, mark)  # outermost: even a refused request had its head
        app.cleanup_ctx.append(self._sweeping)

    def sweep(self, now: float) -> None:
        """Close each connection still without a request ``seconds`` after first seen."""
        server = self._runner.server
        connections = server.connections if server is not None else []
        self._headed.intersection_update(connections)  # forget the closed ones
        before = self._waiting
        self._waiting = {c: before.get(c, now) for c in connections if c not in self._headed}
        for connection, since in self._waiting.items():
            if now - since >= self._seconds:
                connection.force_close()

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._seconds / 10)
            self.sweep(loop.time())

    async def _sweeping(self, app: web.Application) -> AsyncIterator[None]:
        sweeper = asyncio.ensure_future(self._sweep_forever())
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper


def url_of(host: str, port: int) -> str:
    """The base URL a client on this host uses for a server bound to ``host:port``."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


async def start(settings: ServerSettings) -> tuple[web.AppRunner, int]:
    """Start the application on ``settings.host:settings.port``; return the runner and port.

    Call ``await runner.cleanup()`` to stop it (closes every feature and the store,
    removes the run file and lets the home's lock go).

    Raises:
        HomeBusyError: Another server owns the home; nothing was opened.
        HomeError: The home cannot be used (read-only, full, not a directory).
    """
    soft, hard = raise_open_file_limit()
    log.info("open files: limit %d (hard limit %d)", soft, hard)
    app = create_app(settings)
    install_accept_guard(asyncio.get_running_loop(), app[BUDGET_KEY])
    deadline = settings.head_deadline
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        keepalive_timeout=deadline,  # aiohttp's own: 75 s (3.10), 3630 s (3.14)
    )
    _HeadDeadline(runner, deadline).install(app)  # before setup: it adds a middleware
    await runner.setup()
    answer_malformed_as_json(runner)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = int(runner.addresses[0][1])
        app[LIFECYCLE_KEY].connections = lambda: (
            len(runner.server.connections) if runner.server else 0
        )
        info = _info(app, settings, port)
        await asyncio.to_thread(publish, info)
        app[LIFECYCLE_KEY].published = info  # kept published while it serves
    except BaseException:
        await runner.cleanup()
        raise
    return runner, port


def _info(app: web.Application, settings: ServerSettings, port: int) -> ServerInfo:
    identity, service = app[IDENTITY_KEY], app[TASKS_KEY]
    return ServerInfo(
        pid=identity.pid,
        url=url_of(settings.host, port),
        version=__version__,
        mode=settings.mode,
        started_at=identity.started_at,
        home=str(settings.home),
        secret=identity.secret,
        ssh_host=service.ssh_host or None,
        ssh_port=service.ssh_port or None,
    )


def _on_signal(loop: asyncio.AbstractEventLoop, sig: signal.Signals, stop: asyncio.Event) -> None:
    try:
        loop.add_signal_handler(sig, stop.set)
    except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
        signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        _on_signal(loop, sig, stop)


def _release_startup_memory() -> None:
    """Give back to the system what starting up left free (import-time garbage).

    A server then idles for hours: a collection frees the cycles of imports and of the
    app's construction, and glibc's ``malloc_trim`` returns the freed pages of its heap
    (about 1 MB here) instead of keeping them for allocations that may never come.
    """
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    # CDLL(None): the symbols the process already has, libc's among them (find_library
    # would run ldconfig in a subprocess)
    with contextlib.suppress(OSError, AttributeError):  # musl has no malloc_trim
        ctypes.CDLL(None).malloc_trim(0)


async def _serve(settings: ServerSettings, ready: Callable[[int], None] | None) -> None:
    stop = asyncio.Event()
    _install_signals(stop)
    runner, port = await start(settings)
    runner.app[LIFECYCLE_KEY].request_stop = stop.set
    runner.app[REPLICA_KEY].stop_server = stop.set
    url = url_of(settings.host, port)
    log.info(
        "vi-flow %s serving %s on %s (pid %d, %s)",
        __version__,
        settings.home,
        url,
        runner.app[IDENTITY_KEY].pid,
        settings.mode,
    )
    service = runner.app[TASKS_KEY]
    log.info("ssh endpoints advertised as %s:%s", service.ssh_host, service.ssh_port)
    _release_startup_memory()
    if settings.mode == "foreground":
        token = settings.home / "admin-token"
        # an IPv6 address in brackets, as in any URL (QA: "http://::1:8000/v1" pasted
        # into --base-url was refused)
        bound = f"[{settings.host}]" if ":" in settings.host else settings.host
        sys.stderr.write(
            f"vi-flow server listening on http://{bound}:{port}/v1 "
            f"(home: {settings.home})\n"
            f"clients elsewhere: VI_FLOW_BASE_URL={public_base_url(settings, url)} "
            f"VI_FLOW_API_KEY=$(cat {token})\n"
        )
        sys.stderr.flush()
    if ready is not None:
        ready(port)
    try:
        await stop.wait()
    finally:
        log.info("vi-flow server shutting down")
        await runner.cleanup()
        log.info("vi-flow server stopped")


def run_server(settings: ServerSettings, *, ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM, SIGINT, a shutdown request or the idle timeout; then stop cleanly.

    In the ``foreground`` mode it prints ``vi-flow server listening on
    http://HOST:PORT/v1 (home: DIR)`` to stderr once the port is bound.

    Args:
        settings: Home directory, host, port, mode and feature settings.
        ready: Called with the port once the server answers and its run file is written.

    Raises:
        HomeBusyError: Another server owns the home (nothing was opened).
        HomeError: The home cannot be used.
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, GIL_SWITCH_INTERVAL))
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(settings, ready))
    finally:
        sys.setswitchinterval(interval)
