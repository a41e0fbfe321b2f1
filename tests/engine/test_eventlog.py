"""The event log on a real SQLite store: group commit, exact replay, live follow."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vi_flow._sse import SSEDecoder
from vi_flow.models.common import Condition
from vi_flow.models.events import FlowCompleted, LogLine
from vi_flow.server.engine import tables
from vi_flow.server.engine.eventlog import EventLog
from vi_flow.server.store import Store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

T = TypeVar("T")


class CountingStore:
    """A real store that counts transactions."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.transactions = 0

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self.transactions += 1
        return await self.store.run(fn)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = Store(tmp_path / "state.db")
    await store.migrate(tables.MIGRATION, tables.SCHEMA)
    yield CountingStore(store)
    await store.close()


def _ids(raw: bytes) -> list[int]:
    return [int(e.id or 0) for e in SSEDecoder().feed(raw)]


async def _drain(log: EventLog, run_id: str, after: int) -> bytes:
    out = b""
    async for chunk in log.follow(run_id, after, idle=5):
        out += chunk or b""
    return out


async def test_group_commit_and_exact_replay(db: CountingStore) -> None:
    log = EventLog(db, max_pending=3000)
    log.start()
    for i in range(10000):
        await log.append(LogLine, "run_a", step_id="s", line=f"l{i}")
        if i == 5000:
            await log.append(LogLine, "run_b", step_id="s", line="other run")
    await log.append(FlowCompleted, "run_a", status=Condition.SUCCEEDED)
    await log.sync()
    assert db.transactions < 30  # thousands of events, a handful of transactions
    log.forget("run_a")
    for after in (0, 1, 2047, 2048, 2049, 4097, 9999, 10000, 10001):
        assert _ids(await _drain(log, "run_a", after)) == list(range(after + 1, 10002))
    await log.close()


async def test_follow_sees_live_events_after_they_are_stored(db: CountingStore) -> None:
    log = EventLog(db)
    log.start()
    await log.append(LogLine, "run_live", step_id="s", line="first")
    await log.sync()
    reader = asyncio.create_task(_drain(log, "run_live", 0))
    for i in range(50):
        await log.append(LogLine, "run_live", step_id="s", line=f"l{i}")
        await asyncio.sleep(0)
    await log.append(FlowCompleted, "run_live", status=Condition.SUCCEEDED)
    assert _ids(await reader) == list(range(1, 53))
    rows = await db.run(
        lambda c: c.execute("SELECT SUM(last_id - first_id + 1) FROM engine_events").fetchone()
    )
    assert rows[0] == 52
    await log.close()


async def test_heartbeat_ticks_while_idle(db: CountingStore) -> None:
    log = EventLog(db)
    log.start()
    await log.append(LogLine, "run_idle", step_id="s", line="x")
    ticks: list[Any] = []
    async for chunk in log.follow("run_idle", 0, idle=0.05):
        ticks.append(chunk)
        if len(ticks) == 3:
            break
    assert ticks[0] is not None and ticks[1:] == [None, None]
    await log.close()
