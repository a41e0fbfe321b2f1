"""Database errors, one tree for both backends.

The classes are the standard library's DB-API ones from :mod:`sqlite3` (always
importable); the PostgreSQL backend raises subclasses of them, so one ``except
db.IntegrityError`` serves both backends and code written for SQLite keeps working.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Sequence

from ..home import HomeError

__all__ = [
    "DatabaseError",
    "DatabaseFileGone",
    "DatabaseSettingError",
    "DatabaseUnavailable",
    "Error",
    "IntegrityError",
    "NewerDatabaseError",
    "PostgresError",
    "PostgresIntegrityError",
    "UnstorableText",
    "is_disk_full",
]

Error = sqlite3.Error
DatabaseError = sqlite3.DatabaseError
IntegrityError = sqlite3.IntegrityError


_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL, named from Python 3.11


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether a failure (or one that caused it) is a full disk: SQLite's ``SQLITE_FULL``,
    PostgreSQL's ``53100`` or a write's ``ENOSPC``/``EDQUOT``."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.OperationalError) and (
            getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc)
        ):
            return True
        if getattr(exc, "sqlstate", None) == "53100":  # psycopg's DiskFull
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class PostgresError(sqlite3.DatabaseError):
    """A PostgreSQL error (the psycopg exception is its ``__cause__``)."""


class DatabaseUnavailable(PostgresError):
    """PostgreSQL cannot be reached or dropped the connection (a restart, the network):
    worth trying again in a moment (the server answers ``503``)."""


class DatabaseReadOnly(DatabaseUnavailable):
    """PostgreSQL takes no writes now (a standby until it is promoted, writes turned off
    for the role): reads go on, each write answers ``503`` until it can write again."""


class DatabaseFileGone(sqlite3.OperationalError):
    """The SQLite file the server opened was removed or replaced while it ran: what it
    writes now would be lost with the old file (or go to another's), so it writes nothing
    more until it is restarted (the server answers ``503 DATABASE_GONE``)."""


class UnstorableText(PostgresError):
    """A value holds a NUL character, which PostgreSQL's text cannot (SQLite's can): one
    that reached a query came from a request, where no id or name holds one (the server
    answers ``422``)."""


class PostgresIntegrityError(PostgresError, sqlite3.IntegrityError):
    """A PostgreSQL constraint failed: a duplicate key, a NULL in a NOT NULL column."""


class NewerDatabaseError(HomeError):
    """The database records migrations this vi_flow does not know: a newer one wrote it.

    The server refuses to start rather than run old code on a newer schema (``vi-flow
    serve`` says so and exits 1, as for any home it cannot use).

    Attributes:
        database: The database (a file path, or a URL without its password).
        unknown: The recorded migration names this code does not know.
    """

    def __init__(self, database: str, unknown: Sequence[str]) -> None:
        self.database = database
        self.unknown = list(unknown)
        names = ", ".join(repr(n) for n in self.unknown)
        super().__init__(
            f"the database {database} was migrated by a newer vi-flow (unknown migrations:"
            f" {names}); upgrade vi-flow to use it"
        )


class DatabaseInUseError(HomeError):
    """Other processes have the database file open while this server would migrate it:
    a server of a release without a home lock (the first) still serving the home, or a
    tool such as ``sqlite3``. Migrating under it changed the schema the running server
    relies on (QA AE: its tasks were killed as leftovers, its runs failed).

    Attributes:
        database: The file.
        holders: ``(pid, command line)`` of each process that has it open.
    """

    def __init__(self, database: str, holders: Sequence[tuple[int, str]]) -> None:
        self.database = database
        self.holders = list(holders)
        named = "; ".join(f"pid {pid} ({command})" for pid, command in self.holders)
        super().__init__(
            f"the database {database} is open in other processes ({named}), and this"
            " vi-flow would migrate it: stop them (an older vi-flow server still serving"
            " the home, or a tool), then start again"
        )


class DatabaseSettingError(HomeError):
    """``--database`` (``VI_FLOW_DATABASE``) names no database this server can use: a URL
    of another kind than ``postgresql://``, or PostgreSQL without its driver installed."""
