"""SQLite's WAL is copied back into the database file by a thread, off the commit path."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

import anyio
import pytest

from vi_flow.server.db.sqlite import WRITER_CHECKPOINT_BYTES
from vi_flow.server.store import Store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

ROWS = "CREATE TABLE IF NOT EXISTS rows (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);"


def _checkpointers(home: Path) -> list[str]:
    """The checkpointer threads of the store in ``home`` (other tests may leave theirs)."""
    return [t.name for t in threading.enumerate() if t.name == f"vi-flow-checkpoint:{home.name}"]


def _rows_in_main_file(db: Path, into: Path) -> int:
    """Rows the database file holds by itself, without its WAL (a copy, opened alone).

    The copy is taken while the checkpointer may be writing pages into the file, so it
    can be torn (SQLite calls it malformed): that counts as "not there yet", and the
    caller copies again.
    """
    shutil.copyfile(db, into)
    conn = sqlite3.connect(into)
    try:
        return int(conn.execute("SELECT count(*) FROM rows").fetchone()[0])
    except sqlite3.DatabaseError:
        return -1
    finally:
        conn.close()


async def test_committed_rows_reach_the_database_file_without_the_writer(
    tmp_path: Path,
) -> None:
    # 200 small commits are far below the writer's own checkpoint bound (and SQLite's
    # default of 1,000 pages): only the checkpointer thread copies them into the file.
    store = Store(tmp_path / "state.db")
    await store.migrate("rows-1", ROWS)
    try:
        for seq in range(200):
            await store.run(lambda c, s=seq: c.execute("INSERT INTO rows VALUES (?, ?)", (s, b"x")))
        deadline = time.monotonic() + 10
        while _rows_in_main_file(tmp_path / "state.db", tmp_path / "copy.db") < 200:
            assert time.monotonic() < deadline, "the WAL was never checkpointed"
            await anyio.sleep(0.05)
        assert len(_checkpointers(tmp_path)) == 1
    finally:
        await store.close()
    assert _checkpointers(tmp_path) == []  # closing the store ended the thread
    assert not (tmp_path / "state.db-wal").exists()  # and the last close emptied the WAL


async def test_the_wal_stays_bounded_under_continuous_writes(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    await store.migrate("rows-1", ROWS)
    page = await store.run(lambda c: c.execute("PRAGMA page_size").fetchone()[0])
    commits = 3 * WRITER_CHECKPOINT_BYTES // page  # bounded: three times over the bound
    largest = 0
    try:
        body = b"y" * (page - 500)  # about one page per row
        for seq in range(commits):
            await store.run(lambda c, s=seq: c.execute("INSERT INTO rows VALUES (?, ?)", (s, body)))
            if seq % 50 == 0:
                largest = max(largest, (tmp_path / "state.db-wal").stat().st_size)
        count = await store.run(lambda c: c.execute("SELECT count(*) FROM rows").fetchone()[0])
        assert count == commits
    finally:
        await store.close()
    # The WAL restarts once a checkpoint has caught up, so it reaches about the bound and
    # no further: three bounds' worth of commits never pile up in it. It may pass the
    # bound by the commits made while a copy of megabytes runs (the writer's own
    # checkpoint finds the thread's busy and tries again at its next commit), which on a
    # loaded machine is hundreds of pages; a WAL that never restarted would hold all
    # three bounds.
    assert WRITER_CHECKPOINT_BYTES // 2 < largest < 2 * WRITER_CHECKPOINT_BYTES
