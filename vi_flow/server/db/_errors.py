"""Database errors, one tree for both backends.

The classes are the standard library's DB-API ones from :mod:`sqlite3` (always
importable); the PostgreSQL backend raises subclasses of them, so one ``except
db.IntegrityError`` serves both backends and code written for SQLite keeps working.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..home import HomeError

__all__ = [
    "DatabaseError",
    "DatabaseInUseError",
    "DatabaseSettingError",
    "Error",
    "IntegrityError",
    "NewerDatabaseError",
    "PostgresError",
    "PostgresIntegrityError",
]

Error = sqlite3.Error
DatabaseError = sqlite3.DatabaseError
IntegrityError = sqlite3.IntegrityError


class PostgresError(sqlite3.DatabaseError):
    """A PostgreSQL error (the psycopg exception is its ``__cause__``)."""


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
    """Another vi-flow server serves this PostgreSQL database (schema) already.

    Replicas that share one database are not supported yet (docs/production.md says
    what is missing): a second server refuses to start, as on a home that is in use.

    Attributes:
        database: The database (a URL without its password).
        holder: The other server, as it named itself (host, pid, since when).
    """

    def __init__(self, database: str, holder: str) -> None:
        self.database = database
        self.holder = holder
        super().__init__(
            f"the database {database} is served by {holder}; one vi-flow server per database"
            " (replicas that share one are not supported yet): stop it, or give this server"
            " its own database or schema"
        )


class DatabaseSettingError(HomeError):
    """``--database`` (``VI_FLOW_DATABASE``) names no database this server can use: a URL
    of another kind than ``postgresql://``, or PostgreSQL without its driver installed."""
