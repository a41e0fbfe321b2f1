"""The server's database, SQLite or PostgreSQL, behind one DB-API shaped interface.

Query functions take a :class:`Connection` and write SQL once, with ``?`` placeholders
and the SQL both dialects accept (``INSERT ... ON CONFLICT``, ``COALESCE``, ``RETURNING``);
rows index by name and by position (:class:`Row`). A :class:`Database` opens the
connection and frames transactions and migrations for its dialect:

- :class:`SQLiteDatabase` (``<home>/state.db``, WAL): one server, no setup — the default;
- ``PostgresDatabase`` (``postgresql://`` URLs, psycopg 3, the ``postgres`` extra): for
  teams; several servers (replicas, :mod:`vi_flow.server.replicas`) may share one.
  Imported only when asked for, so the SQLite server never loads psycopg.

Errors are the DB-API classes of :mod:`sqlite3` on both backends (PostgreSQL raises
subclasses), see :mod:`vi_flow.server.db._errors`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from ._errors import (
    DatabaseError,
    DatabaseFileGone,
    DatabaseInUseError,
    DatabaseReadOnly,
    DatabaseSettingError,
    DatabaseUnavailable,
    Error,
    IntegrityError,
    NewerDatabaseError,
    PostgresError,
    PostgresIntegrityError,
    UnstorableText,
    is_disk_full,
)
from ._held import log_when_committed
from ._types import Connection, Cursor, Row
from ._urls import redact, scrubbed
from .dialect import Migration, migration_sql
from .sqlite import SQLiteDatabase

__all__ = [
    "Connection",
    "Cursor",
    "Database",
    "DatabaseError",
    "DatabaseFileGone",
    "DatabaseInUseError",
    "DatabaseReadOnly",
    "DatabaseSettingError",
    "DatabaseUnavailable",
    "Error",
    "IntegrityError",
    "Migration",
    "NewerDatabaseError",
    "PostgresError",
    "PostgresIntegrityError",
    "Row",
    "SQLiteDatabase",
    "UnstorableText",
    "for_update",
    "is_disk_full",
    "is_postgres_url",
    "lock_name",
    "log_when_committed",
    "migration_sql",
    "on_postgres",
    "open_database",
    "redact",
    "scrubbed",
]

_SCHEMES = ("postgresql://", "postgres://")


class Database(Protocol):
    """Opens connections of one dialect and frames their transactions."""

    dialect: str
    """``"sqlite"`` or ``"postgresql"``."""

    @property
    def name(self) -> str:
        """A path or a URL without its password, for messages."""
        ...

    def connect(self) -> Any:
        """A new :class:`Connection`."""
        ...

    def begin(self, conn: Any) -> None:
        """Start a transaction."""
        ...

    def commit(self, conn: Any) -> None:
        """Commit it."""
        ...

    def rollback(self, conn: Any) -> None:
        """Roll back the open transaction, if any."""
        ...

    def script(self, conn: Any, sql: str, record: tuple[str, int] | None) -> None:
        """Run a schema script and record ``(name, applied_at)`` (unless None) with it."""
        ...


def on_postgres(conn: Connection) -> bool:
    """Whether ``conn`` is a PostgreSQL connection (a ``sqlite3.Connection`` has no
    ``dialect``): where several servers (replicas) may write at once."""
    return getattr(conn, "dialect", "sqlite") == "postgresql"


def for_update(conn: Connection) -> str:
    """`` FOR UPDATE`` on PostgreSQL, to add to a ``SELECT`` of rows the transaction will
    change: another server's transaction on the same rows waits for this one (replicas).
    Empty on SQLite, whose ``BEGIN IMMEDIATE`` already serializes every writer."""
    return " FOR UPDATE" if on_postgres(conn) else ""


def lock_name(conn: Connection, name: str) -> None:
    """On PostgreSQL, hold a lock named ``name`` until the transaction ends: another
    server's transaction that locks the same name waits for this one (replicas). Nothing
    on SQLite, whose ``BEGIN IMMEDIATE`` already serializes every writer."""
    if on_postgres(conn):
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (name,))


def is_postgres_url(target: str | Path) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(_SCHEMES)


_CONNINFO = re.compile(r"(?:^|\s)(?:host|hostaddr|port|dbname|user|password|service)\s*=")
"""A libpq ``key=value`` connection string (``host=db dbname=vi``), which psycopg takes but
this setting does not: read as a path, it would make a SQLite file of that name."""


def open_database(target: str | Path) -> Database:
    """The database named by ``target``: a ``postgresql://`` URL, else a SQLite file path.

    Raises:
        DatabaseSettingError: A URL of another kind (``mysql://``...), a libpq
            ``key=value`` string, or a PostgreSQL URL without psycopg installed
            (``pip install 'vi-flow[postgres]'``).
    """
    if not is_postgres_url(target):
        if "://" in str(target):
            raise DatabaseSettingError(
                f"the database {redact(str(target))!r} is neither a postgresql:// URL nor a"
                " SQLite file path"
            )
        if isinstance(target, str) and _CONNINFO.search(target):
            raise DatabaseSettingError(
                f"the database {redact(target)!r} is a libpq key=value string: give"
                " PostgreSQL as a URL (postgresql://user@host:5432/dbname), or a SQLite"
                " file of that name as ./NAME"
            )
        return SQLiteDatabase(Path(target))
    try:
        from .postgres import PostgresDatabase
    except ImportError as exc:
        raise DatabaseSettingError(
            f"PostgreSQL needs psycopg: pip install 'vi-flow[postgres]' ({exc})"
        ) from None
    return PostgresDatabase(str(target))
