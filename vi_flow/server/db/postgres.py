"""The PostgreSQL backend, for teams: the state on a database server, which several vi-flow
servers may share (see :mod:`vi_flow.server.replicas`).

Driver: psycopg 3, its synchronous ``psycopg.Connection``, used on the store's DB thread
exactly as the SQLite connection is. Why psycopg and not asyncpg: psycopg is DB-API
shaped (``execute(sql, params)``, ``fetchone``/``fetchall``, ``rowcount``), so every
query function of the server keeps its shape and runs on both backends; its placeholders
are ``%s``, a mechanical translation of ``?`` (:func:`~vi_flow.server.db.dialect.to_pyformat`);
``LISTEN``/``NOTIFY`` is there through ``conn.notifies()`` for replicas to wake each other.
asyncpg would need every query rewritten to its own API with ``$n`` placeholders, and a
second way of running SQL next to SQLite's thread.

Parameters are bound on the client (``psycopg.ClientCursor``): the statement reaches the
server with literals in it, so an untyped ``? IS NULL`` or a number compared with a text
parameter resolves as SQLite resolves it, instead of failing on an unknown parameter type.
Transactions are explicit (``autocommit`` on, then ``BEGIN``/``COMMIT`` from the store),
the same model as the SQLite connection's ``isolation_level=None``. Booleans are stored
as 0/1, as SQLite stores them, because the tables use integer columns for flags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import RowMaker

from ._errors import (
    DatabaseReadOnly,
    DatabaseUnavailable,
    PostgresError,
    PostgresIntegrityError,
    UnstorableText,
)
from ._urls import redact, scrubbed
from .dialect import to_pyformat

__all__ = ["PostgresConnection", "PostgresDatabase", "PostgresRow"]


class PostgresRow:
    """A row that indexes by column name and by position, as ``sqlite3.Row`` does."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._names[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PostgresRow):
            return list(self._values) == list(other._values) and self._names == other._names
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, like sqlite3.Row's peers

    def keys(self) -> list[str]:
        """The column names, in order."""
        return list(self._names)

    def __repr__(self) -> str:
        return f"PostgresRow({dict(zip(self._names, self._values, strict=True))!r})"


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[PostgresRow]:
    names = {col.name: i for i, col in enumerate(cursor.description or ())}
    return lambda values: PostgresRow(names, values)


def _param(value: Any) -> Any:
    return int(value) if type(value) is bool else value


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except psycopg.IntegrityError as exc:
        raise PostgresIntegrityError(str(exc).strip()) from exc
    except psycopg.errors.DiskFull as exc:  # an OperationalError, but no retry will help
        raise PostgresError(str(exc).strip()) from exc
    except psycopg.OperationalError as exc:  # the server went away, or cannot be reached
        raise DatabaseUnavailable(str(exc).strip()) from exc
    except psycopg.errors.ReadOnlySqlTransaction as exc:  # a standby, until it is promoted
        raise DatabaseReadOnly(f"the database is read-only now: {exc}".strip()) from exc
    except psycopg.DataError as exc:
        if "NUL" not in str(exc):
            raise PostgresError(str(exc).strip()) from exc
        raise UnstorableText(
            "a value holds a NUL character (\\u0000), which no id or name can"
        ) from exc
    except psycopg.Error as exc:
        raise PostgresError(str(exc).strip()) from exc


@contextlib.contextmanager
def _connect_errors(url: str) -> Iterator[None]:
    """:func:`_translated_errors` of opening ``url``: libpq's message may quote parts of
    the URL's password, so it is scrubbed (:func:`scrubbed`), and psycopg's own error,
    which holds it whole, is not chained (a logged traceback would show it)."""
    try:
        with _translated_errors():
            yield
    except PostgresError as exc:  # DatabaseUnavailable and DatabaseReadOnly too
        raise type(exc)(scrubbed(str(exc), url)) from None


class PostgresConnection:
    """A :class:`~vi_flow.server.db.Connection` over a psycopg connection.

    Statements use ``?`` placeholders, as on SQLite; rows are :class:`PostgresRow`.
    """

    dialect = "postgresql"

    def __init__(self, raw: psycopg.Connection[PostgresRow]) -> None:
        self.raw = raw
        self.pending_begin = False
        """A transaction was begun and its ``BEGIN`` not sent yet: it goes with the first
        statement, in the same round trip (one fewer per transaction)."""
        self.sent = 0
        """Statements sent since the transaction began."""

    def execute(
        self, sql: str, parameters: Sequence[Any] = (), /
    ) -> psycopg.ClientCursor[PostgresRow]:
        """Run one statement; errors are :mod:`~vi_flow.server.db` errors."""
        cursor = psycopg.ClientCursor(self.raw)
        query, params = to_pyformat(sql), [_param(p) for p in parameters]
        self.sent += 1
        with _translated_errors():
            if self.pending_begin:
                self.pending_begin = False
                cursor.execute("BEGIN; " + query, params)
                cursor.nextset()  # the statement's own result
            else:
                cursor.execute(query, params)
        return cursor

    def executemany(
        self, sql: str, parameters: Iterable[Sequence[Any]], /
    ) -> psycopg.ClientCursor[PostgresRow]:
        """Run one statement for each parameter sequence."""
        cursor = psycopg.ClientCursor(self.raw)
        rows = [[_param(p) for p in params] for params in parameters]
        self._send_begin()
        with _translated_errors():
            cursor.executemany(to_pyformat(sql), rows)
        return cursor

    def script(self, sql: str) -> None:
        """Run several ``;``-separated statements without parameters (a migration)."""
        self._send_begin()
        with _translated_errors():
            self.raw.execute(sql.encode())

    def _send_begin(self) -> None:
        self.sent += 1
        if self.pending_begin:
            self.pending_begin = False
            with _translated_errors():
                self.raw.execute(b"BEGIN")

    @property
    def broken(self) -> bool:
        """Whether the connection is lost (the server restarted, the network failed)."""
        return bool(self.raw.broken or self.raw.closed)

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()


_MIGRATION_LOCK = 0x76695F666C6F77  # "vi_flow": the advisory lock migrations take

LOCK_TIMEOUT = "5s"
"""The longest a statement waits for a lock another session holds (``LOCK TABLE``, a
``VACUUM FULL``, an index built without ``CONCURRENTLY``): then it fails, and its
request answers ``503``. A replica's requests share one connection, so one statement
waiting without end held every organization's requests behind it. Migrations wait for
each other without a bound."""


def _recorded(conn: PostgresConnection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM migrations WHERE name = ?", (name,)).fetchone() is not None


def _read_only_with_schema(conn: PostgresConnection) -> bool:
    """Whether the database takes no writes now (a standby after a failover, writes
    turned off for the role) and already holds a schema: its ``CREATE TABLE IF NOT
    EXISTS`` statements would fail there even with nothing to create."""
    read_only = conn.execute("SHOW transaction_read_only").fetchone()
    if read_only is None or read_only[0] != "on":
        return False
    found = conn.execute("SELECT to_regclass('migrations') IS NOT NULL").fetchone()
    return found is not None and found[0] is True


class PostgresDatabase:
    """A PostgreSQL database named by a ``postgresql://`` URL (libpq's connection string).

    Args:
        url: ``postgresql://user:password@host:port/dbname``; libpq's options go in the
            query string (``sslmode``, ``options=-csearch_path%3D...``: the ``=`` inside an
            option is written ``%3D``).
    """

    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def name(self) -> str:
        """The URL without its password, for messages."""
        return redact(self.url)

    def connect(self, application_name: str = "vi-flow") -> PostgresConnection:
        """Open a connection in autocommit mode: the store issues ``BEGIN``/``COMMIT``.

        ``application_name`` is how the session shows in ``pg_stat_activity``.
        """
        with _connect_errors(self.url):
            raw = psycopg.connect(
                self.url,
                autocommit=True,
                row_factory=_row_factory,
                application_name=application_name[:63],
            )
            raw.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'".encode())
        return PostgresConnection(raw)

    def begin(self, conn: PostgresConnection) -> None:
        """Start a transaction (its ``BEGIN`` goes with the first statement)."""
        conn.pending_begin, conn.sent = True, 0

    def commit(self, conn: PostgresConnection) -> None:
        """Commit the transaction."""
        if conn.pending_begin:  # nothing was sent: nothing to commit
            conn.pending_begin = False
            return
        conn.execute("COMMIT")

    def rollback(self, conn: PostgresConnection) -> None:
        """Roll the transaction back, if one is open (also an aborted one)."""
        conn.pending_begin = False
        if conn.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.raw.execute("ROLLBACK")

    def script(self, conn: PostgresConnection, sql: str, record: tuple[str, int] | None) -> None:
        """Run the schema script ``sql`` and record the migration (unless ``record`` is
        None) in one transaction: PostgreSQL's DDL is transactional, so a failing
        script leaves nothing behind."""
        self.begin(conn)
        try:
            # Replicas that start together migrate one at a time, each seeing what the
            # one before it recorded.
            conn.execute("SET LOCAL lock_timeout = 0")  # a migration may take a while
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            if record is not None and _recorded(conn, record[0]):
                self.commit(conn)
                return
            if record is None and _read_only_with_schema(conn):
                self.commit(conn)  # reads go on; each write answers 503 until it can write
                return
            conn.script(sql)
            if record is not None:
                conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", record)
        except BaseException:
            self.rollback(conn)
            raise
        self.commit(conn)
