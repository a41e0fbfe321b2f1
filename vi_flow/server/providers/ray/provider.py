"""The Ray compute provider: vi_flow tasks as Ray jobs, over the dashboard's Jobs REST API.

It implements :class:`~vi_flow.server.providers.base.ComputeProvider` with the aiohttp
client in :mod:`.api` (no ``ray`` import: the server does not need Ray installed).
A task becomes one Ray job whose submission id is the task id. Its CPUs, GPUs, memory and
GPU type (Ray's ``accelerator_type`` resource) go to the ``entrypoint_*`` fields; its
command runs from the shell entry point of :mod:`.entrypoint`, which appends stdout
and stderr to the task's log files (so logs, follows and shells go through the server's
SSH endpoint exactly as with the local provider) and records the GPUs Ray assigned and
the exit status in files beside them. The environment, secrets included, travels in a
mode-0600 file the entry point sources and deletes, never in ``runtime_env`` or
``metadata``, which anyone reaching the dashboard can read.

A poller (one ``GET /api/jobs/{id}`` per watched job) reports state changes through the
update sink: ``pending`` with Ray's sentence as the raw reason, ``running`` once the
command has started (not when Ray's job supervisor starts), then
``completed``/``failed``/``cancelled`` with the exit code, signal and reason that
:mod:`.._exits` defines (the entry point's shell reports a signal N as 128 + N). It
stops jobs past ``max_run_time`` itself. Ray cannot stop a PENDING job (the stop answers
``true`` and the job starts later), so a cancel revokes the task's start token first:
a task that had not started is reported ``cancelled`` at once and its job, whenever Ray
starts it, exits without running the command; the poller stops it if it shows up RUNNING
and deletes its record once it ends. A job stopped with ``ray job stop`` or the dashboard
is reported ``cancelled`` with reason ``CancelledOutsideViFlow``. The sink, the poller,
recovery, the node list cache and volumes come from :class:`.._polling.PollingJobProvider`;
this module owns what is Ray's.

Settings come from ``ServerSettings.extra["ray"]`` (the keys of :class:`RaySettings`),
else ``VI_FLOW_RAY_URL`` (or ``RAY_API_SERVER_ADDRESS``), ``VI_FLOW_RAY_TASKS_DIR``,
``VI_FLOW_RAY_VOLUMES_DIR`` and ``VI_FLOW_RAY_TOKEN_FILE``. Task and volume directories
must be visible at the same path on every node that runs entry points and on the server.

Limits, each failing with :class:`~..base.UnsupportedOperation` or documented here:
reservations and the availability search do not exist in Ray; ``grace`` on cancel is the
cluster's ``RAY_JOB_STOP_WAIT_TIME_S`` (3 s by default: SIGTERM to the entry point's
process tree, then SIGKILL); and SSH commands and shells are refused
(``exec_prefix`` raises :class:`~..base.UnsupportedOperation`), because Ray has no way to
run a command inside another job, and running it on the server's host would hand the
task's user the server's machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import attrs

from ....models.tasks import AvailableInstance, Reservation, TaskConfig, TaskStatus
from ...clock import now_ms
from .._exits import Exit, describe, end_reason, from_shell_status
from .._polling import PollingJobProvider, own_outcome
from ..base import (
    MAX_ARG_STRLEN,
    InvalidRequest,
    LaunchSpec,
    Placement,
    ProviderError,
    ProviderUnavailable,
    RunningTask,
    TaskPaths,
    TaskUpdate,
    UnsupportedOperation,
)
from ..local.sandbox import job_sandbox
from .api import (
    RayAuthError,
    RayConnectionError,
    RayError,
    RayInvalidRequestError,
    RayJob,
    RayJobNotFoundError,
    RayJobsClient,
    RayNode,
)
from .catalog import catalog, placement
from .entrypoint import (
    Started,
    entrypoint,
    forget_secrets,
    prepare,
    read_exit_code,
    read_started,
    revoke,
)
from .settings import RayCredentialsError, RaySettings

if TYPE_CHECKING:
    from ...state import ServerSettings

__all__ = ["RayCredentialsError", "RayProvider", "RaySettings", "create"]

logger = logging.getLogger("vi_flow.server.ray")

#: Ray's default RAY_JOB_STOP_WAIT_TIME_S: SIGTERM, then SIGKILL this much later.
RAY_STOP_WAIT_S = 3.0
#: Seconds between two stops of a job cancelled before it started, if Ray starts it.
RESTOP_AFTER_S = 1.0
_TERMINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
_STATUS_BY_STATE = {
    "PENDING": TaskStatus.PENDING,
    "SUCCEEDED": TaskStatus.COMPLETED,
    "FAILED": TaskStatus.FAILED,
    "STOPPED": TaskStatus.CANCELLED,
}


def create(settings: ServerSettings) -> RayProvider:
    """Build the provider from the server settings (see :class:`RaySettings`)."""
    return RayProvider(RaySettings.from_server_settings(settings))


@attrs.define
class _Tracked:
    """A task whose Ray job the poller watches."""

    task_id: str
    job_id: str
    paths: TaskPaths
    status: TaskStatus
    max_run_time: float | None = None
    started: Started | None = None
    cancel_requested: bool = False
    timed_out: bool = False
    stopped_at: float = 0.0  # monotonic time of our last stop request
    reported: asyncio.Event = attrs.Factory(asyncio.Event)  # the end went to the sink
    deadline: float | None = None  # epoch seconds when max_run_time runs out
    raw_reason: str | None = None  # Ray's sentence about the pending job, last reported


class RayProvider(PollingJobProvider[RaySettings, _Tracked, RayNode, RayError]):
    """Runs vi_flow tasks as Ray jobs through the dashboard's Jobs REST API.

    Args:
        settings: Where the dashboard is and where task files live.
        api: A Jobs API client to use instead of one built from ``settings`` (tests).
    """

    name = "ray"
    _backend = "Ray"
    _backend_error = RayError

    def __init__(self, settings: RaySettings, *, api: RayJobsClient | None = None) -> None:
        super().__init__(settings)
        self.api = api or RayJobsClient(
            settings.url, token_file=settings.token_file, timeout=settings.timeout
        )
        # cancelled before they started: already reported, watched until Ray ends them
        self._draining: dict[str, _Tracked] = {}

    def __repr__(self) -> str:
        return f"RayProvider(url={self.settings.url!r})"

    # -- backend hooks -------------------------------------------------------------------

    async def _backend_version(self) -> str:
        return f"Ray {await self.api.version()}"

    async def _fetch_nodes(self) -> list[RayNode]:
        return await self.api.list_nodes()

    async def _close_client(self) -> None:
        await self.api.aclose()

    async def _check_sandbox(self) -> None:
        """Find out, once, whether jobs run in bubblewrap (see :func:`job_sandbox`)."""
        s = self.settings
        hidden = [s.tasks_dir, s.volumes_dir] + ([s.token_file.parent] if s.token_file else [])
        if s.server_home is not None:  # its admin token, its database: every organization's
            hidden.append(s.server_home)
        self.sandbox = await asyncio.to_thread(job_sandbox, hidden, s.tasks_dir)

    @property
    def isolation_gap(self) -> tuple[str, str] | None:
        """Without token authentication Ray's dashboard (and its GCS) takes jobs from
        anyone who reaches it, and every task runs on a Ray node that does: a task
        could submit a job of its own, outside the sandbox."""
        if self.settings.token_file is not None:
            return None
        return (
            "Ray runs without token authentication, so any task can submit a Ray job of"
            " its own, outside the sandbox, through the dashboard on its node",
            "run Ray with RAY_AUTH_MODE=token and give the server its token"
            " (VI_FLOW_RAY_TOKEN_FILE)",
        )

    def _sandbox_argv(self, spec: LaunchSpec) -> list[str]:
        volumes = [mount.host_path for mount in spec.mounts]
        return self.sandbox.prefix(spec.paths.root, volumes, spec.command_dir)

    def _recovered(self, task: RunningTask, job_id: str) -> _Tracked:
        spec = task.spec
        return _Tracked(spec.task_id, job_id, spec.paths, task.status, spec.max_run_time)

    async def _forget_secrets(self, tracked: _Tracked) -> None:
        await asyncio.to_thread(forget_secrets, tracked.paths)

    # -- tasks ---------------------------------------------------------------------------

    def exec_prefix(
        self, task_id: str, provider_id: str | None, *, terminal: bool = False
    ) -> list[str]:
        """Never: Ray cannot run a command inside a job, and the server's host is no place
        for a task's shell.

        Raises:
            UnsupportedOperation: Always.
        """
        raise UnsupportedOperation(
            self.name, "commands or shells inside a running job (Ray cannot run them there)"
        )

    async def place(self, config: TaskConfig) -> Placement:
        """Resolve a config against the cluster's nodes (see :func:`.catalog.placement`).

        Raises:
            ProviderUnavailable: The dashboard cannot be reached.
            CapacityError: No node has what the config asks for.
        """
        return placement(config, await self._node_list(fresh=False))

    async def submit(self, spec: LaunchSpec) -> None:
        """Submit the task as a Ray job and report it ``pending`` with its job id.

        Raises:
            ProviderUnavailable: The dashboard cannot be reached; nothing was queued.
            InvalidRequest: Ray refused the job, or its entry point is longer than Ray
                can start.
        """
        body = self._body(spec)
        size = len(body["entrypoint"].encode())
        if size >= MAX_ARG_STRLEN:  # QA AA: it failed EngineFailed, "Traceback (most..."
            raise InvalidRequest(
                f"the command is too long for a Ray job: Ray starts a job's entry point as"
                f" one argument of /bin/sh -c, which Linux bounds at {MAX_ARG_STRLEN:,}"
                f" bytes, and this one (the command, quoted, with the sandbox around it) is"
                f" {size:,}; pass long data in a file (upload it, or mount a volume)"
            )
        await asyncio.to_thread(prepare, spec)
        try:
            job_id = await self.api.submit_job(body)
        except RayError as exc:
            await asyncio.to_thread(forget_secrets, spec.paths)
            raise self._provider_error(exc) from None
        await self._queued(
            _Tracked(spec.task_id, job_id, spec.paths, TaskStatus.PENDING, spec.max_run_time)
        )

    def _body(self, spec: LaunchSpec) -> dict[str, Any]:
        """The ``POST /api/jobs/`` body: resources and ids only, never the environment."""
        place = spec.placement
        body: dict[str, Any] = {
            "entrypoint": entrypoint(spec, self._sandbox_argv(spec)),
            "submission_id": spec.task_id,
            "entrypoint_num_cpus": place.cpus,
            "metadata": {
                "vi_flow_task_id": spec.task_id,
                "vi_flow_organization_id": spec.organization_id,
            },
        }
        if place.gpu_count:
            body["entrypoint_num_gpus"] = place.gpu_count
        if place.memory_gb:
            body["entrypoint_memory"] = place.memory_gb * 1024**3
        accelerator = self._accelerator(place.gpu_type)
        if accelerator:  # how Ray pins work to a GPU model: a sliver of its resource
            body["entrypoint_resources"] = {f"accelerator_type:{accelerator}": 0.001}
        return body

    def _accelerator(self, gpu_type: str | None) -> str | None:
        for node in self._nodes:
            if gpu_type and node.gpu_type == gpu_type and node.accelerator:
                return node.accelerator
        return None

    async def cancel(self, task_id: str, grace: float) -> None:
        """Stop the task's job and report it ``cancelled``; a finished task is a no-op.

        A task whose command has not started is reported at once and never starts. A
        running one gets Ray's SIGTERM, then SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S``;
        ``grace`` bounds how long this waits for Ray to confirm.

        Raises:
            ProviderUnavailable: The command runs and the dashboard cannot be reached.
        """
        if await self._cancel_unreached(task_id):
            return
        tracked = self._tracked.get(task_id)
        if tracked is None:
            return
        tracked.cancel_requested = True
        unstarted = await asyncio.to_thread(revoke, tracked.paths)
        try:
            await self._stop(tracked)
        except RayError as exc:
            if not unstarted:
                tracked.cancel_requested = False
                raise self._provider_error(exc) from None
            logger.warning("could not stop Ray job %s yet: %s", tracked.job_id, exc.message)
        if unstarted:
            await self._cancel_unstarted(tracked)
            return
        await self._wait_reported(tracked, max(grace, RAY_STOP_WAIT_S) + 5.0)

    async def _stop(self, tracked: _Tracked) -> None:
        tracked.stopped_at = time.monotonic()
        with contextlib.suppress(RayJobNotFoundError):
            await self.api.stop_job(tracked.job_id)

    async def _cancel_unstarted(self, tracked: _Tracked) -> None:
        """Report a task whose start token was revoked; keep its job watched."""
        if self._tracked.pop(tracked.task_id, None) is None:
            return
        tracked.status = TaskStatus.CANCELLED
        self._draining[tracked.task_id] = tracked
        message = f"cancelled before it started; Ray job {tracked.job_id} will not run it"
        await self._report(
            TaskUpdate(
                tracked.task_id,
                TaskStatus.CANCELLED,
                reason="Cancelled",
                message=message,
                provider_id=tracked.job_id,
                time=now_ms(),
            )
        )
        tracked.reported.set()

    # -- polling -------------------------------------------------------------------------

    async def _poll_once(self) -> None:
        watched = [*self._tracked.values(), *self._draining.values()]
        await asyncio.gather(*(self._refresh(t) for t in watched))

    async def _refresh(self, tracked: _Tracked) -> None:
        try:
            job = await self.api.get_job(tracked.job_id)
        except RayJobNotFoundError:
            if self._draining.pop(tracked.task_id, None) is None:
                await self._finish(tracked, self._lost(tracked))
            return
        except RayError as exc:
            self._poll_failed(tracked.job_id, exc.message)
            return
        self._poll_answered()
        if tracked.task_id in self._draining:
            await self._drain(tracked, job)
        else:
            await self._apply(tracked, job)

    async def _drain(self, tracked: _Tracked, job: RayJob) -> None:
        """A job cancelled before it started: stop it if Ray runs it, forget it once over."""
        if job.terminal:
            self._draining.pop(tracked.task_id, None)
            await asyncio.to_thread(forget_secrets, tracked.paths)
            with contextlib.suppress(RayError):
                await self.api.delete_job(tracked.job_id)
        elif job.state == "RUNNING" and time.monotonic() - tracked.stopped_at > RESTOP_AFTER_S:
            with contextlib.suppress(RayError):
                await self._stop(tracked)

    async def _apply(self, tracked: _Tracked, job: RayJob) -> None:
        """Report what changed since the last poll, if anything."""
        if tracked.started is None and job.state != "PENDING":
            tracked.started = await asyncio.to_thread(read_started, tracked.paths)
        status = self._status(tracked, job)
        if status == TaskStatus.RUNNING:
            await self._enforce_max_run_time(tracked)
        if self._tracked.get(tracked.task_id) is not tracked:
            return
        if status == tracked.status:
            if status == TaskStatus.PENDING and job.message != tracked.raw_reason:
                tracked.raw_reason = job.message
                await self._report(self._waiting(tracked, job))
            return
        if status not in _TERMINAL:
            tracked.status = status
            await self._report(self._running(tracked, job))
            return
        missed_start = tracked.status == TaskStatus.PENDING and tracked.started is not None
        started = self._running(tracked, job) if missed_start else None
        await self._finish(tracked, await self._ended(tracked, job, status), started)

    @staticmethod
    def _status(tracked: _Tracked, job: RayJob) -> TaskStatus:
        if job.state == "RUNNING":  # Ray's supervisor runs; is the command running yet?
            return TaskStatus.RUNNING if tracked.started else tracked.status
        status = _STATUS_BY_STATE.get(job.state, tracked.status)
        if status == TaskStatus.CANCELLED and tracked.timed_out:
            return TaskStatus.FAILED
        return status

    async def _enforce_max_run_time(self, tracked: _Tracked) -> None:
        limit, started = tracked.max_run_time, tracked.started
        if limit is None or started is None:
            return
        tracked.deadline = started.time + limit
        if tracked.timed_out or time.time() < tracked.deadline:
            return
        tracked.timed_out = True
        try:
            await self._stop(tracked)
        except RayError as exc:
            tracked.timed_out = False  # try again on the next poll
            logger.warning("could not stop Ray job %s: %s", tracked.job_id, exc.message)

    def _running(self, tracked: _Tracked, job: RayJob) -> TaskUpdate:
        started = tracked.started
        where = f" on node {job.node_id[:12]}" if job.node_id else ""
        return TaskUpdate(
            tracked.task_id,
            TaskStatus.RUNNING,
            reason="Started",
            message=f"running as Ray job {tracked.job_id}{where}",
            provider_id=tracked.job_id,
            gpu_ids=list(started.gpu_ids) if started else None,
            time=int(started.time * 1000) if started else now_ms(),
        )

    def _waiting(self, tracked: _Tracked, job: RayJob) -> TaskUpdate:
        """A pending job: Ray gives no reason code, only a sentence (kept as raw)."""
        return TaskUpdate(
            tracked.task_id,
            TaskStatus.PENDING,
            reason="WaitingForCapacity",
            raw_reason=job.message or None,
            message=f"waiting in Ray as job {tracked.job_id}: {job.message or 'pending'}",
            provider_id=tracked.job_id,
            time=now_ms(),
        )

    async def _ended(self, tracked: _Tracked, job: RayJob, status: TaskStatus) -> TaskUpdate:
        status_file = await asyncio.to_thread(read_exit_code, tracked.paths)
        if status_file is None and job.state != "STOPPED":
            status_file = job.driver_exit_code
        # the entry point's shell reports a signal N as 128 + N, as a shell does
        end = from_shell_status(status_file)
        reason, message = self._outcome(tracked, job, status, end, status_file is not None)
        return TaskUpdate(
            tracked.task_id,
            status,
            exit_code=end.exit_code,
            signal=end.signal,
            reason=reason,
            message=message,
            provider_id=tracked.job_id,
            time=int(job.end_time * 1000) if job.end_time else now_ms(),
        )

    @staticmethod
    def _outcome(
        tracked: _Tracked, job: RayJob, status: TaskStatus, end: Exit, ran: bool
    ) -> tuple[str | None, str]:
        known = own_outcome(tracked, status, end)
        if known is not None:
            return known
        if status == TaskStatus.CANCELLED:
            return (
                "CancelledOutsideViFlow",
                f"Ray job {job.submission_id} was stopped outside vi_flow "
                "(ray job stop, the dashboard or the Jobs API)",
            )
        if ran:
            return end_reason(end), describe(end)
        if job.error_type == "JOB_SUPERVISOR_ACTOR_START_TIMEOUT":
            return "StartTimeout", f"Ray could not start job {job.submission_id}: {job.message}"
        kind = f" ({job.error_type})" if job.error_type else ""
        return "EngineFailed", f"Ray job {job.submission_id} failed{kind}: {job.message}"

    def _lost(self, tracked: _Tracked) -> TaskUpdate:
        return TaskUpdate(
            tracked.task_id,
            TaskStatus.FAILED,
            reason="JobLost",
            message=f"Ray no longer knows job {tracked.job_id} (deleted, or the cluster restarted)",
            time=now_ms(),
        )

    # -- capacity ------------------------------------------------------------------------

    async def instances(self) -> list[AvailableInstance]:
        """One entry for CPU-only jobs and one per GPU type and count (1, 2, 4, ... per node)."""
        return catalog(await self._node_list(fresh=True))

    async def list_reservations(self) -> list[Reservation]:
        """None: Ray has no reservations."""
        return []

    # -- errors --------------------------------------------------------------------------

    def _provider_error(self, exc: RayError) -> ProviderError:
        if isinstance(exc, RayConnectionError):
            return ProviderUnavailable(exc.message, self.settings.url)
        if isinstance(exc, RayAuthError):
            return RayCredentialsError(exc.message)
        if isinstance(exc, RayInvalidRequestError):
            return InvalidRequest(f"Ray refused the job: {exc.message}")
        return ProviderError(exc.message)
