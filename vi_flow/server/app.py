"""The aiohttp application of the local server, assembled from feature modules.

:func:`create_app` builds the application: the store and settings under their
``AppKey``\\ s, the middlewares (request id, JSON errors, auth), then each feature
module's ``setup(app)`` (``routes/admin``, ``flows``, ``runs``, ``executions``,
``tasks``, ``retention``, the web console at ``/``). Opening the app takes the home's
lock (one server per home), opens the store and makes sure the default organization and
``<home>/admin-token`` exist; closing it closes the store and lets the lock go last.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..models.limits import MAX_REQUEST_BODY
from . import db
from . import retention as pruning
from .bootstrap import ensure_admin
from .clock import now_ms
from .console import routes as console
from .console import sessions
from .endpoints import check_endpoints
from .engine import tables as engine_tables
from .helpers import setup_idempotency
from .home import HomeError, HomeLock, restrict_home, unpublish
from .limits import setup_limits
from .middleware import setup_middleware
from .routes import admin, executions, flows, lifecycle, retention, runs, tasks
from .state import IDENTITY_KEY, SETTINGS_KEY, STORE_KEY, ServerIdentity, ServerSettings
from .store import Store
from .tasks import service as task_service

__all__ = ["ServerSettings", "create_app"]

log = logging.getLogger("vi_flow.server")

_FEATURES = (admin, flows, runs, executions, tasks, retention, lifecycle, console)

MIGRATIONS = (
    engine_tables.MIGRATION,
    *(name for name, _ in engine_tables.MIGRATIONS),
    *(name for name, _ in task_service.MIGRATIONS),
    pruning.MIGRATION,
    sessions.MIGRATION,
)
"""Every migration the features apply: a database that records another name was written
by a newer vi-flow, and the server refuses it (:class:`~vi_flow.server.db.NewerDatabaseError`)."""


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store, home = app[STORE_KEY], app[SETTINGS_KEY].home
    # The lock comes before the database: a second server on this home never opens it.
    lock = HomeLock(home)
    lock.acquire()
    owner: Any = None
    try:
        try:
            owner = await _claim(store.database)  # a shared database: one server at a time
            await store.run(lambda conn: ensure_admin(conn, home))
            await asyncio.to_thread(restrict_home, home)
        except HomeError:  # a newer database, or one another server serves
            await store.close()
            raise
        except (db.Error, OSError) as exc:  # a full or read-only disk, a broken file
            await store.close()
            where = store.database.name
            raise HomeError(f"cannot open the vi-flow database {where}: {exc}") from None
        yield
        await store.close()
    finally:
        if owner is not None:
            owner.close()  # at once: this may run at exit, when no worker thread is left
        unpublish(home, app[IDENTITY_KEY].secret)  # before the lock: never a stale file
        lock.release()


async def _claim(database: db.Database) -> Any:
    """On PostgreSQL, the session that holds the database for this server (see
    :mod:`vi_flow.server.db.owner`); on SQLite the home's lock already does."""
    if database.dialect != "postgresql":
        return None
    from .db.owner import claim

    return await asyncio.to_thread(claim, database)  # type: ignore[arg-type]


def create_app(settings: ServerSettings) -> web.Application:
    """Build the local server's application for ``settings``.

    Args:
        settings: Where the state lives and how features behave.

    Returns:
        The application; run it with ``aiohttp.web.AppRunner`` (see
        :func:`vi_flow.server.run_server` and :mod:`vi_flow.server.embedded`).

    Raises:
        EndpointError: A listen address or public name in ``settings`` is unusable.
    """
    check_endpoints(settings)
    app = web.Application(client_max_size=MAX_REQUEST_BODY)
    app[SETTINGS_KEY] = settings
    app[IDENTITY_KEY] = ServerIdentity(secrets.token_hex(32), now_ms(), os.getpid())
    database = settings.database or settings.home / "state.db"
    app[STORE_KEY] = Store.open(database, known_migrations=MIGRATIONS)
    setup_middleware(app)
    setup_limits(app)
    setup_idempotency(app)
    app.cleanup_ctx.append(_store_ctx)
    for feature in _FEATURES:
        feature.setup(app)
    return app
