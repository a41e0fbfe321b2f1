"""Durable server state: one database (SQLite, or PostgreSQL for teams) used from one thread.

:class:`Store` owns ``<home>/state.db`` or the database of a ``postgresql://`` URL (see
:mod:`vi_flow.server.db`). Every SQL statement runs on the store's own
thread, never on the event loop: ``await store.run(fn)`` hands ``fn(conn)`` to that thread
inside a transaction. Feature modules add their tables with :meth:`Store.migrate` and
query them with :meth:`Store.run`; the foundation's resources (organizations, tokens,
flows, flow versions, runs, idempotency records) have typed methods here.

Typed methods raise :class:`~vi_flow.server.errors.APIProblem` for missing resources
(``FLOW_NOT_FOUND``, ``FLOW_VERSION_NOT_FOUND``, ``RUN_NOT_FOUND``), so route handlers
can let them propagate.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs

from ..models._base import dumps
from ..models.common import Condition
from ..models.flows import DeletedFlow, Flow, FlowSpec
from ..models.runs import DeletedRun, Run, RunSpec
from . import _records as rec
from ._dbthread import DBThread, settle
from ._records import new_id, split_page
from .clock import now_ms
from .db import (
    Connection,
    Database,
    DatabaseError,
    DatabaseFileGone,
    DatabaseInUseError,
    Migration,
    NewerDatabaseError,
    SQLiteDatabase,
    lock_name,
    migration_sql,
    on_postgres,
    open_database,
)
from .db._held import Held, hold, release
from .db.sqlite import WalCheckpointer
from .flowsecrets import shown_flow, shown_run

__all__ = [
    "IDEMPOTENCY_SLOT",
    "PENDING_ANSWER",
    "AlreadyAnswered",
    "AnswerSaver",
    "IdempotencySlot",
    "Store",
    "answer_saver",
    "new_id",
    "now_ms",
    "split_page",
]

T = TypeVar("T")

_GROUP_MOST = 64  # functions in one group transaction at most
_GROUP_TIME = 0.001  # seconds of work after which a group transaction commits
_Outcome = tuple[Any, BaseException | None, Held]
"""What one function of a group transaction gave: its result, or its error; its held lines."""


def _changes(conn: Connection) -> int:
    """How many rows the connection has changed since it opened (SQLite)."""
    assert isinstance(conn, sqlite3.Connection)
    return conn.total_changes


def _undo_savepoint(conn: Connection) -> bool:
    """Roll the current function's savepoint back; False when the transaction is gone."""
    try:
        conn.execute("ROLLBACK TO vi_flow_call")
        conn.execute("RELEASE vi_flow_call")
    except Exception:
        return False
    return True


def _hand_over(
    loop: asyncio.AbstractEventLoop, futures: list[asyncio.Future[Any]], outcomes: list[_Outcome]
) -> None:
    """From the database thread: have ``loop`` settle its ``futures`` (one wake-up)."""
    try:
        loop.call_soon_threadsafe(_settle_group, futures, outcomes)
    except RuntimeError:  # the loop closed while the group ran: write what committed
        for _, error, held in outcomes:
            if error is None:
                release(held)


def _settle_group(futures: list[asyncio.Future[Any]], outcomes: list[_Outcome]) -> None:
    """On the loop: write the committed functions' held lines, hand out the results."""
    for future, (result, error, held) in zip(futures, outcomes, strict=True):
        if error is None:
            release(held)
        settle(future, result, error)


log = logging.getLogger("vi_flow.server")

FlowVersion = str | int
"""``"draft"``, ``"production"`` or a published version number."""


def _nothing() -> None:
    return None


@attrs.define
class IdempotencySlot:
    """The ``Idempotency-Key`` of the request being answered, and whether it is saved.

    The idempotency wrapper sets it; a store method that creates the request's resource
    saves the answer in the same transaction (``saved`` becomes true), so a crash can
    never leave the resource without the record that would replay it.
    """

    org_id: str
    key: str
    method: str
    path: str
    body_hash: str
    saved: bool = False
    lookup_pending: bool = False  # the creating transaction looks the key up (check)
    reserved: bool = False  # a placeholder answer holds the key for this request (replicas)
    holds_run: bool = False  # the placeholder names the run the request made (hold)
    let_go: Callable[[], None] = _nothing  # lets the key's lock go before the request ends

    def key_names_run(self) -> None:
        """A stream's request, once the key names its run (:meth:`AnswerSaver.hold`, or
        found so by a retry): later requests with the key need not wait for this one to
        end. They find the run and stream it too (a client whose first connection hung
        open, behind a stalled proxy, retried in vain until the run ended: QA AT)."""
        if self.holds_run:
            self.let_go()


PENDING_ANSWER = 0
"""The status of a placeholder answer: on PostgreSQL, a request whose answer is saved
later than its resource (an execute answers when the run ends) holds its key with it,
so a replica that gets the same key meanwhile waits for the answer instead of making a
second resource."""


IDEMPOTENCY_SLOT: contextvars.ContextVar[IdempotencySlot | None] = contextvars.ContextVar(
    "vi_flow_idempotency_slot", default=None
)
"""The slot of the request this task answers, ``None`` without an ``Idempotency-Key``."""


class AlreadyAnswered(Exception):
    """The request's ``Idempotency-Key`` already has an answer, found by
    :meth:`AnswerSaver.check` in the creating transaction (which rolls back: nothing new
    is made); the idempotency wrapper replays ``stored``."""

    def __init__(self, stored: tuple[str, int, bytes]) -> None:
        super().__init__("the Idempotency-Key already has an answer")
        self.stored = stored


class AnswerSaver:
    """Saves the request's idempotent answer in the transaction that makes its resource.

    Make it on the event loop with :func:`answer_saver` (it reads the request's
    :data:`IDEMPOTENCY_SLOT`); call it with the connection and the answered resource
    inside that transaction: both are saved, or neither.
    """

    __slots__ = ("_hold_only", "_slot", "_status")

    def __init__(
        self, slot: IdempotencySlot | None, answer_status: int | None, *, hold_only: bool = False
    ) -> None:
        self._slot = slot
        self._status = answer_status
        self._hold_only = hold_only

    @property
    def hold_only(self) -> bool:
        """Whether the answer is never saved (a stream): the key only names the run."""
        return self._hold_only

    def check(self, conn: Connection) -> None:
        """First thing in the creating transaction: when the idempotency wrapper left the
        key's lookup to it, raise :class:`AlreadyAnswered` if an answer is stored."""
        slot = self._slot
        if slot is None or not slot.lookup_pending:
            return
        _lookup(conn, slot)
        slot.lookup_pending = False
        if on_postgres(conn) and self._status is not None:
            placeholder = (slot.body_hash, PENDING_ANSWER, b"")
            rec.put_idempotent(conn, slot.org_id, slot.key, slot.method, slot.path, placeholder)
            slot.reserved = True

    def hold(self, conn: Connection, run_id: str) -> None:
        """In the transaction that creates the run whose outcome is the answer: hold the
        key with a placeholder naming the run. A retry that finds it (this request still
        running elsewhere, or cut short by a crash) answers that run's outcome instead of
        starting a second run (:meth:`held_run`)."""
        slot = self._slot
        if slot is None or self._status is None or slot.saved:
            return
        placeholder = (slot.body_hash, PENDING_ANSWER, run_id.encode())
        rec.put_idempotent(conn, slot.org_id, slot.key, slot.method, slot.path, placeholder)
        slot.reserved = slot.holds_run = True

    def held_run(self, stored: tuple[str, int, bytes]) -> str | None:
        """The run a placeholder found by :meth:`check` names, when it was made by a
        request with this body; ``None`` for anything else (a stored answer to replay,
        another body: the idempotency wrapper answers those)."""
        slot = self._slot
        body_hash, status, body = stored
        if slot is None or status != PENDING_ANSWER or body_hash != slot.body_hash or not body:
            return None
        # This request answers that run now: its answer replaces the placeholder (on
        # PostgreSQL the save would otherwise look the key up again, find the placeholder
        # and wait for its maker, perhaps a replica that died), which stays if it fails.
        slot.reserved = slot.holds_run = True
        return body.decode()

    def __call__(self, conn: Connection, resource: Any) -> None:
        slot = self._slot
        if slot is None or self._status is None or slot.saved or self._hold_only:
            return
        if on_postgres(conn) and not slot.reserved:
            # Another replica may have answered the key since it was looked up: the key's
            # lock orders the two transactions, and the later one makes nothing.
            _lookup(conn, slot)
        record = (slot.body_hash, self._status, dumps(resource))
        rec.put_idempotent(conn, slot.org_id, slot.key, slot.method, slot.path, record)
        slot.saved = True


def _lookup(conn: Connection, slot: IdempotencySlot) -> None:
    """Raise :class:`AlreadyAnswered` when the slot's key has an answer. On PostgreSQL the
    key is locked first, until the transaction ends: replicas answer a key one at a time."""
    lock_name(conn, "\x1f".join((slot.org_id, slot.key, slot.method, slot.path)))
    stored = rec.get_idempotent(conn, slot.org_id, slot.key, slot.method, slot.path)
    if stored is not None:
        raise AlreadyAnswered(stored)


def answer_saver(answer_status: int | None, *, hold_only: bool = False) -> AnswerSaver:
    """What to do in the creating transaction: save the answer when a slot waits for it.

    Call it on the event loop (it reads the request's :data:`IDEMPOTENCY_SLOT`: the DB
    thread has no context), then use what it returns inside the transaction that creates
    the resource. ``hold_only``: the answer is a stream, never saved; the key keeps
    naming the run the request made (:meth:`AnswerSaver.hold`), which a retry streams.
    """
    return AnswerSaver(IDEMPOTENCY_SLOT.get(), answer_status, hold_only=hold_only)


class Store:
    """The server's database (SQLite or PostgreSQL), used only from its own thread.

    Args:
        database: A SQLite file (normally ``<home>/state.db``, created on first use), a
            ``postgresql://`` URL, or a :class:`~vi_flow.server.db.Database`.
        known_migrations: Every migration name this server's features apply. Given, the
            store refuses a database that records any other name (a newer vi-flow wrote
            it): the first use raises :class:`~vi_flow.server.db.NewerDatabaseError`.

    Example:
        >>> store = Store(home / "state.db")
        >>> await store.migrate("tasks-1", "CREATE TABLE IF NOT EXISTS tasks (id TEXT)")
        >>> n = await store.run(lambda c: c.execute("SELECT count(*) FROM tasks").fetchone()[0])
        >>> await store.close()
    """

    def __init__(
        self, database: Path | str | Database, *, known_migrations: Collection[str] | None = None
    ) -> None:
        self.database: Database = (
            open_database(database) if isinstance(database, (Path, str)) else database
        )
        self._known = None if known_migrations is None else set(known_migrations)
        self._thread: DBThread | None = None
        self._conn: Any = None
        self._checkpointer: WalCheckpointer | None = None
        self._group: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
        self._group_lock = threading.Lock()

    @classmethod
    def open(cls, target: str | Path, *, known_migrations: Collection[str] | None = None) -> Store:
        """The store of ``target``: a ``postgresql://`` URL, else a SQLite file path.

        Raises:
            DatabaseSettingError: A URL of another kind, or PostgreSQL without psycopg.
        """
        return cls(open_database(target), known_migrations=known_migrations)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.database.dialect

    # -- core ------------------------------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self.database.connect()
            self._conn = conn
            try:
                if isinstance(self.database, SQLiteDatabase):
                    WalCheckpointer.bound(conn)
                    self._checkpointer = WalCheckpointer(self.database.path)
                self._prepare(conn)
            except BaseException:
                self._close()
                raise
        return cast(Connection, self._conn)

    def _prepare(self, conn: Any) -> None:
        self.database.script(conn, migration_sql(rec.SCHEMA, self.dialect), None)
        if self._known is not None:
            self._refuse_to_migrate(conn)
        for name, sql in rec.MIGRATIONS:
            self._migrate(name, sql)

    def _refuse_to_migrate(self, conn: Connection) -> None:
        """Refuse a database a newer vi-flow migrated (:class:`NewerDatabaseError`), and
        an older SQLite one other processes have open (:class:`DatabaseInUseError`)."""
        known = {*(self._known or ()), *(name for name, _ in rec.MIGRATIONS)}
        rows = conn.execute("SELECT name FROM migrations ORDER BY applied_at, name").fetchall()
        unknown = [r[0] for r in rows if r[0] not in known]
        if unknown:
            raise NewerDatabaseError(self.database.name, unknown)
        applied = {r[0] for r in rows}
        # An older database (not a new one) about to be migrated: never under a process
        # that has it open. A release with a home lock cannot be serving it (this server
        # holds the lock); the first release had none.
        if applied and known - applied and isinstance(self.database, SQLiteDatabase):
            holders = self.database.other_holders()
            if holders:
                raise DatabaseInUseError(self.database.name, holders)

    def _transact(self, fn: Callable[[Connection], T], held: Held, again: bool = True) -> T:
        """``fn(conn)`` in a transaction; the lines it logs when committed go to ``held``
        (left empty unless it commits)."""
        conn = self._connection()
        self.database.begin(conn)
        try:
            result = hold(held, fn, conn)
        except BaseException as exc:
            if not getattr(conn, "broken", False):
                self.database.rollback(conn)
                raise
            self._close()  # the next transaction opens a new connection
            if again and isinstance(exc, DatabaseError) and getattr(conn, "sent", 0) <= 1:
                # A PostgreSQL connection lost while idle (a restart, a failover): the
                # first statement found it gone, nothing was done: again, on a new one.
                log.warning(
                    "the database connection was lost; reconnecting to %s", self.database.name
                )
                return self._transact(fn, held, again=False)
            raise
        try:
            self.database.commit(conn)
        except BaseException:
            held.clear()
            if getattr(conn, "broken", False):
                self._close()
            else:  # a COMMIT that failed may leave its transaction open (SQLite's may)
                with contextlib.suppress(Exception):
                    self.database.rollback(conn)
            raise
        if self._checkpointer is not None:
            self._checkpointer.committed(conn)
        return result

    def _db_thread(self) -> DBThread:
        if self._thread is None:
            where = (
                self.database.path.parent.name if isinstance(self.database, SQLiteDatabase) else ""
            )
            self._thread = DBThread(f"vi-flow-{self.dialect}:{where}")
        return self._thread

    def _call(self, fn: Callable[[], T], then: Callable[[], None] | None = None) -> Awaitable[T]:
        return self._db_thread().call(fn, then)

    async def answering(
        self,
        change: Callable[[Connection], T],
        answer: Callable[[T], Any],
        answer_status: int | None,
    ) -> T:
        """``change(conn)`` in one transaction with the answer a waiting ``Idempotency-Key``
        replays (``answer`` of what it returned, as the route shows it), when
        ``answer_status`` is given. QA: saved in a transaction after it, a crash between
        the two made a retry publish again, or answer 412 or 404 about its own change."""
        save = answer_saver(answer_status)  # here, on the loop: it reads the request's slot

        def answered(c: Connection) -> T:
            done = change(c)
            save(c, answer(done))
            return done

        return await self.run(answered)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` on the DB thread in a transaction; commit if it returns.

        An exception from ``fn`` rolls its changes back and is re-raised here. ``fn``
        must not call ``commit``/``rollback`` or start its own transaction: on SQLite,
        calls made while a transaction runs share the next one, each in a savepoint of
        its own (see :meth:`_run_group`). Rows index by column name and by position
        (:class:`~vi_flow.server.db.Row`).
        """
        if isinstance(self.database, SQLiteDatabase):
            return cast(T, await self._join_group(fn))
        held: Held = []  # written on the loop once committed, see db.log_when_committed
        return await self._call(
            functools.partial(self._transact, fn, held), functools.partial(release, held)
        )

    # -- group commit (SQLite) ---------------------------------------------------------

    def _join_group(self, fn: Callable[[Connection], Any]) -> asyncio.Future[Any]:
        """Queue ``fn`` for the next group transaction (see :meth:`_run_group`)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._group_lock:
            self._group.append((fn, future))
            first = len(self._group) == 1
        if first:  # no group is waiting for the thread: this one starts one
            self._db_thread().post(self._run_group)
        return future

    def _run_group(self) -> None:
        """Run every function queued by now (at most :data:`_GROUP_MOST`) in one SQLite
        transaction, each in a savepoint of its own, and settle them with one wake-up of
        the loop.

        A write transaction costs its ``BEGIN IMMEDIATE`` and ``COMMIT`` (a WAL append)
        and a loop -> thread -> loop round trip: 50 tasks submitted at once made 100
        transactions in a row, each waiting for the one before. Now those queued while
        one runs share the next. Each function still commits or fails alone: one that
        raises is rolled back to its savepoint, and the others go on. Functions run in
        the order they were queued, as before, so each sees what those before it wrote.
        """
        with self._group_lock:
            group, self._group = self._group[:_GROUP_MOST], self._group[_GROUP_MOST:]
            if self._group:  # more than one group's worth: the rest goes next
                self._db_thread().post(self._run_group)
        try:
            outcomes = self._transact_group([fn for fn, _ in group])
        except BaseException as exc:  # never leave a caller waiting for ever
            with contextlib.suppress(Exception):
                self.database.rollback(self._connection())
            outcomes = [(None, exc, []) for _ in group]
        if len(outcomes) < len(group):  # out of time: the rest go first in the next group
            with self._group_lock:
                if not self._group:
                    self._db_thread().post(self._run_group)
                self._group[:0] = group[len(outcomes) :]
        # each future is settled on its own loop (a server has one; a test may have more)
        by_loop: dict[asyncio.AbstractEventLoop, tuple[list[Any], list[_Outcome]]] = {}
        for (_, future), outcome in zip(group[: len(outcomes)], outcomes, strict=True):
            futures, theirs = by_loop.setdefault(future.get_loop(), ([], []))
            futures.append(future)
            theirs.append(outcome)
        for loop, (futures, theirs) in by_loop.items():
            _hand_over(loop, futures, theirs)

    def _transact_group(self, fns: list[Callable[[Connection], Any]]) -> list[_Outcome]:
        """The outcomes of ``fns``, run in one transaction; of the first ones only, when
        they took :data:`_GROUP_TIME` (the loop gets their results while the others run:
        a group of long reads would make every caller wait for them all)."""
        if len(fns) == 1:  # alone: a transaction of its own, no savepoint
            held: Held = []
            try:
                return [(self._transact(fns[0], held), None, held)]
            except BaseException as exc:
                return [(None, exc, [])]
        try:
            conn = self._connection()
            self.database.begin(conn)
        except BaseException as exc:
            return [(None, exc, []) for _ in fns]
        outcomes: list[_Outcome] = []
        reads: list[int] = []  # which of them changed no row
        started = time.perf_counter()
        for at, fn in enumerate(fns):
            if at and time.perf_counter() - started > _GROUP_TIME:
                break
            held = []
            changes = _changes(conn)
            try:
                conn.execute("SAVEPOINT vi_flow_call")
                result = hold(held, fn, conn)
                conn.execute("RELEASE vi_flow_call")
            except BaseException as exc:
                held.clear()
                if _undo_savepoint(conn):
                    outcomes.append((None, exc, []))
                    continue
                # the error ended the whole transaction (SQLite does on a full disk, an
                # I/O error...): what ran before it is undone too; the rest start again
                kept = self._lost(fns, outcomes, reads, exc)
                if len(kept) < at:  # out of time: the rest go again
                    return kept
                lost = [*kept, (None, exc, [])]
                return lost + self._transact_group(fns[at + 1 :]) if fns[at + 1 :] else lost
            outcomes.append((result, None, held))
            if _changes(conn) == changes:
                reads.append(at)
        try:
            self.database.commit(conn)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self.database.rollback(conn)
            return self._lost(fns, outcomes, reads, exc)
        if self._checkpointer is not None:
            self._checkpointer.committed(conn)
        return outcomes

    def _lost(
        self,
        fns: list[Callable[[Connection], Any]],
        outcomes: list[_Outcome],
        reads: list[int],
        exc: BaseException,
    ) -> list[_Outcome]:
        """``outcomes`` once their transaction failed with ``exc``: each fails with it, but
        the ``reads`` (the functions that changed no row) run again, in a transaction of
        their own: a full disk fails the writes beside them, not what was read (nor what
        was read after a write now undone). Fewer outcomes than given when that one ran
        out of time (the rest go again in the next group). A database file replaced fails
        all: the server reads nothing more from it."""
        if isinstance(exc, DatabaseFileGone) or not reads:
            return [(None, exc, []) for _ in outcomes]
        again = iter(self._transact_group([fns[at] for at in reads]))
        out: list[_Outcome] = []
        for at in range(len(outcomes)):
            if at in reads:
                read = next(again, None)
                if read is None:  # out of time: this one and the rest go again
                    break
                out.append(read)
            else:
                out.append((None, exc, []))
        return out

    def _migrate(self, name: str, sql: Migration) -> None:
        conn = self._connection()
        if conn.execute("SELECT 1 FROM migrations WHERE name = ?", (name,)).fetchone():
            return
        self.database.script(conn, migration_sql(sql, self.dialect), (name, now_ms()))

    async def migrate(self, name: str, sql: Migration) -> None:
        """Apply the schema script ``sql`` once per database, recorded under ``name``.

        Calling it again with the same ``name`` does nothing (even if ``sql`` changed:
        add a new name such as ``"tasks-2"`` for a later change). The script runs in one
        transaction; ``CREATE TABLE IF NOT EXISTS`` keeps it safe to write twice. Write
        it in SQLite's words (PostgreSQL gets its types, see
        :func:`~vi_flow.server.db.dialect.postgres_ddl`) or give one script per dialect.
        """
        await self._call(functools.partial(self._migrate, name, sql))

    def _close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        """Close the database and end the DB thread; the store can be reopened by use."""
        if self._thread is None:
            return
        thread, self._thread = self._thread, None
        await thread.call(self._close)
        thread.stop()

    # -- organizations and tokens ----------------------------------------------------

    async def create_org(
        self, name: str, org_id: str | None = None, *, answer_status: int | None = None
    ) -> str:
        """Create an organization and return its id (``org_<hex>`` unless given);
        ``answer_status`` as for :meth:`answering`."""
        return await self.answering(
            lambda c: rec.create_org(c, name, org_id),
            lambda made: {"organizationId": made},
            answer_status,
        )

    async def org_exists(self, org_id: str) -> bool:
        """Whether the organization exists."""
        return await self.run(lambda c: rec.org_exists(c, org_id))

    async def create_token(self, org_id: str, name: str, *, admin: bool = False) -> str:
        """Create a bearer token for ``org_id``; only its sha256 is stored. Returns it."""
        return await self.run(lambda c: rec.create_token(c, org_id, name, admin))

    async def list_tokens(self, org_id: str) -> list[dict[str, object]]:
        """The organization's tokens: name, admin flag and creation time, never a secret."""
        return await self.run(lambda c: rec.list_tokens(c, org_id))

    async def revoke_tokens(
        self,
        org_id: str,
        name: str,
        *,
        also: Callable[[Connection, str, str], list[str]] | None = None,
        answer_status: int | None = None,
    ) -> tuple[int, list[str]]:
        """Delete the organization's tokens named ``name``, and do ``also(conn, org_id,
        name)`` in the same transaction; returns how many, and what ``also`` returned.
        ``answer_status`` as for :meth:`answering`."""

        def revoke(c: Connection) -> tuple[int, list[str]]:
            count = rec.revoke_tokens(c, org_id, name)
            return count, [] if also is None else also(c, org_id, name)

        return await self.answering(
            revoke, lambda done: {"name": name, "revoked": done[0]}, answer_status
        )

    async def lookup_token(self, token: str) -> tuple[str, str, bool] | None:
        """``(organization_id, token_name, admin)`` for a bearer token, or ``None``."""
        return await self.run(lambda c: rec.lookup_token(c, token))

    # -- flows -----------------------------------------------------------------------

    async def create_flow(
        self,
        org_id: str,
        spec: FlowSpec,
        flow_id: str | None = None,
        *,
        answer_status: int | None = None,
    ) -> Flow:
        """Store a new flow whose draft is ``spec`` (409 ``CONFLICT`` if ``flow_id`` is taken).

        With ``answer_status`` (the HTTP status the flow is answered with), a waiting
        :class:`IdempotencySlot` is saved in the same transaction (:meth:`answering`).
        """
        return await self.answering(
            lambda c: rec.create_flow(c, org_id, spec, flow_id), shown_flow, answer_status
        )

    async def get_flow(self, org_id: str, flow_id: str) -> Flow:
        """The flow, or ``APIProblem`` 404 ``FLOW_NOT_FOUND``."""
        return await self.run(lambda c: rec.get_flow(c, org_id, flow_id))

    async def list_flows(
        self, org_id: str, size: int, after: int = 0, *, newest: bool = True
    ) -> tuple[list[Flow], int | None]:
        """Up to ``size`` flows after cursor ``after`` (newest first unless ``newest=False``)."""
        return await self.run(lambda c: rec.list_flows(c, org_id, size, after, newest))

    async def update_flow(
        self,
        org_id: str,
        flow_id: str,
        spec: FlowSpec,
        *,
        if_match: str | None = None,
        answer_status: int | None = None,
    ) -> Flow:
        """Replace the draft spec; a stale ``if_match`` etag gives 412 ``ETAG_MISMATCH``."""
        return await self.answering(
            lambda c: rec.update_flow(c, org_id, flow_id, spec, if_match), shown_flow, answer_status
        )

    async def delete_flow(
        self,
        org_id: str,
        flow_id: str,
        *,
        if_match: str | None = None,
        answer_status: int | None = None,
    ) -> None:
        """Delete the flow and its published versions (runs keep their frozen spec); a
        stale ``if_match`` etag gives 412 ``ETAG_MISMATCH``."""
        await self.answering(
            lambda c: rec.delete_flow(c, org_id, flow_id, if_match),
            lambda _: DeletedFlow(flow_id=flow_id),
            answer_status,
        )

    async def publish_flow(
        self, org_id: str, flow_id: str, *, answer_status: int | None = None
    ) -> int:
        """Snapshot the draft as the next immutable version and return its number."""
        return await self.answering(
            lambda c: rec.publish_flow(c, org_id, flow_id),
            lambda version: {"version": version},
            answer_status,
        )

    async def promote_flow(self, org_id: str, flow_id: str, version: int) -> Flow:
        """Make ``version`` the production version (404 ``FLOW_VERSION_NOT_FOUND``)."""
        return await self.run(lambda c: rec.promote_flow(c, org_id, flow_id, version))

    async def resolve_flow_version(
        self, org_id: str, flow_id: str, version: FlowVersion
    ) -> tuple[FlowSpec, str]:
        """The spec of ``version`` and its label (``"draft"`` or ``"3"``).

        ``"production"`` resolves to the promoted version number.
        """
        return await self.run(lambda c: rec.resolve_flow_version(c, org_id, flow_id, version))

    async def get_flow_version(self, org_id: str, flow_id: str, version: FlowVersion) -> FlowSpec:
        """The spec of ``version`` (``"draft"``, ``"production"`` or a number).

        Raises:
            APIProblem: 404 ``FLOW_NOT_FOUND`` or ``FLOW_VERSION_NOT_FOUND``.
        """
        spec, _ = await self.resolve_flow_version(org_id, flow_id, version)
        return spec

    # -- runs ------------------------------------------------------------------------

    async def create_run(
        self,
        org_id: str,
        spec: RunSpec,
        run_id: str | None = None,
        *,
        answer_status: int | None = None,
        charge: Callable[[Connection, str], None] | None = None,
    ) -> Run:
        """Store a new Pending run (409 ``CONFLICT`` if ``run_id`` is taken) and return it.

        ``answer_status`` saves a waiting :class:`IdempotencySlot`, as for :meth:`create_flow`.
        ``charge(conn, org_id)`` runs in the same transaction (what the run costs): when
        it raises, nothing is stored.
        """
        save = answer_saver(answer_status)

        def create(c: Connection) -> Run:
            made = rec.create_run(c, org_id, spec, run_id)
            if charge is not None:
                charge(c, org_id)
            save(c, shown_run(made))  # the answer, as the route shows it
            return made

        run = await self.run(create)
        log.info("run %s of %s: created, flow %s", run.run_id, org_id, spec.flow_id or "-")
        return run

    async def get_run(self, run_id: str, org_id: str) -> Run:
        """The run ``run_id`` of ``org_id``, or 404 ``RUN_NOT_FOUND``.

        Run ids are scoped to their organization: another organization may use the same id.
        """
        return await self.run(lambda c: rec.get_run(c, org_id, run_id))

    async def list_runs(
        self,
        org_id: str,
        size: int,
        after: int = 0,
        *,
        flow_id: str | None = None,
        condition: str | None = None,
        newest: bool = True,
    ) -> tuple[list[Run], int | None]:
        """Runs of ``org_id`` (optionally of one flow / in one current condition), paged.

        Newest first unless ``newest=False``.
        """
        return await self.run(
            lambda c: rec.list_runs(c, org_id, flow_id, condition, size, after, newest)
        )

    async def list_active_runs(self) -> list[Run]:
        """Every run of every organization whose condition is not terminal."""
        return await self.run(rec.list_active_runs)

    async def set_run_condition(
        self,
        key: tuple[str, str],
        condition: Condition | str,
        message: str | None = None,
        reason: str | None = None,
    ) -> Run:
        """Append a condition to the history of the run ``key`` (org id, run id); return it.

        A run already in a terminal condition (Succeeded, Failed, Error, Cancelled) is
        never changed: the call returns it as it is, so a late engine update cannot undo
        a cancel. Entering ``Cancelled`` also sets ``spec.killed_at``.
        """
        cond = Condition(condition)

        def change(c: Connection) -> Run:
            rec.change_run_condition(c, *key, cond, message, reason)
            return rec.get_run(c, *key)

        return await self.run(change)

    async def set_run_log(self, key: tuple[str, str], log: str) -> None:
        """Record where the event log of the run ``key`` lives (shown as ``status.log``)."""
        await self.run(lambda c: rec.set_run_log(c, *key, log))

    async def delete_run(
        self, org_id: str, run_id: str, *, answer_status: int | None = None
    ) -> None:
        """Delete a terminal run; a non-terminal one gives 409 ``CONFLICT``;
        ``answer_status`` as for :meth:`answering`."""
        await self.answering(
            lambda c: rec.delete_run(c, org_id, run_id),
            lambda _: DeletedRun(run_id=run_id),
            answer_status,
        )

    # -- idempotency -----------------------------------------------------------------

    async def get_idempotent(
        self, org_id: str, key: str, method: str, path: str
    ) -> tuple[str, int, bytes] | None:
        """The stored ``(body_hash, status, body)`` for an idempotency key, or ``None``."""
        return await self.run(lambda c: rec.get_idempotent(c, org_id, key, method, path))

    async def put_idempotent(
        self, org_id: str, key: str, method: str, path: str, record: tuple[str, int, bytes]
    ) -> None:
        """Remember the first answer ``(body_hash, status, body)`` for an idempotency key."""
        await self.run(lambda c: rec.put_idempotent(c, org_id, key, method, path, record))

    async def reserve_idempotent(
        self, org_id: str, key: str, method: str, path: str, record: tuple[str, int, bytes]
    ) -> bool:
        """Hold an idempotency key with the placeholder ``record`` unless it has a row
        (an answer, or another request's placeholder): whether it did."""
        return await self.run(
            lambda c: rec.reserve_idempotent(c, org_id, key, method, path, record)
        )

    async def drop_orphaned_idempotent(
        self, org_id: str, key: str, method: str, path: str, holder: bytes
    ) -> None:
        """Drop the placeholder ``holder`` (``@`` and a replica's id) put on a key, when
        that replica is gone: it died answering, and the key is free again."""
        sql = (
            "DELETE FROM idempotency WHERE org_id = ? AND key = ? AND method = ? AND path = ?"
            " AND status = ? AND body = ? AND NOT EXISTS"
            " (SELECT 1 FROM replicas WHERE replica_id = ?)"
        )
        args = (org_id, key, method, path, PENDING_ANSWER, holder, holder[1:].decode())
        await self.run(lambda c: c.execute(sql, args))

    async def forget_idempotent(self, org_id: str, key: str, method: str, path: str) -> None:
        """Drop the answer saved for an idempotency key (its request failed after all)."""
        sql = "DELETE FROM idempotency WHERE org_id = ? AND key = ? AND method = ? AND path = ?"
        await self.run(lambda c: c.execute(sql, (org_id, key, method, path)))
