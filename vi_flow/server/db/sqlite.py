"""The SQLite backend: one file in WAL mode, the default for a single server.

The connection is ``sqlite3.Connection`` itself (it already is a
:class:`~vi_flow.server.db.Connection`); transactions are ``BEGIN IMMEDIATE`` so that the
write lock is taken up front and a reader never has to upgrade. The server's own
connection checkpoints through a :class:`WalCheckpointer`, off its commits.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

from ._errors import DatabaseFileGone

__all__ = ["SQLiteDatabase", "WalCheckpointer"]

#: WAL size after which the writer's own commit checkpoints (SQLite's default: 1,000
#: pages). The checkpointer thread copies the WAL back long before; the writer's
#: checkpoint restarts the WAL, bounding it under continuous writes.
WRITER_CHECKPOINT_BYTES = 16 * 1024 * 1024
#: The WAL file is cut back to this size once a checkpoint has emptied it.
WAL_SIZE_LIMIT = 4 * 1024 * 1024


class SQLiteDatabase:
    """A SQLite database file (created on first use).

    Args:
        path: The file, normally ``<home>/state.db``.
    """

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path).absolute()  # a later chdir of the process changes nothing
        # (device, inode) of the file the first connection opened: the database
        self._file: tuple[int, int] | None = None

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
        try:
            self._check_file(conn)
        except DatabaseFileGone:
            conn.close()
            raise
        return conn

    def begin(self, conn: sqlite3.Connection) -> None:
        """Start a write transaction."""
        conn.execute("BEGIN IMMEDIATE")

    def commit(self, conn: sqlite3.Connection) -> None:
        """Commit the transaction, unless the path no longer names the file the server
        opened (then roll it back: :class:`DatabaseFileGone`)."""
        self._check_file(conn)
        conn.execute("COMMIT")

    def _check_file(self, conn: sqlite3.Connection) -> None:
        """Note the file the first connection opened; refuse once the path names another
        file or none (removed, or replaced by a copy): SQLite would go on writing to the
        file it has open, and all of it would be lost at the next start."""
        try:
            stat = os.stat(self.path)
            now: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            now = None
        if self._file is None and now is not None:
            self._file = now
        elif now != self._file:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise DatabaseFileGone(
                f"the database file {self.path} was removed or replaced while the server ran"
            )

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


def _bound_pages(conn: sqlite3.Connection) -> int:
    """:data:`WRITER_CHECKPOINT_BYTES` in pages of the database ``conn`` opened."""
    return WRITER_CHECKPOINT_BYTES // int(conn.execute("PRAGMA page_size").fetchone()[0])


class WalCheckpointer:
    """Copies a WAL file back into its database on its own thread, off the writer's path.

    SQLite checkpoints inside the ``COMMIT`` that takes the WAL past 1,000 pages, so one
    commit in every few hundred waited for a copy of megabytes (and an fsync). The writer
    calls :meth:`nudge` after each commit instead; this thread then runs a ``PASSIVE``
    checkpoint (it never blocks the writer or readers), at most once per ``pause``
    seconds, with its own connection. Whatever it has not copied, the writer's own
    automatic checkpoint still does at :data:`WRITER_CHECKPOINT_BYTES` (see
    :meth:`bound`), so the WAL stays bounded under continuous writes.

    Args:
        path: The database file.
        pause: The least time between two checkpoints.
    """

    def __init__(self, path: Path, *, pause: float = 0.05) -> None:
        self._path = path
        self._pause = pause
        self._wanted = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"vi-flow-checkpoint:{path.parent.name}", daemon=True
        )
        self._thread.start()

    @staticmethod
    def bound(conn: sqlite3.Connection) -> None:
        """Set the writer's connection to checkpoint only past the bound, and to cut the
        WAL file back once emptied."""
        conn.execute(f"PRAGMA wal_autocheckpoint={_bound_pages(conn)}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")

    def nudge(self) -> None:
        """Say that a commit added to the WAL (cheap; called on the writer's thread)."""
        if not self._wanted.is_set():
            self._wanted.set()

    def stop(self) -> None:
        """End the thread after the checkpoint it may be running; returns once it ended."""
        self._stopped.set()
        self._wanted.set()
        self._thread.join()

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection, bound: int) -> None:
        """Copy the WAL back without blocking anyone; past the bound, finish the copy.

        A ``PASSIVE`` checkpoint copies the frames there were when it began. Under
        continuous writes on a loaded machine, commits can keep coming faster than it
        copies: it never finishes, the WAL never restarts, and the writer's own
        checkpoint, finding this one busy, fails too (CI saw 68 MB against a 16 MB
        bound). Past the bound a ``RESTART`` one then waits for the commit under way and
        holds the next ones back until the WAL is copied, as the writer's own would.
        ``bound``: the writer's bound in frames (pages).
        """
        _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if copied < frames and frames > bound:
            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def _main(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:  # the writer's own bound still checkpoints
            return
        bound = 0  # the writer's bound in pages, read once
        try:
            while True:
                self._wanted.wait()
                if self._stopped.is_set():
                    return
                self._wanted.clear()
                # A failed checkpoint (the disk full, the file gone) leaves the WAL to the
                # writer's own bound; the writer reports the error if it persists.
                with contextlib.suppress(sqlite3.Error):
                    bound = bound or _bound_pages(conn)
                    self._checkpoint(conn, bound)
                if self._stopped.wait(self._pause):
                    return
        finally:
            conn.close()
