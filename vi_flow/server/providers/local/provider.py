"""The local compute provider: tasks run as process groups on this machine.

Each task gets a directory under ``<home>/tasks/<task_id>/`` (``workspace/``,
``logs/stdout.log``, ``logs/stderr.log``, ``output/``) and runs as its own process group
(``start_new_session``). A small capacity scheduler holds CPUs and GPUs: tasks wait
``pending`` while the machine (or a reservation) holds what they need, and start in
submission order as capacity frees up (smaller tasks may pass a blocked larger one).
Cancel sends SIGTERM to the group, then SIGKILL after a grace period; ``max_run_time``
is enforced the same way. The catalog comes from the machine (``os.cpu_count``, memory,
``nvidia-smi``), or from ``settings.extra["local_cpus"|"local_gpus"|"local_memory_gb"]``.
Reservations live in ``<home>/compute/reservations.json``; volumes are directories under
``<home>/volumes/``. This module owns :class:`LocalProvider` (the queue, the scheduler
loop and the task life cycle); :mod:`.process` runs and stops one process group,
:mod:`.capacity` accounts for free CPUs and GPUs, :mod:`.placement` resolves
requests against the machine, :mod:`.machine` detects it and
:mod:`.reservations` keeps the reservation book.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ....models.tasks import (
    AvailabilitySlot,
    AvailableInstance,
    Reservation,
    ReservationRequest,
    TaskConfig,
    TaskStatus,
)
from ...clock import now_ms, wait_event
from ...trees import try_remove_tree
from ..base import (
    ComputeProvider,
    InvalidRequest,
    LaunchSpec,
    Placement,
    RunningTask,
    TaskPaths,
    TaskUpdate,
    UpdateSink,
    report_to,
)
from .capacity import (
    check_reservation_fits,
    fit,
    free_capacity,
    next_boundary,
    reservation_ended,
)
from .late_mount import late_mounts_supported, mount_into
from .machine import Machine, detect_machine
from .placement import build_catalog, place
from .process import (
    DISK_FULL_NOTE,
    KILL_WAIT,
    MAX_RUN_TIME_GRACE,
    TASK_ID_ENV,
    Job,
    append_line,
    disk_is_full,
    end_orphan,
    end_unrecorded,
    final_update,
    gpu_environment,
    prepare_launch,
    signal_group,
    started_update,
    stop_job,
    task_environment,
    terminate,
    wait_group_gone,
)
from .reservations import ReservationBook
from .sandbox import (
    GATE,
    Sandbox,
    allowed_environment,
    check_executable,
    detect_sandbox,
    environment_fd,
    sandbox_child,
    task_network,
)
from .spawn import TaskProcess, start_process

if TYPE_CHECKING:
    from ...state import ServerSettings

__all__ = ["KILL_WAIT", "MAX_RUN_TIME_GRACE", "LocalProvider", "create"]

log = logging.getLogger("vi_flow.server.providers.local")  # stable in the server log


def _close_gate(gate: int, run: bool) -> None:
    """Close ``gate``, the write end of the pipe the command waits on (:data:`GATE`),
    first letting the command run if ``run``; else it exits without running."""
    try:
        if run:
            os.write(gate, b"\n")  # one byte into an empty pipe: never blocks
    except OSError:  # the command died before it read (BrokenPipeError)
        pass
    finally:
        os.close(gate)


class _NotStarted(Exception):
    """A task's process could not be started; the message says what failed."""


LAUNCH_WAIT = 30.0
"""The most a cancel waits for a task still being launched to start (then it is stopped)."""

DISK_CHECK = 1.0
"""Seconds between two looks at the disks of running tasks' logs (see ``disk_is_full``)."""


class LocalProvider:
    """Runs tasks as local process groups with a CPU/GPU capacity scheduler.

    Args:
        home: The server home (tasks, volumes and reservations live under it).
        extra: ``ServerSettings.extra`` (``local_cpus``, ``local_gpus``, ``local_memory_gb``).
    """

    name = "local"

    def __init__(self, home: Path, extra: dict[str, Any] | None = None) -> None:
        self.home = Path(home)
        self._extra = dict(extra or {})
        task_network(self._extra)  # a wrong VI_FLOW_TASK_NETWORK stops the server at start
        self.machine = Machine(cpus=1, memory_gb=0)
        self._sink: UpdateSink | None = None
        self._queue: list[LaunchSpec] = []
        self._jobs: dict[str, Job] = {}
        self.reservations = ReservationBook(
            self.home / "compute" / "reservations.json", self.machine
        )
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._disk_task: asyncio.Task[None] | None = None
        self._launching: set[asyncio.Task[None]] = set()
        self._closing = False
        self._max_run_time_grace = float(
            self._extra.get("local_max_run_time_grace", MAX_RUN_TIME_GRACE)
        )
        self.sandbox = Sandbox(None, "not checked yet")

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, sink: UpdateSink) -> None:
        """Detect the machine, load reservations and start the scheduler."""
        self._sink = sink
        self.machine = await detect_machine(self._extra)
        self.reservations.machine = self.machine
        await self.reservations.load()
        self.sandbox = await asyncio.to_thread(detect_sandbox, self.home, self._extra)
        if self.sandbox.enabled:
            log.info(
                "local provider: tasks and SSH sessions run in a bubblewrap sandbox, network: %s",
                "their own (VI_FLOW_TASK_NETWORK=isolated)"
                if self.sandbox.network == "isolated"
                else "the host's (VI_FLOW_TASK_NETWORK=isolated gives each its own)",
            )
        else:
            log.warning(
                "local provider: tasks are NOT sandboxed (%s); they can read the server's "
                "home and every organization's files",
                self.sandbox.reason,
            )
        self._loop_task = asyncio.create_task(self._scheduler(), name="vi-flow-local-scheduler")
        self._disk_task = asyncio.create_task(self._watch_disks(), name="vi-flow-local-disks")
        log.info("local provider: %d CPUs, %s", self.machine.cpus, self.machine.describe_gpus())

    async def close(self) -> None:
        """Stop the scheduler and every running task (reported ``failed``, ServerStopped)."""
        self._closing = True
        for task in (self._loop_task, self._disk_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._launching:  # let each launch finish: a half-made spawn would leak
            await asyncio.wait(set(self._launching))
        jobs = [job for job in self._jobs.values() if job.process is not None]
        for job in jobs:
            job.stop_reason = "ServerStopped"
            job.stop_message = "the server stopped while the task ran"
        await asyncio.gather(*(stop_job(job, 2.0) for job in jobs))
        watchers = [job.watcher for job in jobs if job.watcher is not None]
        if watchers:
            await asyncio.wait(watchers, timeout=KILL_WAIT)

    async def abandon(self, tasks: Sequence[RunningTask]) -> None:
        """Stop what a server killed between a fork and its record left of ``tasks``
        (see :func:`end_unrecorded`; with the start gate, a sandbox whose setup the
        crash cut short may still be there)."""
        if tasks:
            await asyncio.to_thread(end_unrecorded, tasks, "the task not started (its run ended)")

    async def recover(self, tasks: Sequence[RunningTask]) -> None:
        """Re-queue tasks that never started; fail those whose process died with the server.

        A task this server still runs is left alone: with replicas, a replica that lost
        its lease (its database away) comes back under a new id and takes its own tasks
        over again; it killed them as orphans.
        """
        tasks = [task for task in tasks if task.spec.task_id not in self._jobs]
        unstarted = [t for t in tasks if t.provider_id is None and t.status == TaskStatus.PENDING]
        if unstarted:  # a server killed between a fork and its record may have left one running
            await asyncio.to_thread(end_unrecorded, unstarted)
        requeued = {task.spec.task_id for task in unstarted}
        for task in tasks:
            if task.spec.task_id in requeued:
                await self._requeue(task)
                continue
            message = await asyncio.to_thread(end_orphan, task)
            await self._report(_restart_failure(task, message))

    async def _requeue(self, task: RunningTask) -> None:
        try:
            await self.submit(task.spec)
        except InvalidRequest as exc:
            message = f"could not be re-queued after a restart: {exc}"
            await self._report(_restart_failure(task, message))

    # -- paths ---------------------------------------------------------------------------

    def task_paths(self, task_id: str) -> TaskPaths:
        """``<home>/tasks/<task_id>/`` with ``workspace/``, ``logs/`` and ``output/``."""
        return TaskPaths.under(self.home / "tasks" / task_id)

    def exec_prefix(
        self, task_id: str, provider_id: str | None, *, terminal: bool = False
    ) -> list[str]:
        """The sandbox of the running task (``[]`` when unsandboxed): a session sees the
        task's directory and volumes, never the rest of the machine (on the session's
        own terminal, when it has one).

        Raises:
            InvalidRequest: The task is not running here.
        """
        job = self._jobs.get(task_id)
        if job is None or job.state != "running":
            raise InvalidRequest(f"task {task_id} is not running")
        spec = job.spec
        volumes = [mount.host_path for mount in spec.mounts] + job.late_volumes
        gpus = gpu_environment(job, bool(self.machine.gpus))  # sandboxed or not
        return self.sandbox.prefix(spec.paths.root, volumes, spec.paths.workdir, setenv=gpus)

    async def mounted(
        self, task_id: str, host_path: Path, variable: tuple[str, str] | None = None
    ) -> None:
        """A volume was mounted into a queued or running task: SSH sessions opened from
        now on see it; so do the running processes of a sandboxed task when the server
        runs as root (:mod:`.late_mount`), else they keep the sandbox they started in. A
        task yet to start gets its ``variable`` (``VI_FLOW_VOLUME_<NAME>``, its value)."""
        job = self._jobs.get(task_id)
        if job is None:
            return
        job.late_volumes.append(host_path)
        if variable is not None and job.state == "queued":
            job.spec.env[variable[0]] = variable[1]
        if job.process is None or not job.sandboxed:
            return
        if not late_mounts_supported():  # docs/volumes-and-reservations.md promises this line
            log.warning(
                "local provider: %s: volume %s reaches the sessions opened from now on, not"
                " the task's running processes (only a server running as root mounts into"
                " a running sandbox)",
                task_id,
                host_path,
            )
            return
        try:
            await mount_into(job.process.pid, host_path, host_path)
        except OSError as exc:
            log.warning("local provider: %s: volume reaches new sessions only: %s", task_id, exc)

    # -- placement and catalog ---------------------------------------------------------

    async def place(self, config: TaskConfig) -> Placement:
        """Resolve the instance type, GPUs and CPUs of ``config`` against this machine."""
        return place(self.machine, config, await self.instances())

    async def instances(self) -> list[AvailableInstance]:
        """``cpu`` plus, per GPU type, ``<type>``, ``2x<type>``, ... up to the count found."""
        free_cpus, free_gpus = self._free(None, now_ms())
        return build_catalog(self.machine, free_cpus, free_gpus)

    def _free(self, reservation_id: str | None, now: int) -> tuple[int, list[int]]:
        """Free CPUs and GPU ids for the general pool or for one reservation's pool."""
        jobs = self._jobs.values()
        return free_capacity(self.machine, self.reservations, jobs, reservation_id, now)

    # -- submit / cancel -----------------------------------------------------------------

    async def submit(self, spec: LaunchSpec) -> None:
        """Queue ``spec``; the scheduler starts it when capacity is free."""
        if spec.reservation_id:
            check_reservation_fits(self.reservations, spec)
        self._jobs[spec.task_id] = Job(spec)
        self._queue.append(spec)
        self._wake.set()

    def running_here(self) -> list[str]:
        """The tasks launching or running here."""
        return [job.spec.task_id for job in self._jobs.values() if job.process is not None]

    async def cancel(self, task_id: str, grace: float) -> None:
        """Drop a queued task, or stop a running one (SIGTERM, SIGKILL after ``grace``)."""
        job = self._jobs.get(task_id)
        if job is None:
            return
        if job.state == "launching":
            await self._cancel_launching(job, grace)
            return
        if job.state == "queued":
            await self._drop_queued(task_id)
            return
        if job.stop_reason is None:
            job.stop_reason = "Cancelled"
            job.stop_message = "cancelled by request"
        await stop_job(job, grace)

    @staticmethod
    async def _cancel_launching(job: Job, grace: float) -> None:
        """Ask :meth:`_launch` not to let the job's command through its gate (it then ends
        without running); wait for it to end.

        The wait covers the launch too (a busy machine may take seconds to start 50
        sandboxes): a cancel answers once the process is gone, not while it is starting.
        """
        job.stop_reason = job.stop_reason or "Cancelled"
        job.stop_message = job.stop_message or "cancelled by request"
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(job.done.wait()), grace + KILL_WAIT + LAUNCH_WAIT)

    async def _drop_queued(self, task_id: str) -> None:
        self._queue = [s for s in self._queue if s.task_id != task_id]
        self._jobs.pop(task_id, None)
        await self._report(
            TaskUpdate(
                task_id,
                TaskStatus.CANCELLED,
                message="cancelled before it started",
                reason="Cancelled",
                time=now_ms(),
            )
        )
        self._wake.set()

    # -- the scheduler -------------------------------------------------------------------

    async def _scheduler(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._start_what_fits()
            except Exception:  # keep scheduling whatever went wrong with one task
                log.exception("local scheduler pass failed")
            await wait_event(self._wake, next_boundary(self.reservations))

    async def _start_what_fits(self) -> None:
        now = now_ms()
        for spec in list(self._queue):
            if self._closing:
                return
            if spec not in self._queue or spec.task_id not in self._jobs:
                continue  # cancelled while an earlier task was being launched
            if reservation_ended(self.reservations, spec, now):
                self._queue.remove(spec)
                await self._finish_without_start(
                    self._jobs[spec.task_id],
                    f"reservation {spec.reservation_id!r} ended before the task could start",
                    reason="ReservationEnded",
                )
                continue
            gpu_ids = fit(self.machine, self.reservations, self._jobs.values(), spec, now)
            if gpu_ids is None:
                await self._mark_waiting(spec)
                continue
            self._queue.remove(spec)
            job = self._jobs[spec.task_id]
            job.gpu_ids = gpu_ids
            job.state = "launching"  # its capacity is taken from here on
            self._start_launch(job)

    def _start_launch(self, job: Job) -> None:
        """Launch ``job`` beside the others: each waits on its own thread work and fork,
        so 50 tasks submitted at once start together, not one after another."""
        task = asyncio.create_task(self._launch(job), name=f"vi-flow-launch:{job.spec.task_id}")
        self._launching.add(task)
        task.add_done_callback(self._launched)

    def _launched(self, task: asyncio.Task[None]) -> None:
        self._launching.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("local provider: a launch failed", exc_info=task.exception())

    async def _mark_waiting(self, spec: LaunchSpec) -> None:
        job = self._jobs[spec.task_id]
        if job.waiting:
            return
        job.waiting = True
        held = "its reservation's" if spec.reservation_id else "the machine's"
        await self._report(
            TaskUpdate(
                spec.task_id,
                TaskStatus.PENDING,
                message=f"waiting for capacity: {held} CPUs/GPUs are in use or reserved",
                reason="WaitingForCapacity",
                time=now_ms(),
            )
        )

    # -- launching -----------------------------------------------------------------------

    async def _launch(self, job: Job) -> None:
        spec = job.spec
        job.sandboxed = self.sandbox.enabled
        env = task_environment(job, os.environ, bool(self.machine.gpus))
        try:
            # One worker-thread hop for the workspace, the sandbox's check and the fork:
            # 50 tasks submitted at once queue 50 jobs on the default executor, not 150.
            popen, job.sandbox_info, gate = await asyncio.to_thread(self._start, job, env)
        except _NotStarted as exc:
            await self._finish_without_start(job, str(exc))
            return
        job.process = TaskProcess(popen)
        stored = False
        try:
            # The command waits at its gate until its running state is stored: no one
            # reads a line of a task still said to be pending, and a start that cannot
            # be recorded never runs (the task then fails, once the gate is closed).
            stored = await self._report(started_update(job))
        finally:
            if not stored and job.stop_reason is None:
                job.stop_reason = "StartFailed"
                job.stop_message = "its start could not be recorded; it did not run"
            job.held = job.stop_reason is not None  # cancelled meanwhile: it never runs
            _close_gate(gate, run=not job.held)
        job.state = "running"
        job.watcher = asyncio.create_task(self._watch(job), name=f"vi-flow-task:{spec.task_id}")

    def _start(
        self, job: Job, env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], int | None, int]:
        """Prepare the task's directory and start its command as the leader of a new
        process group (blocking: a worker thread's); the process, in a sandbox the read
        end of bubblewrap's ``--info-fd`` (for :func:`sandbox_child`), and the write end of
        the gate the command waits at before it runs (for :func:`_close_gate`).

        Raises:
            _NotStarted: Saying what failed, for the task's stderr and message.
        """
        spec = job.spec
        try:
            out, err, cwd = prepare_launch(spec)
        except (OSError, InvalidRequest) as exc:
            raise _NotStarted(f"could not prepare the workspace: {exc}") from exc
        info: int | None = None  # the read end of bubblewrap's --info-fd, and its write end
        write: int | None = None
        waits: int | None = None  # the command waits to read from it; we write to `gate`
        gate: int | None = None
        given: int | None = None  # the command's environment, for bwrap (environment_fd)
        try:
            waits, gate = os.pipe()
            # bwrap would start and then fail with status 1, the gate's shell with 127:
            # fail before either starts, as exec would.
            volumes = [mount.host_path for mount in spec.mounts] + job.late_volumes
            shown = None
            if job.sandboxed:
                shown = functools.partial(self.sandbox.shows, root=spec.paths.root, volumes=volumes)
            check_executable(spec.argv[0], cwd, env["PATH"], shown)
            own_env = env  # unsandboxed, the command runs as the server's user anyway
            if job.sandboxed:
                info, write = os.pipe()
                os.set_blocking(info, False)
                given = environment_fd(env)
                own_env = allowed_environment(os.environ, cwd)
                # the task's id, which the server set (none of the user's): a restarted
                # server finds a sandbox a crash left in its setup by it (end_unrecorded)
                own_env[TASK_ID_ENV] = spec.task_id
            prefix = self.sandbox.prefix(spec.paths.root, volumes, cwd, write, env_fd=given)
            popen = start_process(
                [*prefix, *GATE, *spec.argv],
                cwd=cwd,
                env=own_env,
                stdin=waits,
                stdout=out,
                stderr=err,
                pass_fds=tuple(fd for fd in (write, given) if fd is not None),
            )
        except BaseException as exc:
            for fd in (info, gate):
                if fd is not None:
                    os.close(fd)
            if isinstance(exc, OSError):
                raise _NotStarted(f"could not start {spec.argv[0]!r}: {exc}") from exc
            raise
        finally:
            for fd in (out, err, write, waits, given):
                if fd is not None:
                    os.close(fd)
        assert gate is not None
        return popen, info, gate

    async def _finish_without_start(
        self, job: Job, message: str, reason: str = "StartFailed"
    ) -> None:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(append_line, job.spec.paths, message)
        self._jobs.pop(job.spec.task_id, None)
        await self._report(
            TaskUpdate(
                job.spec.task_id,
                TaskStatus.FAILED,
                exit_code=127 if reason == "StartFailed" else None,
                message=message,
                reason=reason,
                time=now_ms(),
            )
        )
        job.state = "done"
        job.done.set()

    async def _watch(self, job: Job) -> None:
        try:
            await self._watch_until_gone(job)
        finally:
            if job.sandbox_info is not None:  # cancelled (the server stops): let the fd go
                os.close(job.sandbox_info)
                job.sandbox_info = None

    async def _watch_until_gone(self, job: Job) -> None:
        process = job.process
        assert process is not None
        limit = job.spec.max_run_time
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), limit)
        except asyncio.TimeoutError:
            job.stop_reason = job.stop_reason or "TimeLimit"
            job.stop_message = job.stop_message or (
                f"stopped after exceeding max_run_time of {limit:g} s"
            )
            await terminate(process, self._max_run_time_grace, job.sandboxed)
        code = process.returncode if process.returncode is not None else -9
        if job.sandboxed:
            code = self.sandbox.exit_code(code)
        # The leader is gone; make sure nothing it left behind keeps running.
        signal_group(process.pid, signal.SIGKILL)
        init = None
        if job.sandbox_info is not None:  # in a sandbox, only its init is left to wait for
            info, job.sandbox_info = job.sandbox_info, None
            init = sandbox_child(info)
        await wait_group_gone(process.pid, KILL_WAIT, None if init is None else [init])
        self._jobs.pop(job.spec.task_id, None)
        await asyncio.to_thread(_note_full_disks, [job])  # the last second's look
        if job.disk_full:
            with contextlib.suppress(OSError):  # the disk may be full still
                await asyncio.to_thread(append_line, job.spec.paths, f"[vi-flow] {DISK_FULL_NOTE}")
        await self._report(final_update(job, code))
        job.state = "done"
        job.done.set()
        self._wake.set()

    async def _watch_disks(self) -> None:
        """Note every running task whose logs' disk is full: the task writes its logs
        itself, so a line it could not write is lost without a word; its end says so."""
        while True:
            await asyncio.sleep(DISK_CHECK)
            jobs = [job for job in self._jobs.values() if job.state == "running"]
            if jobs:
                await asyncio.to_thread(_note_full_disks, jobs)

    async def _report(self, update: TaskUpdate) -> bool:
        return await report_to(self._sink, update, log)

    # -- reservations --------------------------------------------------------------------

    async def create_reservation(self, request: ReservationRequest) -> Reservation:
        """Hold CPUs/GPUs for ``[start, start + duration)`` if no other reservation holds them."""
        config = TaskConfig(
            command="true", gpu=request.gpu, instance_type=request.instance_type, cpus=request.cpus
        )
        reservation = await self.reservations.create(await self.place(config), request)
        self._wake.set()
        return reservation

    async def list_reservations(self) -> list[Reservation]:
        """Every reservation, with its status as of now."""
        return self.reservations.all()

    async def cancel_reservation(self, reservation_id: str) -> Reservation:
        """Release a reservation; tasks still queued on it fail (``ReservationEnded``)."""
        reservation = await self.reservations.cancel(reservation_id)
        self._wake.set()
        return reservation

    async def availability(
        self, instance_type: str | None, start: int, end: int, duration_ms: int
    ) -> list[AvailabilitySlot]:
        """Windows in ``[start, end]`` where ``instance_type`` could be held for ``duration_ms``."""
        placement = await self.place(TaskConfig(command="true", instance_type=instance_type))
        return self.reservations.availability(placement, start, end, duration_ms)

    # -- volumes -------------------------------------------------------------------------

    @property
    def volumes_dir(self) -> Path:
        """Where volume directories live."""
        return self.home / "volumes"

    def volume_path(self, volume_id: str) -> Path:
        """The directory of a volume."""
        return self.volumes_dir / volume_id

    async def create_volume(self, volume_id: str, size_gb: int) -> Path:
        """Create ``<home>/volumes/<volume_id>/``."""
        path = self.volume_path(volume_id)
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        return path

    async def delete_volume(self, volume_id: str) -> None:
        """Remove the volume's directory and everything in it (no link followed; what
        stopped it is logged)."""
        await asyncio.to_thread(try_remove_tree, self.volume_path(volume_id))


def _note_full_disks(jobs: list[Job]) -> None:
    for job in jobs:
        if not job.held and not job.disk_full:
            job.disk_full = disk_is_full(job.spec.paths)


def _restart_failure(task: RunningTask, message: str) -> TaskUpdate:
    """The update that fails a task the server could not carry over a restart."""
    return TaskUpdate(
        task.spec.task_id,
        TaskStatus.FAILED,
        message=message,
        reason="ServerRestarted",
        time=now_ms(),
    )


def create(settings: ServerSettings) -> ComputeProvider:
    """The provider factory :func:`vi_flow.server.providers.create_provider` calls."""
    provider: ComputeProvider = LocalProvider(settings.home, settings.extra)  # type-checked fit
    return provider
