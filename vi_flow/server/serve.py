"""Serving the application: start it on a TCP port, and run it as a daemon.

:func:`start` is shared by :func:`run_server` (``vi-flow serve``) and the embedded
server; :func:`run_server` blocks until SIGTERM or SIGINT, then shuts down cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from .app import create_app
from .state import ServerSettings

__all__ = ["run_server", "start"]

log = logging.getLogger("vi_flow.server")


async def start(settings: ServerSettings) -> tuple[web.AppRunner, int]:
    """Start the application on ``settings.host:settings.port``; return the runner and port.

    Call ``await runner.cleanup()`` to stop it (closes the store and every feature).
    """
    runner = web.AppRunner(
        create_app(settings), access_log=None, handle_signals=False, shutdown_timeout=5.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1])
    return runner, port


def _on_signal(loop: asyncio.AbstractEventLoop, sig: signal.Signals, stop: asyncio.Event) -> None:
    try:
        loop.add_signal_handler(sig, stop.set)
    except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
        signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        _on_signal(loop, sig, stop)


async def _serve(settings: ServerSettings) -> None:
    stop = asyncio.Event()
    _install_signals(stop)
    runner, port = await start(settings)
    sys.stderr.write(
        f"vi-flow server listening on http://{settings.host}:{port}/v1 (home: {settings.home})\n"
    )
    sys.stderr.flush()
    try:
        await stop.wait()
    finally:
        log.info("vi-flow server shutting down")
        await runner.cleanup()


def run_server(settings: ServerSettings) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly and return.

    Prints ``vi-flow server listening on http://HOST:PORT/v1 (home: DIR)`` to stderr
    once the port is bound.

    Args:
        settings: Home directory, host, port and feature settings.
    """
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings))
