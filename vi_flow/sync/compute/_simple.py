"""``Client``: seed 002's smaller ``Client`` facade, blocking, with the seed's shapes.

``from flow.sdk.client import Client`` becomes ``from vi_flow.sync.compute import Client``:
its ``status(task_id)`` returns a list of tasks (the seed's ``list[Task]``) and
``volumes()`` is a method. ``vi_flow.Client`` is seed 002's ``Flow``: there
``status(task_id)`` is the status string. Async twin:
:class:`vi_flow.compute.AsyncClientFacade`.
"""

from __future__ import annotations

import builtins
import sys
from typing import TYPE_CHECKING, Any, Protocol

from ...compute._configs import flag
from ...compute._dicts import TaskDict, task_dict

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ...models.tasks import TaskConfig, TaskStatus, Volume
    from ._facade import Compute
    from ._task import Task

__all__ = ["Client", "ClientFacade"]


class _Holder(Protocol):
    @property
    def compute(self) -> Compute: ...

    def close(self) -> None: ...


class ClientFacade:
    """Seed 002's ``Client`` facade: ``run``, ``status``, ``cancel``, ``ssh``, ``reserve``...

    Args:
        client: A ``vi_flow.Client`` to use; one is made (and closed by :meth:`close`)
            from ``options`` when omitted.
        **options: ``vi_flow.Client`` options (``base_url``, ``api_key``...).
    """

    def __init__(self, client: _Holder | None = None, **options: Any) -> None:
        self._owned = client is None
        if client is None:
            from .._client import Client as FullClient  # here: that module imports this one

            client = FullClient(**options)
        self._client = client
        self._compute = client.compute

    def run(
        self,
        command: str | builtins.list[str] | TaskConfig | Path,
        gpu: str | None = None,
        cpus: int | None = None,
        memory_gb: int | None = None,
        wait: bool = False,
        **kwargs: Any,
    ) -> Task:
        """Run a task; ``wait=True`` returns once it has ended (any outcome)."""
        flag(wait, "wait")
        task = self._compute.run(command, gpu, cpus, memory_gb, **kwargs)
        if wait:
            task.wait(until="terminal")
        return task

    def status(self, task_id: str | None = None) -> builtins.list[Task]:
        """The task as a one-item list, or the 100 newest tasks when no id is given."""
        if task_id is None:
            return self._compute.list_tasks(limit=100)
        return [self._compute.get_task(task_id)]

    def list(
        self, status: TaskStatus | str | Sequence[TaskStatus | str] | None = None, limit: int = 10
    ) -> builtins.list[TaskDict]:
        """Recent tasks, newest first, as ``TaskDict`` dicts."""
        return [task_dict(t.data) for t in self._compute.list_tasks(status, limit)]

    def cancel(self, task_id: str, force: bool = False) -> bool:
        """Cancel a task; ``True`` when it had stopped when the call returned."""
        return self._compute.cancel(task_id, force)

    def ssh(self, task_id: str) -> str:
        """An ``ssh`` command line for the task, host key pinned."""
        return self._compute.ssh(task_id)

    def reserve(self, gpu: str, duration_hours: int = 1, auto_renew: bool = False) -> str:
        """Reserve GPU capacity; returns the reservation id."""
        return self._compute.reserve(gpu, duration_hours, auto_renew)

    def volumes(self) -> builtins.list[Volume]:
        """The organization's volumes, newest first: every one of them (seed 002's
        ``list_volumes`` returns the first 100 by default)."""
        return self._compute.list_volumes(limit=sys.maxsize)

    def provider_port(self) -> Compute:
        """Every seed 002 method (``Flow``'s), for power users: the client's ``compute``."""
        return self._compute

    def close(self) -> None:
        """Close the client when this facade made it; idempotent."""
        if self._owned:
            self._client.close()

    def __enter__(self) -> ClientFacade:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Client = ClientFacade
"""The seed's name: ``from vi_flow.sync.compute import Client``."""
