"""The SQLite store: its own thread, transactions, migrations, run conditions."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from vi_flow.server import store as store_module
from vi_flow.server.db import log_when_committed
from vi_flow.server.errors import APIProblem
from vi_flow.server.state import ServerSettings
from vi_flow.server.store import Store

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "state.db")
    yield store
    await store.close()


async def test_sql_runs_off_the_event_loop_thread(store: Store) -> None:
    name = await store.run(lambda conn: threading.current_thread().name)
    assert name != threading.current_thread().name
    assert name.startswith("vi-flow-sqlite")
    mode = await store.run(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0])
    assert mode == "wal"


async def test_a_failing_fn_rolls_back(store: Store) -> None:
    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO orgs (org_id, name, created_at) VALUES ('o', 'n', 0)")
        raise APIProblem(409, "CONFLICT", "no")

    with pytest.raises(APIProblem):
        await store.run(insert_then_fail)
    assert not await store.org_exists("o")


async def test_a_change_is_logged_once_committed_on_the_loop_and_never_if_rolled_back(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # a state change logged inside a transaction is only true once it commits: the line
    # waits for the commit, is written on the event loop's thread, and a rollback drops it
    logger = logging.getLogger("vi_flow.server.test_held")
    caplog.set_level(logging.INFO, logger=logger.name)

    def change(conn: sqlite3.Connection, fail: bool) -> None:
        conn.execute("INSERT INTO orgs (org_id, name, created_at) VALUES ('o', 'n', 0)")
        log_when_committed(logger, "org %s: %s", "o", "created")
        assert not [r for r in caplog.records if r.name == logger.name]  # not yet
        if fail:
            raise APIProblem(409, "CONFLICT", "no")

    with pytest.raises(APIProblem):
        await store.run(lambda conn: change(conn, fail=True))
    assert not [r for r in caplog.records if r.name == logger.name]
    await store.run(lambda conn: change(conn, fail=False))
    lines = [r for r in caplog.records if r.name == logger.name]
    assert [r.getMessage() for r in lines] == ["org o: created"]
    assert lines[0].threadName == threading.current_thread().name
    log_when_committed(logger, "outside a transaction: %s", "at once")
    assert caplog.records[-1].getMessage() == "outside a transaction: at once"


async def test_a_committed_change_is_logged_even_when_its_caller_was_cancelled(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("vi_flow.server.test_held")
    caplog.set_level(logging.INFO, logger=logger.name)
    entered = threading.Event()
    release = threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO orgs (org_id, name, created_at) VALUES ('o', 'n', 0)")
        log_when_committed(logger, "org %s: created", "o")
        entered.set()
        release.wait(10)

    task = asyncio.get_running_loop().create_task(store.run(slow))
    while not entered.is_set():
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert await store.org_exists("o")  # the transaction committed all the same
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == ["org o: created"]


async def test_migrations_apply_once(store: Store) -> None:
    sql = "CREATE TABLE things (id INTEGER PRIMARY KEY); INSERT INTO things DEFAULT VALUES;"
    await store.migrate("things-1", sql)
    await store.migrate("things-1", sql)
    count = await store.run(lambda conn: conn.execute("SELECT count(*) FROM things").fetchone()[0])
    assert count == 1


async def test_a_broken_migration_leaves_nothing(store: Store) -> None:
    with pytest.raises(sqlite3.OperationalError):
        await store.migrate("bad-1", "CREATE TABLE half (id INTEGER); SELECT nope FROM nowhere;")
    tables = await store.run(
        lambda conn: [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    )
    assert "half" not in tables
    await store.migrate("bad-1", "CREATE TABLE half (id INTEGER);")


async def test_close_and_reuse(store: Store) -> None:
    await store.create_org("a", "org_a")
    await store.close()
    await store.close()
    assert await store.org_exists("org_a")


def test_settings_never_show_the_llm_key(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path, llm_api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(settings)
    assert settings.home == tmp_path and settings.host == "127.0.0.1"


async def test_calls_made_at_once_share_transactions_yet_each_commits_or_fails_alone(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # 40 calls at once: those queued while one transaction runs share the next (a
    # savepoint each); a call that raises undoes only its own writes, and its neighbours
    # still commit, in the order they were made, each seeing the writes before it
    logger = logging.getLogger("vi_flow.server.test_group")
    caplog.set_level(logging.INFO, logger=logger.name)
    await store.run(
        lambda c: c.execute("CREATE TABLE IF NOT EXISTS seen (i INTEGER, before INTEGER)")
    )
    begins: list[str] = []
    await store.run(lambda c: c.set_trace_callback(begins.append))  # type: ignore[attr-defined]

    def write(conn: sqlite3.Connection, i: int) -> int:
        before = conn.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
        conn.execute("INSERT INTO seen (i, before) VALUES (?, ?)", (i, before))
        log_when_committed(logger, "wrote %d", i)
        if i % 7 == 3:
            raise APIProblem(409, "CONFLICT", f"no {i}")
        return i

    outcomes = await asyncio.gather(
        *(store.run(lambda c, i=i: write(c, i)) for i in range(40)), return_exceptions=True
    )
    await store.run(lambda c: c.set_trace_callback(None))  # type: ignore[attr-defined]
    failed = {i for i in range(40) if i % 7 == 3}
    for i, outcome in enumerate(outcomes):
        if i in failed:
            assert isinstance(outcome, APIProblem) and outcome.message == f"no {i}"
        else:
            assert outcome == i
    rows = await store.run(
        lambda c: c.execute("SELECT i, before FROM seen ORDER BY rowid").fetchall()
    )
    kept = [i for i in range(40) if i not in failed]
    assert [r[0] for r in rows] == kept
    assert [r[1] for r in rows] == list(range(len(kept)))  # each saw those before it
    assert sorted(r.getMessage() for r in caplog.records if r.name == logger.name) == sorted(
        f"wrote {i}" for i in kept
    )
    transactions = [s for s in begins if s.startswith("BEGIN")]
    assert 1 <= len(transactions) < 40, len(transactions)


@pytest.fixture
def one_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls queued at once share one transaction, however slowly the machine runs them.

    A group commits early once its calls took ``_GROUP_TIME`` (1 ms): on a loaded machine
    the first call alone took that, committed alone, and the test that counts on sharing
    failed."""
    monkeypatch.setattr(store_module, "_GROUP_TIME", 60.0)


@pytest.mark.usefixtures("one_group")
async def test_an_error_that_ends_a_shared_transaction_fails_those_before_and_not_after(
    store: Store,
) -> None:
    # SQLite rolls a whole transaction back on some errors (a full disk, an I/O error);
    # here a call ends it itself: the calls that shared it before fail with that error
    # (their writes are gone), and those after it run in a new transaction and commit
    await store.run(lambda c: c.execute("CREATE TABLE IF NOT EXISTS kept (i INTEGER)"))
    gate, held = threading.Event(), threading.Event()
    blocker = asyncio.ensure_future(store.run(lambda c: (held.set(), gate.wait(10))))
    assert await asyncio.to_thread(held.wait, 10)  # the thread is held: the calls queue

    def write(conn: sqlite3.Connection, i: int) -> int:
        conn.execute("INSERT INTO kept (i) VALUES (?)", (i,))
        if i == 4:
            conn.execute("ROLLBACK")  # what SQLite does itself on such an error
        return i

    calls = [asyncio.ensure_future(store.run(lambda c, i=i: write(c, i))) for i in range(8)]
    await asyncio.sleep(0.05)
    gate.set()
    await blocker
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, sqlite3.Error) for o in outcomes[:5]), outcomes
    assert outcomes[5:] == [5, 6, 7]
    rows = await store.run(lambda c: c.execute("SELECT i FROM kept ORDER BY i").fetchall())
    assert [r[0] for r in rows] == [5, 6, 7]


@pytest.mark.usefixtures("one_group")
async def test_reads_sharing_a_transaction_a_full_disk_ends_still_answer(store: Store) -> None:
    # A full disk ends the whole shared transaction (SQLite rolls it back): the writes in
    # it fail, but a read beside them is no write; it answers, as of the database once
    # the writes are undone (never a row of a write that failed), and writes after it go on
    await store.run(lambda c: c.execute("CREATE TABLE IF NOT EXISTS kept (v TEXT)"))
    await store.run(lambda c: c.execute("INSERT INTO kept (v) VALUES ('first')"))
    pages = (await store.run(lambda c: c.execute("PRAGMA page_count").fetchone()))[0]
    await store.run(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}").fetchall())
    gate, held = threading.Event(), threading.Event()
    blocker = asyncio.ensure_future(store.run(lambda c: (held.set(), gate.wait(10))))
    # the database thread is held (in the blocker's own transaction: a loaded machine
    # had not started it yet, and the first calls below joined it): the calls queue
    assert await asyncio.to_thread(held.wait, 10)

    def read(conn: sqlite3.Connection) -> list[str]:
        return [r[0] for r in conn.execute("SELECT v FROM kept ORDER BY rowid")]

    def write(conn: sqlite3.Connection, value: str) -> str:
        conn.execute("INSERT INTO kept (v) VALUES (?)", (value,))
        return value

    steps = [read, lambda c: write(c, "small"), read, lambda c: write(c, "x" * 100_000), read]
    calls = [asyncio.ensure_future(store.run(step)) for step in steps]
    await asyncio.sleep(0.05)
    gate.set()
    await blocker
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert outcomes[0] == outcomes[2] == outcomes[4] == ["first"], outcomes
    assert all("full" in str(o) for o in (outcomes[1], outcomes[3])), outcomes
    await store.run(lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchall())
    assert await store.run(lambda c: write(c, "later")) == "later"
    assert await store.run(read) == ["first", "later"]


async def test_calls_from_two_event_loops_each_come_back_on_their_own(store: Store) -> None:
    # a server has one loop; a test or an embedding program may call from two at once:
    # a shared transaction hands each result to the loop of its caller
    await store.run(lambda c: c.execute("CREATE TABLE IF NOT EXISTS n (i INTEGER)"))

    async def calls(offset: int) -> list[int]:
        return list(
            await asyncio.gather(*(
                store.run(lambda c, i=i: c.execute("INSERT INTO n VALUES (?)", (i,)) and i)
                for i in range(offset, offset + 200)
            ))
        )  # fmt: skip

    other: list[int] = []
    thread = threading.Thread(target=lambda: other.extend(asyncio.run(calls(1000))))
    thread.start()
    with anyio.fail_after(20):
        mine = await calls(0)
        while thread.is_alive():
            await asyncio.sleep(0.01)
    assert mine == list(range(200)) and other == list(range(1000, 1200))
    count = await store.run(lambda c: c.execute("SELECT COUNT(*) FROM n").fetchone()[0])
    assert count == 400
