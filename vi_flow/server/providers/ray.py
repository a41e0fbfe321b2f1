"""The Ray compute provider: vi_flow tasks as Ray jobs, over the dashboard's Jobs REST API.

It implements :class:`~vi_flow.server.providers.base.ComputeProvider` with the aiohttp
client in :mod:`._ray_api` (no ``ray`` import: the server does not need Ray installed).
A task becomes one Ray job whose submission id is the task id. Its CPUs, GPUs, memory and
GPU type (Ray's ``accelerator_type`` resource) go to the ``entrypoint_*`` fields; its
command runs from the shell entry point of :mod:`._ray_entrypoint`, which appends stdout
and stderr to the task's log files (so logs, follows and shells go through the server's
SSH endpoint exactly as with the local provider) and records the GPUs Ray assigned and
the exit status in files beside them. The environment, secrets included, travels in a
mode-0600 file the entry point sources and deletes, never in ``runtime_env`` or
``metadata``, which anyone reaching the dashboard can read.

A poller (one ``GET /api/jobs/{id}`` per watched job) reports state changes through the
update sink: ``running`` once the command has started (not when Ray's job supervisor
starts), then ``completed``/``failed``/``cancelled`` with the exit status and a reason. It
stops jobs past ``max_run_time`` itself. Ray cannot stop a PENDING job (the stop answers
``true`` and the job starts later), so a cancel revokes the task's start token first:
a task that had not started is reported ``cancelled`` at once and its job, whenever Ray
starts it, exits without running the command; the poller stops it if it shows up RUNNING
and deletes its record once it ends. A job stopped with ``ray job stop`` or the dashboard
is reported ``cancelled`` with reason ``CancelledOutsideViFlow``.

Settings come from ``ServerSettings.extra["ray"]`` (the keys of :class:`RaySettings`),
else ``VI_FLOW_RAY_URL`` (or ``RAY_API_SERVER_ADDRESS``), ``VI_FLOW_RAY_TASKS_DIR``,
``VI_FLOW_RAY_VOLUMES_DIR`` and ``VI_FLOW_RAY_TOKEN_FILE``. Task and volume directories
must be visible at the same path on every node that runs entry points and on the server.

Limits, each failing with :class:`~.base.UnsupportedOperation` or documented here:
reservations and the availability search do not exist in Ray; ``grace`` on cancel is the
cluster's ``RAY_JOB_STOP_WAIT_TIME_S`` (3 s by default: SIGTERM to the entry point's
process tree, then SIGKILL); and shells run on the server's host with the task's
environment and GPUs (``exec_prefix`` is empty), because Ray has no way to run a command
inside another job, so on a multi-node cluster a shell does not run on the job's node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ...models.tasks import (
    AvailabilitySlot,
    AvailableInstance,
    Reservation,
    ReservationRequest,
    TaskConfig,
    TaskStatus,
)
from ._ray_api import (
    RayAuthError,
    RayConnectionError,
    RayError,
    RayInvalidRequestError,
    RayJob,
    RayJobNotFoundError,
    RayJobsClient,
    RayNode,
)
from ._ray_catalog import catalog, placement
from ._ray_entrypoint import (
    Started,
    entrypoint,
    forget_secrets,
    prepare,
    read_exit_code,
    read_started,
    revoke,
)
from ._ray_settings import RayCredentialsError, RaySettings
from .base import (
    InvalidRequest,
    LaunchSpec,
    Placement,
    ProviderError,
    ProviderUnavailable,
    RunningTask,
    TaskPaths,
    TaskUpdate,
    UnsupportedOperation,
    UpdateSink,
)

if TYPE_CHECKING:
    from ..state import ServerSettings

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


def _now_ms() -> int:
    return int(time.time() * 1000)


class RayProvider:
    """Runs vi_flow tasks as Ray jobs through the dashboard's Jobs REST API.

    Args:
        settings: Where the dashboard is and where task files live.
        api: A Jobs API client to use instead of one built from ``settings`` (tests).
    """

    name = "ray"

    def __init__(self, settings: RaySettings, *, api: RayJobsClient | None = None) -> None:
        self.settings = settings
        self.api = api or RayJobsClient(
            settings.url, token_file=settings.token_file, timeout=settings.timeout
        )
        self._sink: UpdateSink | None = None
        self._tracked: dict[str, _Tracked] = {}
        # cancelled before they started: already reported, watched until Ray ends them
        self._draining: dict[str, _Tracked] = {}
        self._poller: asyncio.Task[None] | None = None
        self._nodes: list[RayNode] = []
        self._nodes_at = -1e9

    def __repr__(self) -> str:
        return f"RayProvider(url={self.settings.url!r})"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, sink: UpdateSink) -> None:
        """Remember ``sink``, check that the dashboard answers (a warning if not), poll."""
        self._sink = sink
        try:
            version = await self.api.version()
            logger.info("Ray provider on %s (Ray %s)", self.settings.url, version)
        except RayError as exc:
            logger.warning("Ray is not usable yet: %s", exc.message)
        self._poller = asyncio.create_task(self._poll_forever(), name="vi-flow-ray-poller")

    async def close(self) -> None:
        """Stop polling and close the HTTP session; Ray jobs keep running."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self.api.aclose()

    async def recover(self, tasks: Sequence[RunningTask]) -> None:
        """Watch the jobs of tasks that were alive; submit those that never reached Ray."""
        for task in tasks:
            spec = task.spec
            if task.provider_id:
                self._tracked[spec.task_id] = _Tracked(
                    spec.task_id, task.provider_id, spec.paths, task.status, spec.max_run_time
                )
            elif task.status == TaskStatus.PENDING:
                await self._resubmit(spec)
            else:
                message = "the server stopped before the task reached Ray"
                await self._report(
                    TaskUpdate(
                        spec.task_id,
                        TaskStatus.FAILED,
                        reason="ServerRestarted",
                        message=message,
                        time=_now_ms(),
                    )
                )
        await self._poll_once()

    async def _resubmit(self, spec: LaunchSpec) -> None:
        try:
            await self.submit(spec)
        except ProviderError as exc:
            update = TaskUpdate(
                spec.task_id, TaskStatus.FAILED, reason="SubmitFailed", message=exc.message
            )
            await self._report(update)

    # -- tasks ---------------------------------------------------------------------------

    def task_paths(self, task_id: str) -> TaskPaths:
        """``<tasks_dir>/<task_id>/`` with ``workspace/``, ``logs/`` and ``output/``."""
        root = self.settings.tasks_dir / task_id
        return TaskPaths(
            root=root,
            workdir=root / "workspace",
            stdout=root / "logs" / "stdout.log",
            stderr=root / "logs" / "stderr.log",
            output_dir=root / "output",
        )

    def exec_prefix(self, task_id: str, provider_id: str | None) -> list[str]:
        """Nothing: Ray cannot run a command inside a job, so shells run on the server's
        host, in the task's workspace with its environment and ``CUDA_VISIBLE_DEVICES``."""
        return []

    async def place(self, config: TaskConfig) -> Placement:
        """Resolve a config against the cluster's nodes (see :func:`._ray_catalog.placement`).

        Raises:
            ProviderUnavailable: The dashboard cannot be reached.
            CapacityError: No node has what the config asks for.
        """
        return placement(config, await self._node_list(fresh=False))

    async def submit(self, spec: LaunchSpec) -> None:
        """Submit the task as a Ray job and report it ``pending`` with its job id.

        Raises:
            ProviderUnavailable: The dashboard cannot be reached; nothing was queued.
            InvalidRequest: Ray refused the job.
        """
        await asyncio.to_thread(prepare, spec)
        try:
            job_id = await self.api.submit_job(self._body(spec))
        except RayError as exc:
            await asyncio.to_thread(forget_secrets, spec.paths)
            raise self._provider_error(exc) from None
        await self._report(
            TaskUpdate(
                spec.task_id,
                TaskStatus.PENDING,
                reason="WaitingForCapacity",
                message=f"queued as Ray job {job_id}",
                provider_id=job_id,
                time=_now_ms(),
            )
        )
        self._tracked[spec.task_id] = _Tracked(
            spec.task_id, job_id, spec.paths, TaskStatus.PENDING, spec.max_run_time
        )

    def _body(self, spec: LaunchSpec) -> dict[str, Any]:
        """The ``POST /api/jobs/`` body: resources and ids only, never the environment."""
        place = spec.placement
        body: dict[str, Any] = {
            "entrypoint": entrypoint(spec),
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
        deadline = time.monotonic() + max(grace, RAY_STOP_WAIT_S) + 5.0
        while not tracked.reported.is_set() and time.monotonic() < deadline:
            await self._refresh(tracked)
            if not tracked.reported.is_set():
                await asyncio.sleep(0.05)

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
                time=_now_ms(),
            )
        )
        tracked.reported.set()

    # -- polling -------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self._poll_once()
            except Exception:  # the poller must outlive any one bad answer
                logger.exception("Ray poll failed")
            await asyncio.sleep(self.settings.poll_interval)

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
            logger.debug("cannot poll Ray job %s: %s", tracked.job_id, exc.message)
            return
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
        if status == tracked.status or self._tracked.get(tracked.task_id) is not tracked:
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
        if tracked.timed_out or limit is None or started is None:
            return
        if time.time() < started.time + limit:
            return
        tracked.timed_out = True
        try:
            await self._stop(tracked)
        except RayError as exc:
            tracked.timed_out = False  # try again on the next poll
            logger.warning("could not stop Ray job %s: %s", tracked.job_id, exc.message)

    async def _finish(
        self, tracked: _Tracked, update: TaskUpdate, started: TaskUpdate | None = None
    ) -> None:
        """Stop watching (once, even when two polls race) and report the end.

        ``started`` is reported first for a command that began and ended between polls.
        """
        if self._tracked.pop(tracked.task_id, None) is None:
            return
        tracked.status = update.status
        await asyncio.to_thread(forget_secrets, tracked.paths)
        if started is not None:
            await self._report(started)
        await self._report(update)
        tracked.reported.set()

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
            time=int(started.time * 1000) if started else _now_ms(),
        )

    async def _ended(self, tracked: _Tracked, job: RayJob, status: TaskStatus) -> TaskUpdate:
        exit_code = await asyncio.to_thread(read_exit_code, tracked.paths)
        if exit_code is None and job.state != "STOPPED":
            exit_code = job.driver_exit_code
        reason, message = self._outcome(tracked, job, status, exit_code)
        return TaskUpdate(
            tracked.task_id,
            status,
            exit_code=exit_code,
            reason=reason,
            message=message,
            provider_id=tracked.job_id,
            time=int(job.end_time * 1000) if job.end_time else _now_ms(),
        )

    @staticmethod
    def _outcome(
        tracked: _Tracked, job: RayJob, status: TaskStatus, exit_code: int | None
    ) -> tuple[str | None, str]:
        if tracked.timed_out:
            limit = tracked.max_run_time or 0
            return "MaxRunTimeExceeded", f"stopped after exceeding max_run_time of {limit:g} s"
        if status == TaskStatus.COMPLETED:
            return None, "exited with status 0"
        if status == TaskStatus.CANCELLED:
            if tracked.cancel_requested:
                return "Cancelled", "cancelled by request"
            return (
                "CancelledOutsideViFlow",
                f"Ray job {job.submission_id} was stopped outside vi_flow "
                "(ray job stop, the dashboard or the Jobs API)",
            )
        if exit_code is not None:
            return "NonZeroExit", f"exited with code {exit_code}"
        if job.error_type == "JOB_SUPERVISOR_ACTOR_START_TIMEOUT":
            return "StartTimeout", f"Ray could not start job {job.submission_id}: {job.message}"
        kind = f" ({job.error_type})" if job.error_type else ""
        return "RayJobFailed", f"Ray job {job.submission_id} failed{kind}: {job.message}"

    def _lost(self, tracked: _Tracked) -> TaskUpdate:
        return TaskUpdate(
            tracked.task_id,
            TaskStatus.FAILED,
            reason="JobLost",
            message=f"Ray no longer knows job {tracked.job_id} (deleted, or the cluster restarted)",
            time=_now_ms(),
        )

    async def _report(self, update: TaskUpdate) -> None:
        if self._sink is None:
            return
        try:
            await self._sink(update)
        except Exception:  # the sink is the service's; never let it kill the poller
            logger.exception("task update for %s could not be recorded", update.task_id)

    # -- capacity ------------------------------------------------------------------------

    async def _node_list(self, *, fresh: bool) -> list[RayNode]:
        if fresh or time.monotonic() - self._nodes_at > self.settings.catalog_ttl:
            try:
                self._nodes = await self.api.list_nodes()
            except RayError as exc:
                raise self._provider_error(exc) from None
            self._nodes_at = time.monotonic()
        return self._nodes

    async def instances(self) -> list[AvailableInstance]:
        """One entry for CPU-only jobs and one per GPU type and count (1, 2, 4, ... per node)."""
        return catalog(await self._node_list(fresh=True))

    async def create_reservation(self, request: ReservationRequest) -> Reservation:
        """Not available: Ray has no reservations."""
        raise UnsupportedOperation(self.name, "create_reservation")

    async def list_reservations(self) -> list[Reservation]:
        """None: Ray has no reservations."""
        return []

    async def cancel_reservation(self, reservation_id: str) -> Reservation:
        """Not available: Ray has no reservations."""
        raise UnsupportedOperation(self.name, "cancel_reservation")

    async def availability(
        self, instance_type: str | None, start: int, end: int, duration_ms: int
    ) -> list[AvailabilitySlot]:
        """Not available: Ray's scheduler decides when queued jobs start."""
        raise UnsupportedOperation(self.name, "availability search")

    # -- volumes -------------------------------------------------------------------------

    async def create_volume(self, volume_id: str, size_gb: int) -> Path:
        """A directory under ``volumes_dir`` (size is not enforced)."""
        path = self.settings.volumes_dir / volume_id
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        return path

    async def delete_volume(self, volume_id: str) -> None:
        """Remove the volume's directory."""
        path = self.settings.volumes_dir / volume_id
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)

    # -- errors --------------------------------------------------------------------------

    def _provider_error(self, exc: RayError) -> ProviderError:
        if isinstance(exc, RayConnectionError):
            return ProviderUnavailable(exc.message, self.settings.url)
        if isinstance(exc, RayAuthError):
            return RayCredentialsError(exc.message)
        if isinstance(exc, RayInvalidRequestError):
            return InvalidRequest(f"Ray refused the job: {exc.message}")
        return ProviderError(exc.message)
