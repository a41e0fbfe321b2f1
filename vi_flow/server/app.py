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
from .home import HomeError, HomeLock, disk_full, restrict_home, unpublish
from .limits import setup_limits
from .middleware import setup_middleware
from .replicas import MIGRATION as REPLICAS_MIGRATION
from .replicas import Replica
from .routes import admin, executions, flows, lifecycle, retention, runs, tasks
from .state import (
    IDENTITY_KEY,
    OPEN_STREAMS_KEY,
    REPLICA_KEY,
    SETTINGS_KEY,
    STORE_KEY,
    ServerIdentity,
    ServerSettings,
)  # fmt: skip
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
    sessions.PLACE_MIGRATION,
    REPLICAS_MIGRATION,
)
"""Every migration the features apply: a database that records another name was written
by a newer vi-flow, and the server refuses it (:class:`~vi_flow.server.db.NewerDatabaseError`)."""


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store, home, replica = app[STORE_KEY], app[SETTINGS_KEY].home, app[REPLICA_KEY]
    # The lock comes before the database: a second server on this home never opens it.
    lock = HomeLock(home)
    lock.acquire()
    joined = False
    try:
        try:
            # Join first: a server refused here (a live replica has its name) leaves no
            # admin token behind, in the shared database or in its home.
            await replica.open()  # on PostgreSQL: heartbeats, and messages from the others
            joined = True
            await store.run(lambda conn: ensure_admin(conn, home))
            await asyncio.to_thread(restrict_home, home)
        except HomeError:  # a newer database, or one another server serves
            await store.close()
            raise
        except (db.Error, OSError) as exc:  # a full or read-only disk, a broken file
            await store.close()
            where, why = store.database.name, str(exc)
            if disk_full(home):  # SQLite says "disk I/O error" when it cannot grow -shm
                why = f"its disk is full ({why})"
            raise HomeError(f"cannot open the vi-flow database {where}: {why}") from None
        yield
        await replica.close()
        joined = False
        await store.close()
    finally:
        if joined:
            await replica.close()
        unpublish(home, app[IDENTITY_KEY].secret)  # before the lock: never a stale file
        lock.release()


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
    app[OPEN_STREAMS_KEY] = {}
    app[IDENTITY_KEY] = ServerIdentity(secrets.token_hex(32), now_ms(), os.getpid())
    database = settings.database or settings.home / "state.db"
    app[STORE_KEY] = store = Store.open(database, known_migrations=MIGRATIONS)
    app[REPLICA_KEY] = Replica(
        store, settings.replica_name, settings.replica_lease, home=settings.home
    )
    setup_middleware(app)
    setup_limits(app)
    setup_idempotency(app)
    app.cleanup_ctx.append(_store_ctx)
    for feature in _FEATURES:
        feature.setup(app)
    return app
