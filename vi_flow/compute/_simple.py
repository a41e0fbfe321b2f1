"""``AsyncClientFacade``: seed 002's smaller ``Client`` facade, with the seed's shapes.

``flow-compute`` has two clients: ``Flow`` (every method; ``vi_flow.AsyncClient`` has
them) and the smaller ``Client`` facade, whose ``status()`` returns a list of tasks even
for one id and whose ``volumes()`` is a method. Both cannot live on one object, so the
facade is its own class over the same compute methods; the blocking one is
:class:`vi_flow.sync.compute.Client`.
"""

from __future__ import annotations

import builtins
import sys
from typing import TYPE_CHECKING, Any, Protocol

from ._configs import flag
from ._dicts import TaskDict, task_dict

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ..models.tasks import TaskConfig, TaskStatus, Volume
    from ._facade import AsyncCompute
    from ._task import AsyncTask

__all__ = ["AsyncClientFacade"]


class _AsyncHolder(Protocol):
    @property
    def compute(self) -> AsyncCompute: ...

    async def aclose(self) -> None: ...


class AsyncClientFacade:
    """Seed 002's ``Client`` facade, async: ``run``, ``status``, ``cancel``, ``ssh``...

    Args:
        client: A ``vi_flow.AsyncClient`` to use; one is made (and closed by
            :meth:`aclose`) from ``options`` when omitted.
        **options: ``vi_flow.AsyncClient`` options (``base_url``, ``api_key``...).
    """

    def __init__(self, client: _AsyncHolder | None = None, **options: Any) -> None:
        self._owned = client is None
        if client is None:
            from .._client import AsyncClient  # here: the client module imports this package

            client = AsyncClient(**options)
        self._client = client
        self._compute = client.compute

    async def run(
        self,
        command: str | builtins.list[str] | TaskConfig | Path,
        gpu: str | None = None,
        cpus: int | None = None,
        memory_gb: int | None = None,
        wait: bool = False,
        **kwargs: Any,
    ) -> AsyncTask:
        """Run a task; ``wait=True`` returns once it has ended (any outcome)."""
        flag(wait, "wait")
        task = await self._compute.run(command, gpu, cpus, memory_gb, **kwargs)
        if wait:
            await task.wait(until="terminal")
        return task

    async def status(self, task_id: str | None = None) -> builtins.list[AsyncTask]:
        """The task as a one-item list, or the 100 newest tasks when no id is given."""
        if task_id is None:
            return await self._compute.list_tasks(limit=100)
        return [await self._compute.get_task(task_id)]

    async def list(
        self, status: TaskStatus | str | Sequence[TaskStatus | str] | None = None, limit: int = 10
    ) -> builtins.list[TaskDict]:
        """Recent tasks, newest first, as ``TaskDict`` dicts."""
        return [task_dict(t.data) for t in await self._compute.list_tasks(status, limit)]

    async def cancel(self, task_id: str, force: bool = False) -> bool:
        """Cancel a task; ``True`` when it had stopped when the call returned."""
        return await self._compute.cancel(task_id, force)

    async def ssh(self, task_id: str) -> str:
        """An ``ssh`` command line for the task, host key pinned."""
        return await self._compute.ssh(task_id)

    async def reserve(self, gpu: str, duration_hours: int = 1, auto_renew: bool = False) -> str:
        """Reserve GPU capacity; returns the reservation id."""
        return await self._compute.reserve(gpu, duration_hours, auto_renew)

    async def volumes(self) -> builtins.list[Volume]:
        """The organization's volumes, newest first: every one of them (seed 002's
        ``list_volumes`` returns the first 100 by default)."""
        return await self._compute.list_volumes(limit=sys.maxsize)

    def provider_port(self) -> AsyncCompute:
        """Every seed 002 method (``Flow``'s), for power users: the client's ``compute``."""
        return self._compute

    async def aclose(self) -> None:
        """Close the client when this facade made it; idempotent."""
        if self._owned:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncClientFacade:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
