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
from ._types import Connection

__all__ = ["SQLiteDatabase", "WalCheckpointer"]

#: WAL size after which the writer itself checkpoints (SQLite's default: 1,000 pages).
#: The checkpointer thread copies the WAL back long before; the writer's checkpoint
#: empties the WAL, bounding it under continuous writes.
WRITER_CHECKPOINT_BYTES = 16 * 1024 * 1024
#: The WAL file is cut back to this size once a checkpoint has emptied it.
WAL_SIZE_LIMIT = 4 * 1024 * 1024


def _holds(pid: int, file: tuple[int, int]) -> bool:
    """Whether process ``pid`` has the file ``(device, inode)`` open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or another user's
        return False
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == file:
            return True
    return False


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read(1024).split(b"\0")
    except OSError:
        return "?"
    return " ".join(w.decode("utf-8", "replace") for w in words if w)[:200] or "?"


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

    def other_holders(self) -> list[tuple[int, str]]:
        """``(pid, command line)`` of the other processes that have the file open, as far
        as ``/proc`` shows them (this user's, all of them for root; none elsewhere)."""
        try:
            target = os.stat(self.path)
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return []
        me, file = os.getpid(), (target.st_dev, target.st_ino)
        return [(pid, _command_line(pid)) for pid in pids if pid != me and _holds(pid, file)]

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
    calls :meth:`committed` after each commit instead; this thread then runs a
    ``PASSIVE`` checkpoint (it never blocks the writer or readers), at most once per
    ``pause`` seconds, with its own connection. A ``PASSIVE`` checkpoint copies only the
    frames there were when it began, and the WAL restarts only once one has copied them
    all: under continuous writes on a loaded machine commits can outrun it for good (CI
    saw 68 and 74 MB against the bound). So once the WAL file is past
    :data:`WRITER_CHECKPOINT_BYTES`, the writer itself, between two of its transactions
    (no commit can come meanwhile: it is the one writer), waits for the copy this thread
    may be running, then finishes the copy and empties the file (``TRUNCATE``), as
    SQLite's own automatic checkpoint would have done. (Without that wait, a loaded
    disk kept this thread copying nearly all the time and SQLite answered the writer's
    checkpoint "busy" thousands of times in a row.)

    Args:
        path: The database file.
        pause: The least time between two checkpoints.
    """

    def __init__(self, path: Path, *, pause: float = 0.05) -> None:
        self._path = path
        self._wal = f"{path}-wal"
        self._pause = pause
        self._wanted = threading.Event()
        self._stopped = threading.Event()
        self._copying = threading.Lock()  # held by whichever checkpoint runs
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

    def committed(self, conn: Connection) -> None:
        """Say that a commit of the writer's connection ``conn`` added to the WAL (called
        on the writer's thread, outside a transaction); past the bound, empty the WAL."""
        if not self._wanted.is_set():
            self._wanted.set()
        try:
            size = os.stat(self._wal).st_size
        except OSError:  # no WAL file: the store reports a file that went at its commit
            return
        if size > WRITER_CHECKPOINT_BYTES:
            # after the copy this thread may be running (SQLite would answer busy meanwhile);
            # an error leaves the WAL as it is, for the next commit to try again
            with self._copying, contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def stop(self) -> None:
        """End the thread after the checkpoint it may be running; returns once it ended."""
        self._stopped.set()
        self._wanted.set()
        self._thread.join()

    def _main(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:  # the writer's own bound still checkpoints
            return
        try:
            while True:
                self._wanted.wait()
                if self._stopped.is_set():
                    return
                self._wanted.clear()
                # A failed checkpoint (the disk full, the file gone) leaves the WAL to the
                # writer's own bound; the writer reports the error if it persists.
                with self._copying, contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                if self._stopped.wait(self._pause):
                    return
        finally:
            conn.close()
