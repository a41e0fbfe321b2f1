"""Named migrations on both backends: each applied once, atomically; a database that a
newer vi-flow migrated is refused, by the store and by the server."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from vi_flow.server import _records as rec
from vi_flow.server import db
from vi_flow.server.app import MIGRATIONS, create_app
from vi_flow.server.state import ServerSettings
from vi_flow.server.store import Store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def _count(store: Store, sql: str) -> int:
    return int(await store.run(lambda c: c.execute(sql).fetchone()[0]))


async def test_a_migration_is_applied_once(database: str) -> None:
    store = Store.open(database)
    sql = "CREATE TABLE things (id INTEGER PRIMARY KEY); INSERT INTO things (id) VALUES (1);"
    await store.migrate("things-1", sql)
    await store.migrate("things-1", sql)
    await store.close()
    again = Store.open(database)
    await again.migrate("things-1", sql)
    assert await _count(again, "SELECT count(*) FROM things") == 1
    assert await _count(again, "SELECT count(*) FROM migrations WHERE name = 'things-1'") == 1
    await again.close()


async def test_a_broken_migration_leaves_nothing(database: str) -> None:
    store = Store.open(database)
    with pytest.raises(db.Error):
        await store.migrate("bad-1", "CREATE TABLE half (id INTEGER); SELECT nope FROM nowhere;")
    await store.migrate("bad-1", "CREATE TABLE half (id INTEGER);")  # not recorded, not made
    assert await _count(store, "SELECT count(*) FROM half") == 0
    await store.close()


async def test_a_migration_may_differ_per_dialect(database: str) -> None:
    store = Store.open(database)
    both = {
        "sqlite": "CREATE TABLE said (word TEXT); INSERT INTO said VALUES ('sqlite');",
        "postgresql": "CREATE TABLE said (word TEXT); INSERT INTO said VALUES ('postgresql');",
    }
    await store.migrate("said-1", both)
    word = await store.run(lambda c: c.execute("SELECT word FROM said").fetchone()[0])
    assert word == store.dialect
    await store.close()


async def test_stores_opening_together_migrate_once(postgres_schema: str) -> None:
    # PostgreSQL only: on SQLite the home's lock keeps a second server (and store) out.
    stores = [Store.open(postgres_schema) for _ in range(4)]
    sql = "CREATE TABLE things (id INTEGER); INSERT INTO things VALUES (1);"
    async with anyio.create_task_group() as group:
        for store in stores:
            group.start_soon(store.migrate, "things-1", sql)
    assert await _count(stores[0], "SELECT count(*) FROM things") == 1
    for store in stores:
        await store.close()


async def _record_future_migration(database: str) -> None:
    store = Store.open(database)
    await store.migrate("things-1", "CREATE TABLE things (id INTEGER)")
    sql = "INSERT INTO migrations (name, applied_at) VALUES (?, ?)"
    await store.run(lambda c: c.execute(sql, ("from-the-future-9", 1)))
    await store.close()


async def test_a_newer_database_is_refused(database: str) -> None:
    await _record_future_migration(database)
    store = Store.open(database, known_migrations=["things-1"])
    with pytest.raises(db.NewerDatabaseError) as refused:
        await store.org_exists("org")
    assert refused.value.unknown == ["from-the-future-9"]
    assert refused.value.database == store.database.name
    assert "from-the-future-9" in str(refused.value) and "newer vi-flow" in str(refused.value)
    await store.close()
    unchecked = Store.open(database)  # tools that open it by hand are not refused
    assert not await unchecked.org_exists("org")
    await unchecked.close()


async def test_the_server_refuses_to_start_on_a_newer_database(
    database: str, tmp_path: Path
) -> None:
    await _record_future_migration(database)
    settings = ServerSettings(home=tmp_path / "home", database=database)
    runner = web.AppRunner(create_app(settings))
    with pytest.raises(db.NewerDatabaseError) as refused:
        await runner.setup()
    assert refused.value.unknown == ["from-the-future-9", "things-1"]
    await runner.cleanup()


async def test_the_server_knows_every_migration_it_applies(database: str, tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "home", database=database)
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    await runner.cleanup()
    store = Store.open(database, known_migrations=MIGRATIONS)
    names = await store.run(lambda c: [r[0] for r in c.execute("SELECT name FROM migrations")])
    assert sorted(names) == sorted((*MIGRATIONS, *(name for name, _ in rec.MIGRATIONS)))
    await store.close()


@pytest.mark.skipif(
    os.environ.get("VI_FLOW_TEST_DATABASE") == "postgres", reason="a home's SQLite file"
)
async def test_an_older_database_another_process_has_open_is_not_migrated(
    tmp_path: Path,
) -> None:
    """QA AE: a new vi-flow started its server on a home that a first-release server (no
    home lock) still served, migrated the database under it and killed its tasks as
    leftovers. A database about to be migrated is refused while another process has it
    open, naming that process; nothing is changed."""
    path = tmp_path / "home" / "state.db"
    older = Store.open(str(path))  # the records' migrations only: an older database
    await older.org_exists("org")
    await older.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        settings = ServerSettings(home=tmp_path / "home")
        runner = web.AppRunner(create_app(settings))
        with pytest.raises(db.DatabaseInUseError) as refused:
            await runner.setup()
        await runner.cleanup()
        assert [pid for pid, _ in refused.value.holders] == [holder.pid]
        assert f"pid {holder.pid}" in str(refused.value) and "state.db" in str(refused.value)
    finally:
        holder.communicate("", timeout=30)
    assert _names(path) == sorted(name for name, _ in rec.MIGRATIONS)  # nothing migrated
    runner = web.AppRunner(create_app(settings))  # the other process is gone: it starts
    await runner.setup()
    await runner.cleanup()
    assert _names(path) == sorted((*MIGRATIONS, *(name for name, _ in rec.MIGRATIONS)))


_HOLD = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1')\n"
_HOLD += "print('open', flush=True); sys.stdin.read()"


def _names(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in conn.execute("SELECT name FROM migrations"))
    finally:
        conn.close()
