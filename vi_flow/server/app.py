"""The aiohttp application of the local server, assembled from feature modules.

:func:`create_app` builds the application: the store and settings under their
``AppKey``\\ s, the middlewares (request id, JSON errors, auth), then each feature
module's ``setup(app)`` (``routes/admin``, ``flows``, ``runs``, ``executions``,
``tasks``). Opening the app opens the store and makes sure the default organization
and ``<home>/admin-token`` exist; closing it closes the store last.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from .bootstrap import ensure_admin
from .helpers import setup_idempotency
from .middleware import setup_middleware
from .routes import admin, executions, flows, runs, tasks
from .state import SETTINGS_KEY, STORE_KEY, ServerSettings
from .store import Store

__all__ = ["ServerSettings", "create_app"]

log = logging.getLogger("vi_flow.server")

_FEATURES = (admin, flows, runs, executions, tasks)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store, home = app[STORE_KEY], app[SETTINGS_KEY].home
    await store.run(lambda conn: ensure_admin(conn, home))
    yield
    await store.close()


def create_app(settings: ServerSettings) -> web.Application:
    """Build the local server's application for ``settings``.

    Args:
        settings: Where the state lives and how features behave.

    Returns:
        The application; run it with ``aiohttp.web.AppRunner`` (see
        :func:`vi_flow.server.run_server` and :mod:`vi_flow.server.embedded`).
    """
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SETTINGS_KEY] = settings
    app[STORE_KEY] = Store(settings.home / "state.db")
    setup_middleware(app)
    setup_idempotency(app)
    app.cleanup_ctx.append(_store_ctx)
    for feature in _FEATURES:
        feature.setup(app)
    return app
