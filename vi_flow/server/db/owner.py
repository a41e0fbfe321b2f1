"""One server per PostgreSQL database (schema), as there is one server per home.

Replicas that share a database need leases on runs, a shared wake-up for event streams
(``LISTEN``/``NOTIFY``) and one poller per cluster. Until the server has them, two servers
on one database would each recover the other's running runs as ``ServerRestarted`` at
start, poll the same Slurm and Ray jobs, and stream only the events they made themselves.
So a server holds a session advisory lock, keyed by its schema, for as long as it serves,
and a second one refuses to start, naming the first (as it shows in
``pg_stat_activity``). The lock ends with the first server's session: a stopped or
killed server frees the database at once.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from ._errors import DatabaseInUseError

if TYPE_CHECKING:
    from .postgres import PostgresConnection, PostgresDatabase

__all__ = ["OWNER_LOCK", "claim"]

OWNER_LOCK = 0x76696677  # "viff": the first key of the lock; the second is the schema's hash

_HOLDER = (
    "SELECT a.application_name, a.backend_start FROM pg_locks l"
    " JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = ?"
    " AND l.objid::bigint = (hashtext(current_schema())::bigint & 4294967295)"
)


def claim(database: PostgresDatabase) -> PostgresConnection:
    """Take the database for this server; keep the returned session open while serving.

    Raises:
        DatabaseInUseError: Another server holds it.
    """
    host = socket.gethostname()
    conn = database.connect(application_name=f"vi-flow server {host} pid {os.getpid()}")
    try:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(?, hashtext(current_schema()))", (OWNER_LOCK,)
        ).fetchone()
        if row is not None and row[0]:
            return conn
        holder = conn.execute(_HOLDER, (OWNER_LOCK,)).fetchone()
    except BaseException:
        conn.close()
        raise
    conn.close()
    named = f"{holder[0]} (since {holder[1]:%Y-%m-%d %H:%M:%S %Z})" if holder else "a server"
    raise DatabaseInUseError(database.name, named)
