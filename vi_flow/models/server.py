"""What a home's local server publishes about itself: the run file and the status answer.

A server that owns a home writes :class:`ServerInfo` to ``<home>/server.json`` (mode
0600) once it answers, and removes it when it stops. Clients read it to find the server
and prove its identity before they trust it: they send a random challenge to
``GET /v1/health?challenge=...`` and compare the answer with :func:`identity_proof` of the
run file's secret, so a stale file whose port another program now uses is never trusted.
:class:`ServerStatus` is the answer of ``GET /v1/server`` (admin tokens only).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import attrs

from ._base import dumps, from_wire, loads

__all__ = [
    "HOME_SERVED",
    "LOCK_FILE",
    "LOG_DIR",
    "LOG_FILE",
    "RUN_FILE",
    "START_LOCK_FILE",
    "STDIO_FILE",
    "STOPPED_FILE",
    "APIToken",
    "CreatedToken",
    "RevokedTokens",
    "ServerInfo",
    "ServerStatus",
    "identity_proof",
]

RUN_FILE: Final = "server.json"
"""The run file, under the home: where the home's server is and how to recognise it."""
STOPPED_FILE: Final = "server.stopped"
"""Written by a server stopped on request (``vi-flow server stop``): its pid. A client
that was using that server does not start another for the home; a new client does."""
LOCK_FILE: Final = "server.lock"
"""The file a server holds an exclusive lock on for its whole life."""
START_LOCK_FILE: Final = "server-start.lock"
"""Held by a client while it starts a background server, so that only one starts."""
LOG_DIR: Final = "logs"
"""The folder, under the home, of the background server's log files."""
LOG_FILE: Final = "server.log"
"""The background server's rotating log (``vi-flow server logs``)."""
STDIO_FILE: Final = "server.stderr"
"""What the background process itself writes to stdout/stderr (crashes before logging)."""
HOME_SERVED: Final = "is already served by"
"""In the words of a server refused because another one holds the home: a client that
started it then waits for that other one (it may not have published itself yet)."""


@attrs.frozen
class ServerInfo:
    """The contents of ``<home>/server.json``.

    Attributes:
        pid: The server's process id.
        url: Its API base URL, ``http://127.0.0.1:PORT/v1``.
        version: The vi-flow version it runs.
        mode: ``background``, ``foreground`` (``vi-flow serve``) or ``in-process``.
        started_at: When it started, in ms since the epoch.
        home: The home it owns.
        secret: Proves the server's identity (see :func:`identity_proof`); never shown.
        ssh_host: Its SSH endpoint's host, if it has one.
        ssh_port: Its SSH endpoint's port, if it has one.
    """

    pid: int
    url: str
    version: str
    mode: str
    started_at: int
    home: str
    secret: str = attrs.field(repr=False)
    ssh_host: str | None = None
    ssh_port: int | None = None

    def to_json(self) -> bytes:
        """The run file's bytes."""
        return dumps(self)

    @classmethod
    def from_json(cls, raw: bytes) -> ServerInfo:
        """Parse a run file.

        Raises:
            ValueError: Not a run file (a half-written or foreign file).
        """
        try:
            return from_wire(loads(raw), cls)
        except Exception as exc:  # orjson and cattrs raise many shapes for "not this"
            raise ValueError(f"not a vi-flow run file: {exc}") from None


@attrs.frozen
class ServerStatus:
    """What ``GET /v1/server`` answers: the server and the work it holds.

    Attributes:
        pid: The server's process id.
        version: The vi-flow version it runs.
        mode: ``background``, ``foreground`` or ``in-process``.
        started_at: When it started, in ms since the epoch.
        uptime_s: Seconds since then.
        home: The home it owns.
        idle_timeout_s: Seconds of idleness after which it exits; 0 means never.
        active_runs: Runs that are Pending or Running (paused ones included); with
            replicas, those this replica drives.
        active_tasks: Tasks that are pending or running; with replicas, this replica's.
        active_reservations: Reservations not yet ended.
        connections: Open client connections.
        replica: This server's name among the replicas of its database.
        replicas: The names of every live replica of its database (this one included;
            just this one on SQLite).
    """

    pid: int
    version: str
    mode: str
    started_at: int
    uptime_s: float
    home: str
    idle_timeout_s: float
    active_runs: int
    active_tasks: int
    active_reservations: int
    connections: int
    replica: str | None = None
    replicas: list[str] = attrs.Factory(list)


@attrs.frozen
class APIToken:
    """An organization's API key as listed: its name, never the key itself.

    Attributes:
        name: The token's name (several tokens may share one; revoking it revokes all).
        admin: Whether it is the server's admin token.
        created_at: When it was created, in ms since the epoch.
    """

    name: str
    admin: bool = False
    created_at: int = 0


@attrs.frozen
class CreatedToken:
    """A new API key: the only answer that ever holds the key (it is stored hashed).

    Attributes:
        name: The token's name.
        token: The key itself (``vf_...``); not in ``repr()``. Keep it now, it is never shown again.
    """

    name: str
    token: str = attrs.field(repr=False)


@attrs.frozen
class RevokedTokens:
    """What revoking a token name did.

    Attributes:
        name: The revoked name.
        revoked: How many tokens had that name (all refused from now on).
    """

    name: str
    revoked: int


def identity_proof(secret: str, challenge: str) -> str:
    """The answer a server owning ``secret`` gives to ``challenge`` (HMAC-SHA256, hex)."""
    return hmac.new(secret.encode(), challenge.encode(), hashlib.sha256).hexdigest()
