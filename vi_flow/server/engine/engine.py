"""The run engine: starts, pauses, resumes, cancels and recovers runs of flows.

:class:`Engine` is what the server registers under
:data:`~vi_flow.server.state.ENGINE_KEY` (it implements the server core's
``RunStarter``: ``start`` for ``POST /v1/runs``, ``cancel`` for ``POST
/v1/runs/{id}/cancel``) and what the execution routes call. Each running run is one
asyncio task driving an :class:`~.executor.Executor`; a paused run has no task at all,
only its durable state and a timer for the pause timeout, so it survives a restart.
At start the engine closes every run a dead server left running (``Error``, reason
``ServerRestarted``, with a terminal event) and re-arms the timers of paused runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs

from ...models._base import from_wire, to_wire
from ...models.common import Condition
from ...models.events import (
    ExecutionOutcome,
    RunTrace,
    StepFailed,
    StepTrace,
    TokenUsage,
    ToolCall,
    ToolResult,
)
from ...models.execution import ExecutionJob
from ...models.runs import Run, RunSpec
from .. import _records as records
from ..background import spawn
from ..clock import now_ms
from ..db import Connection, is_disk_full, log_when_committed
from ..errors import APIProblem
from ..replicas import Replica
from ..state import ServerSettings
from ..store import AnswerSaver, Store
from . import tables
from .blocks import BlockRegistry
from .eventlog import EventLog, RunKey
from .executor import Begun, Executor, Paused, spec_of
from .request import ExecuteRequest, check_against_flow, step_id_of
from .tables import RunRow, StepRow

if TYPE_CHECKING:
    from ..validation import BlockCatalog

__all__ = ["Engine"]

log = logging.getLogger("vi_flow.server.engine")

_RESTARTED = "the server stopped during the run"
_REPLICA_LOST = (
    "the server replica running it stopped, or lost its database for longer than its lease"
    " (VI_FLOW_REPLICA_LEASE), and gave it up where it stood"
)
_FINAL_KEPT = 60.0  # seconds an outcome read at a run's end waits for its execute call
_CRASHED = "the server failed running it (an internal error: its log says why, by the run's id)"
_DISK_FULL = (
    "the server's disk is full: the run could not save its progress; free space on the"
    " server (its home, or its database's disk), then run it again"
)
_END_TRIES = 900.0  # seconds a run that crashed is tried to be ended (its database away)
_CANCEL_WAIT = 10.0


def _key(run: Run) -> RunKey:
    return run.organization_id, run.run_id


def _usage(data: Any) -> TokenUsage | None:
    return None if data is None else from_wire(data, TokenUsage)


def step_trace(step: StepRow) -> StepTrace:
    """The wire trace of one step record."""
    return StepTrace(
        step_id=step.step_id, block=step.block, status=Condition(step.status),
        started_at=step.started_at, ended_at=step.ended_at, duration_ms=step.duration_ms,
        input=step.input, output=step.output, error=step.error, usage=_usage(step.usage),
    )  # fmt: skip


def build_outcome(row: RunRow, steps: list[StepRow]) -> ExecutionOutcome:
    """The ``ExecutionOutcome`` of a run as it stands (completed, paused or failed)."""
    traces = [step_trace(s) for s in steps]
    usage = _usage(row.usage)
    if row.state == "paused" and row.pause is not None:
        calls = [from_wire(c, ToolCall) for c in row.pause["toolCalls"]]
        return ExecutionOutcome(
            execution_id=row.run_id, state="paused", step_id=row.pause["stepId"],
            tool_calls=calls, usage=usage, steps=traces, status=Condition.RUNNING,
        )  # fmt: skip
    outcome = row.outcome or {}
    status = Condition(outcome.get("status", Condition.RUNNING.value))
    state = "completed" if status == Condition.SUCCEEDED else "failed"
    if not status.terminal:
        state = "running"
    return ExecutionOutcome(
        execution_id=row.run_id, state=state, output=outcome.get("output"),
        error=outcome.get("error"), failed_step=outcome.get("failedStep"), usage=usage,
        steps=traces, status=status, error_code=outcome.get("errorCode"),
    )  # fmt: skip


def _accept_results(
    conn: Connection, key: RunKey, given: dict[str, Any], me: str
) -> tuple[bool, str | None]:
    """Record tool results for a paused run; True when they complete the pause, and the
    replica that owned the run (this replica ``me`` drives it from now on)."""
    row, run_id = tables.get_run(conn, key, lock=True), key[1]
    if row.state != "done" and row.cancel:
        raise APIProblem.conflict(f"run {run_id!r} is being cancelled; tool results are refused")
    answers = tables.get_answers(conn, key)
    paused = row.state == "paused" and row.pause is not None
    pending = [c["id"] for c in row.pause["toolCalls"]] if paused and row.pause else []
    unknown = sorted(i for i in given if i not in answers and i not in pending)
    if unknown and not paused:
        raise APIProblem.conflict(
            f"run {run_id!r} is not paused for tool results; unknown tool call id(s): "
            + ", ".join(unknown)
        )
    if unknown:
        raise APIProblem.conflict(
            f"unknown tool call id(s) for run {run_id!r}: {', '.join(unknown)}"
            f" (pending: {', '.join(pending)})"
        )
    changed = sorted(i for i in given if i in answers and answers[i] != given[i])
    if changed:
        raise APIProblem.conflict(
            f"tool call id(s) already answered with a different result: {', '.join(changed)}"
        )
    new = {i: result for i, result in given.items() if i not in answers}
    tables.put_answers(conn, key, new)
    answers.update(new)
    if not paused or row.pause is None or any(i not in answers for i in pending):
        return False, row.owner
    row.pause["results"] = [answers[i] for i in pending]
    row.state = "running"
    tables.save_run(conn, row)
    tables.set_owner(conn, key, me)
    return True, row.owner


def _claim_expiry(conn: Connection, paused: Paused, me: str) -> RunRow | None:
    """The paused run whose pause timed out, moved out of ``paused``; None when it was
    answered, cancelled or taken by another replica meanwhile."""
    row = tables.find_run(conn, paused.key, lock=True)
    pause = row.pause if row is not None else None
    if row is None or row.state != "paused" or not pause or pause["token"] != paused.token:
        return None
    if row.owner not in (None, me) or row.cancel:
        return None
    row.state = "running"
    tables.save_run(conn, row)
    return row


def _claim_cancel(conn: Connection, key: RunKey, me: str) -> str:
    """Record a cancel of the run and say who carries it out: ``done`` (nothing to do),
    ``here`` (this replica owns it), ``taken`` (this replica takes it: it is paused, or
    its replica is gone) or ``owner`` (the live replica driving it, told by a message)."""
    row = tables.find_run(conn, key, lock=True)
    if row is None or row.state == "done":
        return "done"
    tables.ask_cancel(conn, key)
    if row.owner == me:
        return "here"
    alive = (
        row.owner is not None
        and conn.execute("SELECT 1 FROM replicas WHERE replica_id = ?", (row.owner,)).fetchone()
    )
    if row.state == "paused" or not alive:
        tables.set_owner(conn, key, me)
        return "taken"
    return "owner"


def _new_row(run: Run, request: ExecuteRequest, owner: str, state: str = "pending") -> RunRow:
    return RunRow(
        run_id=run.run_id, org_id=run.organization_id, flow_id=run.spec.flow_id,
        flow_version=run.spec.flow_version, state=state, request=attrs.asdict(request),
        spec=to_wire(run.spec.flow), started_at=now_ms(), owner=owner,
    )  # fmt: skip


def _create_and_begin(
    conn: Connection,
    org: str,
    flow_id: str,
    request: ExecuteRequest,
    owner: str,
    catalog: BlockCatalog,
) -> Begun:
    """Create a run of a flow version and start it, in one transaction.

    Resolves the version, checks the request against the flow, spends a credit, stores
    the run (``Pending``, then ``Running``), its engine state and its first step
    (``Running``): what ``run_started`` and ``step_started`` will announce is stored
    before they are.

    Raises:
        APIProblem: 404 flow/version, 422 inputs/overrides, 402 no credits left.
    """
    spec, label = records.resolve_flow_version(conn, org, flow_id, request.version)
    request = check_against_flow(request, spec, catalog)
    tables.spend_credit(conn, org)
    run_id = records.new_id("run")
    # held here, in the transaction, so that it comes before the state changes logged
    # by create_run and later
    log_when_committed(log, "run %s of %s: created, flow %s", run_id, org, flow_id)
    run = records.create_run(conn, org, RunSpec(
        flow=spec, training_project=spec.training_project, flow_id=flow_id,
        flow_version=label, message=request.message, parameters=request.parameters,
    ), run_id, log=f"engine_events:{run_id}", running=True)  # fmt: skip
    row = _new_row(run, request, owner, "running")
    tables.insert_run(conn, row)
    step = None
    if spec.blocks:
        block = spec.blocks[0].block
        step = StepRow(step_id_of(spec, 0), 0, block, "Running", started_at=now_ms(), duration_ms=0)
        tables.put_step(conn, row.key, step)
    return Begun(row, step, spec)


class _RunLock:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


_BY_THE_USER = ("cancelled by the user", "UserCancelled")

#: Seconds a ``cancelOnDisconnect`` run waits for its client to resume its stream (with
#: ``Last-Event-ID``) before it is cancelled.
RESUME_GRACE = 3.0

#: A ``cancelOnDisconnect`` run whose client did not come back (QA AO: it read as the
#: user's own cancel).
_CLIENT_GONE = (
    f"cancelled: its client went away and did not resume the stream within {RESUME_GRACE:g} s",
    "ClientDisconnected",
)


class Engine:
    """Executes flows for one server.

    Args:
        store: The server's store (the engine adds its own tables).
        settings: The server's settings.
        replica: This server among those sharing the database (see
            :mod:`vi_flow.server.replicas`); None: a replica of its own, opened and
            closed with the engine.
    """

    def __init__(
        self, store: Store, settings: ServerSettings, replica: Replica | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self._own_replica = replica is None
        self.replica = replica if replica is not None else Replica(store)
        self.log = EventLog(store, max_events=settings.quotas.events_per_run)
        self.registry = BlockRegistry()
        self._session: aiohttp.ClientSession | None = None
        self.executor = Executor(store, settings, self.log, self.registry, self._http)
        self._tasks: dict[RunKey, asyncio.Task[None]] = {}
        self._cancelling: set[RunKey] = set()
        # why a run being cancelled here ends: its error message and reason (the user's
        # cancel unless said otherwise, as when the server is stopped with force)
        self._why: dict[RunKey, tuple[str, str]] = {}
        self._timers: dict[RunKey, asyncio.TimerHandle] = {}
        # cancelOnDisconnect runs whose client went away, waiting RESUME_GRACE to resume
        self._orphaned: dict[RunKey, asyncio.TimerHandle] = {}
        self._guards: dict[RunKey, int] = {}  # open cancelOnDisconnect streams per run
        self._locks: dict[RunKey, _RunLock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._finals: dict[RunKey, ExecutionOutcome] = {}  # outcomes read as runs ended
        self._cancels: set[RunKey] = set()  # cancels asked by other replicas, under way

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        """Create the tables, start the event writer and recover interrupted runs."""
        await self.store.migrate(tables.MIGRATION, tables.SCHEMA)
        for name, sql in tables.MIGRATIONS:
            await self.store.migrate(name, sql)
        if self._own_replica:
            await self.replica.open()
        replica = self.replica
        if replica.shared:
            self.log.announce = self._announce
        replica.handle("e", lambda message: self.log.heard(message[2:]))
        replica.handle("c", self._cancel_message)
        replica.handle("resync", lambda _: self.log.resync())
        replica.on_tick(self._tick)
        replica.on_lost(self._give_up)
        self.log.start()
        await self._recover()

    async def shutdown(self) -> None:
        """End live streams and stop running runs without ending them (server shutdown).

        Runs stay ``Running`` in the database; the next start marks them
        ``ServerRestarted``. Called before the task service closes, so no step sees its
        compute task die and fails the run for the wrong reason.
        """
        self.log.stop_followers()
        self._drop_timers()
        tasks = [*self._tasks.values(), *self._background]
        if self._tasks:
            log.info("stopping %d running runs; the next start ends them", len(self._tasks))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Write what the event log still queues and close outgoing connections."""
        await self.shutdown()
        await self.log.close()
        if self._own_replica:
            await self.replica.close()
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    @contextlib.asynccontextmanager
    async def _locked(self, key: RunKey) -> AsyncIterator[None]:
        """Serialize state changes of one paused run (results, cancel, timeout)."""
        entry = self._locks.setdefault(key, _RunLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[key]

    # -- starting ---------------------------------------------------------------------

    async def submit(
        self, org: str, flow_id: str, request: ExecuteRequest, save: AnswerSaver | None = None
    ) -> RunKey:
        """Start executing a flow version; return the run's ``(org, run id)``.

        ``save``: as for :meth:`outcome`, which it spares a transaction: when the run
        ends without pausing, its outcome is read and ``save(conn, outcome)`` called in
        the transaction that ends it, and :meth:`outcome` answers from memory.

        Raises:
            APIProblem: 404 flow/version, 422 inputs/overrides, 402 no credits left.
        """

        def create(conn: Connection) -> Begun:
            if save is not None:
                save.check(conn)  # an Idempotency-Key answered before: nothing is made
            begun = _create_and_begin(conn, org, flow_id, request, self.replica.id, self.registry)
            if save is not None:
                save.hold(conn, begun.row.run_id)  # a retry finds this run, makes none
            return begun

        return self._started(await self.store.run(create), save)

    async def submit_job(
        self, org: str, flow_id: str, request: ExecuteRequest, save: AnswerSaver
    ) -> ExecutionJob:
        """Start executing a flow version in the background; return its job.

        ``save(conn, job)`` runs in the transaction that creates the run (an
        ``Idempotency-Key``'s answer: the run and its answer are saved together, or neither).

        Raises:
            APIProblem: As :meth:`submit`.
        """

        def create(conn: Connection) -> tuple[Begun, ExecutionJob]:
            save.check(conn)
            begun = _create_and_begin(conn, org, flow_id, request, self.replica.id, self.registry)
            job = ExecutionJob(execution_id=begun.row.run_id, status=Condition.RUNNING)
            save(conn, job)
            return begun, job

        begun, job = await self.store.run(create)
        self._started(begun, None)
        return job

    def _started(self, begun: Begun, save: AnswerSaver | None) -> RunKey:
        """Open the new run's channel and launch it; see :meth:`submit` for ``save``."""
        key = begun.row.key
        channel = self.log.new_channel(key)

        def final(conn: Connection, row: RunRow, save: AnswerSaver) -> Callable[[], None]:
            if channel.settled:  # it paused: that answered the call, the answer is saved
                return lambda: None
            outcome = build_outcome(row, tables.get_steps(conn, key))  # row: as just saved
            save(conn, outcome)
            return functools.partial(self._finals.__setitem__, key, outcome)  # once committed

        if save is not None and not save.hold_only:
            self.executor.on_finish[key] = functools.partial(final, save=save)
        self._launch(key, begun)
        return key

    def charge(self, conn: Connection, org_id: str) -> None:
        """One credit of ``org_id``, taken in the transaction that stores a run of
        ``POST /v1/runs`` (the ``RunStarter`` protocol): a 402 stores nothing, so the
        same request (its chosen ``runId`` too) can be sent again once credits are added.

        Raises:
            APIProblem: 402 ``INSUFFICIENT_CREDITS`` when the credits are used up.
        """
        tables.spend_credit(conn, org_id)

    async def start(self, run: Run) -> None:
        """Execute a run stored (and paid for) by ``POST /v1/runs`` (``RunStarter``)."""
        request = ExecuteRequest(message=run.spec.message, parameters=dict(run.spec.parameters))
        await self._insert_and_launch(run, request)

    async def _insert_and_launch(self, run: Run, request: ExecuteRequest) -> None:
        row = _new_row(run, request, self.replica.id)
        await self.store.run(lambda c: tables.insert_run(c, row))
        await self.store.set_run_log(row.key, f"engine_events:{run.run_id}")
        self._launch(row.key)

    def _launch(self, key: RunKey, begun: Begun | None = None) -> None:
        task = asyncio.get_running_loop().create_task(self._drive(key, begun))
        self._tasks[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(key) is done:
                del self._tasks[key]

        task.add_done_callback(forget)

    async def _drive(self, key: RunKey, begun: Begun | None) -> None:
        if begun is not None:  # nobody waits for the outcome a few seconds on: forget it
            asyncio.get_running_loop().call_later(_FINAL_KEPT, self._finals.pop, key, None)
        try:
            paused = await self.executor.drive(key, begun)
        except asyncio.CancelledError:
            if key not in self._cancelling:
                raise  # server shutdown: leave the run for recovery
            uncancel = getattr(asyncio.current_task(), "uncancel", None)
            if uncancel is not None:  # Python 3.11+: let later awaits run normally
                uncancel()
            await self._stop_compute(key)
            await self._end_surely(key, Condition.CANCELLED, *self._why.get(key, _BY_THE_USER))
        except Exception as exc:
            if is_disk_full(exc):  # an outage, not a fault of the engine's
                log.error("run %s of %s: the server's disk is full; it ends", key[1], key[0])
                await self._end_surely(key, Condition.ERROR, _DISK_FULL, "DiskFull")
                return
            log.exception("run %s of %s crashed", key[1], key[0])
            # the exception's words stay in the log: they may name the database's tables,
            # paths on the server or what a privilege refused
            await self._end_surely(key, Condition.ERROR, _CRASHED, "EngineError")
        else:
            if paused is not None:
                self._arm(paused)
        finally:
            self._cancelling.discard(key)

    async def _stop_compute(self, key: RunKey) -> None:
        if self.executor.tasks is None:
            return
        try:
            await self.executor.tasks.cancel_run(key)
        except Exception:  # the run ends Cancelled either way
            log.exception("could not cancel the tasks of run %s of %s", key[1], key[0])

    async def _end_surely(self, key: RunKey, status: Condition, message: str, reason: str) -> None:
        """:meth:`_end`, tried again while it fails: a run crashes when its database went
        away (a PostgreSQL restart), and ending it then fails the same way; left so, it
        stayed Running, its streams waited for ever and a stop was refused. Tried for
        :data:`_END_TRIES` s at most (a shutdown cancels it: recovery ends the run)."""
        delay, deadline = 0.5, asyncio.get_running_loop().time() + _END_TRIES
        while True:
            try:
                await self._end(key, status, message, reason)
                return
            except Exception:
                if asyncio.get_running_loop().time() >= deadline:
                    log.exception("run %s of %s could not be ended", key[1], key[0])
                    return
                log.warning(
                    "run %s of %s could not be ended yet; trying again in %.1f s",
                    key[1], key[0], delay, exc_info=True,
                )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _end(self, key: RunKey, status: Condition, message: str, reason: str) -> None:
        row = await self.store.run(lambda c: tables.get_run(c, key))
        if row.state == "done":  # interrupted while finishing: finish the finishing
            if not row.closed:
                await self._close_done(row)
            return
        failed = row.pause["stepId"] if row.pause else None
        await self.executor.finish(row, status, error=message, failed_step=failed, reason=reason)

    # -- cancel and timeouts ----------------------------------------------------------

    async def cancel(self, run: Run, why: tuple[str, str] | None = None) -> None:
        """Stop a run (the ``RunStarter`` protocol); it ends ``Cancelled``, with ``why``
        (its error message and reason) when given, else as cancelled by the user."""
        await self._cancel_for(_key(run), why)

    async def _cancel_for(self, key: RunKey, why: tuple[str, str] | None) -> None:
        if why is None:
            await self.cancel_run(key)
            return
        self._why[key] = why
        try:
            await self.cancel_run(key)
        finally:
            self._why.pop(key, None)

    async def cancel_run(self, key: RunKey) -> None:
        """Stop a run and append its terminal ``flow_completed`` (Cancelled).

        A run driven by another replica is cancelled there (the cancel is stored, and
        that replica told); this waits until its terminal event is stored, a while at most.
        """
        if key not in self._tasks:
            where = await self.store.run(lambda c: _claim_cancel(c, key, self.replica.id))
            if where == "taken":  # paused, or its replica is gone: this one ends it
                await self.log.refresh(key)
            elif where == "owner":
                await self._await_end(key, _CANCEL_WAIT + 2 * self.replica.lease)
                return
        await self._cancel_here(key)

    async def _await_end(self, key: RunKey, seconds: float) -> None:
        channel = await self.log.channel(key)
        deadline = asyncio.get_running_loop().time() + seconds
        while not channel.finished and not self.log.stopping:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                log.warning("run %s of %s: its replica has not ended it yet", key[1], key[0])
                return
            await self.log.wait(channel, min(left, 1.0))

    async def _cancel_here(self, key: RunKey) -> None:
        for _ in range(3):  # a resume racing the cancel starts a new task: stop that too
            async with self._locked(key):
                task = self._tasks.get(key)
                if task is None or task.done():
                    await self._cancel_idle(key)
                    return
                self._cancelling.add(key)
                task.cancel()
            await asyncio.wait({task}, timeout=_CANCEL_WAIT)

    async def _cancel_idle(self, key: RunKey) -> None:
        self._disarm(key)
        row = await self.store.run(lambda c: tables.find_run(c, key))
        if row is not None and row.state != "done":
            error, reason = self._why.get(key, _BY_THE_USER)
            await self.executor.finish(
                row, Condition.CANCELLED, error=error,
                failed_step=(row.pause or {}).get("stepId"), reason=reason,
            )  # fmt: skip

    def guard(self, key: RunKey) -> None:
        """A ``cancelOnDisconnect`` stream of ``key`` opened (or resumed one)."""
        self._guards[key] = self._guards.get(key, 0) + 1
        if (handle := self._orphaned.pop(key, None)) is not None:
            handle.cancel()

    def guarded(self, key: RunKey) -> bool:
        """Whether ``key`` has a ``cancelOnDisconnect`` stream, or is waiting for its
        client to resume one (a resumed stream then carries the flag on)."""
        return key in self._guards or key in self._orphaned

    def unguard(self, key: RunKey, *, gone: bool) -> None:
        """A ``cancelOnDisconnect`` stream of ``key`` ended; ``gone``: its client went
        away. When it was the run's last such stream, the run is cancelled unless its
        client resumes the stream within :data:`RESUME_GRACE` seconds: a dropped
        connection is not a client gone (the SDK reconnects at once, and its new stream
        may even come before this one is found dead)."""
        left = self._guards.get(key, 0) - 1
        if left > 0:
            self._guards[key] = left
            return
        self._guards.pop(key, None)
        if gone and key not in self._orphaned:
            loop = asyncio.get_running_loop()
            self._orphaned[key] = loop.call_later(RESUME_GRACE, self._orphan_ends, key)

    def _drop_timers(self) -> None:
        """Cancel the pause timeouts and the resume graces: nothing of them fires."""
        for handle in [*self._timers.values(), *self._orphaned.values()]:
            handle.cancel()
        self._timers.clear()
        self._orphaned.clear()

    def _orphan_ends(self, key: RunKey) -> None:
        if self._orphaned.pop(key, None) is not None:
            spawn(self._background, self._cancel_for(key, _CLIENT_GONE))

    # -- replicas ---------------------------------------------------------------------

    def _announce(self, conn: Connection, notes: list[list[Any]]) -> None:
        self.replica.send_many(conn, "e", notes)

    def _cancel_message(self, message: list[Any]) -> None:
        """Another replica stored a cancel of a run this one drives: carry it out."""
        key = (str(message[2]), str(message[3]))
        if key in self._tasks:
            self._cancel_once(key)

    def _cancel_once(self, key: RunKey) -> None:
        if key in self._cancelling or key in self._cancels:
            return
        self._cancels.add(key)

        async def cancel() -> None:
            try:
                await self.cancel_run(key)
            finally:
                self._cancels.discard(key)

        spawn(self._background, cancel())

    async def _tick(self) -> None:
        """Every heartbeat: take over the runs of replicas that died, and carry out
        cancels whose message was missed."""
        if self.log.stopping:  # shutting down: another replica (or the next start) takes them
            return
        me = self.replica.id

        def read(conn: Connection) -> tuple[list[RunRow], list[RunKey]]:
            return tables.claim_orphans(conn, me), tables.cancels_for(conn, me)

        orphans, cancels = await self.store.run(read)
        for row in orphans:
            log.info("run %s of %s: taken over from a replica that stopped", row.run_id, row.org_id)
            with contextlib.suppress(Exception):
                await self._recover_one(row, lost=True)
        for key in cancels:
            self._cancel_once(key)

    async def _give_up(self) -> None:
        """This replica lost its lease: stop driving its runs without ending them (the
        replica that takes them over ends them) and drop what it had not written."""
        keys = {*self._tasks, *self._timers}
        self._drop_timers()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.log.drop(keys)
        for key in keys:
            self._finals.pop(key, None)

    def _arm(self, paused: Paused) -> None:
        self._disarm(paused.key)
        delay = max(0.0, (paused.deadline - now_ms()) / 1000)
        loop = asyncio.get_running_loop()
        self._timers[paused.key] = loop.call_later(delay, self._spawn_expire, paused)

    def _disarm(self, key: RunKey) -> None:
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _spawn_expire(self, paused: Paused) -> None:
        self._timers.pop(paused.key, None)
        spawn(self._background, self._expire(paused))

    async def _expire(self, paused: Paused) -> None:
        async with self._locked(paused.key):
            me = self.replica.id
            row = await self.store.run(lambda c: _claim_expiry(c, paused, me))
            pause = row.pause if row is not None else None
            if row is None or pause is None:
                return
            message = (
                f"no tool results for step {pause['stepId']!r} within {pause['timeout']:g}s"
                " (pause timeout)"
            )
            await self.log.append(
                StepFailed, row.key, step_id=pause["stepId"], block=pause["block"],
                error=message, code="TOOL_RESULTS_TIMEOUT",
            )  # fmt: skip
            await self.executor.finish(
                row, Condition.ERROR, error=message, failed_step=pause["stepId"],
                reason="ToolResultsTimeout", code="TOOL_RESULTS_TIMEOUT",
            )  # fmt: skip

    # -- tool results and outcomes ----------------------------------------------------

    async def tool_results(
        self, org: str, run_id: str, results: list[ToolResult]
    ) -> tuple[list[str], int]:
        """Accept the client's tool results; resume the run once every call is answered.

        Returns:
            The accepted call ids and the settle point to wait after (see :meth:`outcome`).

        Raises:
            APIProblem: 404 unknown run; 409 unknown call ids, run not paused, or a
                different result for a call already answered.
        """
        given = {r.tool_call_id: to_wire(r) for r in results}
        key = (org, run_id)
        async with self._locked(key):
            await self.store.run(lambda c: tables.get_run(c, key))
            channel = await self.log.channel(key)
            if self.replica.shared:  # the settle point to wait after is the stored one
                await self.log.recheck(channel)
            settled = channel.settled
            me = self.replica.id
            complete, owner = await self.store.run(lambda c: _accept_results(c, key, given, me))
            if complete:
                self._disarm(key)
                if owner != me:  # paused on another replica: this one drives it on
                    await self.log.refresh(key)
                self._launch(key)
        return list(given), settled

    async def outcome(
        self, key: RunKey, after: int = 0, save: AnswerSaver | None = None
    ) -> ExecutionOutcome:
        """Wait until the run pauses or ends after event ``after``; return its outcome.

        A run already paused (with no resume under way) or ended answers at once.
        ``save(conn, outcome)`` runs in the transaction that reads the outcome (the
        execute route saves its idempotent answer there).
        """
        channel = await self.log.channel(key)
        if after and channel.settled == after and not channel.finished:
            row, steps = await self._snapshot(key)
            if row.state == "paused":  # nobody resumed it: answer the pause as it is
                return build_outcome(row, steps)
        recheck = 2.0 if self.replica.shared else None
        while channel.settled <= after and not channel.finished and not self.log.stopping:
            await self.log.wait(channel, recheck)
        if channel.settled <= after and not channel.finished:  # the server is stopping
            # Not the run as it stands ("running"): a retry of the same request with its
            # Idempotency-Key then replayed that for good. Nothing is saved; the run is
            # ended by the next start (as after a crash), which answers the retry.
            raise APIProblem(
                503,
                "SERVER_STOPPING",
                f"the server is stopping before run {key[1]} paused or ended; retry with the"
                " same Idempotency-Key to get its outcome from the next server",
            )
        final = self._finals.pop(key, None) if channel.finished else None
        if final is not None and not after:  # read (and saved) when the run ended
            return final

        def read(conn: Connection) -> ExecutionOutcome:
            outcome = build_outcome(tables.get_run(conn, key), tables.get_steps(conn, key))
            if save is not None:
                save(conn, outcome)
            return outcome

        return await self.store.run(read)

    async def _snapshot(self, key: RunKey) -> tuple[RunRow, list[StepRow]]:
        def read(conn: Connection) -> tuple[RunRow, list[StepRow]]:
            return tables.get_run(conn, key), tables.get_steps(conn, key)

        return await self.store.run(read)

    async def forget(self, key: RunKey) -> None:
        """Delete a (deleted, finished) run's engine state and event log.

        Its events still queued (kept through a database outage) are dropped first: a
        later write would store them after the delete, for a run that is gone.
        """
        self.log.drop({key})
        await self.store.run(lambda c: tables.delete_run(c, key))

    async def answered_calls(self, key: RunKey) -> list[str]:
        """The ids of the run's tool calls answered so far (a pause may wait for others)."""
        return sorted(await self.store.run(lambda c: tables.get_answers(c, key)))

    async def has_run(self, key: RunKey) -> bool:
        """Whether the engine has state (and so an event log) for ``run_id``."""
        return await self.store.run(lambda c: tables.find_run(c, key)) is not None

    # -- traces -----------------------------------------------------------------------

    async def trace(self, org: str, run_id: str) -> RunTrace:
        """The run's trace: status, per-step timing and tokens (snapshots when traced)."""
        run, key = await self.store.get_run(run_id, org), (org, run_id)

        def read(conn: Connection) -> tuple[RunRow | None, list[StepRow]]:
            return tables.find_run(conn, key), tables.get_steps(conn, key)

        row, steps = await self.store.run(read)
        duration = None if row is None else (row.ended_at or now_ms()) - row.started_at
        return RunTrace(
            execution_id=run_id, status=run.status.condition or Condition.PENDING,
            steps=[step_trace(s) for s in steps], usage=_usage(row.usage if row else None),
            duration_ms=duration,
        )  # fmt: skip

    async def step_trace(self, org: str, run_id: str, step_id: str) -> StepTrace:
        """One step's trace; 404 when the run has no such step (yet)."""
        trace = await self.trace(org, run_id)
        for step in trace.steps:
            if step.step_id == step_id:
                return step
        raise APIProblem.not_found("NOT_FOUND", f"run {run_id!r} step", step_id)

    # -- recovery ---------------------------------------------------------------------

    async def _recover(self) -> None:
        """Take over the open runs no live replica owns (on SQLite: every one, since the
        home's lock says the last server is gone)."""
        me = self.replica.id
        rows = await self.store.run(lambda c: tables.claim_orphans(c, me))
        if rows:
            log.info("recovering %d runs left open by a server that stopped", len(rows))
        for row in rows:
            with contextlib.suppress(Exception):
                await self._recover_one(row)
        # Runs stored by POST /v1/runs whose engine state was never written: the server
        # stopped between the two. With other replicas alive, only those older than a
        # lease (one being started now by another replica is not an orphan).
        others = len(await self.replica.names()) > 1
        started_before = now_ms() - int(self.replica.lease * 1000) if others else None
        known = await self.store.run(_open_keys)
        for run in await self.store.list_active_runs():
            if _key(run) in known:
                continue
            if started_before is not None and run.metadata.time_created > started_before:
                continue
            await self.store.set_run_condition(
                _key(run), Condition.ERROR, _RESTARTED, "ServerRestarted"
            )

    async def _close_done(self, row: RunRow) -> None:
        outcome = row.outcome or {}
        status = Condition(outcome.get("status", "Error"))
        await self.store.set_run_condition(row.key, status, outcome.get("error"))
        await self.executor.close(row)

    async def _recover_one(self, row: RunRow, *, lost: bool = False) -> None:
        """End or re-arm one open run this replica just took: at its start (the server
        that ran it stopped) or, ``lost``, from a replica that died meanwhile."""
        await self.log.refresh(row.key)  # what this replica knew of it may be behind
        if row.state != "done" and row.cancel:
            log.info("run %s was being cancelled; ending it Cancelled", row.run_id)
            await self.executor.finish(
                row, Condition.CANCELLED, error="cancelled by the user",
                failed_step=(row.pause or {}).get("stepId"), reason="UserCancelled",
            )  # fmt: skip
            return
        if row.state == "paused" and row.pause is not None:
            log.info("run %s is still paused; its pause timeout is armed again", row.run_id)
            self._arm(Paused(row.key, row.pause["token"], int(row.pause["deadline"])))
            return
        if row.state == "done":
            log.info("run %s had finished when the server stopped; closing it", row.run_id)
            await self._close_done(row)
            return
        log.info("run %s was %s when its server stopped; marking it Error", row.run_id, row.state)
        spec = spec_of(row)
        started = row.state == "running" and row.step_index < len(spec.blocks)
        failed = step_id_of(spec, row.step_index) if started else None
        message, reason = (
            (_REPLICA_LOST, "ReplicaLost") if lost else (_RESTARTED, "ServerRestarted")
        )
        await self.executor.finish(
            row, Condition.ERROR, error=message, failed_step=failed, reason=reason
        )


def _open_keys(conn: Connection) -> set[RunKey]:
    rows = conn.execute("SELECT org_id, run_id FROM engine_runs WHERE closed = 0").fetchall()
    return {(r[0], r[1]) for r in rows}
