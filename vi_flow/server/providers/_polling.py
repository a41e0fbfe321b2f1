"""The skeleton of a provider that runs tasks as jobs of a remote scheduler and polls them.

The Slurm (:mod:`.slurm`) and Ray (:mod:`.ray`) providers differ in how they talk to their
backend and read a job's state, and in nothing else here. :class:`PollingJobProvider`
owns what they share: the update sink and its error guard, the table of watched tasks,
the poller task (started by ``start``, cancelled by ``close``; it polls every
``poll_interval`` while jobs change and backs off to ``idle_poll_interval`` while
nothing does, waking early for a new task or a ``max_run_time`` deadline), recovery after a server
restart, reporting a queued task and the end of a watched one (with the reasons for the
ends vi_flow causes, :func:`own_outcome`), the node list cached for ``catalog_ttl``
seconds, task and volume directories, and the calls neither backend offers (creating
and cancelling reservations, the availability search). A subclass
supplies the backend through a few hooks: its version, its node list, one poll, one
job's refresh, how a recovered task is tracked, how its secrets are forgotten, and how a
backend error becomes a :class:`~.base.ProviderError`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Generic, Protocol, TypeVar

from ...models.tasks import (
    AvailabilitySlot,
    Reservation,
    ReservationRequest,
    TaskStatus,
)
from ..clock import now_ms, wait_event
from ..trees import try_remove_tree
from ._exits import Exit, describe
from .base import (
    LaunchSpec,
    ProviderError,
    ProviderUnavailable,
    RunningTask,
    TaskPaths,
    TaskUpdate,
    UnsupportedOperation,
    UpdateSink,
    report_to,
)
from .local.sandbox import Sandbox

__all__ = ["JobSettings", "PollingJobProvider", "TrackedJob", "own_outcome"]


class JobSettings(Protocol):
    """The settings every polling provider has (read-only, as on a frozen attrs class)."""

    @property
    def url(self) -> str:
        """The backend's base URL."""

    @property
    def tasks_dir(self) -> Path:
        """Where task directories live."""

    @property
    def volumes_dir(self) -> Path:
        """Where volume directories live."""

    @property
    def poll_interval(self) -> float:
        """Seconds between two polls while jobs change."""

    @property
    def idle_poll_interval(self) -> float:
        """The longest pause between two polls, reached by doubling while nothing changes."""

    @property
    def catalog_ttl(self) -> float:
        """Seconds a node list is reused when checking a submission."""


class TrackedJob(Protocol):
    """What the skeleton reads and writes on a watched task's record."""

    task_id: str
    status: TaskStatus
    max_run_time: float | None
    cancel_requested: bool  # vi_flow asked the backend to stop it
    timed_out: bool  # vi_flow stopped it for exceeding max_run_time
    reported: asyncio.Event  # set once the task's end went to the sink
    deadline: float | None  # epoch seconds when max_run_time runs out, once started

    @property
    def job_id(self) -> int | str:
        """The backend's id for the task's job."""


def own_outcome(
    tracked: TrackedJob, status: TaskStatus, end: Exit | None = None
) -> tuple[str | None, str] | None:
    """The reason and message of an end that vi_flow caused or that needs no explaining.

    Args:
        tracked: The watched task.
        status: The terminal status its job reached.
        end: How its command ended, when known: a time limit's message says it, as the
            local provider's does ("... (killed by SIGTERM (signal 15))").

    Returns:
        ``(reason, message)`` for a task stopped past ``max_run_time``, a success, or a
        cancel vi_flow asked for; ``None`` when only the backend can say what happened.
    """
    if tracked.timed_out:
        limit = tracked.max_run_time or 0
        message = f"stopped after exceeding max_run_time of {limit:g} s"
        if end is not None and (end.signal is not None or end.exit_code is not None):
            message = f"{message} ({describe(end)})"
        return "TimeLimit", message
    if status == TaskStatus.COMPLETED:
        return "Completed", "exited with status 0"
    if status == TaskStatus.CANCELLED and tracked.cancel_requested:
        return "Cancelled", "cancelled by request"
    return None


SettingsT = TypeVar("SettingsT", bound=JobSettings)
TrackedT = TypeVar("TrackedT", bound=TrackedJob)
NodeT = TypeVar("NodeT")
ErrorT = TypeVar("ErrorT", bound=Exception)


class PollingJobProvider(abc.ABC, Generic[SettingsT, TrackedT, NodeT, ErrorT]):
    """A compute provider whose tasks are jobs of a remote scheduler, watched by polling.

    Subclasses set ``name``, ``_backend`` and ``_backend_error`` and implement the hooks.

    Args:
        settings: Where the backend is and where task files live.
    """

    name: str
    """Short name (``slurm``, ``ray``), shown in errors and stored on tasks."""
    _backend: ClassVar[str]  # as log lines and task messages name it: "Slurm", "Ray"
    _backend_error: type[ErrorT]  # the base class of the backend client's errors
    _reservations_note: ClassVar[str] = ""  # who to ask instead, after the operation

    def __init__(self, settings: SettingsT) -> None:
        self.settings = settings
        self._logger = logging.getLogger(f"vi_flow.server.{self.name}")
        self._sink: UpdateSink | None = None
        self._tracked: dict[str, TrackedT] = {}
        self._poller: asyncio.Task[None] | None = None
        self._nodes: list[NodeT] = []
        self._nodes_at = -1e9
        self._changed = False  # something was reported since the last pause was chosen
        self._wake = asyncio.Event()  # cut the pause short: a task was submitted
        self._unreached: dict[str, LaunchSpec] = {}  # to resubmit once the backend answers
        self._dropped: set[str] = set()  # cancelled while being resubmitted
        self._resubmitting: str | None = None
        self._polling = True  # with replicas, only the one holding the cluster's lock polls
        self._poll_trouble: str | None = None  # why the last job poll failed, once logged
        self.sandbox = Sandbox(None, "this provider runs jobs unsandboxed")

    @property
    def cluster(self) -> str:
        """This backend, for the lock that lets one replica at a time poll it."""
        return f"{self.name} {self.settings.url}"

    def poll_here(self, on: bool) -> None:
        """Poll the backend (the default), or leave it to another replica (see
        :class:`~.base.ClusterPoller`)."""
        if on != self._polling:
            self._logger.info(
                "%s: %s",
                self._backend,
                "this replica polls it" if on else "another replica polls it",
            )
        self._polling = on
        self._wake.set()

    # -- hooks ---------------------------------------------------------------------------

    async def _check_sandbox(self) -> None:
        """Set ``self.sandbox``, the bubblewrap its jobs run behind (none by default)."""

    @abc.abstractmethod
    async def _backend_version(self) -> str:
        """The backend's version as the start-up log line shows it (raises ``ErrorT``)."""

    @abc.abstractmethod
    async def _fetch_nodes(self) -> list[NodeT]:
        """The backend's node list (raises ``ErrorT``)."""

    @abc.abstractmethod
    async def _close_client(self) -> None:
        """Close the backend client."""

    @abc.abstractmethod
    async def _poll_once(self) -> None:
        """Refresh every watched job once."""

    @abc.abstractmethod
    async def _refresh(self, tracked: TrackedT) -> None:
        """Ask the backend about one job and report what changed."""

    @abc.abstractmethod
    def _recovered(self, task: RunningTask, job_id: str) -> TrackedT:
        """The record that watches a task which was alive when the server stopped."""

    @abc.abstractmethod
    async def _forget_secrets(self, tracked: TrackedT) -> None:
        """Delete the task's environment file if it is still there."""

    @abc.abstractmethod
    def _provider_error(self, exc: ErrorT) -> ProviderError:
        """The provider error a backend error stands for."""

    @abc.abstractmethod
    async def submit(self, spec: LaunchSpec) -> None:
        """Queue the task as a job and report it ``pending`` (see ``ComputeProvider``)."""

    @abc.abstractmethod
    async def cancel(self, task_id: str, grace: float) -> None:
        """Stop the task's job and report it ``cancelled`` (see ``ComputeProvider``); a
        task still waiting to be resubmitted goes through :meth:`_cancel_unreached`."""

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, sink: UpdateSink) -> None:
        """Remember ``sink``, check that the backend answers (a warning if not), start polling."""
        self._sink = sink
        await self._check_sandbox()
        try:
            version = await self._backend_version()
            self._logger.info("%s provider on %s (%s)", self._backend, self.settings.url, version)
        except self._backend_error as exc:
            self._logger.warning("%s is not usable yet: %s", self._backend, exc)
        self._log_isolation()
        poller = self._poll_forever()
        self._poller = asyncio.create_task(poller, name=f"vi-flow-{self.name}-poller")

    @property
    def isolation_gap(self) -> tuple[str, str] | None:
        """Why organizations are not isolated even though jobs are sandboxed, and what
        closes the gap (the server then refuses a second organization, as with no
        sandbox); None when they are."""
        return None

    def _log_isolation(self) -> None:
        if self.sandbox.enabled and (gap := self.isolation_gap):
            self._logger.warning(
                "%s: jobs run in a bubblewrap sandbox, but %s; organizations are NOT"
                " isolated from each other on this cluster (%s; docs/production.md)",
                self._backend,
                *gap,
            )
            return
        if self.sandbox.enabled:
            self._logger.info(
                "%s: every job runs in a bubblewrap sandbox on its node: it sees its own "
                "task directory and volumes, not another task's (docs/production.md)",
                self._backend,
            )
            return
        self._logger.warning(
            "%s: every organization's jobs run as the one account this server submits as, "
            "unsandboxed (%s); organizations are NOT isolated from each other on this "
            "cluster (docs/production.md, 'What a task can reach')",
            self._backend,
            self.sandbox.reason,
        )

    async def close(self) -> None:
        """Stop polling and close the HTTP session; the backend's jobs keep running."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self._close_client()

    async def abandon(self, tasks: Sequence[RunningTask]) -> None:
        """Nothing: a job that never reached the backend left nothing running."""
        del tasks

    async def recover(self, tasks: Sequence[RunningTask]) -> None:
        """Watch the jobs of tasks that were alive; submit those that never reached the backend."""
        for task in tasks:
            spec = task.spec
            if task.provider_id:
                self._tracked[spec.task_id] = self._recovered(task, task.provider_id)
            elif task.status == TaskStatus.PENDING:
                await self._resubmit(spec)
            else:
                message = f"the server stopped before the task reached {self._backend}"
                update = TaskUpdate(
                    spec.task_id,
                    TaskStatus.FAILED,
                    reason="ServerRestarted",
                    message=message,
                    time=now_ms(),
                )
                await self._report(update)
        await self._poll_once()

    async def _resubmit(self, spec: LaunchSpec) -> None:
        """Submit a task again after a restart; while the backend cannot be reached it
        stays pending and is tried again at each poll (only a refusal fails it)."""
        task_id = spec.task_id
        try:
            await self.submit(spec)
        except ProviderUnavailable as exc:
            if task_id not in self._unreached:
                message = f"{self._backend} cannot be reached; submitting again: {exc.message}"
                update = TaskUpdate(task_id, TaskStatus.PENDING, message=message, reason="Queued")
                await self._report(update)
            self._unreached[task_id] = spec
            return
        except ProviderError as exc:
            update = TaskUpdate(
                task_id, TaskStatus.FAILED, reason="SubmitFailed", message=exc.message
            )
            await self._report(update)
        self._unreached.pop(task_id, None)

    async def _resubmit_unreached(self) -> None:
        for task_id, spec in list(self._unreached.items()):
            if task_id not in self._unreached:
                continue  # cancelled meanwhile
            self._resubmitting = task_id
            try:
                await self._resubmit(spec)
            finally:
                self._resubmitting = None
            if task_id in self._dropped:  # cancelled while its submission was on the way
                self._dropped.discard(task_id)
                self._unreached.pop(task_id, None)
                await self.cancel(task_id, 0)

    async def _cancel_unreached(self, task_id: str) -> bool:
        """Cancel a task that has not reached the backend yet; False if it is not one."""
        if self._unreached.pop(task_id, None) is None:
            return False
        if task_id == self._resubmitting:
            self._dropped.add(task_id)
        await self._report(
            TaskUpdate(
                task_id,
                TaskStatus.CANCELLED,
                reason="Cancelled",
                message="cancelled by request",
                time=now_ms(),
            )
        )
        return True

    # -- tasks ---------------------------------------------------------------------------

    def running_here(self) -> list[str]:
        """None: a job runs on the cluster, whichever replica watches it."""
        return []

    def task_paths(self, task_id: str) -> TaskPaths:
        """``<tasks_dir>/<task_id>/`` with ``workspace/``, ``logs/`` and ``output/``."""
        return TaskPaths.under(self.settings.tasks_dir / task_id)

    async def _queued(self, tracked: TrackedT) -> None:
        """Report a just-submitted task ``pending`` with its job id, then watch it."""
        await self._report(
            TaskUpdate(
                tracked.task_id,
                TaskStatus.PENDING,
                reason="Queued",
                message=f"queued as {self._backend} job {tracked.job_id}",
                provider_id=str(tracked.job_id),
                time=now_ms(),
            )
        )
        self._tracked[tracked.task_id] = tracked
        self._wake.set()

    async def _wait_reported(self, tracked: TrackedT, timeout: float) -> None:
        """Poll one job until its end went to the sink, for ``timeout`` seconds at most."""
        deadline = time.monotonic() + timeout
        while not tracked.reported.is_set() and time.monotonic() < deadline:
            await self._refresh(tracked)
            if not tracked.reported.is_set():
                await asyncio.sleep(0.05)

    # -- polling -------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        pause = self.settings.poll_interval
        while True:
            try:
                await self._resubmit_unreached()
                if self._polling:
                    await self._poll_once()
            except Exception:  # the poller must outlive any one bad answer
                self._logger.exception("%s poll failed", self._backend)
            pause = self._next_pause(pause)
            await wait_event(self._wake, pause)
            self._wake.clear()

    def _poll_failed(self, job_id: object, message: str) -> None:
        """A job's poll failed (the next one asks again): warn once per cause, since a
        task whose job ended reads as running until a poll gets through (QA AA: an
        expired Slurm token left them so, and the log said nothing)."""
        if message != self._poll_trouble:
            self._poll_trouble = message
            self._logger.warning(
                "cannot poll %s (job %s; the tasks it runs keep their last status until"
                " a poll gets through, tried again at each poll): %s",
                self._backend, job_id, message,
            )  # fmt: skip
        else:
            self._logger.debug("cannot poll %s job %s: %s", self._backend, job_id, message)

    def _poll_answered(self) -> None:
        """A job's poll got through: say so once, after a failure was warned of."""
        if self._poll_trouble is not None:
            self._poll_trouble = None
            self._logger.info("%s answers polls again", self._backend)

    def _next_pause(self, pause: float) -> float:
        """``poll_interval`` after a change; else twice the last pause, up to
        ``idle_poll_interval`` and never past the next ``max_run_time`` deadline."""
        fast = self.settings.poll_interval
        changed, self._changed = self._changed, False
        if changed:
            return fast
        pause = min(pause * 2, max(fast, self.settings.idle_poll_interval))
        deadlines = [t.deadline for t in self._tracked.values() if t.deadline is not None]
        if deadlines:
            pause = min(pause, max(fast, min(deadlines) - time.time()))
        return pause

    async def _finish(
        self, tracked: TrackedT, update: TaskUpdate, started: TaskUpdate | None = None
    ) -> None:
        """Stop watching (once, even when two polls race) and report the end.

        ``started`` is reported first for a job that began and ended between two polls.
        """
        if self._tracked.pop(tracked.task_id, None) is None:
            return
        tracked.status = update.status
        await self._forget_secrets(tracked)
        if started is not None:
            await self._report(started)
        await self._report(update)
        tracked.reported.set()

    async def _report(self, update: TaskUpdate) -> None:
        self._changed = True
        await report_to(self._sink, update, self._logger)

    # -- capacity ------------------------------------------------------------------------

    async def _node_list(self, *, fresh: bool) -> list[NodeT]:
        if fresh or time.monotonic() - self._nodes_at > self.settings.catalog_ttl:
            try:
                self._nodes = await self._fetch_nodes()
            except self._backend_error as exc:
                raise self._provider_error(exc) from None
            self._nodes_at = time.monotonic()
        return self._nodes

    async def create_reservation(self, request: ReservationRequest) -> Reservation:
        """Not available: reservations are not made through vi_flow on this backend."""
        raise UnsupportedOperation(self.name, f"create_reservation{self._reservations_note}")

    async def cancel_reservation(self, reservation_id: str) -> Reservation:
        """Not available: reservations are not removed through vi_flow on this backend."""
        raise UnsupportedOperation(self.name, f"cancel_reservation{self._reservations_note}")

    async def availability(
        self, instance_type: str | None, start: int, end: int, duration_ms: int
    ) -> list[AvailabilitySlot]:
        """Not available: the backend's own scheduler decides when queued jobs start."""
        raise UnsupportedOperation(self.name, "availability search")

    # -- volumes -------------------------------------------------------------------------

    @property
    def volumes_dir(self) -> Path:
        """Where volume directories live (``settings.volumes_dir``)."""
        return self.settings.volumes_dir

    async def create_volume(self, volume_id: str, size_gb: int) -> Path:
        """A directory under ``volumes_dir`` (size is not enforced)."""
        path = self.settings.volumes_dir / volume_id
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        return path

    async def delete_volume(self, volume_id: str) -> None:
        """Remove the volume's directory (no link followed; what stopped it is logged)."""
        await asyncio.to_thread(try_remove_tree, self.settings.volumes_dir / volume_id)
