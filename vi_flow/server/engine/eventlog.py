"""The append-only per-run event log: SQLite first, then an in-memory fan-out.

Every event a run produces gets the run's next event id, is serialized once to its SSE
frame, and is queued for the writer. The writer group-commits whatever was queued
within a few milliseconds as one SQLite transaction and only then publishes the frames
to the run's :class:`RunChannel`, so nobody ever sees an event that is not on disk.
Readers follow a run with :meth:`EventLog.follow`: they replay committed events from
the channel's ring of recent frames (or from SQLite when they are further behind) and
then wait for the next commit, yielding ``None`` as a heartbeat tick while idle. A slow
reader never holds memory: it just reads from SQLite again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import orjson

from ...models._base import camel
from ...models.events import FlowCompleted, StreamEvent, event_to_wire
from ..clock import now_ms

__all__ = ["SCHEMA", "Database", "EventLog", "RunChannel", "frame"]

T = TypeVar("T")
log = logging.getLogger("vi_flow.server.engine")

SCHEMA = """
CREATE TABLE IF NOT EXISTS engine_events (
    run_id TEXT NOT NULL, first_id INTEGER NOT NULL, last_id INTEGER NOT NULL,
    frames BLOB NOT NULL, terminal INTEGER NOT NULL, settled INTEGER,
    PRIMARY KEY (run_id, first_id)) WITHOUT ROWID;
"""

TERMINAL_TYPE = FlowCompleted.TYPE
_RING_BYTES = 8 << 20  # recent frames kept per run for live readers (~80k log events)
_CHUNK_EVENTS = 2048  # events per stored row at most
_READ_ROWS = 8  # rows per read: at most 16k events in memory per reader


class Database(Protocol):
    """Runs a synchronous function with the SQLite connection, off the event loop."""

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]:
        """Call ``fn(conn)`` inside a transaction on the database thread."""


def frame(event_id: int, event_type: str, data: bytes) -> bytes:
    """Return the SSE frame of one event (``id:``, ``event:``, ``data:``)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event_type.encode(), data)


Encode = Callable[..., bytes]
"""``encode(execution_id, event_id, time, **fields)``: one event's JSON data."""

# Field types whose values orjson writes exactly as the models' converter would.
_PLAIN: tuple[Any, ...] = (str, int, bool, Any, str | None, int | None)
_ENCODERS: dict[type[Any], Encode] = {}


def _encoder(cls: type[StreamEvent]) -> Encode:
    """The JSON encoder of one event class, built once.

    For a class whose fields are all plain values (``log``, ``step_started``...) it is
    generated: one dict literal with the wire names in the models' field order, straight
    to orjson, with the class's defaults and ``TypeError`` for an unknown field, as its
    constructor. Other classes (nested models, enums) go through the model and the shared
    converter. ``tests/engine/test_eventlog.py`` checks both give the same bytes.
    """
    found = _ENCODERS.get(cls)
    if found is None:
        found = _ENCODERS[cls] = _generate(cls) or _through_model(cls)
    return found


def _through_model(cls: type[StreamEvent]) -> Encode:
    def encode(execution_id: str, event_id: int, time: int, **fields: Any) -> bytes:
        event = cls(execution_id=execution_id, event_id=event_id, time=time, **fields)
        return event_to_wire(event)[1]

    return encode


def _generate(cls: type[StreamEvent]) -> Encode | None:
    attrs.resolve_types(cls)
    fields = attrs.fields(cls)
    if any(a.type not in _PLAIN or a.converter is not None for a in fields):
        return None
    env: dict[str, Any] = {"_dumps": orjson.dumps}
    params: list[str] = []
    items: list[str] = []
    for i, a in enumerate(fields):
        if a.name in ("execution_id", "event_id", "time"):
            params.insert(len(items), a.name)
        else:
            env[f"_d{i}"] = a.default
            params.append(f"{a.name}=_d{i}")
        items.append(f"{camel(a.name)!r}: {a.name}")
    head = ", ".join(params[:3]) + (", *, " + ", ".join(params[3:]) if params[3:] else "")
    code = f"def encode({head}):\n    return _dumps({{{', '.join(items)}}})"
    exec(code, env)  # generated from the model's own field names only
    encode: Encode = env["encode"]
    return encode


_Row = tuple[str, int, str, bytes]
"""A queued event: run id, event id, type and its SSE frame."""
_Chunk = tuple[str, int, int, bytes, int, "int | None"]
"""A stored row: run id, first and last event id, frames, terminal flag, settle id."""


class RunChannel:
    """The live side of one run's log: ids handed out, ids committed, recent frames.

    The ring keeps the stored rows themselves (the bytes written to SQLite, joined once
    per commit), up to about :data:`_RING_BYTES`: a live reader is served from it
    without a copy per event and without reading back what was just written.

    Attributes:
        run_id: The run.
        next_id: The id the next appended event gets.
        committed: The highest event id on disk.
        finished: Whether the terminal ``flow_completed`` is on disk.
        ended: Whether the terminal event was appended (it may still be queued).
        settled: The id of the last committed pause or terminal event.
    """

    def __init__(self, run_id: str, last_id: int, finished: bool, settled: int) -> None:
        self.run_id = run_id
        self.next_id = last_id + 1
        self.committed = last_id
        self.finished = finished
        self.ended = finished
        self.settled = settled
        self._ring: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._ring_bytes = 0
        self._changed: asyncio.Event = asyncio.Event()

    def publish(self, chunks: Sequence[_Chunk]) -> None:
        """Record committed rows (one run's, in order) and wake everyone waiting."""
        for _, first, last, frames, terminal, settled in chunks:
            self._ring.append((first, last, frames))
            self._ring_bytes += len(frames)
            if settled is not None:
                self.settled = settled
            if terminal:
                self.finished = True
        while self._ring_bytes > _RING_BYTES and len(self._ring) > 1:
            self._ring_bytes -= len(self._ring.popleft()[2])
        self.committed = chunks[-1][2]
        self.wake()

    def wake(self) -> None:
        """Wake everyone waiting on this channel."""
        self._changed.set()
        self._changed = asyncio.Event()

    def recent(self, after: int) -> list[bytes] | None:
        """Frames committed after ``after`` if the ring still holds them all, else None."""
        ring = self._ring
        if not ring or ring[0][0] > after + 1:
            return None
        out: list[bytes] = []
        for first, last, frames in reversed(ring):
            if last <= after:
                break
            out.append(_slice_after(frames, first, after))
        out.reverse()
        return out

    async def wait(self, timeout: float | None) -> bool:
        """Wait for the next commit; False when ``timeout`` passed first."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)
            return True
        return False


_SETTLING = frozenset({TERMINAL_TYPE, "tool_calls_required"})


def _chunks(rows: Sequence[_Row]) -> list[_Chunk]:
    """Cut one run's consecutive events into stored rows of at most ``_CHUNK_EVENTS``."""
    out: list[_Chunk] = []
    for at in range(0, len(rows), _CHUNK_EVENTS):
        part = rows[at : at + _CHUNK_EVENTS]
        settled = [r[1] for r in part if r[2] in _SETTLING]
        terminal = int(part[-1][2] == TERMINAL_TYPE)
        out.append(
            (part[0][0], part[0][1], part[-1][1], b"".join(r[3] for r in part), terminal,
             settled[-1] if settled else None)
        )  # fmt: skip
    return out


def _insert(conn: sqlite3.Connection, chunks: Sequence[_Chunk]) -> None:
    conn.executemany(
        "INSERT INTO engine_events (run_id, first_id, last_id, frames, terminal, settled)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        chunks,
    )


def _tail(conn: sqlite3.Connection, run_id: str) -> tuple[int, bool, int]:
    row = conn.execute(
        "SELECT last_id, terminal FROM engine_events WHERE run_id = ?"
        " ORDER BY first_id DESC LIMIT 1",
        (run_id,),
    ).fetchone()
    if row is None:
        return 0, False, 0
    settled = conn.execute(
        "SELECT MAX(settled) FROM engine_events WHERE run_id = ?", (run_id,)
    ).fetchone()[0]
    return int(row[0]), bool(row[1]), int(settled or 0)


def _slice_after(frames: bytes, first_id: int, after: int) -> bytes:
    """The frames of a stored row from event ``after + 1`` on."""
    if after < first_id:
        return frames
    # frames are "id: N\n..." separated by a blank line; JSON data has no raw newline
    start = frames.find(b"\n\nid: %d\n" % (after + 1))
    return frames[start + 2 :] if start >= 0 else b""


def _read(conn: sqlite3.Connection, run_id: str, after: int) -> tuple[bytes, int]:
    rows = conn.execute(
        "SELECT first_id, last_id, frames FROM engine_events"
        " WHERE run_id = ? AND last_id > ? ORDER BY first_id LIMIT ?",
        (run_id, after, _READ_ROWS),
    ).fetchall()
    if not rows:
        return b"", after
    first = _slice_after(bytes(rows[0][2]), int(rows[0][0]), after)
    return b"".join([first, *(bytes(r[2]) for r in rows[1:])]), int(rows[-1][1])


class EventLog:
    """Appends events durably and fans them out to live readers.

    Args:
        db: Where the rows go (the server's store).
        window: Seconds the writer waits to gather a group commit.
        max_pending: Queued events at which appenders wait for the writer.
    """

    def __init__(self, db: Database, *, window: float = 0.002, max_pending: int = 20000) -> None:
        self._db = db
        self._window = window
        self._max_pending = max_pending
        self._channels: dict[str, RunChannel] = {}
        self._opening: dict[str, asyncio.Future[RunChannel]] = {}
        self._pending: list[_Row] = []
        self._appended = 0
        self._written = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self.stopping = False

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self._closed = True
        with contextlib.suppress(Exception):
            await self.sync()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    # -- channels -----------------------------------------------------------------

    async def channel(self, run_id: str) -> RunChannel:
        """Return the run's live channel, loading its tail from SQLite the first time."""
        found = self._channels.get(run_id)
        if found is not None:
            return found
        opening = self._opening.get(run_id)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[RunChannel] = asyncio.get_running_loop().create_future()
        self._opening[run_id] = future
        try:
            last, finished, settled = await self._db.run(lambda c: _tail(c, run_id))
            found = self._channels.setdefault(run_id, RunChannel(run_id, last, finished, settled))
            future.set_result(found)
            return found
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: later callers re-raise it themselves
            raise
        finally:
            del self._opening[run_id]

    def stop_followers(self) -> None:
        """End every :meth:`follow` iterator at its next wake-up (server shutdown)."""
        self.stopping = True
        for channel in self._channels.values():
            channel.wake()

    def forget(self, run_id: str) -> None:
        """Drop a finished run's channel; readers holding it keep working."""
        self._channels.pop(run_id, None)

    # -- writing ------------------------------------------------------------------

    async def append(self, cls: type[StreamEvent], run_id: str, **fields: Any) -> int:
        """Queue one event of ``cls`` for ``run_id`` with the next event id; return the id.

        The event is on disk and visible to readers only after the writer's next
        commit; call :meth:`sync` to wait for that. Appenders wait for the writer when
        too many events are queued.
        """
        channel = self._channels.get(run_id) or await self.channel(run_id)
        if self._closed:
            raise RuntimeError("the event log is closed")
        event_id = channel.next_id
        channel.next_id += 1
        if cls is FlowCompleted:
            channel.ended = True
        data = _encoder(cls)(run_id, event_id, now_ms(), **fields)
        event_type = cls.TYPE  # type: ignore[union-attr]
        self._pending.append((run_id, event_id, event_type, frame(event_id, event_type, data)))
        self._appended += 1
        self._wake.set()
        if len(self._pending) >= self._max_pending:
            # keep the writer busy: wait for the batch in flight, not for this one
            await self._written_up_to(self._appended - self._max_pending)
        return event_id

    async def sync(self) -> None:
        """Wait until every event appended so far is committed and published."""
        await self._written_up_to(self._appended)

    async def _written_up_to(self, target: int) -> None:
        if self._written >= target:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        await waiter

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._pending) < self._max_pending // 4:
                await asyncio.sleep(self._window)
            await self._write_batch()

    async def _write_batch(self) -> None:
        rows, self._pending = self._pending, []
        if not rows:
            return
        per_run = {run_id: _chunks(group) for run_id, group in _by_run(rows).items()}
        chunks = [chunk for part in per_run.values() for chunk in part]
        error: Exception | None = None
        try:
            await self._db.run(lambda c: _insert(c, chunks))
        except Exception as exc:
            log.exception("event log write failed; %d events lost", len(rows))
            error = exc
        else:
            for run_id, part in per_run.items():
                channel = self._channels.get(run_id)
                if channel is not None:
                    channel.publish(part)
        self._written += len(rows)
        self._settle_waiters(error)

    def _settle_waiters(self, error: Exception | None) -> None:
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._waiters:
            if target > self._written:
                keep.append((target, waiter))
            elif not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
        self._waiters = keep

    # -- reading ------------------------------------------------------------------

    async def read(self, run_id: str, after: int) -> tuple[bytes, int]:
        """Committed SSE frames after event ``after`` (a bounded chunk) and the last id."""
        return await self._db.run(lambda c: _read(c, run_id, after))

    async def follow(self, run_id: str, after: int, idle: float) -> AsyncIterator[bytes | None]:
        """Yield SSE frames (joined in chunks) after ``after`` until the run's terminal event.

        Yields ``None`` every ``idle`` seconds without news, so the caller can send a
        heartbeat. A finished run is replayed and the iterator ends.
        """
        channel = await self.channel(run_id)
        cursor = after
        while True:
            if cursor < channel.committed:
                chunk, cursor = await self._catch_up(channel, cursor)
                yield chunk
                continue
            if channel.finished or self.stopping:
                return
            if not await channel.wait(idle):
                yield None

    async def _catch_up(self, channel: RunChannel, cursor: int) -> tuple[bytes, int]:
        recent = channel.recent(cursor)
        if recent is not None:
            return b"".join(recent), channel.committed
        stored, last = await self.read(channel.run_id, cursor)
        if last <= cursor:  # cannot happen while committed > cursor; guard against a spin
            return b"", channel.committed
        return stored, last


def _by_run(rows: list[_Row]) -> dict[str, list[_Row]]:
    groups: dict[str, list[_Row]] = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    return groups
