"""The Slurm compute provider: vi_flow tasks as Slurm batch jobs, over ``slurmrestd``.

It implements :class:`~vi_flow.server.providers.base.ComputeProvider` with the REST
client in :mod:`.rest` (no C bindings, no CLI calls from the server). A task
becomes one batch job: its command, CPUs, memory, ``gres`` GPUs, working directory and
log files come from the :class:`~..base.LaunchSpec`; its environment travels in a
mode-0600 file the job sources and deletes, because Slurm keeps a job's environment in
its state directory where other users and admins can read it. A poller (one ``GET`` per
watched job, never the whole queue, backing off while nothing changes) reports state
changes through the update sink: pending reasons mapped with Slurm's own words kept, ends
as :mod:`.._exits` defines them, a launch failure naming the node that cannot see the
task directory. It stops jobs past ``max_run_time`` itself (Slurm's own time limit, also
set, counts whole minutes). A submission Slurm refuses for now (a drained node, a
partition down) stays pending and is submitted again at each poll. Task directories and
volumes live under directories every node must see (one host in tests). Logs and shells
go through the server's SSH endpoint like the local provider's: it follows the job's
output file and runs commands inside the job with ``srun --jobid=N --overlap``. The sink,
the poller, recovery, the node list cache and volumes come from
:class:`.._polling.PollingJobProvider`; this module owns what is Slurm's.

Settings come from ``ServerSettings.extra["slurm"]`` (a mapping with the keys of
:class:`SlurmSettings`), else from ``VI_FLOW_SLURM_URL``, ``VI_FLOW_SLURM_USER``,
``VI_FLOW_SLURM_TOKEN_FILE``, ``VI_FLOW_SLURM_PARTITION`` and ``SLURM_CONF``.

What Slurm cannot do here fails with :class:`~..base.UnsupportedOperation`: creating and
cancelling reservations (an administrator makes them with ``scontrol``) and the
availability search. The server shows an organization only the reservations recorded as
its own, and nothing records one made with ``scontrol`` yet: organizations can neither
list nor use them (see the note in docs/production.md). ``grace`` on cancel is the
cluster's ``KillWait``, since Slurm sends SIGTERM, waits ``KillWait``, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from ....models.tasks import (
    AvailableInstance,
    Reservation,
    ReservationStatus,
    TaskConfig,
    TaskStatus,
)
from ...clock import now_ms
from .._exits import SLURM_END_STATES, Exit, describe, end_reason, slurm_pending_reason
from .._job_files import ENV_FILE, make_task_dirs, write_secret_file
from .._polling import PollingJobProvider, own_outcome
from ..base import (
    CapacityError,
    LaunchSpec,
    Placement,
    ProviderError,
    ProviderUnavailable,
    RunningTask,
    TaskUpdate,
)
from ..local.sandbox import job_sandbox
from .catalog import catalog, placement
from .rest import (
    JobSubmission,
    SlurmAuthError,
    SlurmConnectionError,
    SlurmError,
    SlurmInvalidRequestError,
    SlurmJob,
    SlurmJobNotFoundError,
    SlurmNode,
    SlurmNotNowError,
    SlurmReservation,
    SlurmRestClient,
    SlurmUnavailableError,
)
from .settings import SlurmCredentialsError, SlurmSettings

if TYPE_CHECKING:
    from ...state import ServerSettings

__all__ = ["SlurmCredentialsError", "SlurmProvider", "SlurmSettings", "create"]

logger = logging.getLogger("vi_flow.server.slurm")

DEFAULT_MEMORY_MB = 1024
#: Job state requests in flight at once during one poll.
POLL_CONCURRENCY = 8
#: Variables safe to show in Slurm's job record; everything else goes through the file.
PUBLIC_ENV = ("VI_FLOW_TASK_ID",)
_TERMINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
#: What a launch failure's Slurm error number means for the task (4021: slurmd could
#: not open the job's output files, as on a node that does not see the task directory).
_LAUNCH_ERRORS = {
    4021: "could not open the task's log files there",
    4010: "could not create the batch directory there",
    4005: "the job's user does not exist there",
    4022: "the node's prolog failed",
}


def _uid_of(user: str) -> int | None:
    """The uid of ``user`` on the server's host (``None`` when it has no such user)."""
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _volumes(spec: LaunchSpec) -> tuple[Path, ...]:
    return tuple(mount.host_path for mount in spec.mounts)


def create(settings: ServerSettings) -> SlurmProvider:
    """Build the provider from the server settings (see :class:`SlurmSettings`)."""
    return SlurmProvider(SlurmSettings.from_server_settings(settings))


@attrs.define
class _Tracked:
    """A task whose job the poller watches."""

    task_id: str
    job_id: int
    status: TaskStatus
    env_file: Path | None = None
    max_run_time: float | None = None
    cancel_requested: bool = False
    timed_out: bool = False
    reported: asyncio.Event = attrs.Factory(asyncio.Event)  # the end went to the sink
    deadline: float | None = None  # epoch seconds when max_run_time runs out
    raw_reason: str | None = "None"  # Slurm's pending reason last reported ("None": none)
    unsent: LaunchSpec | None = None  # Slurm refused it for now: submit again (job_id 0)
    volumes: tuple[Path, ...] = ()  # what its sandbox shows besides its task directory
    started: float | None = None  # the job's start time (epoch s) when first seen running


class SlurmProvider(PollingJobProvider[SlurmSettings, _Tracked, SlurmNode, SlurmError]):
    """Runs vi_flow tasks as Slurm batch jobs through ``slurmrestd``.

    Args:
        settings: Where Slurm is and where task files live.
        rest: A REST client to use instead of one built from ``settings`` (tests).
    """

    name = "slurm"
    _backend = "Slurm"
    _backend_error = SlurmError
    _reservations_note = " (ask a Slurm administrator)"

    def __init__(self, settings: SlurmSettings, *, rest: SlurmRestClient | None = None) -> None:
        super().__init__(settings)
        self._polls = asyncio.Semaphore(POLL_CONCURRENCY)
        self.rest = rest or SlurmRestClient(
            settings.url,
            user=settings.user,
            token_file=settings.token_file,
            max_retries=settings.max_retries,
        )

    def __repr__(self) -> str:
        return f"SlurmProvider(url={self.settings.url!r}, user={self.settings.user!r})"

    # -- backend hooks -------------------------------------------------------------------

    async def _backend_version(self) -> str:
        version = await self.rest.version()
        await self._check_partition()
        return f"REST {version}"

    async def _check_partition(self) -> None:
        """Warn at start when the partition this server submits to does not exist: every
        task would be refused (QA AA: the server started silently, then answered each
        submission as if the user's request were at fault)."""
        partition = self.settings.partition
        if not partition:
            return
        try:
            names = await self.rest.partition_names()
        except SlurmError as exc:
            logger.debug("cannot list Slurm's partitions: %s", exc.message)
            return
        if names and partition not in names:
            logger.warning(
                "%s; the cluster has %s",
                _no_such_partition(partition),
                ", ".join(repr(name) for name in names),
            )

    async def _fetch_nodes(self) -> list[SlurmNode]:
        return await self.rest.list_nodes()

    async def _close_client(self) -> None:
        await self.rest.aclose()

    def _recovered(self, task: RunningTask, job_id: str) -> _Tracked:
        spec = task.spec
        env_file = spec.paths.root / ENV_FILE
        tracked = _Tracked(spec.task_id, int(job_id), task.status, env_file, spec.max_run_time)
        tracked.volumes = _volumes(spec)
        return tracked

    async def _check_sandbox(self) -> None:
        """Find out, once, whether jobs run in bubblewrap (see :func:`job_sandbox`)."""
        s = self.settings
        hidden = [s.tasks_dir, s.volumes_dir, s.token_file.parent]
        if s.server_home is not None:  # its admin token, its database: every organization's
            hidden.append(s.server_home)
        self.sandbox = await asyncio.to_thread(job_sandbox, hidden, s.tasks_dir)

    async def _forget_secrets(self, tracked: _Tracked) -> None:
        if tracked.env_file is not None:
            await asyncio.to_thread(tracked.env_file.unlink, missing_ok=True)

    # -- tasks ---------------------------------------------------------------------------

    def exec_prefix(
        self, task_id: str, provider_id: str | None, *, terminal: bool = False
    ) -> list[str]:
        """``srun --jobid=N --overlap`` in the task's workspace (with ``SLURM_CONF`` if set),
        ``--pty`` for a session on a terminal: without it the shell in the job had pipes,
        no job control, and Ctrl-C reached nothing (QA AY).

        Empty while the task has no Slurm job yet; the server runs commands only in
        running tasks, and a running Slurm task always has its job id.
        """
        tracked = self._tracked.get(task_id)
        job_id = provider_id or (str(tracked.job_id) if tracked else None)
        if not job_id:
            return []
        paths = self.task_paths(task_id)
        prefix = ["srun", f"--jobid={job_id}", "--overlap", "--quiet", f"--chdir={paths.workdir}"]
        if terminal:
            prefix.append("--pty")
        if self.settings.slurm_conf:
            prefix = ["env", f"SLURM_CONF={self.settings.slurm_conf}", *prefix]
        volumes = tracked.volumes if tracked else ()
        return prefix + self.sandbox.prefix(paths.root, volumes, paths.workdir)

    async def mounted(
        self, task_id: str, host_path: Path, variable: tuple[str, str] | None = None
    ) -> None:
        """A volume was mounted into a task that exists: the shells opened from now on
        (``srun --overlap``, behind the job's sandbox) see it. The job's own processes
        keep the sandbox its batch script made when it was submitted."""
        tracked = self._tracked.get(task_id)
        if tracked is not None and host_path not in tracked.volumes:
            tracked.volumes = (*tracked.volumes, host_path)

    async def place(self, config: TaskConfig) -> Placement:
        """Resolve a config against the cluster's nodes (see :func:`.catalog.placement`).

        Raises:
            ProviderUnavailable: Slurm cannot be reached.
        """
        return placement(config, await self._node_list(fresh=False))

    async def submit(self, spec: LaunchSpec) -> None:
        """Submit the task as a batch job and report it ``pending`` with its job id.

        Raises:
            ProviderUnavailable: Slurm cannot be reached; nothing was queued.
            CapacityError: Slurm refused the job as impossible.
        """
        env_file = spec.paths.root / ENV_FILE
        await asyncio.to_thread(self._prepare, spec, env_file)
        tracked = _Tracked(spec.task_id, 0, TaskStatus.PENDING, env_file, spec.max_run_time)
        tracked.volumes = _volumes(spec)
        try:
            tracked.job_id = await self.rest.submit_job(self._submission(spec, env_file))
        except SlurmNotNowError as exc:
            await self._hold_back(tracked, spec, exc)
            return
        except SlurmError as exc:
            await asyncio.to_thread(env_file.unlink, missing_ok=True)
            raise self._provider_error(exc) from None
        await self._queued(tracked)

    async def _hold_back(self, tracked: _Tracked, spec: LaunchSpec, exc: SlurmError) -> None:
        """Keep a task Slurm refused for now (a drained node, a partition down) pending;
        the poller submits it again until Slurm takes it."""
        first = tracked.unsent is None
        tracked.unsent = spec
        self._tracked[spec.task_id] = tracked
        raw = exc.message.split(": ", 1)[-1]  # Slurm's words, without the request
        if not first and tracked.raw_reason == raw:
            return
        tracked.raw_reason = raw
        reason = {2015: "PartitionDown", 2070: "PartitionDown", 2016: "Resources"}.get(
            exc.errno or 0, "ReqNodeNotAvail"
        )
        await self._report(
            TaskUpdate(
                spec.task_id,
                TaskStatus.PENDING,
                reason=reason,
                raw_reason=raw,
                message=f"Slurm does not take the job now; submitting again: {exc.message}",
                time=now_ms(),
            )
        )

    async def _resend(self, tracked: _Tracked) -> None:
        """Submit a held-back task again (one try per poll)."""
        spec = tracked.unsent
        assert spec is not None and tracked.env_file is not None
        try:
            job_id = await self.rest.submit_job(self._submission(spec, tracked.env_file))
        except SlurmNotNowError as exc:
            await self._hold_back(tracked, spec, exc)
            return
        except SlurmError as exc:
            if exc.transient:
                return
            update = TaskUpdate(spec.task_id, TaskStatus.FAILED, reason="SubmitFailed")
            await self._finish(tracked, attrs.evolve(update, message=exc.message, time=now_ms()))
            return
        tracked.job_id, tracked.unsent, tracked.raw_reason = job_id, None, "None"
        await self._queued(tracked)

    def _prepare(self, spec: LaunchSpec, env_file: Path) -> None:
        """Make the task's directories, mounts and env file (blocking; run in a thread)."""
        make_task_dirs(spec)
        secret = {k: v for k, v in spec.env.items() if k not in PUBLIC_ENV}
        write_secret_file(env_file, secret)

    def _submission(self, spec: LaunchSpec, env_file: Path) -> JobSubmission:
        placement = spec.placement
        public = {k: v for k, v in spec.env.items() if k in PUBLIC_ENV}
        public.setdefault("VI_FLOW_TASK_ID", spec.task_id)
        memory_mb = placement.memory_gb * 1024 if placement.memory_gb else DEFAULT_MEMORY_MB
        return JobSubmission(
            name=spec.task_id,
            command=shlex.join(spec.argv),
            argv=tuple(spec.argv),
            working_dir=str(spec.command_dir),
            home=str(spec.paths.workdir),
            stdout_path=str(spec.paths.stdout),
            stderr_path=str(spec.paths.stderr),
            cpus=placement.cpus,
            memory_mb=memory_mb,
            gpu_type=placement.gpu_type,
            gpu_count=placement.gpu_count,
            env=public,
            secret_file=str(env_file),
            time_limit_s=spec.max_run_time,
            partition=self.settings.partition,
            reservation=spec.reservation_id,
            sandbox=tuple(self.sandbox.prefix(spec.paths.root, _volumes(spec), spec.command_dir)),
        )

    async def cancel(self, task_id: str, grace: float) -> None:
        """Cancel the task's job (pending or running) and report it ``cancelled``.

        Slurm sends SIGTERM, then SIGKILL after the cluster's ``KillWait``; ``grace`` bounds
        how long this waits for Slurm to confirm. A finished or unknown task is a no-op.
        """
        if await self._cancel_unreached(task_id):
            return
        tracked = self._tracked.get(task_id)
        if tracked is None:
            return
        tracked.cancel_requested = True
        if tracked.unsent is not None:  # Slurm never took it
            update = TaskUpdate(task_id, TaskStatus.CANCELLED, reason="Cancelled")
            await self._finish(tracked, attrs.evolve(update, message="cancelled by request"))
            return
        try:
            if (await self.rest.get_job(tracked.job_id)).name != tracked.task_id:
                await self._finish(tracked, self._lost(tracked))  # never cancel another's
                return
            await self.rest.cancel_job(tracked.job_id)
        except SlurmJobNotFoundError:
            pass
        except SlurmError as exc:
            tracked.cancel_requested = False
            raise self._provider_error(exc) from None
        await self._wait_reported(tracked, grace + 5.0)

    # -- polling -------------------------------------------------------------------------

    async def _poll_once(self) -> None:
        """One ``GET /job/{id}`` per watched job (never the whole queue: other users'
        jobs cost nothing here), a few at a time."""
        await asyncio.gather(*(self._refresh_limited(t) for t in list(self._tracked.values())))

    async def _refresh_limited(self, tracked: _Tracked) -> None:
        async with self._polls:
            if tracked.unsent is not None:
                await self._resend(tracked)
            else:
                await self._refresh(tracked)

    async def _refresh(self, tracked: _Tracked, job: SlurmJob | None = None) -> None:
        if job is None:
            try:
                job = await self.rest.get_job(tracked.job_id)
            except SlurmJobNotFoundError:
                await self._finish(tracked, self._lost(tracked))
                return
            except SlurmError as exc:  # transient or not, the next poll asks again
                self._poll_failed(tracked.job_id, exc.message)
                return
            self._poll_answered()
        if job.name != tracked.task_id:  # the cluster was reset: the id is another's job
            await self._finish(tracked, self._lost(tracked))
            return
        await self._apply(tracked, job)

    async def _apply(self, tracked: _Tracked, job: SlurmJob) -> None:
        """Report what changed since the last poll, if anything."""
        status = TaskStatus(job.status)
        if await self._requeued(tracked, job, status):
            return
        if tracked.timed_out and status == TaskStatus.CANCELLED:
            status = TaskStatus.FAILED
        elif status == TaskStatus.RUNNING:
            await self._enforce_max_run_time(tracked, job)
        if self._tracked.get(tracked.task_id) is not tracked:
            return
        if status == tracked.status:
            if status == TaskStatus.PENDING and job.reason != tracked.raw_reason:
                tracked.raw_reason = job.reason
                await self._report(self._update(tracked, job, status))
            return
        update = self._update(tracked, job, status)
        if status not in _TERMINAL:
            tracked.status = status
            await self._report(update)
            return
        started = self._update(tracked, job, TaskStatus.RUNNING)
        missed_start = tracked.status == TaskStatus.PENDING and self._ran(job)
        await self._finish(tracked, update, started if missed_start else None)

    async def _requeued(self, tracked: _Tracked, job: SlurmJob, status: TaskStatus) -> bool:
        """End a job Slurm has requeued (a node failure, a preemption, ``scontrol
        requeue``; its default for batch jobs): run again, it would start without its
        secrets (the first start deleted them) and overwrite its first log. True when
        it was requeued (then it is cancelled and reported failed)."""
        if status == TaskStatus.RUNNING and job.start_time is not None:
            tracked.started = tracked.started or job.start_time
        again = status == TaskStatus.RUNNING and job.start_time not in (None, tracked.started)
        if tracked.started is None or not (status == TaskStatus.PENDING or again):
            return False
        with contextlib.suppress(SlurmError):
            await self.rest.cancel_job(job.job_id)
        message = (
            f"Slurm requeued job {job.job_id} (a node failure, a preemption or scontrol"
            " requeue); vi_flow does not run a task twice: submit it again"
        )
        update = TaskUpdate(
            tracked.task_id, TaskStatus.FAILED, reason="Requeued", message=message, time=now_ms()
        )
        await self._finish(tracked, update)
        return True

    async def _enforce_max_run_time(self, tracked: _Tracked, job: SlurmJob) -> None:
        """Stop a job past ``max_run_time`` (Slurm's own limit is in whole minutes)."""
        limit, started = tracked.max_run_time, job.start_time
        if limit is None or started is None:
            return
        tracked.deadline = started + limit
        if tracked.timed_out or time.time() < tracked.deadline:
            return
        tracked.timed_out = True
        try:
            await self.rest.cancel_job(job.job_id)
        except SlurmError as exc:
            tracked.timed_out = False  # try again on the next poll
            logger.warning("could not stop Slurm job %s: %s", job.job_id, exc.message)

    @staticmethod
    def _ran(job: SlurmJob) -> bool:
        never_started = job.status == "cancelled" and job.signal is None and job.exit_code is None
        return job.node is not None and job.start_time is not None and not never_started

    def _lost(self, tracked: _Tracked) -> TaskUpdate:
        return TaskUpdate(
            tracked.task_id,
            TaskStatus.FAILED,
            reason="JobLost",
            message=(
                f"Slurm no longer knows job {tracked.job_id} (purged, or the cluster was reset"
                " and the id went to another job)"
            ),
            time=now_ms(),
        )

    def _update(self, tracked: _Tracked, job: SlurmJob, status: TaskStatus) -> TaskUpdate:
        """The update for a job that moved to ``status``."""
        stamp = job.end_time if status in _TERMINAL else job.start_time
        update = TaskUpdate(
            tracked.task_id,
            status,
            provider_id=str(job.job_id),
            time=int(stamp * 1000) if stamp else now_ms(),
        )
        if status == TaskStatus.RUNNING:
            message = f"running as Slurm job {job.job_id} on {job.node}"
            # Slurm drops gres_detail once a job ends: unknown then, not "none"
            gpu_ids = list(job.gpu_ids) if job.status == "running" else None
            return attrs.evolve(update, reason="Started", message=message, gpu_ids=gpu_ids)
        if status == TaskStatus.PENDING:
            waits = slurm_pending_reason(job.reason)
            message = f"waiting in the Slurm queue as job {job.job_id}: {job.reason or 'queued'}"
            return attrs.evolve(update, reason=waits, raw_reason=job.reason, message=message)
        ended, why = self._outcome(tracked, job, status)
        return attrs.evolve(
            update,
            exit_code=job.exit_code,
            signal=job.signal,
            reason=ended,
            raw_reason=job.reason if job.reason not in ("", "None") else None,
            message=why,
        )

    def _outcome(
        self, tracked: _Tracked, job: SlurmJob, status: TaskStatus
    ) -> tuple[str | None, str | None]:
        known = own_outcome(tracked, status, Exit(job.exit_code, job.signal))
        if known is not None:
            return known
        if status == TaskStatus.CANCELLED:
            return (
                "CancelledOutsideViFlow",
                f"Slurm job {job.job_id} was cancelled outside vi_flow (scancel or an admin)",
            )
        if job.launch_failed:
            return "LaunchFailed", self._launch_failure(tracked, job)
        if job.state in SLURM_END_STATES:
            reason, what = SLURM_END_STATES[job.state]
            return reason, f"Slurm job {job.job_id} {what}"
        end = Exit(job.exit_code, job.signal)
        return end_reason(end), describe(end)

    def _launch_failure(self, tracked: _Tracked, job: SlurmJob) -> str:
        node = job.node or "its node"
        what = _LAUNCH_ERRORS.get(job.raw_exit or 0, f"Slurm error {job.raw_exit}")
        message = f"Slurm could not launch job {job.job_id} on node {node}: {what}"
        if job.raw_exit in (4021, 4010):
            root = self.task_paths(tracked.task_id).root
            message += f"; the task directory {root} is not shared with node {node}"
            user = self.settings.user
            if job.raw_exit == 4021 and _uid_of(user) != os.geteuid():
                # QA AU: it was shared, but the job's user could not write there
                message += (
                    f", or the job's user {user!r} may not write in it: this server makes task"
                    " directories as its own user (run it as the submitting account)"
                )
        return message

    # -- capacity ------------------------------------------------------------------------

    async def instances(self) -> list[AvailableInstance]:
        """One entry for CPU-only jobs and one per GPU type and count (1, 2, 4, ... per node)."""
        return catalog(await self._node_list(fresh=True))

    async def list_reservations(self) -> list[Reservation]:
        """The cluster's reservations; a task names one by its Slurm name."""
        try:
            found = await self.rest.list_reservations()
        except SlurmError as exc:
            raise self._provider_error(exc) from None
        return [self._reservation(r) for r in found]

    def _reservation(self, item: SlurmReservation) -> Reservation:
        start = int((item.start_time or 0) * 1000)
        end = int((item.end_time or 0) * 1000)
        now = now_ms()
        status = ReservationStatus.ACTIVE if start <= now < end else ReservationStatus.SCHEDULED
        if end and end <= now:
            status = ReservationStatus.EXPIRED
        cpus = 0
        for part in item.tres.split(","):
            key, _, value = part.partition("=")
            if key == "cpu" and value.isdigit():
                cpus = int(value)
        return Reservation(
            reservation_id=item.name,
            name=item.name,
            status=status,
            instance_type="cpu",
            cpus=cpus,
            start_time=start,
            end_time=end,
            region="slurm",
        )

    # -- errors --------------------------------------------------------------------------

    def _provider_error(self, exc: SlurmError) -> ProviderError:
        if isinstance(exc, SlurmConnectionError | SlurmUnavailableError | SlurmNotNowError):
            return ProviderUnavailable(exc.message, self.settings.url)
        if isinstance(exc, SlurmAuthError):
            return SlurmCredentialsError(exc.message)
        partition = self.settings.partition
        if partition and "invalid partition" in exc.message.lower():  # the server's setting
            return ProviderUnavailable(f"{_no_such_partition(partition)} ({exc.message})")
        if isinstance(exc, SlurmInvalidRequestError):
            return CapacityError(f"Slurm refused the job: {exc.message}")
        return ProviderError(exc.message)


def _no_such_partition(partition: str) -> str:
    return (
        f"the Slurm partition {partition!r} this server submits every task to"
        " (--slurm-partition, VI_FLOW_SLURM_PARTITION) does not exist on the cluster, so"
        " Slurm refuses them all: the server's operator must change that setting"
    )
