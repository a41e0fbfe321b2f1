"""The SQLite backend: one file in WAL mode, the default for a single server.

The connection is ``sqlite3.Connection`` itself (it already is a
:class:`~vi_flow.server.db.Connection`); transactions are ``BEGIN IMMEDIATE`` so that the
write lock is taken up front and a reader never has to upgrade.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["SQLiteDatabase"]


class SQLiteDatabase:
    """A SQLite database file (created on first use).

    Args:
        path: The file, normally ``<home>/state.db``.
    """

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        """The file's path, for messages."""
        return str(self.path)

    def connect(self) -> sqlite3.Connection:
        """Open the file with the settings the server relies on (WAL, a busy timeout)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def begin(self, conn: sqlite3.Connection) -> None:
        """Start a write transaction."""
        conn.execute("BEGIN IMMEDIATE")

    def commit(self, conn: sqlite3.Connection) -> None:
        """Commit the transaction."""
        conn.execute("COMMIT")

    def rollback(self, conn: sqlite3.Connection) -> None:
        """Roll the transaction back, if one is open."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def script(self, conn: sqlite3.Connection, sql: str, record: tuple[str, int] | None) -> None:
        """Run the schema script ``sql`` and record the migration in one transaction.

        ``executescript`` commits whatever is open before it starts, so the transaction
        is part of the script. Without ``record`` (``CREATE ... IF NOT EXISTS`` only) the
        statements run one by one.
        """
        if record is None:
            conn.executescript(sql)
            return
        name, applied_at = record
        quoted = name.replace("'", "''")
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\n;\nINSERT INTO migrations (name, applied_at)"
                f" VALUES ('{quoted}', {applied_at});\nCOMMIT;"
            )
        except BaseException:
            self.rollback(conn)
            raise
