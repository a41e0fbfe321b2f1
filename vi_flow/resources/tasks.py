"""``client.tasks``: submit, list, get, cancel tasks; read their logs, SSH endpoint and outputs.

A thin typed face over the ``/v1/tasks`` endpoints. Handles (:class:`vi_flow.compute.AsyncTask`)
and the top-level task methods of the client are built on it.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

from .._http import path
from .._pagination import AsyncPaginator, Order, check_order
from ..models import Page, PaginationParams
from ..models.limits import MAX_LOG_TAIL, check_int
from ..models.tasks import (
    MountRequest,
    SSHEndpoint,
    Task,
    TaskConfig,
    TaskLogs,
    TaskOutputFile,
    TaskStatus,
)
from ._base import AsyncResource, status_query

__all__ = ["AsyncTasks", "LogStream", "artifact_path"]

LogStream = Literal["stdout", "stderr", "both"]
"""Which log of a task: its standard output, its standard error, or both."""


def artifact_path(relative: str) -> str:
    """Return a URL-quoted relative file path, refusing ``..`` and absolute paths.

    Raises:
        ValueError: The path is empty, absolute or climbs out with ``..``.
    """
    parts = relative.split("/")
    if not relative or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a safe relative file path: {relative!r}")
    return "/".join(quote(p, safe="") for p in parts)


class AsyncTasks(AsyncResource):
    """Manage tasks: ``client.tasks``."""

    async def create(self, config: TaskConfig) -> Task:
        """Submit a task; it starts ``pending`` and runs when capacity is free.

        Raises:
            UnprocessableEntityError: A bad config, such as a GPU request this machine
                can never meet (the message names what was asked and what exists).
        """
        return await self._http.request("POST", "/tasks", json=config, cast=Task)

    def list(
        self,
        *,
        status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
        pagination: PaginationParams | dict[str, Any] | None = None,
        order: Order = "newest",
    ) -> AsyncPaginator[Task]:
        """List tasks, newest first, optionally only those in the given statuses.

        Args:
            status: One status (``"running"``) or several.
            pagination: ``PaginationParams`` or a dict such as ``{"page_size": 50}``.
            order: ``"newest"`` first (the default) or ``"oldest"`` first.
        """
        params = PaginationParams.coerce(pagination)
        wanted = status_query(status, TaskStatus)
        chosen = check_order(order)

        async def fetch(p: PaginationParams) -> Page[Task]:
            query: dict[str, Any] = {"status": wanted, "order": chosen}
            query |= {"pageSize": p.page_size, "pageToken": p.page_token}
            return await self._http.request("GET", "/tasks", params=query, cast=Page[Task])

        return AsyncPaginator(fetch, params)

    async def get(self, task_id: str) -> Task:
        """Get one task (``TaskNotFoundError`` when missing)."""
        return await self._http.request("GET", path("/tasks/{}", task_id), cast=Task)

    async def cancel(
        self, task_id: str, *, force: bool = False, grace_period: float | None = None
    ) -> Task:
        """Stop a task: SIGTERM to its processes, SIGKILL after the grace period.

        Args:
            task_id: The task.
            force: Kill at once, without a grace period.
            grace_period: Seconds between SIGTERM and SIGKILL (server default 5).

        Returns:
            The task once stopped (unchanged when it had already ended).
        """
        body: dict[str, Any] = {"force": force}
        if grace_period is not None:
            body["gracePeriod"] = grace_period
        url = path("/tasks/{}/cancel", task_id)
        return await self._http.request("POST", url, json=body, cast=Task)

    async def logs(
        self,
        task_id: str,
        *,
        tail: int = 100,
        stream: LogStream = "stdout",
        since: datetime | timedelta | None = None,
    ) -> TaskLogs:
        """Read the last ``tail`` lines of a task's log (empty while pending).

        Args:
            task_id: The task.
            tail: How many trailing lines, 0 to 100,000.
            stream: ``"stdout"``, ``"stderr"`` or ``"both"``.
            since: Only lines written since this time (a ``timedelta``: that long ago).
                The server notes log sizes once a second, so lines written up to a second
                before ``since`` may be included; none written after it are left out.
        """
        check_int("tail", tail, 0, MAX_LOG_TAIL)
        url = path("/tasks/{}/logs", task_id)
        query = {"tail": tail, "stream": stream, "since": since_ms(since)}
        return await self._http.request("GET", url, params=query, cast=TaskLogs)

    async def log_offsets(self, task_id: str, since: datetime | timedelta) -> dict[str, int]:
        """Byte offsets in ``stdout`` and ``stderr`` where the lines written since ``since``
        start (what ``follow_logs(..., since=...)`` resumes from)."""
        url = path("/tasks/{}/logs/offsets", task_id)
        offsets: dict[str, int] = await self._http.request(
            "GET", url, params={"since": since_ms(since)}
        )
        return offsets

    async def ssh_endpoint(self, task_id: str) -> SSHEndpoint:
        """Get where and how to reach a task over SSH, and its server's host key."""
        return await self._http.request("GET", path("/tasks/{}/ssh", task_id), cast=SSHEndpoint)

    async def mount_volume(
        self, task_id: str, volume_id: str, *, mount_path: str | None = None
    ) -> Task:
        """Attach a volume (id or name) to a task at ``mount_path`` (``/volumes/<name>``)."""
        body = MountRequest(volume_id=volume_id, mount_path=mount_path)
        url = path("/tasks/{}/volumes", task_id)
        return await self._http.request("POST", url, json=body, cast=Task)

    async def outputs(self, task_id: str) -> builtins.list[TaskOutputFile]:
        """List the files a task wrote to ``$VI_FLOW_OUTPUT_DIR``."""
        url = path("/tasks/{}/outputs", task_id)
        page = await self._http.request("GET", url, cast=Page[TaskOutputFile])
        return page.items


def since_ms(since: datetime | timedelta | None) -> int | None:
    """``since`` as milliseconds since the epoch (a ``timedelta``: that long before now).

    Raises:
        TypeError: Not a ``datetime`` or ``timedelta``.
        ValueError: A negative ``timedelta``.
    """
    if since is None:
        return None
    if isinstance(since, timedelta):
        if since < timedelta(0):
            raise ValueError(f"since: a timedelta must not be negative, got {since!r}")
        return max(0, int((time.time() - since.total_seconds()) * 1000))
    if isinstance(since, datetime):
        try:
            return max(0, int(since.timestamp() * 1000))  # a naive datetime is local time
        except (OverflowError, OSError, ValueError):  # out of the platform's range
            if since.year < 1970:  # long before the epoch (year 1): every line
                return 0
            raise ValueError(
                f"since: {since.isoformat()} is past what this platform counts"
            ) from None
    raise TypeError(f"since must be a datetime or a timedelta, got {since!r}")
