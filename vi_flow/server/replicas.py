"""Replicas: several servers on one PostgreSQL database, each serving any request.

Every server is a *replica* with a row in ``replicas`` (its id, name and last heartbeat).
On SQLite there is only ever one (the home's lock), and the row only names the owner of
the runs it starts. On PostgreSQL:

- **Leases.** A replica heartbeats every ``lease / 3`` seconds (the database's clock,
  so hosts need not agree on the time). A replica silent for longer than ``lease`` is
  dead: any live one deletes its row at its next tick, and the runs it owned become
  orphans that the engine claims (see :class:`~vi_flow.server.engine.Engine`). A replica
  that finds its own row gone, or could not heartbeat for most of a lease, gives up what
  it owns at once (others may already have taken it) and joins again under a new id.
- **Wake-ups.** ``NOTIFY`` on one channel per schema carries small messages (which run
  has new events, which run should be cancelled) between replicas; the tables stay the
  truth, so a message lost while a replica reconnects only delays it until its next
  tick, which reads the tables again.

The listening and the heartbeat share one connection and one thread, so neither waits
behind the store's queue of work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ._records import new_id
from .background import spawn
from .clock import now_ms, wait_event
from .db import Connection
from .home import HomeError
from .store import Store

__all__ = ["MIGRATION", "SCHEMA", "Message", "Replica", "ReplicaNameInUse", "lease_from_env"]

log = logging.getLogger("vi_flow.server")

MIGRATION = "replicas-1"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS replicas (replica_id TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " started_at INTEGER NOT NULL, heartbeat_at INTEGER NOT NULL);"
)

Message = list[Any]
"""A decoded ``NOTIFY`` payload: ``[kind, sender id, *data]``."""


class ReplicaNameInUse(HomeError):
    """A live replica of the database already has this replica's name (``vi-flow serve``
    says so and exits 1): the name says on whose host a local task runs, and two of one
    name would each answer for the other's tasks."""


_DEFAULT_LEASE = 15.0
_PAYLOAD_BYTES = 7000  # PostgreSQL refuses a NOTIFY payload of 8000 bytes or more
_HOLD_LOCK = 0x76666C6B  # "vflk": the first key of the locks replicas hold (see hold)
_PG_NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"


def lease_from_env(env: dict[str, str] | None = None) -> float:
    """``VI_FLOW_REPLICA_LEASE`` in seconds (default 15).

    Raises:
        ValueError: Not a number of at least one second, naming the value.
    """
    raw = (env if env is not None else os.environ).get("VI_FLOW_REPLICA_LEASE", "").strip()
    if not raw:
        return _DEFAULT_LEASE
    try:
        lease = float(raw)
    except ValueError:
        lease = -1.0
    if not 1.0 <= lease <= 86400.0:  # NaN fails too
        raise ValueError(f"VI_FLOW_REPLICA_LEASE must be 1 to 86400 seconds, not {raw!r}")
    return lease


def default_name(home: Path | None = None) -> str:
    """How a replica shows when it is not given a name: ``HOST:`` and a digest of its
    home's path, the same at every start of that home (``HOST:PID`` without one).

    A replica's tasks' files are in its home, and other replicas send their requests to
    the replica of that name: QA found a server on PostgreSQL named ``HOST:PID``, by
    default, cut off from its own earlier tasks at its first restart (``409
    TASK_ON_OTHER_REPLICA`` naming its former self, for ever).
    """
    if home is None:
        return f"{socket.gethostname()}:{os.getpid()}"
    digest = hashlib.blake2b(os.fsencode(os.path.abspath(home)), digest_size=4).hexdigest()
    return f"{socket.gethostname()}:{digest}"


def _now_sql(dialect: str) -> str:
    return _PG_NOW if dialect == "postgresql" else str(now_ms())


class Replica:
    """This server among the servers that share its database.

    Args:
        store: The server's store.
        name: How it shows in logs and ``GET /v1/server``; :func:`default_name` of
            ``home`` when not given.
        lease: Seconds of silence after which the others take its work over.
        home: The server's home.
    """

    def __init__(
        self,
        store: Store,
        name: str | None = None,
        lease: float = _DEFAULT_LEASE,
        home: Path | None = None,
    ) -> None:
        self.store = store
        self.name = name or default_name(home)
        self.lease = lease
        self.id = new_id("rep")
        self.shared = store.dialect == "postgresql"
        self._handlers: dict[str, Callable[[Message], None]] = {}
        self._on_tick: list[Callable[[], Any]] = []
        self._on_lost: list[Callable[[], Any]] = []
        self._channel = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._beat_ok = time.monotonic()
        self._ticking: asyncio.Task[None] | None = None
        self._tick_now = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._losing = False
        self._locks: dict[str, Callable[[bool], None]] = {}  # the listening thread holds them
        self._locks_guard = threading.Lock()
        #: Stops the server: called when this replica, back from a stall, finds that a
        #: live replica took its name meanwhile (the server sets it; ``None``: none).
        self.stop_server: Callable[[], None] | None = None

    # -- wiring -------------------------------------------------------------------------

    def handle(self, kind: str, handler: Callable[[Message], None]) -> None:
        """Call ``handler(message)`` on the loop for each message of ``kind`` from others."""
        self._handlers[kind] = handler

    def on_tick(self, callback: Callable[[], Any]) -> None:
        """Call ``await callback()`` after each heartbeat (every ``lease / 3`` seconds)."""
        self._on_tick.append(callback)

    def hold(self, name: str, on_change: Callable[[bool], None]) -> None:
        """Try to hold the lock ``name`` for as long as this replica lives; call
        ``on_change(held)`` on the loop whenever that changes.

        One replica of the database holds it at a time (a PostgreSQL advisory lock of
        the session that heartbeats: it is free the moment that session ends, a dead
        replica's at once). On SQLite the only server holds it.
        """
        if not self.shared:
            on_change(True)
            return
        with self._locks_guard:
            self._locks[name] = on_change

    def on_lost(self, callback: Callable[[], Any]) -> None:
        """Call ``await callback()`` when this replica lost its lease (before it rejoins)."""
        self._on_lost.append(callback)

    # -- life cycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Join: record this replica (on SQLite, as the only one) and start heartbeating."""
        await self.store.migrate(MIGRATION, SCHEMA)
        self._loop = asyncio.get_running_loop()
        if self.shared:
            self._channel = await self.store.run(_channel_name)
            await self._wait_out_namesake()
        await self.store.run(self._join)
        self._beat_ok = time.monotonic()
        log.info("replica %s (%s) joined, lease %gs", self.name, self.id, self.lease)
        if self.shared:
            self._thread = threading.Thread(
                target=self._listen_main, name=f"vi-flow-replica-{self.id}", daemon=True
            )
            self._thread.start()
            self._ticking = self._loop.create_task(self._tick_loop())

    def _namesake_beat(self, conn: Connection, other_than: str) -> tuple[int | None, int]:
        """The latest heartbeat of a replica of this name but ``other_than`` (``None``:
        there is none), and the database's time, both in ms."""
        row = conn.execute(
            f"SELECT MAX(heartbeat_at), {_PG_NOW} FROM replicas WHERE name = ? AND replica_id != ?",
            (self.name, other_than),
        ).fetchone()
        return row[0], row[1]

    async def _wait_out_namesake(self) -> None:
        """Join once no live replica has this name.

        A replica of the name whose heartbeat is fresh is one killed moments ago (and
        restarted at once, by systemd): its lease runs out within ``lease`` seconds, and
        this one waits for that. Or it lives: its heartbeat moves while this one waits.

        Raises:
            ReplicaNameInUse: The name's heartbeat moved.
        """
        first = None
        deadline = time.monotonic() + self.lease + 1.0
        while time.monotonic() < deadline:
            # not joined yet: no row is this one's
            beat, now = await self.store.run(lambda c: self._namesake_beat(c, self.id))
            if beat is None or now - beat > self.lease * 1000:
                return
            if first is None:
                first = beat
                log.info(
                    "replica %s: a replica of this name beat %.1f s ago; waiting for its lease",
                    self.name, (now - beat) / 1000,
                )  # fmt: skip
            elif beat != first:
                raise ReplicaNameInUse(
                    f"a live replica of this database is named {self.name!r} (its heartbeat"
                    " goes on): give this one another name (--replica-name or"
                    " VI_FLOW_REPLICA_NAME), or stop that one first"
                )
            await asyncio.sleep(0.25)

    async def close(self) -> None:
        """Leave: stop heartbeating and delete this replica's row (others take over now)."""
        self._stop.set()
        if self._ticking is not None:
            self._ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticking
        for task in list(self._background):
            task.cancel()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        with contextlib.suppress(Exception):
            await self.store.run(
                lambda c: c.execute("DELETE FROM replicas WHERE replica_id = ?", (self.id,))
            )

    def _join(self, conn: Connection) -> None:
        if not self.shared:  # the home's lock: every other row is a server that died
            conn.execute("DELETE FROM replicas")
        now = _now_sql(self.store.dialect)
        conn.execute(
            "INSERT INTO replicas (replica_id, name, started_at, heartbeat_at)"
            f" VALUES (?, ?, {now}, {now})",
            (self.id, self.name),
        )

    async def names(self) -> list[str]:
        """The names of the live replicas (this one included), oldest first."""
        rows = await self.store.run(
            lambda c: c.execute("SELECT name FROM replicas ORDER BY started_at, name").fetchall()
        )
        return [str(r[0]) for r in rows]

    # -- sending ------------------------------------------------------------------------

    def send(self, conn: Connection, kind: str, *data: Any) -> None:
        """Notify the other replicas, when the transaction on ``conn`` commits."""
        if self.shared:
            conn.execute(
                "SELECT pg_notify(?, ?)",
                (self._channel, orjson.dumps([kind, self.id, *data]).decode()),
            )

    def send_many(self, conn: Connection, kind: str, items: list[Any]) -> None:
        """Notify ``[kind, id, items...]`` split into payloads PostgreSQL accepts."""
        if not self.shared or not items:
            return
        batch: list[Any] = []
        size = 0
        for item in items:
            encoded = len(orjson.dumps(item)) + 1
            if batch and size + encoded > _PAYLOAD_BYTES:
                self.send(conn, kind, *batch)
                batch, size = [], 0
            batch.append(item)
            size += encoded
        self.send(conn, kind, *batch)

    # -- ticks --------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await wait_event(self._tick_now, self.lease / 3)
            self._tick_now.clear()
            if time.monotonic() - self._beat_ok > self.lease * 0.8:
                await self._lost("no heartbeat for most of a lease")
                continue
            try:
                await self.store.run(self._expire)
            except Exception as exc:  # the database is away; the next tick tries again
                log.warning(
                    "replica %s: could not check the other replicas: %s", self.name, _one_line(exc)
                )
                continue
            for callback in self._on_tick:
                await self._call(callback, "tick")

    async def _call(self, callback: Callable[[], Any], what: str) -> None:
        try:
            await callback()
        except Exception:
            log.exception("replica %s: %s failed", self.name, what)

    def _expire(self, conn: Connection) -> None:
        cutoff = f"{_PG_NOW} - {int(self.lease * 1000)}"
        dead = conn.execute(
            f"DELETE FROM replicas WHERE heartbeat_at < {cutoff} AND replica_id != ?"
            " RETURNING name",
            (self.id,),
        ).fetchall()
        for row in dead:
            log.warning(
                "replica %s: replica %s missed its lease; taking its work over", self.name, row[0]
            )

    async def _lost(self, why: str) -> None:
        if self._losing:
            return
        self._losing = True
        try:
            await self._give_up(why)
        finally:
            self._losing = False

    async def _give_up(self, why: str) -> None:
        log.error(
            "replica %s (%s) lost its lease (%s); giving up its runs", self.name, self.id, why
        )
        for callback in self._on_lost:
            await self._call(callback, "giving up")
        old, self.id = self.id, new_id("rep")
        try:
            # its own old row (a database outage may have left it) is no namesake
            beat, now = await self.store.run(lambda c: self._namesake_beat(c, old))
            if beat is not None and now - beat <= self.lease * 1000:
                log.error(
                    "replica %s: a live replica took this name while this one was stalled;"
                    " this one stops (two of one name would answer for each other's tasks)",
                    self.name,
                )
                if self.stop_server is not None:
                    self.stop_server()
                return
            await self.store.run(self._join)
        except Exception as exc:
            log.warning("replica %s: could not rejoin yet: %s", self.name, exc)
            return
        self._beat_ok = time.monotonic()
        log.info("replica %s rejoined as %s", self.name, self.id)

    def _beat(self, replica_id: str, alive: bool) -> None:
        if replica_id != self.id:
            return  # the answer for the id this replica had before it rejoined: late
        if alive:
            self._beat_ok = time.monotonic()
            self._tick_now.set()
        elif not self._losing:
            spawn(self._background, self._lost("its row was taken over"))

    def _deliver(self, payload: str) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(message, list) or len(message) < 2 or message[1] == self.id:
            return
        handler = self._handlers.get(message[0])
        if handler is not None:
            try:
                handler(message)
            except Exception:
                log.exception("replica %s: message %r failed", self.name, message[0])

    def _resync(self) -> None:
        handler = self._handlers.get("resync")
        if handler is not None:
            handler(["resync", self.id])

    # -- the listening thread -----------------------------------------------------------

    def _listen_main(self) -> None:
        from .db.postgres import PostgresDatabase

        database = self.store.database
        assert isinstance(database, PostgresDatabase)
        loop = self._loop
        assert loop is not None
        interval = self.lease / 3
        while not self._stop.is_set():
            try:
                conn = database.connect(f"vi-flow replica {self.name}")
            except Exception as exc:
                log.warning("replica %s: cannot reach the database: %s", self.name, _one_line(exc))
                self._stop.wait(1.0)
                continue
            held: set[str] = set()
            try:
                self._listen(conn, loop, interval, held)
            except Exception as exc:
                log.warning(
                    "replica %s: lost the database connection: %s", self.name, _one_line(exc)
                )
                self._stop.wait(0.5)
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
                for name in held:  # the session's locks went with it
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(self._locks[name], False)

    def _listen(
        self, conn: Any, loop: asyncio.AbstractEventLoop, interval: float, held: set[str]
    ) -> None:
        from psycopg import sql

        conn.raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        call = loop.call_soon_threadsafe
        call(self._resync)  # anything sent while nobody listened: read the tables again
        next_beat = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_beat:
                beating = self.id  # the loop gives it a new one when it rejoins
                rows = conn.execute(
                    f"UPDATE replicas SET heartbeat_at = {_PG_NOW} WHERE replica_id = ?",
                    (beating,),
                ).rowcount
                call(self._beat, beating, rows > 0)
                self._take_locks(conn, held, call)
                next_beat = time.monotonic() + interval
            wait = max(0.05, min(0.5, next_beat - time.monotonic()))
            for notice in conn.raw.notifies(timeout=wait):
                call(self._deliver, notice.payload)

    def _take_locks(self, conn: Any, held: set[str], call: Callable[..., Any]) -> None:
        with self._locks_guard:
            wanted = dict(self._locks)
        for name, on_change in wanted.items():
            if name in held:
                continue
            row = conn.execute(
                "SELECT pg_try_advisory_lock(?, hashtext(current_schema() || ' ' || ?))",
                (_HOLD_LOCK, name),
            ).fetchone()
            if row[0]:
                held.add(name)
                call(on_change, True)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _channel_name(conn: Connection) -> str:
    return f"vi_flow.{conn.execute('SELECT current_schema()').fetchone()[0]}"
