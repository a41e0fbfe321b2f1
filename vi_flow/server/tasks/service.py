"""The server's task service: the task life cycle over one provider, and the parts it holds.

:class:`TaskService` is what the ``/v1/tasks`` routes, the SSH server and the flow
engine's ``task`` block use. It validates a :class:`~vi_flow.models.tasks.TaskConfig`,
resolves it with the :class:`~vi_flow.server.providers.base.ComputeProvider` (instance,
GPUs, paths), stores the task in SQLite (its own tables, added with ``store.migrate``),
queues it on the provider and records every :class:`TaskUpdate` the provider reports.
Waiters (``wait``, ``follow``) are woken on each change. Registered on the application
under :data:`TASKS_KEY`. This module owns the life cycle (start, submit, updates,
cancel, wait, reservation owners); the service holds its other parts, each built over
the same :class:`~.records.TaskRecords`: ``records`` (tables, reading tasks),
``volumes`` (:mod:`.volumes`), ``ssh`` (:mod:`.ssh`: keys and sessions) and ``outputs``
(:mod:`.outputs`: logs and output files); :mod:`.launch` has the pure steps of a launch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import orjson
from aiohttp import web

from ...models._base import from_wire, to_wire
from ...models.common import Condition
from ...models.tasks import Reservation, Task, TaskConfig, TaskOutputFile, TaskStatus
from ..background import spawn
from ..clock import now_ms
from ..db import Connection, Row
from ..errors import APIProblem
from ..providers.base import (
    ClusterPoller,
    ComputeProvider,
    LaunchSpec,
    Mount,
    Placement,
    ProviderError,
    RunningTask,
    TaskUpdate,
    problem_for,
)
from ..quotas import Quotas
from ..replicas import Replica
from ..store import Store, answer_saver, new_id
from .launch import build_spec, check_config, prepare_task_dir, task_env
from .logtimes import SCHEMA_LOG_TIMES, LogTimes
from .outputs import TaskOutputs
from .records import SCHEMA, SCHEMA_EXITS, TaskRecords, to_json
from .ssh import SSHAccess
from .volumes import Volumes, missing_volumes, mount_rows, refuse_attached_block_volumes

__all__ = ["DEFAULT_GRACE", "MIGRATIONS", "TASKS_KEY", "TaskService"]

DEFAULT_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when a task is cancelled."""
ALLOW_UNSANDBOXED = "VI_FLOW_ALLOW_UNSANDBOXED"
"""Set to ``1`` to run tasks of several organizations without a sandbox (documented)."""

log = logging.getLogger("vi_flow.server.tasks")

MIGRATIONS = (
    ("tasks-1", SCHEMA),
    ("tasks-2-exits", SCHEMA_EXITS),
    ("tasks-3-log-times", SCHEMA_LOG_TIMES),
    # Replicas: the replica whose provider runs the task (see vi_flow.server.replicas).
    ("tasks-4-replicas", "ALTER TABLE tasks ADD COLUMN replica TEXT;"),
    # The name of the replica on whose host the task's files are: the driver (`replica`)
    # changes when a replica takes over a dead one's tasks; the files stay where they are.
    ("tasks-5-files-on", "ALTER TABLE tasks ADD COLUMN files_on TEXT;"),
    # The name of the API key that registered an SSH key: revoking it deletes the key.
    ("tasks-6-ssh-key-added-by", "ALTER TABLE ssh_keys ADD COLUMN added_by TEXT;"),
    # The replica whose provider holds a reservation (the local provider's are per host).
    ("tasks-7-reservation-held-on", "ALTER TABLE reservation_orgs ADD COLUMN held_on TEXT;"),
    # The first release stored a signal's end as a negative exit code (-15, -9) and
    # ended by a signal nobody sent as NonZeroExit: as this one does, the exit code is
    # none, ``signal`` names it, and such an end is Killed (QA AE).
    (
        "tasks-8-first-release-signals",
        "UPDATE tasks SET signal = -exit_code, exit_code = NULL,"
        " reason = CASE WHEN reason = 'NonZeroExit' THEN 'Killed' ELSE reason END"
        " WHERE exit_code < 0 AND signal IS NULL;",
    ),
)
"""The task feature's tables, applied once each, in order, when the service starts."""


class TaskService:
    """Task records and their life cycle over one compute provider.

    Args:
        store: The server's store (this service adds its own tables).
        provider: The compute provider.
        quotas: The per-organization quotas (the defaults when omitted).
        replica: This server among the replicas of its database: a task belongs to the
            replica whose provider runs it; the others pass its cancel on and hear of its
            changes (see :mod:`vi_flow.server.replicas`). None: the only server.

    Attributes:
        reservations_lock: Held while a reservation is checked against the quotas and made.
        records: Reading tasks, and the events that wake their waiters.
        volumes: Volumes and mounting them into tasks.
        ssh: SSH keys, and what an SSH login maps to.
        outputs: Task logs and output files.
        log_times: When each part of the logs was written (``--since``).
    """

    def __init__(
        self,
        store: Store,
        provider: ComputeProvider,
        quotas: Quotas | None = None,
        replica: Replica | None = None,
    ) -> None:
        self.store = store
        self.replica = replica if replica is not None else Replica(store)
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._poller = False  # this replica polls the cluster for every replica
        self._lost_lease = False  # since: look for tasks others ended that still run here
        self._others_said = False  # looked for another provider's tasks, to warn of them
        self._sweep: asyncio.Task[None] | None = None
        self.provider = provider
        self.quotas = quotas or Quotas()
        self.reservations_lock = asyncio.Lock()
        self.records = TaskRecords(store, provider)
        self._per_host = self.replica.shared and not isinstance(provider, ClusterPoller)
        """Whether each replica has tasks, files and reservations of its own host (the
        local provider, with replicas), rather than one cluster's that all share."""
        if self._per_host:
            self.records.files_elsewhere = self._files_elsewhere
        self.volumes = Volumes(self.records)
        self.ssh = SSHAccess(self.records, self.replica)
        self.log_times = LogTimes(self.records)
        self.outputs = TaskOutputs(self.records, self.log_times)

    @property
    def ssh_host(self) -> str | None:
        """Where the SSH server listens (``None`` until it does)."""
        address = self.records.ssh_address
        return None if address is None else address.host

    @property
    def ssh_port(self) -> int | None:
        """The SSH server's port (``None`` until it listens)."""
        address = self.records.ssh_address
        return None if address is None else address.port

    # -- reading (the flow engine's task block and the routes use these) -----------------

    async def get(self, task_id: str, org_id: str | None = None) -> Task:
        """The task ``task_id`` (of ``org_id`` when given); see :meth:`TaskRecords.get`."""
        return await self.records.get(task_id, org_id)

    def follow(self, task_id: str) -> AsyncIterator[tuple[str, str]]:
        """``(stream, line)`` until the task ended; see :meth:`TaskOutputs.follow`."""
        return self.outputs.follow(task_id)

    def _files_elsewhere(self, row: Row) -> bool:
        """Whether the files of the task ``row`` are on another replica's host (with
        replicas and the local provider; :meth:`elsewhere` says which and whether it runs)."""
        if row["files_on"] is None:  # recorded before files_on was: its driver's host
            return bool(row["replica"] != self.replica.id)
        return bool(row["files_on"] != self.replica.name)

    async def elsewhere(self, task_id: str, org_id: str) -> tuple[str, bool] | None:
        """``(name, live)`` of the replica on whose host the files of this task of
        ``org_id`` are, when that is another one (the local provider, with replicas),
        else None. ``live``: whether a replica of that name runs now."""
        if not self._per_host:
            return None  # one server, or files on storage every replica shares
        me, name = self.replica.id, self.replica.name

        def owner(c: Connection) -> tuple[str, bool] | None:
            row = c.execute(
                "SELECT t.files_on, t.replica, r.name FROM tasks t"
                " LEFT JOIN replicas r ON r.replica_id = t.replica"
                " WHERE t.task_id = ? AND t.org_id = ?",
                (task_id, org_id),
            ).fetchone()
            if row is None:
                return None  # no such task: the handler answers 404
            if row[0] is None:  # recorded before files_on was: its driver's host
                return None if row[1] == me or row[2] is None else (str(row[2]), True)
            if row[0] == name:
                return None  # here, even when another replica drove it while this one was away
            live = c.execute("SELECT 1 FROM replicas WHERE name = ?", (row[0],)).fetchone()
            return str(row[0]), live is not None

        return await self.store.run(owner)

    async def output_files(self, task_id: str) -> list[TaskOutputFile]:
        """Files the task wrote to its output directory."""
        return await self.outputs.output_files(task_id)

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Create the tables, start the provider and reconcile tasks left from before."""
        for name, sql in MIGRATIONS:
            await self.store.migrate(name, sql)
        await self.provider.start(self._record_update)
        self.replica.handle("t", self._heard)
        self.replica.handle("tc", self._cancel_message)
        self.replica.on_tick(self._take_over)
        if self._per_host:
            self.replica.on_lost(self._lease_lost)
            self.replica.on_tick(self._stop_disowned)
        await self._take_over()
        if self.replica.shared and isinstance(self.provider, ClusterPoller):
            self.provider.poll_here(False)  # until this replica holds the cluster's lock
            self.replica.handle("tp", lambda _: self._adopt_soon())
            self.replica.hold(f"poll {self.provider.cluster}", self._polling)
        self.log_times.start()
        self._sweep = spawn(self._background, self._remove_deleted_volumes())

    async def _remove_deleted_volumes(self) -> None:
        """What deletes of volumes left before the server stopped (see
        :meth:`Volumes.remove_deleted`), in the background: it may be much."""
        try:
            await self.volumes.remove_deleted()
        except Exception:  # a locked database, a full disk: the next sweep tries again
            log.exception("the data of deleted volumes could not be removed")

    def _polling(self, held: bool) -> None:
        """This replica became (or stopped being) the one that polls the cluster."""
        assert isinstance(self.provider, ClusterPoller)
        self._poller = held
        self.provider.poll_here(held)
        if held:
            self._adopt_soon()

    def _adopt_soon(self) -> None:
        if self._poller and not self._closed:
            spawn(self._background, self._adopt())

    async def _adopt(self) -> None:
        """As the replica that polls the cluster, watch every job on it that another
        replica submitted (their tasks become this replica's)."""
        me, provider = self.replica.id, self.provider.name
        rows = await self.store.run(
            lambda c: c.execute(
                "UPDATE tasks SET replica = ? WHERE provider = ? AND provider_id IS NOT NULL"
                " AND status IN ('pending', 'running') AND (replica IS NULL OR replica != ?)"
                " RETURNING *",
                (me, provider, me),
            ).fetchall()
        )
        if rows:
            log.info("watching %d tasks submitted by other replicas", len(rows))
            await self.provider.recover([await self._running_task(row) for row in rows])

    async def _lease_lost(self) -> None:
        self._lost_lease = True

    async def _stop_disowned(self) -> None:
        """After this replica lost its lease (stalled past it: a paused VM, SIGSTOP), stop
        the processes it still runs of tasks that another replica meanwhile recorded as
        ended: they would run on with no record, holding CPUs and GPUs the records show
        free (found by QA). Its tasks no other replica ended it took back at its rejoin."""
        if not self._lost_lease or self._closed:
            return
        here = self.provider.running_here()
        if here:
            marks = ", ".join("?" * len(here))
            rows = await self.store.run(
                lambda c: c.execute(
                    f"SELECT task_id, status FROM tasks WHERE task_id IN ({marks})"
                    " AND status NOT IN ('pending', 'running')",
                    here,
                ).fetchall()
            )
            for row in rows:
                log.warning(
                    "task %s: recorded %s by another replica while this one had lost its "
                    "lease; stopping its processes here",
                    row["task_id"], row["status"],
                )  # fmt: skip
                # each stop waits out its grace: not in the heartbeat's turn
                spawn(self._background, self.provider.cancel(row["task_id"], DEFAULT_GRACE))
        self._lost_lease = False

    async def _take_over(self) -> None:
        """Reconcile the pending and running tasks of servers that stopped (at start, and
        with replicas at every heartbeat: those of a replica that died)."""
        if self._closed:
            return
        if self._poller:
            await self._adopt()
        me = self.replica.id
        # A local task's process and files are on the host of the replica it was made on:
        # while a replica of that name lives (one that lost its lease comes back under a
        # new id), it alone takes the task over; another would fail a live task.
        mine = (
            "" if isinstance(self.provider, ClusterPoller)
            else " AND (files_on IS NULL OR files_on = ? OR files_on NOT IN (SELECT name FROM replicas))"
        )  # fmt: skip
        here = self.provider.name
        params = (
            (me, here)
            if isinstance(self.provider, ClusterPoller)
            else (me, here, self.replica.name)
        )
        # Only this provider's tasks: a home served with --provider slurm whose server died
        # was taken by the background server a plain command starts (the local provider),
        # which failed the Slurm tasks as ended with it and ran a pending one on the host,
        # while Slurm ran them all (QA AU). Another provider's tasks are left for it.
        rows = await self.store.run(
            lambda c: c.execute(
                "UPDATE tasks SET replica = ? WHERE status IN ('pending', 'running') AND"
                " provider = ? AND"
                " (replica IS NULL OR replica NOT IN (SELECT replica_id FROM replicas))"
                f"{mine} RETURNING *",
                params,
            ).fetchall()
        )
        await self._say_others_wait()
        if not rows:
            return
        rows.sort(key=lambda row: row["seq"])
        # A task block's task whose run ended meanwhile (the engine ends the runs a stopped
        # server left open before this runs) has no one to use it: it never starts, or
        # it is stopped once its provider has it back.
        ownerless = await self.store.run(lambda c: _of_ended_runs(c, rows))
        unstarted = {r["task_id"] for r in rows if r["task_id"] in ownerless and _unsent(r)}
        if unstarted:
            abandoned = [row for row in rows if row["task_id"] in unstarted]
            await self.provider.abandon([await self._running_task(row) for row in abandoned])
        for task_id in sorted(unstarted):
            await self._record_update(
                TaskUpdate(
                    task_id, TaskStatus.FAILED, message=_RUN_ENDED, reason="ServerRestarted",
                    time=now_ms(),
                )
            )  # fmt: skip
        rows = [row for row in rows if row["task_id"] not in unstarted]
        if self._per_host:
            rows = await self._fail_queued_elsewhere(rows)
        if not rows:
            return
        recovered = [await self._running_task(row) for row in rows]
        log.info("recovering %d tasks left pending or running", len(recovered))
        await self.provider.recover(recovered)
        for task_id in sorted(ownerless - unstarted):
            spawn(self._background, self.cancel(task_id))

    async def _say_others_wait(self) -> None:
        """Warn of pending or running tasks another provider started: this server leaves
        them as they are. Looked at once, at the first take-over (with replicas the
        take-over runs at every heartbeat; no task of another provider is made later)."""
        if self._others_said:
            return
        self._others_said = True
        here = self.provider.name
        rows = await self.store.run(
            lambda c: c.execute(
                "SELECT provider, COUNT(*) AS n FROM tasks WHERE status IN ('pending', 'running')"
                " AND provider != ? GROUP BY provider ORDER BY provider",
                (here,),
            ).fetchall()
        )
        for row in rows:
            log.warning(
                "%d tasks started by the %s provider are left as they are: this server runs"
                " the %s provider (serve the home with --provider %s to follow them)",
                row["n"], row["provider"], here, row["provider"],
            )  # fmt: skip

    async def _fail_queued_elsewhere(self, rows: list[Row]) -> list[Row]:
        """Of ``rows`` (local tasks taken over), fail those that another replica, which
        has stopped, had queued: their workspace and volumes are on its host, so they
        cannot start here (a volume's data would be missing, the task's files and logs
        where no one looks). The rest, to recover."""
        here = self.replica.name
        queued = [r for r in rows if _unsent(r) and r["files_on"] not in (None, here)]
        for row in queued:
            message = (
                f"the replica {row['files_on']!r}, on whose host it was queued, stopped before"
                " starting it; submit it again"
            )
            update = TaskUpdate(
                row["task_id"], TaskStatus.FAILED, message=message, reason="ReplicaLost",
                time=now_ms(),
            )  # fmt: skip
            await self._record_update(update)
        failed = {row["task_id"] for row in queued}
        return [row for row in rows if row["task_id"] not in failed]

    def _heard(self, message: list[Any]) -> None:
        """Another replica recorded a change of these tasks: wake their waiters here."""
        for task_id in message[2:]:
            self.records.notify(str(task_id))

    def _cancel_message(self, message: list[Any]) -> None:
        task_id, grace = str(message[2]), float(message[3])
        if message[4] == self.replica.id:
            spawn(self._background, self.cancel(task_id, grace))

    async def close(self) -> None:
        """Stop the provider (a local provider stops its running tasks)."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweep
        await self.log_times.close()
        await self.provider.close()

    async def _running_task(self, row: Row) -> RunningTask:
        mounts = await self.volumes.mounts(row["task_id"])
        return RunningTask(
            spec=self._spec(row, mounts),
            status=TaskStatus(row["status"]),
            provider_id=row["provider_id"],
        )

    def _spec(self, row: Row, mounts: list[Mount]) -> LaunchSpec:
        config = from_wire(orjson.loads(row["config"]), TaskConfig)
        placement = Placement(**orjson.loads(row["placement"]))
        paths = self.provider.task_paths(row["task_id"])
        env = orjson.loads(row["env"])
        return build_spec(row["task_id"], row["org_id"], config, placement, env, paths, mounts)

    # -- provider updates --------------------------------------------------------------

    async def _record_update(self, update: TaskUpdate) -> None:
        def apply(conn: Connection) -> TaskStatus | None:
            before = _apply_update(conn, update)
            if before is not None:
                self.replica.send(conn, "t", update.task_id)
            return before

        before = await self.store.run(apply)
        if before is not None and before != update.status:
            # The provider's message is left out: it may quote the task's output.
            code = f" (exit {update.exit_code})" if update.exit_code is not None else ""
            log.info("task %s: %s -> %s%s", update.task_id, before.value, update.status.value, code)
        self.records.notify(update.task_id)

    # -- submit ------------------------------------------------------------------------

    async def submit(
        self,
        org_id: str,
        config: TaskConfig,
        *,
        run_id: str | None = None,
        step_id: str | None = None,
        answer_status: int | None = None,
    ) -> Task:
        """Validate, record and queue a task.

        With ``answer_status`` (the HTTP status the task is answered with), a waiting
        ``Idempotency-Key`` record is saved in the transaction that records the task.

        Raises:
            APIProblem: 422 for bad input or a request the provider can never meet,
                501/503 for provider errors.
        """
        check_config(config)
        # the pending-tasks quota is checked where the task is recorded (one transaction,
        # not two; a task refused there leaves nothing behind)
        await self._check_isolation()
        await self._check_reservation(org_id, config.reservation_id)
        try:
            placement = await self.provider.place(config)
        except ProviderError as exc:
            raise problem_for(exc) from exc
        task_id = new_id("task")
        paths = self.provider.task_paths(task_id)
        made: list[str] = []  # volumes this task names anew: a refused task makes none
        mounts = await self.volumes.resolve(org_id, paths.workdir, config.volumes, made)
        try:
            env = task_env(config, task_id, paths, mounts)
            spec = build_spec(task_id, org_id, config, placement, env, paths, mounts)
            await asyncio.to_thread(prepare_task_dir, paths)
            try:
                await self._insert(spec, run_id, step_id, answer_saver(answer_status))
            except APIProblem:  # over the quota after all (a request racing this one)
                await asyncio.to_thread(shutil.rmtree, paths.root, True)
                raise
            await self._queue(spec)
        except BaseException:
            await self.volumes.forget(org_id, made)
            raise
        if self.replica.shared and isinstance(self.provider, ClusterPoller) and not self._poller:
            await self.store.run(lambda c: self.replica.send(c, "tp"))  # the poller watches it
        log.info("task %s of %s: submitted to %s", task_id, org_id, self.provider.name)
        return await self.get(task_id)

    async def _check_isolation(self) -> None:
        """Refuse tasks on a server that hosts several organizations but cannot keep
        their tasks apart (no sandbox, or a provider's own gap such as Ray without token
        authentication), unless the operator accepted it (``VI_FLOW_ALLOW_UNSANDBOXED=1``)."""
        sandbox = getattr(self.provider, "sandbox", None)
        if sandbox is None or os.environ.get(ALLOW_UNSANDBOXED) == "1":
            return
        if not sandbox.enabled:
            why, fix = f"tasks are not sandboxed on this server ({sandbox.reason})", sandbox.fix
        elif gap := getattr(self.provider, "isolation_gap", None):
            why, fix = f"organizations' tasks are not isolated on this server: {gap[0]}", gap[1]
        else:
            return
        count = await self.store.run(lambda c: c.execute("SELECT COUNT(*) FROM orgs").fetchone()[0])
        if count > 1:
            raise APIProblem(
                503,
                "SANDBOX_UNAVAILABLE",
                f"{why}, and it hosts {count} organizations, so it runs no tasks: {fix}, or"
                f" set {ALLOW_UNSANDBOXED}=1 to accept that tasks can read every"
                " organization's files (docs/production.md, 'What a task can reach')",
            )

    async def _queue(self, spec: LaunchSpec) -> None:
        """Hand ``spec`` to the provider; forget the task when the provider refuses it."""
        try:
            await self.provider.submit(spec)
        except ProviderError as exc:
            await self.store.run(
                lambda c: c.execute("DELETE FROM tasks WHERE task_id = ?", (spec.task_id,))
            )
            raise problem_for(exc) from exc

    async def _insert(
        self,
        spec: LaunchSpec,
        run_id: str | None,
        step_id: str | None,
        save: Callable[[Connection, Any], None],
    ) -> None:
        row = _task_row(spec, self.provider.name, run_id, step_id)
        mounts = mount_rows(spec.task_id, spec.mounts)
        select = "SELECT * FROM tasks WHERE task_id = ?"

        def insert(conn: Connection) -> None:
            self.quotas.check_pending_tasks(_pending(conn, spec.organization_id))
            if gone := missing_volumes(conn, [mount[1] for mount in mounts]):
                raise APIProblem.validation(  # deleted since it was resolved
                    "volumes", f"volume {gone[0]!r} was deleted meanwhile"
                )
            refuse_attached_block_volumes(conn, spec.task_id, [mount[1] for mount in mounts])
            conn.execute(
                "INSERT INTO tasks (task_id, org_id, name, status, config, placement, env,"
                " created_at, provider, run_id, step_id, replica, files_on)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (*row, self.replica.id, self.replica.name),
            )
            conn.executemany(
                "INSERT INTO task_mounts (task_id, volume_id, name, host_path, mount_path,"
                " visible_path) VALUES (?,?,?,?,?,?)",
                mounts,
            )
            made = conn.execute(select, (spec.task_id,)).fetchone()
            save(conn, self.records.decode(made))  # an Idempotency-Key's record with it

        await self.store.run(insert)

    async def _check_reservation(self, org_id: str, reservation_id: str | None) -> None:
        if not reservation_id:
            return
        owner = await self.reservation_org(reservation_id)
        if owner != org_id:
            raise APIProblem.validation(
                "reservationId", f"reservation {reservation_id!r} not found"
            )
        if (elsewhere := await self.reservation_elsewhere(reservation_id)) is not None:
            raise elsewhere

    # -- cancel / wait -----------------------------------------------------------------

    async def cancel(self, task_id: str, grace: float = DEFAULT_GRACE) -> Task:
        """Stop a task (SIGTERM, SIGKILL after ``grace``) and return it once it ended."""
        task = await self.get(task_id)
        if task.status.terminal:
            return task
        if task.provider != self.provider.name:  # it would be recorded cancelled, and run on
            raise APIProblem(
                409,
                "CONFLICT",
                f"task {task_id} was started by the {task.provider} provider, and this server"
                f" runs the {self.provider.name} provider: cancel it from a server of the"
                f" {task.provider} provider (vi-flow serve --provider {task.provider})",
            )
        owner = await self.store.run(lambda c: _live_owner(c, task_id))
        if owner is not None and owner != self.replica.id:  # its provider is another replica's
            await self.store.run(lambda c: self.replica.send(c, "tc", task_id, grace, owner))
            try:
                return await self.wait(task_id, timeout=grace + 10 + self.replica.lease)
            except TimeoutError:
                return await self.get(task_id)
        try:
            await self.provider.cancel(task_id, grace)
        except ProviderError as exc:
            raise problem_for(exc) from exc
        try:
            return await self.wait(task_id, timeout=grace + 10)
        except TimeoutError:
            return await self.get(task_id)

    async def cancel_run(self, key: tuple[str, str], grace: float = DEFAULT_GRACE) -> None:
        """Cancel every task of the run ``key`` (org id, run id) that has not ended."""
        rows = await self.store.run(
            lambda c: c.execute(
                "SELECT task_id FROM tasks WHERE org_id = ? AND run_id = ?"
                " AND status IN ('pending','running') AND provider = ?",
                (*key, self.provider.name),
            ).fetchall()
        )
        await asyncio.gather(*(self.cancel(r["task_id"], grace) for r in rows))

    async def wait(
        self, task_id: str, timeout: float | None = None, *, until_running: bool = False
    ) -> Task:
        """Wait until the task ended (or runs, with ``until_running``) and return it.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        try:
            return await asyncio.wait_for(self._wait(task_id, until_running), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"task {task_id!r} did not finish within {timeout} s") from None

    async def _wait(self, task_id: str, until_running: bool) -> Task:
        while True:
            event = self.records.changed(task_id)
            task = await self.get(task_id)
            if task.status.terminal or (until_running and task.status != TaskStatus.PENDING):
                return task
            await event.wait()

    # -- reservations (organization ownership only; the provider holds the rest) ---------

    async def claim_reservation(
        self, reservation: Reservation, org_id: str, *, answer_status: int | None = None
    ) -> None:
        """Record that ``org_id`` owns ``reservation``.

        With ``answer_status``, a waiting ``Idempotency-Key`` record (answering
        ``reservation``) is saved in the same transaction.
        """
        save = answer_saver(answer_status)

        def claim(conn: Connection) -> None:
            conn.execute(
                "INSERT INTO reservation_orgs (reservation_id, org_id, held_on) VALUES (?, ?, ?)"
                " ON CONFLICT (reservation_id)"
                " DO UPDATE SET org_id = excluded.org_id, held_on = excluded.held_on",
                (reservation.reservation_id, org_id, self.replica.name),
            )
            save(conn, reservation)

        await self.store.run(claim)

    async def reservation_elsewhere(self, reservation_id: str) -> APIProblem | None:
        """The 409 ``RESERVATION_ON_OTHER_REPLICA`` for a reservation that another
        replica's provider holds (the local provider's capacity is its host's), else None."""
        if not self._per_host:
            return None
        row = await self.store.run(
            lambda c: c.execute(
                "SELECT held_on FROM reservation_orgs WHERE reservation_id = ?",
                (reservation_id,),
            ).fetchone()
        )
        if row is None or row["held_on"] in (None, self.replica.name):
            return None
        return APIProblem(
            409,
            "RESERVATION_ON_OTHER_REPLICA",
            f"reservation {reservation_id!r} holds capacity on the host of server replica"
            f" {row['held_on']!r} (the local provider): send its requests, and the tasks that"
            " run in it, to that replica",
        )

    async def reservation_org(self, reservation_id: str) -> str | None:
        """The organization owning a reservation, ``None`` if not recorded."""
        row = await self.store.run(
            lambda c: c.execute(
                "SELECT org_id FROM reservation_orgs WHERE reservation_id = ?", (reservation_id,)
            ).fetchone()
        )
        return None if row is None else str(row["org_id"])


def _task_row(
    spec: LaunchSpec, provider: str, run_id: str | None, step_id: str | None
) -> tuple[Any, ...]:
    """A new ``tasks`` row (pending), in the column order :meth:`TaskService._insert` uses."""
    return (
        spec.task_id,
        spec.organization_id,
        spec.config.name,
        TaskStatus.PENDING.value,
        orjson.dumps(to_wire(spec.config)).decode(),
        to_json(attrs.asdict(spec.placement)),
        to_json(spec.env),
        now_ms(),
        provider,
        run_id,
        step_id,
    )


_RUN_ENDED = "its run ended when the server stopped, so it was not started"


def _unsent(row: Row) -> bool:
    """Whether the task is pending and no engine has it yet (nothing to stop)."""
    return bool(row["status"] == "pending" and not row["provider_id"])


def _of_ended_runs(conn: Connection, rows: list[Row]) -> set[str]:
    """The tasks of ``rows`` that belong to a run that has ended."""
    ended = set()
    for row in rows:
        if not row["run_id"]:
            continue
        run = conn.execute(
            "SELECT condition FROM runs WHERE org_id = ? AND run_id = ?",
            (row["org_id"], row["run_id"]),
        ).fetchone()
        if run is not None and Condition(run["condition"]).terminal:
            ended.add(str(row["task_id"]))
    return ended


def _update_columns(update: TaskUpdate) -> dict[str, Any]:
    """The ``tasks`` columns a provider update sets."""
    when = update.time or now_ms()
    sets: dict[str, Any] = {"status": update.status.value, "message": update.message}
    sets["reason"] = update.reason
    sets["raw_reason"] = update.raw_reason
    if update.status == TaskStatus.RUNNING:
        sets["started_at"] = when
    if update.status.terminal:
        sets["ended_at"] = when
        sets["exit_code"] = update.exit_code
        sets["signal"] = update.signal
    if update.provider_id is not None:
        sets["provider_id"] = update.provider_id
    if update.gpu_ids is not None:
        sets["gpu_ids"] = to_json(update.gpu_ids)
    return sets


def _apply_update(conn: Connection, update: TaskUpdate) -> TaskStatus | None:
    """Record ``update`` unless the task is unknown or has already ended; the old status."""
    row = conn.execute(
        "SELECT status, created_at, started_at FROM tasks WHERE task_id = ?", (update.task_id,)
    ).fetchone()
    if row is None or TaskStatus(row["status"]).terminal:
        return None
    before = TaskStatus(row["status"])
    sets = _update_columns(update)
    # Slurm gives its times in whole seconds: a task started in the second it was created
    # showed a start before its creation (QA AY). Times only go forward.
    earliest = row["created_at"]
    for column in ("started_at", "ended_at"):
        if column in sets:
            sets[column] = earliest = max(sets[column], earliest, row["started_at"] or 0)
    assignments = ", ".join(f"{k} = ?" for k in sets)
    conn.execute(
        f"UPDATE tasks SET {assignments} WHERE task_id = ?",
        (*sets.values(), update.task_id),
    )
    return before


TASKS_KEY = web.AppKey("vi_flow.tasks", TaskService)
"""Where :func:`vi_flow.server.routes.tasks.setup` registers the :class:`TaskService`."""


def _live_owner(conn: Connection, task_id: str) -> str | None:
    """The live replica whose provider runs the task, if any."""
    row = conn.execute(
        "SELECT t.replica FROM tasks t JOIN replicas r ON r.replica_id = t.replica"
        " WHERE t.task_id = ?",
        (task_id,),
    ).fetchone()
    return None if row is None else str(row[0])


def _pending(conn: Connection, org_id: str) -> int:
    """How many tasks of ``org_id`` wait to start."""
    sql = "SELECT COUNT(*) FROM tasks WHERE org_id = ? AND status = 'pending'"
    return int(conn.execute(sql, (org_id,)).fetchone()[0])
