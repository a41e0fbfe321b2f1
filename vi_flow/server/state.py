"""Server settings and the typed keys feature modules use to find shared objects.

:class:`ServerSettings` is everything the local server is configured with. The
``web.AppKey`` constants name what :func:`vi_flow.server.app.create_app` puts on the
application (the store, the settings) and what feature modules may register (the run
engine under :data:`ENGINE_KEY`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import attrs
from aiohttp import web

from ..models.runs import Run
from .db import Connection
from .quotas import Quotas
from .replicas import Replica, lease_from_env
from .retention import RetentionSettings
from .store import Store

__all__ = [
    "ENGINE_KEY",
    "HEAD_DEADLINE",
    "IDENTITY_KEY",
    "OPEN_STREAMS_KEY",
    "REPLICA_KEY",
    "SETTINGS_KEY",
    "STORE_KEY",
    "Principal",
    "RunStarter",
    "ServerIdentity",
    "ServerSettings",
]

HEAD_DEADLINE = 30.0
"""Seconds a connection may go without a complete request head while no request of it is
being handled (from connecting, from the end of its previous answer), then it is closed.

Without it one client that connects and sends nothing, or a head a byte at a time
(slowloris), held its descriptor for good, and enough of them spent the open-file limit
(every other user then got 503). It stays above the SDK's keep-alive reuse (aiohttp's
client keeps an idle pooled connection 15 s): the client always lets a connection go
before the server would, so a request is never sent on one closing under it.
"""


@attrs.define
class ServerSettings:
    """How the local server runs.

    Attributes:
        home: The state directory (``state.db``, ``admin-token``, logs, volumes).
        host: The address to bind; loopback by default.
        port: The TCP port; 0 picks a free one.
        provider: The compute provider name (``local``).
        llm_base_url: Base URL of an OpenAI-compatible endpoint for ``llm`` blocks.
        llm_api_key: Its key; never shown in reprs or logs.
        heartbeat_interval: Seconds between SSE heartbeat comments while idle.
        tool_pause_timeout: Seconds a run waits for client tool results before failing.
        mode: How it runs: ``foreground`` (``vi-flow serve``), ``background`` (started
            for the home's clients) or ``in-process`` (inside a client's process).
        idle_timeout: Seconds without clients or work after which a background server
            exits; 0 means never.
        ssh_host: The address the SSH server binds; ``None``: where the API binds.
        ssh_port: The SSH server's port; 0 picks a free one.
        public_url: The API base URL clients elsewhere use (a reverse proxy's URL).
        ssh_public_host: The SSH host name task endpoints advertise (see
            :mod:`vi_flow.server.endpoints` for the defaults).
        ssh_public_port: The SSH port task endpoints advertise; ``None``: ``ssh_port``.
        quotas: Per-organization quotas (defaults, changed by ``VI_FLOW_QUOTA_<NAME>``).
        retention: How long finished runs and tasks are kept (forever by default;
            ``VI_FLOW_RETENTION_DAYS``) and how often they are pruned.
        database: Where the state lives: a ``postgresql://`` URL (teams: several servers,
            replicas, may share it; needs the ``postgres`` extra) or a SQLite file;
            ``None``: ``<home>/state.db``. Defaults to ``VI_FLOW_DATABASE``.
        replica_name: How this server shows among the replicas of one database
            (``VI_FLOW_REPLICA_NAME``; default ``HOST:`` and a digest of the home's path,
            the same at every start of the home).
        replica_lease: Seconds a replica may stay silent before the others take its runs
            over (``VI_FLOW_REPLICA_LEASE``, default 15; see :mod:`vi_flow.server.replicas`).
        head_deadline: Seconds a connection with no request in progress may take to send
            a complete request head before it is closed (:data:`HEAD_DEADLINE`).
        extra: Free-form settings for feature modules.
    """

    home: Path = attrs.field(converter=Path)
    host: str = "127.0.0.1"
    port: int = 0
    provider: str = "local"
    llm_base_url: str | None = None
    llm_api_key: str | None = attrs.field(default=None, repr=False)
    heartbeat_interval: float = 15.0
    tool_pause_timeout: float = 3600.0
    mode: str = "foreground"
    idle_timeout: float = 0.0
    ssh_host: str | None = None
    ssh_port: int = 0
    public_url: str | None = None
    ssh_public_host: str | None = None
    ssh_public_port: int | None = None
    quotas: Quotas = attrs.Factory(Quotas.from_env)
    retention: RetentionSettings = attrs.Factory(RetentionSettings.from_env)
    database: str | None = attrs.field(
        default=attrs.Factory(lambda: os.environ.get("VI_FLOW_DATABASE") or None), repr=False
    )
    replica_name: str | None = attrs.field(
        default=attrs.Factory(lambda: os.environ.get("VI_FLOW_REPLICA_NAME") or None)
    )
    replica_lease: float = attrs.Factory(lease_from_env)
    head_deadline: float = HEAD_DEADLINE
    extra: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class ServerIdentity:
    """Who this server process is: published in the home's run file.

    Attributes:
        secret: Proves the server's identity to clients (never logged or answered).
        started_at: When the application was built, in ms since the epoch.
        pid: The server's process id.
    """

    secret: str = attrs.field(repr=False)
    started_at: int
    pid: int


@attrs.frozen
class Principal:
    """Who a request's bearer token belongs to.

    Attributes:
        organization_id: The token's organization.
        token_name: The token's display name.
        admin: Whether it may create organizations and tokens.
    """

    organization_id: str
    token_name: str
    admin: bool = False


class RunStarter(Protocol):
    """What the run engine registers under :data:`ENGINE_KEY`.

    ``POST /v1/runs`` stores a Pending run, paid for by :meth:`charge` in the same
    transaction, and calls :meth:`start`; ``POST /v1/runs/{id}/cancel`` calls
    :meth:`cancel` before marking the run Cancelled. Both must return quickly (schedule
    the work, do not run it inline).
    """

    def charge(self, conn: Connection, org_id: str) -> None:
        """Take what a run costs ``org_id``, in the transaction that stores it (an
        ``APIProblem``, 402, when it cannot pay: nothing is stored then)."""

    async def start(self, run: Run) -> None:
        """Begin executing ``run`` (paid for already) in the background."""

    async def cancel(self, run: Run) -> None:
        """Stop executing ``run``; the caller marks it Cancelled afterwards."""

    async def forget(self, key: tuple[str, str]) -> None:
        """Drop what the engine keeps of a deleted run ``(org id, run id)`` (events, steps)."""


STORE_KEY = web.AppKey("vi_flow.store", Store)
"""The application's :class:`~vi_flow.server.store.Store`."""

SETTINGS_KEY = web.AppKey("vi_flow.settings", ServerSettings)
"""The application's :class:`ServerSettings`."""

ENGINE_KEY = web.AppKey("vi_flow.engine", RunStarter)
"""Where the run engine registers itself (``routes/executions`` does, in its ``setup``)."""

IDENTITY_KEY = web.AppKey("vi_flow.identity", ServerIdentity)
"""This server's :class:`ServerIdentity`."""

OPEN_STREAMS_KEY = web.AppKey("vi_flow.open_streams_per_org", dict[str, dict[int, Any]])
"""Streamed answers open now, per organization id: ``{id(request): request}`` (the
``streams`` quota; a request is no key of a set, as it compares by its contents)."""

REPLICA_KEY = web.AppKey("vi_flow.replica", Replica)
"""This server among the replicas of its database (see :mod:`vi_flow.server.replicas`)."""
