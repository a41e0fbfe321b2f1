"""The one interface between the server and whatever runs tasks (this machine, Slurm, ...).

The task service (:mod:`vi_flow.server.tasks`) owns task records, volumes and
SSH keys in SQLite; a :class:`ComputeProvider` owns execution. The service hands the
provider a fully resolved :class:`LaunchSpec` (paths, environment, mounts) and the
provider reports every change of a task back through the :data:`UpdateSink` given to
:meth:`ComputeProvider.start`, as :class:`TaskUpdate` values. A provider that schedules
(the local one, Slurm) keeps a task ``pending`` until capacity frees up and reports
``running`` when it starts.

Errors are typed: :class:`ProviderUnavailable` (transient, names the URL; ``503``),
:class:`UnsupportedOperation` (``501 NOT_SUPPORTED``), :class:`CapacityError` and
:class:`InvalidRequest` (``422``, naming what was asked and what exists).
:func:`problem_for` turns any of them into the server's wire error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import attrs

from ...models.tasks import (
    AvailabilitySlot,
    AvailableInstance,
    Reservation,
    ReservationRequest,
    TaskConfig,
    TaskStatus,
)
from ..errors import APIProblem

__all__ = [
    "MAX_ARG_STRLEN",
    "CapacityError",
    "ClusterPoller",
    "ComputeProvider",
    "InvalidRequest",
    "LaunchSpec",
    "Mount",
    "Placement",
    "ProviderError",
    "ProviderUnavailable",
    "RunningTask",
    "TaskPaths",
    "TaskUpdate",
    "UnsupportedOperation",
    "UpdateSink",
    "problem_for",
    "report_to",
]

MAX_ARG_STRLEN = 131_072
"""Linux's bound on one argument of a command (32 pages), its NUL included: what a task's
command words and ``NAME=value`` variables are checked against, and a Ray job's entry
point (one argument of ``/bin/sh -c``)."""


# -- errors ------------------------------------------------------------------------------


class ProviderError(Exception):
    """Base of every provider error; ``message`` is a sentence a user can act on."""

    status = 500
    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProviderUnavailable(ProviderError):
    """The provider's backend cannot be reached now (transient; retrying may help).

    Args:
        message: What failed.
        url: The address that could not be reached (named in the message).
    """

    status = 503
    code = "PROVIDER_UNAVAILABLE"

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(f"{message} ({url})" if url and url not in message else message)
        self.url = url


class UnsupportedOperation(ProviderError):
    """The provider cannot do this at all (``501 NOT_SUPPORTED``).

    Args:
        provider: The provider name.
        operation: What was asked, such as ``"create_reservation"``.
    """

    status = 501
    code = "NOT_SUPPORTED"

    def __init__(self, provider: str, operation: str) -> None:
        super().__init__(f"the {provider!r} compute provider does not support {operation}")
        self.provider = provider
        self.operation = operation


class InvalidRequest(ProviderError):
    """The request cannot be met as written (``422``): name what was asked and what exists."""

    status = 422
    code = "VALIDATION_ERROR"


class CapacityError(InvalidRequest):
    """The provider will never have the resources asked for (unknown GPU type, too many)."""


def problem_for(error: ProviderError) -> APIProblem:
    """The wire error for a provider error (status and code from its class)."""
    return APIProblem(error.status, error.code, error.message)


# -- data exchanged with the service ---------------------------------------------------


@attrs.frozen
class TaskPaths:
    """Where one task lives on the host that serves its SSH sessions and logs.

    Attributes:
        root: The task directory (the SFTP root).
        workdir: The working directory of the command (``<root>/workspace``).
        stdout: The stdout log file.
        stderr: The stderr log file.
        output_dir: The directory exported as ``$VI_FLOW_OUTPUT_DIR``.
    """

    root: Path
    workdir: Path
    stdout: Path
    stderr: Path
    output_dir: Path

    @classmethod
    def under(cls, root: Path) -> TaskPaths:
        """The standard layout: ``workspace/``, ``logs/stdout.log``, ``logs/stderr.log``, ``output/``."""
        return cls(
            root=root,
            workdir=root / "workspace",
            stdout=root / "logs" / "stdout.log",
            stderr=root / "logs" / "stderr.log",
            output_dir=root / "output",
        )


@attrs.frozen
class Mount:
    """A volume as a task sees it.

    Attributes:
        volume_id: The volume.
        name: Its display name (for ``VI_FLOW_VOLUME_<NAME>``).
        host_path: The real directory.
        mount_path: The path asked for.
        visible_path: Where the task actually finds it (``mount_path`` when it could be
            created, else a path inside the workspace).
    """

    volume_id: str
    name: str
    host_path: Path
    mount_path: str
    visible_path: Path


@attrs.frozen
class Placement:
    """What a config resolves to on a provider (checked before anything is stored).

    Attributes:
        instance_type: The catalog entry chosen.
        gpu_type: The GPU model, ``None`` for CPU-only.
        gpu_count: GPUs to hold.
        cpus: CPU cores to hold.
        memory_gb: Memory to hold (0: not tracked).
        price_per_hour: The instance price.
    """

    instance_type: str
    gpu_type: str | None = None
    gpu_count: int = 0
    cpus: int = 1
    memory_gb: int = 0
    price_per_hour: float = 0.0


@attrs.frozen
class LaunchSpec:
    """Everything a provider needs to start a task; the service has resolved it all.

    Attributes:
        task_id: The task.
        organization_id: Its organization.
        config: The submitted config.
        placement: From :meth:`ComputeProvider.place`.
        argv: The command as argv (a string command is ``["/bin/sh", "-c", cmd]``).
        env: The full extra environment (config env, ``VI_FLOW_*``), without secrets.
        paths: From :meth:`ComputeProvider.task_paths`.
        mounts: Volumes to make visible.
        max_run_time: Seconds before the task is stopped (``None``: no limit).
        reservation_id: Capacity to run on, if any.
    """

    task_id: str
    organization_id: str
    config: TaskConfig
    placement: Placement
    argv: list[str]
    env: dict[str, str]
    paths: TaskPaths
    mounts: list[Mount] = attrs.Factory(list)
    max_run_time: float | None = None
    reservation_id: str | None = None

    @property
    def command_dir(self) -> Path:
        """Where the command starts: its ``working_dir`` inside the workspace, or the
        workspace (relative and without ``..``: checked when the task was accepted)."""
        working_dir = self.config.working_dir
        return self.paths.workdir / working_dir if working_dir else self.paths.workdir


@attrs.frozen
class TaskUpdate:
    """A change the provider reports; ``None`` fields are left as they were.

    Attributes:
        task_id: The task.
        status: Its new status.
        exit_code: The process's ``exit()`` code, 0-255, once ended; None when it did not
            exit by itself (see :mod:`._exits`).
        message: A sentence about why (shown to the user).
        reason: A name from :data:`._exits.END_REASONS` (ended) or
            :data:`._exits.PENDING_REASONS` (pending), ``Started`` (running).
        provider_id: The provider's own id once known (pgid, Slurm job id).
        gpu_ids: Device indices assigned when it starts.
        time: When it happened, ms since the epoch.
        signal: The signal that ended the process, when one did.
        raw_reason: The engine's own words for ``reason`` (Slurm's ``state_reason``).
    """

    task_id: str
    status: TaskStatus
    exit_code: int | None = None
    message: str | None = None
    reason: str | None = None
    provider_id: str | None = None
    gpu_ids: list[int] | None = None
    time: int = 0
    signal: int | None = None
    raw_reason: str | None = None


@attrs.frozen
class RunningTask:
    """A non-terminal task the service knows about, handed to :meth:`ComputeProvider.recover`.

    Attributes:
        spec: How it was launched.
        status: The status last stored.
        provider_id: The provider's id, if it had started.
    """

    spec: LaunchSpec
    status: TaskStatus
    provider_id: str | None = None


UpdateSink = Callable[[TaskUpdate], Awaitable[None]]
"""Where a provider reports task changes; called from the server's event loop."""


async def report_to(sink: UpdateSink | None, update: TaskUpdate, logger: logging.Logger) -> bool:
    """Hand ``update`` to the service's ``sink`` (if started), logging what it raises;
    whether it was taken (``True`` with no sink).

    The sink is the service's code: an error there must never stop the provider's
    scheduler or poller, which would leave every other task unwatched.

    A task's end that cannot be recorded for now (a full disk, the database away) is
    tried again every :data:`REPORT_RETRY` s until it is: dropped, the task stayed
    ``running`` for good, its run waiting on it, and the capacity it held was never
    given to the tasks queued behind it (QA). Cancelling the caller (a stop) ends it.
    """
    if sink is None:
        return True
    tries = 0
    while True:
        try:
            await sink(update)
        except Exception as exc:
            if tries == 0:
                logger.exception("task update for %s could not be recorded", update.task_id)
            if not (update.status.terminal and _for_now(exc)):
                return False
        else:
            if tries:
                logger.info("task %s: its end was recorded after %d tries", update.task_id,
                            tries + 1)  # fmt: skip
            return True
        tries += 1
        await asyncio.sleep(REPORT_RETRY)


REPORT_RETRY = 1.0
"""Seconds between tries of a task's end that could not be recorded for now."""


def _for_now(exc: BaseException) -> bool:
    """Whether a failure to record will pass by itself: a full disk, the database away."""
    from ..db import DatabaseUnavailable, is_disk_full

    return is_disk_full(exc) or isinstance(exc, DatabaseUnavailable)


# -- the protocol -----------------------------------------------------------------------


@runtime_checkable
class ClusterPoller(Protocol):
    """A provider that watches its jobs by polling a cluster (Slurm, Ray): with replicas,
    one of them polls each cluster at a time (see :mod:`vi_flow.server.replicas`)."""

    @property
    def cluster(self) -> str:
        """Names the cluster: replicas with the same name poll it one at a time."""

    def poll_here(self, on: bool) -> None:
        """Poll (``True``, the default) or leave the polling to another replica."""


@runtime_checkable
class ComputeProvider(Protocol):
    """What the server needs from a compute backend. All methods run on the event loop
    and must not block it (do blocking work in threads, HTTP with aiohttp).

    Lifecycle: :meth:`start` once with the update sink, then :meth:`recover` with the tasks
    the database still thinks are alive, then any calls, then :meth:`close`.
    """

    name: str
    """Short name (``local``, ``slurm``), shown in errors and stored on tasks."""

    async def start(self, sink: UpdateSink) -> None:
        """Connect/prepare; remember ``sink`` for reporting task changes."""

    async def close(self) -> None:
        """Stop background work; a local provider stops its running tasks."""

    async def recover(self, tasks: Sequence[RunningTask]) -> None:
        """Reconcile after a server start: report each task's real state through the sink
        (a process that died with the server -> ``failed`` with reason ``ServerRestarted``;
        a still-queued task may be re-queued)."""

    async def abandon(self, tasks: Sequence[RunningTask]) -> None:
        """After a server start, before :meth:`recover`: ``tasks`` never started as far as
        the database knows, and never will (their run ended): stop whatever a server that
        died may have started of them all the same (locally, what it forked before it
        could record it; nothing elsewhere)."""

    # tasks
    def task_paths(self, task_id: str) -> TaskPaths:
        """Where the task's workspace and logs live (pure; no I/O)."""

    def exec_prefix(
        self, task_id: str, provider_id: str | None, *, terminal: bool = False
    ) -> list[str]:
        """The argv put before a command to run it inside the running task
        (``[]`` locally; ``["srun", "--jobid=N", "--overlap"]`` on Slurm). ``terminal``:
        the session has one (a PTY), which a command run elsewhere is given there too."""

    def running_here(self) -> list[str]:
        """The tasks whose processes this server started and still runs on its own host
        (a cluster provider's run on the cluster: ``[]``)."""

    async def place(self, config: TaskConfig) -> Placement:
        """Resolve and check a config's resources.

        Raises:
            CapacityError: Never satisfiable here; names what was asked and what exists.
            InvalidRequest: Malformed (bad GPU shorthand, unknown instance type, price).
        """

    async def submit(self, spec: LaunchSpec) -> None:
        """Queue the task; report ``running``/terminal updates through the sink later.

        Raises:
            ProviderUnavailable: The backend cannot be reached (nothing was queued).
        """

    async def cancel(self, task_id: str, grace: float) -> None:
        """Stop the task: SIGTERM (or the backend's equivalent), then kill after ``grace``
        seconds; report ``cancelled`` through the sink. A finished task is a no-op."""

    # capacity
    async def instances(self) -> list[AvailableInstance]:
        """The instance catalog with what can start now."""

    async def create_reservation(self, request: ReservationRequest) -> Reservation:
        """Hold capacity for a window.

        Raises:
            CapacityError: The window cannot be held; the message says what is free.
            UnsupportedOperation: The provider cannot create reservations.
        """

    async def list_reservations(self) -> list[Reservation]:
        """Reservations the provider knows (all organizations; the service filters)."""

    async def cancel_reservation(self, reservation_id: str) -> Reservation:
        """Release a reservation.

        Raises:
            InvalidRequest: Unknown reservation.
            UnsupportedOperation: The provider cannot cancel reservations.
        """

    async def availability(
        self, instance_type: str | None, start: int, end: int, duration_ms: int
    ) -> list[AvailabilitySlot]:
        """Windows inside ``[start, end]`` (ms) of at least ``duration_ms`` that could be
        reserved."""

    # volumes
    @property
    def volumes_dir(self) -> Path:
        """Where volume directories live (a deleted volume's data is set aside there
        until it is removed: see :mod:`vi_flow.server.trees`)."""

    async def create_volume(self, volume_id: str, size_gb: int) -> Path:
        """Create the storage for a volume (a directory in :attr:`volumes_dir`) and
        return its host path."""

    async def delete_volume(self, volume_id: str) -> None:
        """Delete the storage of a volume whose record could not be saved (the service
        deletes a recorded volume's directory itself: it sets it aside in the transaction
        that deletes the record, then removes it)."""
