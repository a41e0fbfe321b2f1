"""What the query functions see of a database: a DB-API shaped connection, cursor and row.

Both backends satisfy these protocols: ``sqlite3.Connection`` as it is (its cursor and
``sqlite3.Row``), and :class:`~vi_flow.server.db.postgres.PostgresConnection`. Query
functions are written once against them, with ``?`` placeholders.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

__all__ = ["Connection", "Cursor", "Row"]


class Row(Protocol):
    """One result row: ``row["name"]`` and ``row[0]`` both work, on both backends."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __len__(self) -> int: ...

    def keys(self) -> list[str]:
        """The column names, in order."""
        ...


class Cursor(Protocol):
    """The result of one statement."""

    @property
    def rowcount(self) -> int:
        """Rows changed by an ``INSERT``/``UPDATE``/``DELETE``."""
        ...

    def fetchone(self) -> Any:
        """The next :class:`Row`, or ``None`` when there is none."""
        ...

    def fetchall(self) -> list[Any]:
        """Every remaining :class:`Row`."""
        ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """An open connection, used only on the store's DB thread inside a transaction."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor:
        """Run one statement with ``?`` placeholders bound to ``parameters``."""
        ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        """Run one statement once per parameter sequence."""
        ...
