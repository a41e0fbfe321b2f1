"""Sync ``client.tasks``: each method is one typed line over the portal to :mod:`vi_flow.resources.tasks`."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..._pagination import Order
from ...models import PaginationParams
from ...models.tasks import (
    SSHEndpoint,
    TaskConfig,
    TaskLogs,
    TaskOutputFile,
    TaskStatus,
)
from ...models.tasks import (
    Task as TaskData,
)
from .._pagination import PaginatedResponse

if TYPE_CHECKING:
    from ..._portal import Portal
    from ...resources.tasks import AsyncTasks, LogStream

__all__ = ["Tasks"]


class Tasks:
    """Manage tasks (blocking): ``client.tasks``. See :class:`vi_flow.resources.tasks.AsyncTasks`."""

    def __init__(self, tasks: AsyncTasks, portal: Portal) -> None:
        self._async = tasks
        self._portal = portal

    def create(self, config: TaskConfig) -> TaskData:
        """Submit a task."""
        return self._portal.call(self._async.create, config)

    def list(
        self,
        *,
        status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
        pagination: PaginationParams | dict[str, Any] | None = None,
        order: Order = "newest",
    ) -> PaginatedResponse[TaskData]:
        """List tasks, newest first: ``.items`` is the first page; ``.all_items()`` all."""
        return PaginatedResponse(
            self._async.list(status=status, pagination=pagination, order=order), self._portal
        )

    def get(self, task_id: str) -> TaskData:
        """Get one task."""
        return self._portal.call(self._async.get, task_id)

    def cancel(
        self, task_id: str, *, force: bool = False, grace_period: float | None = None
    ) -> TaskData:
        """Stop a task."""
        return self._portal.call(
            self._async.cancel, task_id, force=force, grace_period=grace_period
        )

    def logs(
        self,
        task_id: str,
        *,
        tail: int = 100,
        stream: LogStream = "stdout",
        since: datetime | timedelta | None = None,
    ) -> TaskLogs:
        """Read the last ``tail`` lines of a task's log (written since ``since``)."""
        return self._portal.call(self._async.logs, task_id, tail=tail, stream=stream, since=since)

    def log_offsets(self, task_id: str, since: datetime | timedelta) -> dict[str, int]:
        """Byte offsets where the lines written since ``since`` start."""
        return self._portal.call(self._async.log_offsets, task_id, since)

    def ssh_endpoint(self, task_id: str) -> SSHEndpoint:
        """Get a task's SSH endpoint and host key."""
        return self._portal.call(self._async.ssh_endpoint, task_id)

    def mount_volume(
        self, task_id: str, volume_id: str, *, mount_path: str | None = None
    ) -> TaskData:
        """Attach a volume to a task."""
        return self._portal.call(
            self._async.mount_volume, task_id, volume_id, mount_path=mount_path
        )

    def outputs(self, task_id: str) -> builtins.list[TaskOutputFile]:
        """List the files a task wrote to ``$VI_FLOW_OUTPUT_DIR``."""
        return self._portal.call(self._async.outputs, task_id)
