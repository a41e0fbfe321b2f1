"""The event log on a real SQLite store: group commit, exact replay, live follow."""

from __future__ import annotations

import asyncio
import collections
import gc
import itertools
import os
import sqlite3
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from vi_flow._sse import SSEDecoder
from vi_flow.models.common import Condition
from vi_flow.models.events import (
    EVENT_TYPES,
    FlowCompleted,
    LogLine,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepInput,
    StepOutput,
    StepPaused,
    StepStarted,
    TokenUsage,
    ToolCall,
    ToolCallsRequired,
    ToolFunction,
    event_to_wire,
)
from vi_flow.server.db import DatabaseFileGone, DatabaseUnavailable
from vi_flow.server.engine import tables
from vi_flow.server.engine.eventlog import _CHUNK_EVENTS, EventLog
from vi_flow.server.engine.frames import log_frames, log_layout
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
    for name, sql in tables.MIGRATIONS:
        await store.migrate(name, sql)
    yield CountingStore(store)
    await store.close()


def _ids(raw: bytes) -> list[int]:
    return [int(e.id or 0) for e in SSEDecoder().feed(raw)]


async def _drain(log: EventLog, key: tuple[str, str], after: int) -> bytes:
    out = b""
    async for chunk in log.follow(key, after, idle=5):
        out += chunk or b""
    return out


async def test_group_commit_and_exact_replay(db: CountingStore) -> None:
    log = EventLog(db, max_pending=3000)
    log.start()
    for i in range(10000):
        await log.append(LogLine, ("org", "run_a"), step_id="s", line=f"l{i}")
        if i == 5000:
            await log.append(LogLine, ("org", "run_b"), step_id="s", line="other run")
    await log.append(FlowCompleted, ("org", "run_a"), status=Condition.SUCCEEDED)
    await log.sync()
    assert db.transactions < 30  # thousands of events, a handful of transactions
    log.forget(("org", "run_a"))
    for after in (0, 1, 2047, 2048, 2049, 4097, 9999, 10000, 10001):
        assert _ids(await _drain(log, ("org", "run_a"), after)) == list(range(after + 1, 10002))
    await log.close()


class GatedStore:
    """A real store whose writes wait at a gate while one is set (a slow disk)."""

    def __init__(self, inner: CountingStore) -> None:
        self.inner = inner
        self.gate: asyncio.Event | None = None
        self.waiting = 0  # writes waiting at a gate

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        gate = self.gate
        if gate is not None:
            self.waiting += 1
            try:
                await gate.wait()
            finally:
                self.waiting -= 1
        return await self.inner.run(fn)


async def _plateau(count: Callable[[], int]) -> int:
    """Let the loop run until ``count()`` stops moving; return it."""
    last = -1
    while count() != last:
        last = count()
        await asyncio.sleep(0.02)
    return last


async def test_appenders_keep_making_events_while_a_batch_is_written(db: CountingStore) -> None:
    # An appender waits only while max_pending events are queued behind the write in
    # flight: once the writer takes the queue it goes on, during the next write, so
    # making and writing overlap; and it never holds more than that bound unwritten.
    gated = GatedStore(db)
    log = EventLog(gated, max_pending=1000)
    log.start()
    key = ("org", "run_p")
    await log.append_lines(key, "s", "stdout", ["first"])
    await log.sync()
    made = 0

    async def produce() -> None:
        nonlocal made
        for b in range(12):
            await log.append_lines(key, "s", "stdout", [f"{b}-{i}" for i in range(300)])
            made += 300

    first, second = asyncio.Event(), asyncio.Event()
    gated.gate = first
    producer = asyncio.create_task(produce())
    # four batches (1,200) are taken by the writer and held at the gate; four more are
    # queued behind that write, and the call that queued the fourth of them waits
    assert await _plateau(lambda: made) == 2100
    gated.gate = second
    first.set()  # the first write ends; the writer takes the next 1,200 to the second gate
    assert await _plateau(lambda: made) == 3300  # made while the second write is held
    gated.gate = None
    second.set()
    await producer
    await log.append(FlowCompleted, key, status=Condition.SUCCEEDED)
    await log.sync()
    assert _ids(await _drain(log, key, 0)) == list(range(1, 3603))
    await log.close()


async def test_follow_sees_live_events_after_they_are_stored(db: CountingStore) -> None:
    log = EventLog(db)
    log.start()
    await log.append(LogLine, ("org", "run_live"), step_id="s", line="first")
    await log.sync()
    reader = asyncio.create_task(_drain(log, ("org", "run_live"), 0))
    for i in range(50):
        await log.append(LogLine, ("org", "run_live"), step_id="s", line=f"l{i}")
        await asyncio.sleep(0)
    await log.append(FlowCompleted, ("org", "run_live"), status=Condition.SUCCEEDED)
    assert _ids(await reader) == list(range(1, 53))
    rows = await db.run(
        lambda c: c.execute("SELECT SUM(last_id - first_id + 1) FROM engine_events").fetchone()
    )
    assert rows[0] == 52
    await log.close()


async def test_heartbeat_ticks_while_idle(db: CountingStore) -> None:
    log = EventLog(db)
    log.start()
    await log.append(LogLine, ("org", "run_idle"), step_id="s", line="x")
    ticks: list[Any] = []
    async for chunk in log.follow(("org", "run_idle"), 0, idle=0.05):
        ticks.append(chunk)
        if len(ticks) == 3:
            break
    assert ticks[0] is not None and ticks[1:] == [None, None]
    await log.close()


async def test_a_follow_of_a_run_that_is_no_more_ends_at_its_first_heartbeat(
    db: CountingStore,
) -> None:
    # QA: a stream opened on a finished run as retention pruned it (or DELETE went)
    # read the run's channel once its events were gone: nothing finished it, and it sent
    # heartbeats for ever, its client waiting on them
    log = EventLog(db)
    log.start()
    key = ("org", "run_pruned")

    async def follow() -> list[bytes | None]:
        return [chunk async for chunk in log.follow(key, 0, idle=0.05)]

    assert await asyncio.wait_for(follow(), 5) == []  # ended, without a heartbeat
    await log.close()


async def test_live_readers_far_behind_are_served_from_memory(db: CountingStore) -> None:
    # 30,000 events committed while a reader has not read any: it gets them all, in
    # order, from the frames just written, without reading SQLite back.
    log = EventLog(db, max_pending=50000)
    log.start()
    await log.append(LogLine, ("org", "run_m"), step_id="s", line="first")
    await log.sync()
    reader_channel = await log.channel(("org", "run_m"))
    for i in range(30000):
        await log.append(LogLine, ("org", "run_m"), step_id="s", line=f"l{i}")
    await log.append(FlowCompleted, ("org", "run_m"), status=Condition.SUCCEEDED)
    await log.sync()
    before = db.transactions
    raw = await _drain(log, ("org", "run_m"), 1)
    assert db.transactions == before  # no read-back
    assert _ids(raw) == list(range(2, 30003))
    assert reader_channel.finished
    await log.close()


async def test_a_reader_past_the_memory_window_reads_sqlite_exactly(db: CountingStore) -> None:
    log = EventLog(db, max_pending=4000)
    log.start()
    pad = "x" * 1000
    for i in range(12000):  # ~12 MB of frames: more than the ring keeps
        await log.append(LogLine, ("org", "run_big"), step_id="s", line=f"{i} {pad}")
    await log.append(FlowCompleted, ("org", "run_big"), status=Condition.SUCCEEDED)
    await log.sync()
    for after in (0, 1, 5000, 11999, 12000):
        assert _ids(await _drain(log, ("org", "run_big"), after)) == list(range(after + 1, 12002))
    await log.close()


def _samples() -> dict[type[Any], dict[str, Any]]:
    usage = TokenUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    call = ToolCall(id="c1", function=ToolFunction(name="f", arguments='{"a": 1}'))
    return {
        RunStarted: {"flow_id": "f1", "flow_version": "2"},
        StepStarted: {"step_id": "s", "block": "llm", "index": 3},
        StepInput: {"step_id": "s", "input": {"a": [1, "é", None]}},
        StepOutput: {"step_id": "s", "output": [1.5, True]},
        StepCompleted: {
            "step_id": "s",
            "block": "b",
            "output": "o",
            "duration_ms": 9,
            "usage": usage,
        },
        StepFailed: {"step_id": "s", "block": "b", "error": "bad", "code": None},
        StepPaused: {"step_id": "s"},
        ToolCallsRequired: {"step_id": "s", "tool_calls": [call]},
        FlowCompleted: {"status": Condition.FAILED, "error": "e", "usage": usage},
        LogLine: {"step_id": "s", "stream": "stderr", "line": "x\\ny"},
    }


@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=lambda c: c.TYPE)
async def test_every_event_type_is_stored_as_the_model_writes_it(
    db: CountingStore, cls: type[Any]
) -> None:
    fields = _samples()[cls]
    log = EventLog(db)
    log.start()
    await log.append(cls, ("org", "run_w"), **fields)
    await log.append(cls, ("org", "run_w"))  # every default
    await log.sync()
    raw, _ = await log.read(("org", "run_w"), 0)
    events = SSEDecoder().feed(raw)
    stored = [(e.event, e.data) for e in events]
    t1, t2 = (orjson.loads(e.data)["time"] for e in events)
    expected = [
        event_to_wire(cls(execution_id="run_w", event_id=1, time=t1, **fields)),
        event_to_wire(cls(execution_id="run_w", event_id=2, time=t2)),
    ]
    assert stored == expected
    with pytest.raises(TypeError):
        await log.append(cls, ("org", "run_w"), no_such_field=1)
    await log.close()


async def test_lines_appended_together_are_the_frames_of_single_appends(
    db: CountingStore,
) -> None:
    log = EventLog(db)
    log.start()
    await log.append(LogLine, ("org", "run_l"), step_id="s%d", stream="stderr", line="one")
    lines = ["two", 'quote " and %s', "é\ttab", ""]
    await log.append_lines(("org", "run_l"), "s%d", "stderr", lines)
    await log.append(LogLine, ("org", "run_l"), step_id="s%d", stream="stderr", line="last")
    await log.sync()
    raw, last = await log.read(("org", "run_l"), 0)
    events = SSEDecoder().feed(raw)
    assert last == 6 and [e.id for e in events] == ["1", "2", "3", "4", "5", "6"]
    for event, line in zip(events, ["one", *lines, "last"], strict=True):
        time = orjson.loads(event.data)["time"]
        model = LogLine(
            execution_id="run_l", event_id=int(event.id or 0), time=time, step_id="s%d",
            stream="stderr", line=line,
        )  # fmt: skip
        assert (event.event, event.data) == event_to_wire(model)
    await log.close()


_LINES = [
    "plain", "", "é and 中文 and 🚀", 'a "quote"', "back\\slash", "tab\there", "new\nline",
    "del \x7f", "line sep \u2028", "nbsp \xa0", "bell \x07", "%d %s %%",
]  # fmt: skip


@pytest.mark.parametrize(
    "lines",
    [[line] for line in _LINES]
    + [_LINES, _LINES[2:3] * 3, [f"line {i}" for i in range(9, 12)], []],
)
def test_log_frames_are_the_model_frames_for_any_line(lines: list[str]) -> None:
    # one batch string for lines without escapes, one JSON call per line otherwise: the
    # same bytes either way, and the bytes the model writes
    got = log_frames("run_%d", "s%s", 'std"out', 7, 1234, lines)
    layout = log_layout("run_%d", "s%s", 'std"out')
    assert got == b"".join(layout % (i, i, 1234, orjson.dumps(line)) for i, line in enumerate(lines, 7))  # fmt: skip
    events = SSEDecoder().feed(got)
    for event_id, (event, line) in enumerate(zip(events, lines, strict=True), 7):
        model = LogLine(
            execution_id="run_%d", event_id=event_id, time=1234, step_id="s%s", stream='std"out',
            line=line,
        )  # fmt: skip
        assert (event.id, event.event, event.data) == (str(event_id), *event_to_wire(model))


@pytest.mark.parametrize("first", [1, 7, 998, 999, 1000, 1001, 99_001, 999_999, 10**12 - 3])
@pytest.mark.parametrize("count", [1, 2, 3, 1500, 2048])
def test_log_frames_number_ids_across_thousands(first: int, count: int) -> None:
    # the ids are made from tables of three digits; each frame still has its own id
    lines = [f"line {i}" for i in range(count)]
    layout = log_layout("r", "s", "stdout")
    expected = b"".join(layout % (i, i, 5, orjson.dumps(line)) for i, line in enumerate(lines, first))  # fmt: skip
    assert log_frames("r", "s", "stdout", first, 5, lines) == expected


async def test_batches_and_single_events_share_rows_of_bounded_size(db: CountingStore) -> None:
    log = EventLog(db, max_pending=100_000)
    log.start()
    key = ("org", "run_rows")
    for i in range(1000):
        await log.append(LogLine, key, step_id="s", line=f"single {i}")
    await log.append_lines(key, "s", "stdout", [f"batch {i}" for i in range(5000)])
    await log.append_lines(key, "s", "stdout", ["x"] * 300)
    await log.append(FlowCompleted, key, status=Condition.SUCCEEDED)
    await log.sync()
    rows = await db.run(
        lambda c: c.execute(
            "SELECT first_id, last_id FROM engine_events WHERE run_id = ? ORDER BY first_id",
            (key[1],),
        ).fetchall()
    )
    spans = [(int(r[0]), int(r[1])) for r in rows]
    assert spans[0][0] == 1 and spans[-1][1] == 6301
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))  # contiguous
    assert all(0 < last - first + 1 <= _CHUNK_EVENTS for first, last in spans)
    log.forget(key)
    for after in (0, 999, 1000, 1001, 2048, 6000, 6300, 6301):
        assert _ids(await _drain(log, key, after)) == list(range(after + 1, 6302))
    await log.close()


async def test_lines_of_any_sequence_are_stored_and_replayed(db: CountingStore) -> None:
    # a block may hand its lines in any sequence; the database stores them as a list
    log = EventLog(db)
    log.start()
    key = ("org", "run_sequence")
    await log.append_lines(key, "s", "stdout", collections.UserList(["one", "two"]))
    await log.append_lines(key, "s", "stdout", ("three",))
    await log.append(FlowCompleted, key, status=Condition.SUCCEEDED)
    await log.sync()
    log.forget(key)
    raw = await _drain(log, key, 0)
    lines = [orjson.loads(e.data).get("line") for e in SSEDecoder().feed(raw)]
    assert lines[:3] == ["one", "two", "three"] and _ids(raw) == [1, 2, 3, 4]
    await log.close()


async def test_lines_that_cannot_be_encoded_leave_no_gap(db: CountingStore) -> None:
    log = EventLog(db)
    log.start()
    key = ("org", "run_bad")
    await log.append_lines(key, "s", "stdout", ["one"])
    with pytest.raises(TypeError):  # orjson refuses a lone surrogate
        await log.append_lines(key, "s", "stdout", ["fine", "bad \ud800"])
    await log.append_lines(key, "s", "stdout", ["two"])
    await log.append(FlowCompleted, key, status=Condition.SUCCEEDED)
    await log.sync()
    raw = await _drain(log, key, 0)
    assert _ids(raw) == [1, 2, 3]
    assert [orjson.loads(e.data).get("line") for e in SSEDecoder().feed(raw)][:2] == ["one", "two"]
    await log.close()


async def test_a_live_reader_gets_the_stored_rows_as_they_are(db: CountingStore) -> None:
    # three rows committed at once reach the reader as three chunks of whole frames:
    # the ring's bytes, not a copy joining them
    log = EventLog(db, max_pending=100_000)
    log.start()
    key = ("org", "run_rows_live")
    await log.append_lines(key, "s", "stdout", [f"line {i}" for i in range(5000)])
    await log.append(FlowCompleted, key, status=Condition.SUCCEEDED)
    await log.sync()
    chunks = [chunk async for chunk in log.follow(key, 0, idle=5)]
    assert [len(_ids(c or b"")) for c in chunks] == [2048, 2048, 905]
    assert _ids(b"".join(c or b"" for c in chunks)) == list(range(1, 5002))
    await log.close()


async def test_rows_are_stored_compact_and_replay_byte_for_byte(db: CountingStore) -> None:
    # what a live reader got from memory, a replay reads back from SQLite exactly, from
    # any event on, whether a row holds batches of lines (stored as lines), single
    # events (stored as frames) or both; the database holds a fraction of those bytes
    log = EventLog(db, max_pending=100_000)
    log.start()
    key = ("org", "run_packed")
    lines = [f"epoch {i // 100} step {i} loss={1 / (i + 1):.6f}" for i in range(5000)]
    await log.append(StepStarted, key, step_id="train", block="task")
    await log.append_lines(key, "train", "stdout", lines[:1500])
    await log.append(LogLine, key, step_id="train", stream="stderr", line='one "by" one')
    await log.append_lines(key, "train", "stderr", _LINES * 10)
    await log.append_lines(key, "train", "stdout", lines[1500:])
    await log.append(FlowCompleted, key, status=Condition.SUCCEEDED)
    await log.sync()
    live = b"".join([chunk async for chunk in log.follow(key, 0, idle=5) if chunk])
    count = 1 + 1500 + 1 + 10 * len(_LINES) + 3500 + 1
    assert _ids(live) == list(range(1, count + 1))
    log.forget(key)
    assert await _drain(log, key, 0) == live
    for after in (1, 2, 1501, 1502, 1503, 2047, 2048, 3000, count - 1):
        start = live.find(b"id: %d\n" % (after + 1))
        assert await _drain(log, key, after) == live[start:]
    stored = await db.run(
        lambda c: c.execute(
            "SELECT SUM(length(frames)) FROM engine_events WHERE run_id = ?", (key[1],)
        ).fetchone()[0]
    )
    assert stored * 4 < len(live)
    await log.close()


@pytest.mark.parametrize("deflated", [False, True])
async def test_rows_stored_as_frames_still_replay(db: CountingStore, deflated: bool) -> None:
    # rows written before rows were deflated (and rows too small to deflate) are frames;
    # rows written before batches were stored as lines are deflated frames
    log = EventLog(db)
    log.start()
    key = ("org", "run_plain")
    frames = log_frames("run_plain", "s", "stdout", 1, 1234, [f"old line {i}" for i in range(100)])
    await db.run(
        lambda c: c.execute(
            "INSERT INTO engine_events (org_id, run_id, first_id, last_id, frames, terminal,"
            " settled) VALUES (?, ?, 1, 100, ?, 0, NULL)",
            (*key, zlib.compress(frames) if deflated else frames),
        )
    )
    await log.append(LogLine, key, step_id="s", line="new")
    await log.append(FlowCompleted, key, status=Condition.SUCCEEDED)
    await log.sync()
    log.forget(key)
    replay = await _drain(log, key, 0)
    assert replay.startswith(frames) and _ids(replay) == list(range(1, 103))
    assert await _drain(log, key, 50) == frames[frames.find(b"id: 51\n") :] + replay[len(frames) :]
    await log.close()


# -- writes that fail -----------------------------------------------------------------


async def _disk_full(db: CountingStore, on: bool) -> None:
    """Have SQLite find its disk full while ``on``: no page past those it has now (a
    write of anything but a few bytes fails with ``SQLITE_FULL``)."""
    pages = 1 if on else 1 << 30
    await db.store.run(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))


def _noise(tag: str) -> str:
    """A log line that needs more pages than a new database has free, however stored."""
    return f"{tag} {os.urandom(64_000).hex()}"


async def _stored_up_to(db: CountingStore, key: tuple[str, str]) -> int:
    row = await db.run(
        lambda c: c.execute(
            "SELECT MAX(last_id) FROM engine_events WHERE org_id = ? AND run_id = ?", key
        ).fetchone()
    )
    return int(row[0] or 0)


def _lines(raw: bytes) -> list[Any]:
    return [orjson.loads(e.data).get("line") for e in SSEDecoder().feed(raw)]


async def test_events_of_a_failed_write_are_written_once_the_database_is_back(
    db: CountingStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by reading: a write that failed (PostgreSQL restarting, SQLite busy or full)
    # dropped its events, and the run went on: it could end Succeeded with a gap in its
    # log. They are queued again, in order, and a live reader gets every one.
    log = EventLog(db)
    log.start()
    key = ("org", "run_retry")
    await log.append_lines(key, "s", "stdout", ["before"])
    await log.sync()
    reader = asyncio.create_task(_drain(log, key, 0))
    await _disk_full(db, True)
    during = [_noise(f"during {i}") for i in range(30)]
    for line in during:
        await log.append_lines(key, "s", "stdout", [line])
        await asyncio.sleep(0.01)
    assert await _stored_up_to(db, key) == 1  # the writes failed meanwhile
    assert not reader.done()
    await _disk_full(db, False)
    await log.append(FlowCompleted, key, status=Condition.SUCCEEDED)
    raw = await asyncio.wait_for(reader, 10)
    assert _ids(raw) == list(range(1, 33))
    assert _lines(raw) == ["before", *during, None]
    log.forget(key)
    assert await _drain(log, key, 0) == raw  # and stored so
    assert "kept to be written again" in caplog.text
    await log.close()


async def test_while_writes_fail_appenders_wait_rather_than_fill_memory(
    db: CountingStore,
) -> None:
    log = EventLog(db, max_pending=20)
    log.start()
    key = ("org", "run_bound_memory")
    await log.append_lines(key, "s", "stdout", ["before"])
    await log.sync()
    await _disk_full(db, True)
    lines, made = [_noise(f"l{i}") for i in range(100)], 0

    async def produce() -> None:
        nonlocal made
        for line in lines:
            await log.append(LogLine, key, step_id="s", line=line)
            made += 1

    producer = asyncio.create_task(produce())
    held = await _plateau(lambda: made)
    # as when writes succeed, at most twice max_pending unwritten (the write in flight
    # and the queue behind it), then the appender waits for the database
    assert 20 <= held <= 41 and not producer.done()
    await asyncio.sleep(0.3)  # a few failed tries more
    assert made == held
    await _disk_full(db, False)
    await asyncio.wait_for(producer, 10)
    await log.append(FlowCompleted, key, status=Condition.SUCCEEDED)
    raw = await _drain(log, key, 0)
    assert _ids(raw) == list(range(1, 103))
    assert _lines(raw)[1:-1] == lines
    await log.close()


def _big_change(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE saved AS SELECT randomblob(200000) AS x")


async def test_events_bound_to_changes_that_failed_are_never_written(db: CountingStore) -> None:
    # the events commit_with stores with its changes announce them: when the write
    # fails they are dropped with the changes; the events queued before them are kept
    log = EventLog(db)
    log.start()
    key = ("org", "run_bound")
    await log.append(RunStarted, key, flow_id="f", flow_version="1")
    await log.sync()
    await _disk_full(db, True)
    lines = [_noise("one"), _noise("two")]
    await log.append_lines(key, "s", "stdout", lines)  # the same batch: no await
    step_done = (StepCompleted, {"step_id": "s", "block": "emit", "output": 1})
    ended = (FlowCompleted, {"status": Condition.SUCCEEDED})
    with pytest.raises(sqlite3.OperationalError):
        await log.commit_with(_big_change, key, [step_done, ended])
    await _disk_full(db, False)
    await log.sync()
    assert await _stored_up_to(db, key) == 3  # the lines, not the events of the change
    # the run's end appends its flow_completed again: one, after the lines
    assert not (await log.channel(key)).ended
    await log.append(FlowCompleted, key, status=Condition.FAILED)
    raw = await _drain(log, key, 0)
    assert _ids(raw) == [1, 2, 3, 6]
    kinds = [e.event for e in SSEDecoder().feed(raw)]
    assert kinds == ["run_started", "log", "log", "flow_completed"]
    tables_now = await db.run(lambda c: c.execute("SELECT name FROM sqlite_master").fetchall())
    assert "saved" not in {row[0] for row in tables_now}
    await log.close()


def _unsaved(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT * FROM no_such_table")  # fails this write alone


async def _failing_write_at_a_gate(
    db: CountingStore, key: tuple[str, str]
) -> tuple[EventLog, GatedStore, tuple[asyncio.Task[bytes], asyncio.Task[None], asyncio.Event]]:
    """A log on a gated store; it stores the run's line 1, a reader of the run starts,
    then a write of lines 2 and 3 and a change that fails (its step_completed, 4, bound
    to it) is held at the gate: the log, its store and the reader, the write and the gate."""
    gated = GatedStore(db)
    log = EventLog(gated)
    log.start()
    await log.append_lines(key, "s", "stdout", ["first"])
    await log.sync()
    reader = asyncio.create_task(_drain(log, key, 0))
    gated.gate = gate = asyncio.Event()

    async def failing() -> None:
        await log.append_lines(key, "s", "stdout", ["a1", "a2"])
        await log.commit_with(_unsaved, key, [(StepCompleted, {"step_id": "s", "block": "emit"})])

    first = asyncio.create_task(failing())
    while not gated.waiting:  # its write waits at the gate
        await asyncio.sleep(0)
    return log, gated, (reader, first, gate)


async def _and_a_write_behind_it(log: EventLog, gated: GatedStore, key: tuple[str, str]) -> None:
    """Lines 5 and 6 of the run, their write (the writer's) held behind the failing one."""
    await log.append_lines(key, "s", "stdout", ["b1", "b2"])
    while gated.waiting < 2:
        await asyncio.sleep(0)


async def test_a_reader_never_passes_events_that_are_to_be_written_again(db: CountingStore) -> None:
    # a write that fails while the next one is already on its way: the next one must
    # not store the run's later events before the kept ones (a live reader, here or on
    # another replica, would move past them): it leaves them for the write after
    key = ("org", "run_order")
    log, gated, (reader, first, gate) = await _failing_write_at_a_gate(db, key)
    await _and_a_write_behind_it(log, gated, key)
    gated.gate = None
    gate.set()
    with pytest.raises(sqlite3.OperationalError):
        await first
    await log.append(FlowCompleted, key, status=Condition.SUCCEEDED)
    raw = await asyncio.wait_for(reader, 10)
    assert _ids(raw) == [1, 2, 3, 5, 6, 7]
    assert _lines(raw) == ["first", "a1", "a2", "b1", "b2", None]
    log.forget(key)
    assert await _drain(log, key, 0) == raw
    await log.close()


async def test_a_failed_write_whose_caller_was_cancelled_leaves_no_unread_error(
    db: CountingStore,
) -> None:
    # A replica back from a stall: the runs it gave up were cancelled while their events'
    # write was under way, the write failed (the rows were another replica's by then),
    # and besides the log's own line asyncio logged "Task exception was never retrieved"
    # with the database's traceback (found by QA).
    key = ("org", "run_cancelled")
    log, gated, (reader, first, gate) = await _failing_write_at_a_gate(db, key)
    unread: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unread.append(context))
    try:
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        gated.gate = None
        gate.set()
        await _plateau(lambda: gated.waiting)
        await asyncio.sleep(0.1)  # the write fails
        del first
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert [c.get("message") for c in unread] == []
    reader.cancel()
    await log.close()


async def test_a_run_that_ends_with_events_still_to_write_is_followed_to_its_end(
    db: CountingStore,
) -> None:
    # the run's end is saved while a write of its earlier events is still held: it
    # leaves its flow_completed for later, and so does the writer's next write (the
    # held one has not stored them yet); the run's end forgets its channel. A reader
    # following the run gets every event, to the end, once they are written, and so
    # does one who comes next.
    key = ("org", "run_end_late")
    log, gated, (reader, first, gate) = await _failing_write_at_a_gate(db, key)
    gated.gate = None  # the writes made from now on pass
    end = (FlowCompleted, {"status": Condition.SUCCEEDED})
    await log.commit_with(lambda c: None, key, [end])  # saved; 5 is left for later
    log.forget(key)  # as the run's end does
    await asyncio.sleep(0.2)  # the writer tries 5 again, and leaves it again
    assert not reader.done()
    gate.set()  # the held write fails: 2 and 3 are kept, written with 5 after them
    with pytest.raises(sqlite3.OperationalError):
        await first
    raw = await asyncio.wait_for(reader, 10)
    assert _ids(raw) == [1, 2, 3, 5]
    assert [e.event for e in SSEDecoder().feed(raw)][-1] == "flow_completed"
    assert await asyncio.wait_for(_drain(log, key, 0), 10) == raw
    await log.close()


async def test_sync_returns_only_once_the_events_before_it_are_stored(db: CountingStore) -> None:
    # Found in review: a write that failed, and the one behind it that left the run
    # out, counted their events as written; sync() returned with 2..6 neither stored
    # nor published, and a run's end (append flow_completed, sync, mark closed) could
    # mark it closed before its last events were on disk.
    key = ("org", "run_sync")
    log, gated, (reader, first, gate) = await _failing_write_at_a_gate(db, key)
    await _and_a_write_behind_it(log, gated, key)
    gated.gate = None
    gate.set()
    await log.sync()
    assert await _stored_up_to(db, key) == 6
    assert (await log.channel(key)).committed == 6
    with pytest.raises(sqlite3.OperationalError):
        await first
    await log.append(FlowCompleted, key, status=Condition.SUCCEEDED)
    assert _ids(await asyncio.wait_for(reader, 10)) == [1, 2, 3, 5, 6, 7]
    await log.close()


async def test_sync_waits_through_a_full_disk_for_the_events_to_be_stored(
    db: CountingStore,
) -> None:
    log = EventLog(db)
    log.start()
    key = ("org", "run_sync_full")
    await log.append_lines(key, "s", "stdout", ["before"])
    await log.sync()
    await _disk_full(db, True)
    await log.append(LogLine, key, step_id="s", line=_noise("kept"))
    syncing = asyncio.create_task(log.sync())
    await asyncio.sleep(0.3)  # a few failed tries: the event is kept, sync() waits
    assert not syncing.done()
    await _disk_full(db, False)
    await asyncio.wait_for(syncing, 10)  # it returns, and does not raise: it is stored
    assert await _stored_up_to(db, key) == 2
    await log.close()


class _FailingOnce:
    """A store whose next write fails with ``fail_with``, once."""

    def __init__(self, inner: CountingStore) -> None:
        self.inner = inner
        self.fail_with: Exception | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        error, self.fail_with = self.fail_with, None
        if error is not None:
            raise error
        return await self.inner.run(fn)


@pytest.mark.parametrize(
    "error", [DatabaseFileGone("state.db was replaced"), sqlite3.IntegrityError("refused")]
)
async def test_appenders_go_on_after_a_failure_that_drops_what_was_kept(
    db: CountingStore, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    # Found in review: appenders waiting for room while writes failed waited for ever
    # once a later try failed for good (its events dropped): nothing told them there
    # was room again, even with the database back.
    store = _FailingOnce(db)
    log = EventLog(store, max_pending=5)
    log.start()
    key = ("org", "run_room")
    await log.append_lines(key, "s", "stdout", ["before"])
    await log.sync()
    await _disk_full(db, True)
    made = 0

    async def produce() -> None:
        nonlocal made
        for i in range(40):
            await log.append(LogLine, key, step_id="s", line=_noise(f"l{i}"))
            made += 1

    producer = asyncio.create_task(produce())
    held = await _plateau(lambda: made)
    assert held < 40 and not producer.done()  # waiting for the database
    store.fail_with = error  # the next try fails for good: what it held is lost
    while store.fail_with is not None:
        await asyncio.sleep(0.01)
    await _disk_full(db, False)
    await asyncio.wait_for(producer, 10)
    await log.sync()
    assert "events lost" in caplog.text
    assert await _stored_up_to(db, key) == 41  # the lines made after the loss are stored
    await log.close()


async def test_close_writes_the_events_left_out_by_a_write_behind_a_failed_one(
    db: CountingStore,
) -> None:
    # Found in review: close() while a failed write and the one behind it (which left
    # the run out) were in flight stopped the writer with 5 and 6 still queued: never
    # written, though the database was fine, and never said lost.
    key = ("org", "run_close")
    log, gated, (reader, first, gate) = await _failing_write_at_a_gate(db, key)
    await _and_a_write_behind_it(log, gated, key)
    gated.gate = None
    closing = asyncio.create_task(log.close())
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(closing, 10)
    with pytest.raises(sqlite3.OperationalError):
        await first
    assert await _stored_up_to(db, key) == 6  # (2 and 3 are dropped: the log was closing)
    assert not log._pending
    reader.cancel()


class _AnswerLost:
    """A store whose next write commits, then fails as a connection cut off during
    ``COMMIT`` does (the commit went through; the server never heard)."""

    def __init__(self, inner: CountingStore) -> None:
        self.inner = inner
        self.lose = False

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        result = await self.inner.run(fn)
        if self.lose:
            self.lose = False
            raise DatabaseUnavailable("server closed the connection unexpectedly")
        return result


async def test_a_write_whose_commit_went_through_unheard_is_not_stored_twice(
    db: CountingStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Found in review: its events, kept and written again, clashed with their own
    # stored rows; the clash failed the whole retry and dropped other runs' events too.
    store = _AnswerLost(db)
    log = EventLog(store)
    log.start()
    one, two = ("org", "run_one"), ("org", "run_two")
    await log.append_lines(one, "s", "stdout", ["a"])
    await log.append_lines(two, "s", "stdout", ["x"])
    await log.sync()
    reader = asyncio.create_task(_drain(log, one, 0))
    store.lose = True
    await log.append_lines(one, "s", "stdout", ["b"])  # stored; the log hears it failed
    while store.lose:
        await asyncio.sleep(0.001)
    await log.append_lines(one, "s", "stdout", ["c"])  # queued behind it, with it again
    await log.append_lines(two, "s", "stdout", ["y"])
    await log.sync()
    await log.append(FlowCompleted, one, status=Condition.SUCCEEDED)
    raw = await asyncio.wait_for(reader, 10)
    assert _ids(raw) == [1, 2, 3, 4] and _lines(raw) == ["a", "b", "c", None]
    log.forget(one)
    assert await _drain_stored(log, one) == raw
    assert await _stored_up_to(db, two) == 2
    assert "lost" not in caplog.text
    await log.close()


async def _drain_stored(log: EventLog, key: tuple[str, str]) -> bytes:
    frames, _ = await log.read(key, 0)
    return frames
