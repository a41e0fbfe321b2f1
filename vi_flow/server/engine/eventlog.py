"""The append-only per-run event log: SQLite first, then an in-memory fan-out.

Every event a run produces gets the run's next event id, is serialized once to its SSE
frame, and is queued for the writer. The writer commits whatever is queued as one SQLite
transaction at once (what is appended meanwhile goes in the next one, so batches grow
with the load and nothing waits on a timer), and only then publishes the stored rows to
the run's :class:`RunChannel`, so nobody ever sees an event that is not on disk. A
write that fails while the database is away or busy leaves its events queued for the
next one, in order (:meth:`EventLog._keep`): a run's rows are never stored out of order.
Readers follow a run with :meth:`EventLog.follow`: they get committed events from the
channel's ring of recently stored rows (or from SQLite when they are further behind) and
then wait for the next commit, yielding ``None`` as a heartbeat tick while idle. A slow
reader never holds memory: it just reads from SQLite again. Rows are stored compact
(:func:`_pack`: the lines of log batches, deflated); the ring keeps them as sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import operator
import sqlite3
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol, TypeVar, cast

import orjson

from ...models.events import FlowCompleted, LogLine, StreamEvent, ToolCallsRequired
from ..clock import now_ms, wait_event
from ..db import Connection, DatabaseFileGone, DatabaseUnavailable
from .frames import encoder, frame, log_frames

__all__ = [
    "SCHEMA", "Database", "EventLog", "EventQuotaExceeded", "RunChannel", "RunKey", "frame",
]  # fmt: skip

T = TypeVar("T")
log = logging.getLogger("vi_flow.server.engine")

RunKey = tuple[str, str]
"""A run as the engine knows it: ``(organization id, run id)``; run ids are per organization."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS engine_events (
    run_id TEXT NOT NULL, first_id INTEGER NOT NULL, last_id INTEGER NOT NULL,
    frames BLOB NOT NULL, terminal INTEGER NOT NULL, settled INTEGER,
    PRIMARY KEY (run_id, first_id)) WITHOUT ROWID;
"""

_RING_BYTES = 8 << 20  # recent frames kept per run for live readers (~80k log events)
_CHUNK_EVENTS = 2048  # events per stored row at most
_READ_ROWS = 8  # rows per read: at most 16k events in memory per reader
_PACK_BYTES = 1024  # rows at least this long are stored deflated (see _pack)
_RETRY_FIRST, _RETRY_MOST = 0.05, 2.0  # seconds before a failed write is tried again


class Database(Protocol):
    """Runs a synchronous function with the SQLite connection, off the event loop."""

    def run(self, fn: Callable[[Connection], T]) -> Awaitable[T]:
        """Call ``fn(conn)`` inside a transaction on the database thread."""


_Lines = tuple[str, str, int, int, Sequence[str]]
"""A batch of ``log`` events as :func:`~vi_flow.server.engine.frames.log_frames` takes
it, less the run: step id, stream, first event id, time, lines."""


_PLAIN, _SETTLES, _ENDS = 0, 1, 2
"""What an event does to its run: nothing more, pause it (``tool_calls_required``), end it."""
_KINDS: dict[type[StreamEvent], int] = {ToolCallsRequired: _SETTLES, FlowCompleted: _ENDS}

_Part = tuple[int, int, bytes, "_Lines | None", int]
"""Queued events: the first id, how many, their frames, for a batch of lines what made
its frames (what the database stores, see :func:`_pack`), and their kind (``_PLAIN``...)."""


class _Queued:
    """One run's events queued for the next commit, in id order.

    ``parts`` holds their frames as encoded, one event or a batch of lines per part (at
    most ``_CHUNK_EVENTS`` each). Ids run on from part to part but where a failed write
    left a gap (its events bound to changes that were not saved, see
    :meth:`EventLog._keep`). ``bound``: the index of the first part that
    :meth:`EventLog.commit_with` queued for its own changes (written with them or never).
    ``again``: how many of the events were queued again by :meth:`EventLog._requeue`.
    """

    __slots__ = ("again", "bound", "count", "parts")

    def __init__(self) -> None:
        self.count = 0
        self.parts: list[_Part] = []
        self.bound: int | None = None
        self.again = 0

    def add(self, first: int, count: int, frames: bytes, lines: _Lines | None = None,
            kind: int = _PLAIN) -> None:  # fmt: skip
        self.parts.append((first, count, frames, lines, kind))
        self.count += count


Event = tuple[type[StreamEvent], dict[str, Any]]
"""An event to append: its class and fields (see :meth:`EventLog.append`)."""
_Chunk = tuple[str, str, int, int, bytes, int, "int | None", "list[bytes | _Lines] | None"]
"""A stored row: organization id, run id, first and last event id, frames, terminal flag,
settle id, and its parts when a batch of lines is among them (see :func:`_pack`)."""


class RunChannel:
    """The live side of one run's log: ids handed out, ids committed, recent frames.

    The ring keeps the frames of the stored rows (joined once per commit; SQLite gets
    them deflated), up to about :data:`_RING_BYTES`: a live reader is served from it
    without a copy per event and without reading back what was just written.

    Attributes:
        key: The run's organization and id.
        run_id: The run.
        next_id: The id the next appended event gets.
        committed: The highest event id on disk.
        finished: Whether the terminal ``flow_completed`` is on disk.
        ended: Whether the terminal event was appended (it may still be queued).
        settled: The id of the last committed pause or terminal event.
    """

    def __init__(self, key: RunKey, last_id: int, finished: bool, settled: int) -> None:
        self.key = key
        self.run_id = key[1]
        self.next_id = last_id + 1
        self.committed = last_id
        self.finished = finished
        self.ended = finished
        self.settled = settled
        self.stale = False
        self._ring: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._ring_bytes = 0
        self._changed: asyncio.Event = asyncio.Event()

    def publish(self, chunks: Sequence[_Chunk]) -> None:
        """Record committed rows (one run's, in order) and wake everyone waiting."""
        for _, _, first, last, frames, terminal, settled, _ in chunks:
            self._ring.append((first, last, frames))
            self._ring_bytes += len(frames)
            if settled is not None:
                self.settled = settled
            if terminal:
                self.finished = True
        while self._ring_bytes > _RING_BYTES and len(self._ring) > 1:
            self._ring_bytes -= len(self._ring.popleft()[2])
        self.committed = max(self.committed, chunks[-1][3])
        self.wake()

    def wake(self) -> None:
        """Wake everyone waiting on this channel."""
        self._changed.set()
        self._changed = asyncio.Event()

    def recent(self, after: int) -> list[bytes] | None:
        """Frames committed after ``after`` if the ring still holds them all, else None."""
        ring = self._ring
        if not ring or ring[0][0] > after + 1 or ring[-1][1] < self.committed:
            return None  # older than the ring, or written by another replica
        out: list[bytes] = []
        for first, last, frames in reversed(ring):
            if last <= after:
                break
            out.append(_slice_after(frames, first, after))
        out.reverse()
        return out

    async def wait(self, timeout: float | None) -> bool:
        """Wait for the next commit; False when ``timeout`` passed first."""
        return await wait_event(self._changed, timeout)

    def heard(self, last: int, terminal: bool, settled: int | None) -> None:
        """Another replica committed this run's events up to ``last``: wake the readers,
        who read them from the database (the ring holds only this replica's writes)."""
        changed = last > self.committed or (terminal and not self.finished)
        self.committed = max(self.committed, last)
        if settled is not None and settled > self.settled:
            self.settled, changed = settled, True
        if terminal:
            self.finished = self.ended = True
        if changed:
            self.wake()

    def reset(self, last: int, finished: bool, settled: int) -> None:
        """Start again from the stored tail (this replica takes the run over)."""
        self._ring.clear()
        self._ring_bytes = 0
        self.next_id, self.committed = last + 1, last
        self.finished = self.ended = finished
        self.settled = settled
        self.wake()


def _chunks(key: RunKey, queued: _Queued) -> list[_Chunk]:
    """Join one run's queued parts into stored rows of at most ``_CHUNK_EVENTS`` events,
    of consecutive ids (a gap starts a new row: a reader finds its place by id).

    A row's settle id is its last pause or terminal event's; its terminal flag says it
    holds ``flow_completed`` (``_tail`` reads the highest settle id of a run; the
    terminal event is always a run's last).
    """
    out: list[_Chunk] = []
    row: list[bytes] = []
    batches: list[bytes | _Lines] = []  # the row's parts, kept when a batch of lines is one
    first, held, lined = queued.parts[0][0], 0, False
    settled: int | None = None
    terminal = 0
    for at, count, frames, lines, kind in queued.parts:
        if held and (held + count > _CHUNK_EVENTS or at != first + held):
            out.append((*key, first, first + held - 1, b"".join(row), terminal, settled, batches if lined else None))  # fmt: skip
            first, held, row, batches, lined, settled, terminal = at, 0, [], [], False, None, 0
        row.append(frames)
        batches.append(frames if lines is None else lines)
        lined = lined or lines is not None
        held += count
        if kind:
            settled = at
            terminal = terminal or int(kind == _ENDS)
    out.append((*key, first, first + held - 1, b"".join(row), terminal, settled,
                batches if lined else None))  # fmt: skip
    return out


def _settle_id(rows: Sequence[_Chunk]) -> int | None:
    """The highest settle id among one run's rows (see :func:`_chunks`)."""
    return max((row[6] for row in rows if row[6] is not None), default=None)


def _worth_again(error: Exception) -> bool:
    """Whether a failed write's events are worth writing again: PostgreSQL cannot be
    reached, or SQLite is busy, full, read-only or failing to read or write for now (not
    a database file gone for good, nor anything refusing what was written)."""
    if isinstance(error, DatabaseFileGone):
        return False
    if isinstance(error, (DatabaseUnavailable, sqlite3.OperationalError)):
        return True
    cause = error.__cause__  # PostgreSQL's errors carry psycopg's
    return getattr(cause, "sqlstate", None) == "53100"  # a full disk


def _pack(frames: bytes, parts: list[bytes | _Lines] | None) -> bytes:
    """A row as stored: its frames, or with batches of lines among its parts, the JSON
    array of its parts (a frame as a string, a batch as ``[step id, stream, first id,
    time, lines]``); deflated when 1 KiB or longer.

    A batch of ``log`` events is stored as its lines, not its frames: the frames repeat
    the run, the step and the field names on every line, and deflating them cost a
    write more CPU than the rest of storing them (a tenth of the bytes of the frames
    are the lines). :func:`_unpack` makes the same frames again from the lines. Rows of
    other events are their frames, which repeat themselves too (a row of them deflates
    several times), so the database writes (and its WAL checkpoints copy) that much
    less. zlib runs without the GIL, on the database thread. Frames start with ``id:``,
    the array with ``[`` and zlib's stream always with ``x`` (0x78), so :func:`_unpack`
    tells them apart, and rows stored before either change read as they are.
    """
    data = frames
    if parts is not None:
        data = orjson.dumps([p.decode() if isinstance(p, bytes) else p for p in parts])
    return zlib.compress(data, 1) if len(data) >= _PACK_BYTES else data


def _unpack(stored: bytes, run_id: str) -> bytes:
    """The frames of a stored row of the run ``run_id`` (see :func:`_pack`)."""
    data = zlib.decompress(stored) if stored[:1] == b"x" else stored
    if data[:1] != b"[":
        return data
    return b"".join([
        part.encode() if isinstance(part, str) else log_frames(run_id, *part)
        for part in orjson.loads(data)
    ])  # fmt: skip


def _insert(conn: Connection, chunks: Sequence[_Chunk]) -> None:
    if not chunks:
        return
    conn.executemany(
        "INSERT INTO engine_events (org_id, run_id, first_id, last_id, frames, terminal,"
        " settled) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(*row[:4], _pack(row[4], row[7]), *row[5:7]) for row in chunks],
    )


def _tail(conn: Connection, key: RunKey) -> tuple[int, bool, int]:
    row = conn.execute(
        "SELECT last_id, terminal FROM engine_events WHERE org_id = ? AND run_id = ?"
        " ORDER BY first_id DESC LIMIT 1",
        key,
    ).fetchone()
    if row is None:
        return 0, False, 0
    settled = conn.execute(
        "SELECT MAX(settled) FROM engine_events WHERE org_id = ? AND run_id = ?", key
    ).fetchone()[0]
    return int(row[0]), bool(row[1]), int(settled or 0)


def _run_is_there(conn: Connection, key: RunKey) -> bool:
    """Whether the engine still holds anything of the run (its state, or events)."""
    sql = (
        "SELECT 1 FROM engine_runs WHERE org_id = ? AND run_id = ?"
        " UNION ALL SELECT 1 FROM engine_events WHERE org_id = ? AND run_id = ? LIMIT 1"
    )
    return conn.execute(sql, (*key, *key)).fetchone() is not None


def _read_its_error(task: asyncio.Future[Any]) -> None:
    """Mark a write's failure as read: :meth:`EventLog._keep` logged it, and its caller,
    cancelled meanwhile, may never read it (asyncio would log it again, as unread)."""
    if not task.cancelled():
        task.exception()


def _stored(conn: Connection, key: RunKey, firsts: Sequence[int]) -> bool:
    """Whether the rows of the run ``key`` that start at the events ``firsts`` are stored."""
    return all(
        conn.execute(
            "SELECT 1 FROM engine_events WHERE org_id = ? AND run_id = ? AND first_id = ?",
            (*key, first),
        ).fetchone()
        is not None
        for first in firsts
    )


def _unstored(conn: Connection, rows: Sequence[_Chunk]) -> list[_Chunk]:
    """The rows of one run's events queued again that are not stored yet, the first cut
    where they start.

    A write whose commit went through with its answer lost (PostgreSQL cut off during
    ``COMMIT``) failed as far as the log knows, and its events were queued again:
    inserted once more, their rows would clash with the stored ones, and the clash
    would fail the whole write, other runs' events with it.
    """
    org_id, run_id, first = rows[0][:3]
    stored = conn.execute(
        "SELECT MAX(last_id) FROM engine_events WHERE org_id = ? AND run_id = ? AND first_id >= ?",
        (org_id, run_id, first),
    ).fetchone()[0]
    if stored is None:
        return list(rows)
    out: list[_Chunk] = []
    for row in rows:
        if row[3] <= stored:
            continue
        if row[2] <= stored:  # the stored rows end inside this one: keep what follows
            cut = _slice_after(row[4], row[2], stored)
            row = (org_id, run_id, stored + 1, row[3], cut, row[5], row[6], None)
        out.append(row)
    return out


def _slice_after(frames: bytes, first_id: int, after: int) -> bytes:
    """The frames of a stored row from event ``after + 1`` on."""
    if after < first_id:
        return frames
    # frames are "id: N\n..." separated by a blank line; JSON data has no raw newline
    start = frames.find(b"\n\nid: %d\n" % (after + 1))
    return frames[start + 2 :] if start >= 0 else b""


def _read(conn: Connection, key: RunKey, after: int) -> tuple[bytes, int]:
    rows = conn.execute(
        "SELECT first_id, last_id, frames FROM engine_events"
        " WHERE org_id = ? AND run_id = ? AND last_id > ? ORDER BY first_id LIMIT ?",
        (*key, after, _READ_ROWS),
    ).fetchall()
    if not rows:
        return b"", after
    run_id = key[1]
    first = _slice_after(_unpack(bytes(rows[0][2]), run_id), int(rows[0][0]), after)
    rest = (_unpack(bytes(r[2]), run_id) for r in rows[1:])
    return b"".join([first, *rest]), int(rows[-1][1])


class EventQuotaExceeded(Exception):
    """A run's ``log`` events would pass the ``events_per_run`` quota.

    The step that logs fails with this message (the run's other events are written).
    """

    def __init__(self, held: int, count: int, limit: int) -> None:
        super().__init__(
            f"events_per_run: {count} more log events would make {held + count} events for "
            f"this run, over its quota of {limit} (the server's VI_FLOW_QUOTA_EVENTS_PER_RUN)"
        )


class EventLog:
    """Appends events durably and fans them out to live readers.

    Args:
        db: Where the rows go (the server's store).
        window: Seconds the writer waits to gather a group commit (default 0: it writes
            at once, and whatever is appended while a write is in flight goes in the
            next one, so batches grow with the load and nobody waits on a timer).
        max_pending: Queued events at which appenders wait for the writer to take the
            queue (it does when its write in flight ends): events are made while a batch
            is written, and at most about twice this many are unwritten at once.
        max_events: The events one run may hold (the ``events_per_run`` quota; ``None``:
            no limit). A ``log`` event past it raises :class:`EventQuotaExceeded`, which
            fails the step that logs; the events that end the run are always written.
    """

    def __init__(
        self,
        db: Database,
        *,
        window: float = 0.0,
        max_pending: int = 20000,
        max_events: int | None = None,
    ) -> None:
        self._db = db
        self.max_events = max_events
        self._window = window
        self._max_pending = max_pending
        self._channels: dict[RunKey, RunChannel] = {}
        self._opening: dict[RunKey, asyncio.Future[RunChannel]] = {}
        self._pending: dict[RunKey, _Queued] = {}
        self._queued = 0
        self._appended = 0
        self._written = 0  # events whose write is over: stored, or dropped for good
        self._again = 0  # events queued again after a write that did not store them
        self._lost = 0  # events dropped for good that no caller was told of
        self._lost_error: Exception | None = None
        self._in_flight = 0  # events being written
        self._writing: dict[RunKey, list[int]] = {}  # per run, its first id in each write made
        self._forgotten: set[RunKey] = set()  # to forget once their events are written
        self._failing = False  # the last write failed and its events are queued again
        self._retry_in = 0.0  # the writer's wait before it tries again, growing while failing
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._room_waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self.stopping = False
        self.announce: Callable[[Connection, list[list[Any]]], None] | None = None
        """Replicas: called in each write's transaction with ``[org, run, last id,
        terminal, settle id]`` per run written, to wake the other replicas' readers."""
        self._early: dict[RunKey, tuple[int, bool, int | None]] = {}

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
        self._make_room()

    # -- channels -----------------------------------------------------------------

    async def channel(self, key: RunKey) -> RunChannel:
        """Return the run's live channel, loading its tail from SQLite the first time."""
        found = self._channels.get(key)
        if found is not None:
            return found
        opening = self._opening.get(key)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[RunChannel] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            last, finished, settled = await self._db.run(lambda c: _tail(c, key))
            found = self._channels.setdefault(key, RunChannel(key, last, finished, settled))
            early = self._early.pop(key, None)
            if early is not None:  # another replica wrote while the tail was read
                found.heard(*early)
            future.set_result(found)
            return found
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: later callers re-raise it themselves
            raise
        finally:
            del self._opening[key]

    def new_channel(self, key: RunKey) -> RunChannel:
        """Open the channel of a run just created (it has no events: nothing to read)."""
        return self._channels.setdefault(key, RunChannel(key, 0, False, 0))

    def stop_followers(self) -> None:
        """End every :meth:`follow` iterator at its next wake-up (server shutdown)."""
        self.stopping = True
        for channel in self._channels.values():
            channel.wake()

    def forget(self, key: RunKey) -> None:
        """Drop a finished run's channel; readers holding it keep working.

        While events of the run are still to be written (queued again after a write
        that left them out), the channel stays until they are: they are published to
        it, and a reader who comes meanwhile follows it.
        """
        if key in self._pending or key in self._writing:
            self._forgotten.add(key)
            return
        self._forgotten.discard(key)
        self._channels.pop(key, None)

    # -- replicas -----------------------------------------------------------------

    def heard(self, notes: Sequence[Sequence[Any]]) -> None:
        """Other replicas committed events: ``[org, run, last id, terminal, settle id]``
        per run (see :attr:`announce`); wake this replica's readers of those runs."""
        for org, run_id, last, terminal, settled in notes:
            key = (org, run_id)
            channel = self._channels.get(key)
            if channel is not None:
                channel.heard(int(last), bool(terminal), settled)
                if terminal:  # it ended elsewhere: its readers hold the channel, drop it here
                    del self._channels[key]
            elif key in self._opening:
                _, was_terminal, was_settled = self._early.get(key, (0, False, None))
                self._early[key] = (int(last), bool(terminal) or was_terminal,
                                    max(settled or 0, was_settled or 0) or None)  # fmt: skip

    def resync(self) -> None:
        """Messages may have been missed: have every reader check the database again."""
        for channel in self._channels.values():
            channel.stale = True
            channel.wake()

    async def refresh(self, key: RunKey) -> RunChannel:
        """Reload the run's channel from what is stored (this replica takes the run over)."""
        channel = self._channels.get(key)
        if channel is None:  # a new channel reads the tail itself
            return await self.channel(key)
        channel.reset(*await self._db.run(lambda c: _tail(c, key)))
        return channel

    async def wait(self, channel: RunChannel, timeout: float | None) -> bool:
        """Wait for news of the run (a commit here, or one another replica announced);
        False when ``timeout`` passed without any.

        With replicas, a wait that times out (or follows a missed message) reads the
        run's tail from the database: a lost wake-up costs one timeout, never a reader.
        """
        if not channel.stale and await channel.wait(timeout):
            return True
        if self.announce is None:
            return False
        before = (channel.committed, channel.settled, channel.finished)
        await self.recheck(channel)
        return (channel.committed, channel.settled, channel.finished) != before

    async def recheck(self, channel: RunChannel) -> None:
        """Bring the channel up to the run's stored tail (replicas: another replica may
        have written what this one was not told of); never moves anything back."""
        channel.stale = False
        last, finished, settled = await self._db.run(lambda c: _tail(c, channel.key))
        channel.heard(last, finished, settled)

    def drop(self, keys: set[RunKey]) -> None:
        """Discard the queued events of runs this replica no longer owns."""
        for key in keys:
            queued = self._pending.pop(key, None)
            if queued is not None:
                self._queued -= queued.count
                self._written += queued.count
                self._again -= queued.again
            self._channels.pop(key, None)
            self._writing.pop(key, None)
            self._forgotten.discard(key)
        self._settle_waiters()
        self._make_room()

    # -- writing ------------------------------------------------------------------

    async def append(self, cls: type[StreamEvent], key: RunKey, **fields: Any) -> int:
        """Queue one event of ``cls`` for the run ``key`` with the next event id; return the id.

        The event is on disk and visible to readers only after the writer's next
        commit; call :meth:`sync` to wait for that. Appenders wait for the writer when
        too many events are queued.
        """
        channel = self._channels.get(key) or await self.channel(key)
        if cls is LogLine:
            self._check_room(channel, 1)
        event_id = self._queue(channel, cls, fields)
        if self._queued >= self._max_pending or self._failing:
            await self._room()
        return event_id

    def _queue(self, channel: RunChannel, cls: type[StreamEvent], fields: dict[str, Any]) -> int:
        if self._closed:
            raise RuntimeError("the event log is closed")
        key, event_id = channel.key, channel.next_id
        framed = encoder(cls)(channel.run_id, event_id, now_ms(), **fields)
        channel.next_id += 1
        queued = self._pending.get(key)
        if queued is None:
            queued = self._pending[key] = _Queued()
            self._wake.set()
        kind = _KINDS.get(cls, _PLAIN)
        queued.add(event_id, 1, framed, None, kind)
        if kind == _ENDS:
            channel.ended = True
        self._appended += 1
        self._queued += 1
        return event_id

    async def commit_with(
        self,
        fn: Callable[[Connection], T],
        key: RunKey,
        events: Sequence[Event] = (),
        committed: Callable[[T], None] | None = None,
    ) -> T:
        """Store ``fn``'s changes and ``events`` of the run ``key`` in one transaction.

        Whatever else is queued goes in the same transaction. The state and the events
        that announce it become visible together, so a reader never sees an event
        before what it announces; one commit replaces two. When the write fails, the
        events queued before these are written later (see :meth:`_keep`); these never
        are: what they announce was not saved. ``committed(result)`` is called once the
        transaction has committed, before any reader is woken by it.
        """
        channel = self._channels.get(key) or await self.channel(key)
        queued = self._pending.get(key)
        bound = len(queued.parts) if queued is not None else 0
        for cls, fields in events:  # no await from here to the swap in _commit
            self._queue(channel, cls, fields)
        if events:
            self._pending[key].bound = bound
        return await self._commit(fn, committed)

    async def append_lines(
        self, key: RunKey, step_id: str, stream: str, lines: Sequence[str]
    ) -> None:
        """Queue one ``log`` event per line (as :meth:`append` of ``LogLine`` each, cheaper).

        The frames are the ones ``append(LogLine, ...)`` writes, byte for byte, encoded
        per batch (:func:`~vi_flow.server.engine.frames.log_frames`).
        """
        channel = self._channels.get(key) or await self.channel(key)
        if self._closed:
            raise RuntimeError("the event log is closed")
        if not lines:
            return
        if not isinstance(lines, (list, tuple)):  # stored as a JSON array (see _pack)
            lines = list(lines)
        self._check_room(channel, len(lines))
        first, now = channel.next_id, now_ms()
        parts = [  # encoded before anything changes: a line orjson refuses leaves no gap
            (len(part), log_frames(key[1], *batch), batch)
            for at in range(0, len(lines), _CHUNK_EVENTS)  # no part larger than a row
            for part in (lines[at : at + _CHUNK_EVENTS],)
            for batch in ((step_id, stream, first + at, now, part),)
        ]
        channel.next_id += len(lines)
        queued = self._pending.get(key)
        if queued is None:
            queued = self._pending[key] = _Queued()
            self._wake.set()
        for count, frames, batch in parts:
            queued.add(batch[2], count, frames, batch)
        self._appended += len(lines)
        self._queued += len(lines)
        if self._queued >= self._max_pending or self._failing:
            await self._room()

    def _check_room(self, channel: RunChannel, count: int) -> None:
        """Refuse ``count`` more ``log`` events past the run's ``events_per_run`` quota."""
        held = channel.next_id - 1
        if self.max_events is not None and held + count > self.max_events:
            raise EventQuotaExceeded(held, count, self.max_events)

    async def _room(self) -> None:
        """Wait until the writer takes the queue (it does as soon as its write in flight
        ends): appenders keep making events while a batch is written, never more than
        ``max_pending`` ahead of it. While writes fail, the events being written again
        count too: appenders wait for the database rather than fill memory."""
        while not self._closed and (
            self._queued + (self._in_flight if self._failing else 0) >= self._max_pending
        ):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            await waiter

    def _make_room(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def sync(self) -> None:
        """Wait until every event appended so far is committed and published.

        While the database is away, that is until it is back (the events are kept and
        written again, see :meth:`_keep`).

        Raises:
            Exception: The error of a write that dropped events for good meanwhile (not
                the changes of a :meth:`commit_with`, whose caller is told).
        """
        await self._written_up_to(self._appended)

    def _over(self, target: int) -> bool:
        """Whether the writes of the first ``target`` events appended are over.

        Writes end in the order they are made, so the events whose write is over are
        the first ``_written`` appended, unless some were queued again: those end later
        than events appended after them, and the count says nothing until they do."""
        return self._written >= target and not self._again

    async def _written_up_to(self, target: int) -> None:
        if self._over(target):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, self._lost, waiter))
        await waiter

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._window and self._queued < self._max_pending // 4:
                await asyncio.sleep(self._window)
            if self._pending:
                with contextlib.suppress(Exception):  # logged; the waiters have the error
                    await self._commit(None)
            if self._failing:  # its events are queued again: give the database a moment
                self._retry_in = min(max(self._retry_in * 2, _RETRY_FIRST), _RETRY_MOST)
                await asyncio.sleep(self._retry_in)

    async def _commit(
        self, fn: Callable[[Connection], T] | None, committed: Callable[[T], None] | None = None
    ) -> T:
        """Write what is queued (and ``fn``'s changes) in one transaction, then publish
        (``committed(result)`` first).

        The write and its bookkeeping finish even when the caller is cancelled
        meanwhile (the transaction runs on the database thread regardless).
        """
        pending, count = self._pending, self._queued
        self._pending, self._queued = {}, 0
        self._in_flight += count
        self._make_room()
        per_run = {key: _chunks(key, queued) for key, queued in pending.items()}
        again = sum(queued.again for queued in pending.values())
        writing = self._writing
        behind = {key: tuple(writing[key]) for key in per_run if key in writing}
        for key, rows in per_run.items():
            writing.setdefault(key, []).append(rows[0][2])
        write = asyncio.ensure_future(
            self._store(fn, pending, per_run, behind, count, again, committed)
        )
        write.add_done_callback(_read_its_error)  # logged; a cancelled caller leaves it
        return await asyncio.shield(write)

    async def _store(
        self, fn: Callable[[Connection], T] | None, pending: dict[RunKey, _Queued],
        per_run: dict[RunKey, list[_Chunk]], behind: dict[RunKey, tuple[int, ...]], count: int,
        again: int, committed: Callable[[T], None] | None = None,
    ) -> T:  # fmt: skip
        """Write, then publish; ``behind``: per run, the first id of its rows in each write
        still in flight when this one was made (they must have stored them first).
        ``again``: how many of the ``count`` events had been queued again. ``committed``
        hears the result between the two: what it records (the outcome an execute
        answers) is there for the readers the publishing wakes."""
        announce = self.announce

        def write(conn: Connection) -> tuple[Any, set[RunKey]]:
            # a run whose earlier write failed or left it out is left out: its rows
            # never go in before those (the failure is only known on the loop later)
            late = {key for key, firsts in behind.items() if not _stored(conn, key, firsts)}
            result = None if fn is None else fn(conn)
            runs = [(key, part) for key, part in per_run.items() if key not in late]
            chunks = [chunk for key, part in runs
                      for chunk in (_unstored(conn, part) if pending[key].again else part)]  # fmt: skip
            _insert(conn, chunks)
            if announce is not None and runs:
                announce(conn, [[*key, part[-1][3], part[-1][5], _settle_id(part)]
                                for key, part in runs])  # fmt: skip
            return result, late

        try:
            result, late = await self._db.run(write)
        except Exception as exc:
            self._written_out(per_run, count)
            kept = self._keep(pending, exc, count)
            self._ended(per_run, count - kept, again)
            raise
        self._written_out(per_run, count)
        if committed is not None:
            committed(cast(T, result))
        if self._failing and len(late) < len(per_run):  # (it stored something)
            log.warning("event log written again")
            self._failing, self._retry_in = False, 0.0
        kept = 0
        for key, part in per_run.items():
            channel = self._channels.get(key)
            if key in late:  # written later, after the events it waits for
                if channel is not None:
                    kept += self._requeue(key, pending[key].parts)
            elif channel is not None:
                channel.publish(part)
        self._ended(per_run, count - kept, again)
        return cast(T, result)

    def _ended(self, per_run: dict[RunKey, list[_Chunk]], over: int, again: int) -> None:
        """A write ended: ``over`` of its events are stored or dropped for good, the
        others queued again; ``again`` of them had been queued again before (those
        queued once more are counted anew by :meth:`_requeue`)."""
        self._written += over
        self._again -= again
        self._forget_written(per_run)
        self._settle_waiters()
        self._make_room()  # fewer in flight: room, for appenders waiting on a failure too

    def _forget_written(self, runs: Collection[RunKey]) -> None:
        """Forget the channels :meth:`forget` left for events then still to write."""
        if self._forgotten:
            for key in self._forgotten.intersection(runs):
                self.forget(key)

    def _written_out(self, per_run: dict[RunKey, list[_Chunk]], count: int) -> None:
        """A write ended: its runs are no longer being written by it."""
        self._in_flight -= count
        writing = self._writing
        for key, rows in per_run.items():
            firsts = writing.get(key)
            if firsts is not None and rows[0][2] in firsts:  # (not when dropped meanwhile)
                firsts.remove(rows[0][2])
                if not firsts:
                    del writing[key]

    def _requeue(self, key: RunKey, parts: Sequence[_Part]) -> int:
        """Queue events of ``key`` that a write did not store again, in id order among
        those queued since; they keep their ids. The count queued."""
        later = self._pending.get(key)
        if later is not None:
            parts = sorted([*parts, *later.parts], key=operator.itemgetter(0))
        queued = self._pending[key] = _Queued()
        for part in parts:
            queued.add(*part)
        again = queued.count - (later.count if later is not None else 0)
        queued.again = again + (later.again if later is not None else 0)
        self._queued += again
        self._again += again  # sync() waits for them (see _over)
        self._wake.set()
        return again

    def _keep(self, pending: dict[RunKey, _Queued], error: Exception, count: int) -> int:
        """After a failed write, queue its events again among those appended since,
        when the database is only away or busy for now (:func:`_worth_again`), to be
        written in order by a later write; their ids stay theirs.

        Not the events :meth:`commit_with` bound to its changes (those were not saved);
        their ids are skipped, and a ``flow_completed`` among them is appended again by
        the run's end. Nor those of runs this server no longer holds. While writes fail,
        appenders wait for room (:meth:`_room`), so memory stays bounded. Events lost
        otherwise (the error does not pass, or the log is closing) make the next
        :meth:`sync` raise ``error``. The count kept.
        """
        again = _worth_again(error) and not self._closed
        kept = lost = 0
        for key, queued in pending.items():
            channel = self._channels.get(key)
            if channel is None:
                continue
            unbound = queued.parts[: queued.bound]
            parts = unbound if again else []
            if any(kind == _ENDS for *_, kind in queued.parts[len(parts) :]):
                channel.ended = False
            if parts:
                kept += self._requeue(key, parts)
            elif unbound:
                lost += sum(part[1] for part in unbound)
        if kept:
            self._failing = True
        if lost:
            self._lost += lost
            self._lost_error = error
        if not count:
            return kept
        if kept:
            log.warning(
                "event log write failed (%s: %s); %d events kept to be written again,"
                " %d dropped (announcing changes that were not saved)",
                type(error).__name__, error, kept, count - kept,
            )  # fmt: skip
        else:
            log.error("event log write failed; %d events lost", count, exc_info=error)
        return kept

    def _settle_waiters(self) -> None:
        """Answer the :meth:`sync` calls whose events' writes are over (see :meth:`_over`):
        with the error of a write that lost events since the call, if one did."""
        if not self._waiters or self._again:
            return
        keep: list[tuple[int, int, asyncio.Future[None]]] = []
        for target, lost, waiter in self._waiters:
            if target > self._written:
                keep.append((target, lost, waiter))
            elif not waiter.done():
                if self._lost == lost or self._lost_error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(self._lost_error)
        self._waiters = keep

    # -- reading ------------------------------------------------------------------

    async def read(self, key: RunKey, after: int) -> tuple[bytes, int]:
        """Committed SSE frames after event ``after`` (a bounded chunk) and the last id."""
        return await self._db.run(lambda c: _read(c, key, after))

    async def follow(self, key: RunKey, after: int, idle: float) -> AsyncIterator[bytes | None]:
        """Yield SSE frames (in chunks of whole frames) after ``after`` until the run's
        terminal event.

        Yields ``None`` every ``idle`` seconds without news, so the caller can send a
        heartbeat. A finished run is replayed and the iterator ends.
        """
        channel = await self.channel(key)
        cursor = after
        while True:
            if cursor < channel.committed:
                chunks, cursor = await self._catch_up(channel, cursor)
                for chunk in chunks:  # the ring's rows as they are: no copy to join them
                    yield chunk
                continue
            if channel.finished or self.stopping:
                return
            if not await self.wait(channel, idle):
                if not await self._db.run(lambda c: _run_is_there(c, key)):
                    # pruned or deleted meanwhile (QA: a stream opened as its finished
                    # run went, before its channel was read, sent heartbeats for ever):
                    # ended, its client reconnects and is told the run is no more
                    return
                yield None

    async def _catch_up(self, channel: RunChannel, cursor: int) -> tuple[list[bytes], int]:
        recent = channel.recent(cursor)
        if recent is not None:
            return [chunk for chunk in recent if chunk], channel.committed
        stored, last = await self.read(channel.key, cursor)
        if last <= cursor:  # cannot happen while committed > cursor; guard against a spin
            return [], channel.committed
        return [stored], last
