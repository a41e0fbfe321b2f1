"""``AsyncPlatform``: the rest of seed 002's ``Flow`` facade, which ``AsyncClient`` offers too.

These are the power-user escape hatches of ``flow-compute`` (``provider_port``,
``get_remote_operations``, ``dev_context``...) and its account calls (``get_user``,
``list_projects``). In vi_flow the compute provider lives behind the server, so each
returns the client-side object that does that job here, documented on the method. The
client holds one as ``client.platform`` and forwards the seed's names to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import NotImplementedByProviderError
from ..models.tasks import TaskStatus
from ._facade import AsyncCompute

if TYPE_CHECKING:
    from .._http import HTTPCore
    from ..resources.ssh_keys import AsyncSSHKeys
    from ._task import AsyncTask
    from ._upload import UploadResult
    from .ssh import ShellResult

__all__ = ["DEV_TASK_NAME", "AsyncPlatform", "RemoteOperations", "SSHTunnelManager"]

DEV_TASK_NAME = "vi-flow-dev"
_DEV_COMMAND = "while true; do sleep 3600; done"


class RemoteOperations:
    """What runs on a task's instance: commands and files (``get_remote_operations()``)."""

    def __init__(self, compute: AsyncCompute) -> None:
        self._compute = compute

    async def execute_command(self, task_id: str, command: str | Sequence[str]) -> ShellResult:
        """Run a command in the task and return its output and exit status."""
        return await self._compute.shell(task_id, command)

    async def upload(
        self, task_id: str, source_dir: str | Path, target_dir: str = "/workspace"
    ) -> UploadResult:
        """Copy a directory into the task (see ``upload_code_to_task``: ignore files respected)."""
        return await self._compute.upload_code_to_task(
            task_id, Path(source_dir), target_dir=target_dir
        )


class SSHTunnelManager:
    """Port forwarding to tasks (``get_ssh_tunnel_manager()``).

    The local server's SSH endpoint refuses port forwarding: it would reach every loopback
    service of the host, other organizations' included. Use ``client.ssh(task_id)`` for a
    command line and reach the task's ports on the host directly.
    """

    def open_tunnel(self, task_id: str, remote_port: int, local_port: int = 0) -> None:
        """Always refuses, naming the task and port (see the class docstring)."""
        raise NotImplementedByProviderError(
            f"port forwarding to task {task_id!r} port {remote_port} is not offered by this "
            "server's SSH endpoint; connect to the port on the task's host instead",
            code="NOT_SUPPORTED",
        )


class AsyncPlatform:
    """Seed 002's escape hatches and account calls, over the compute methods.

    Args:
        compute: The seed's GPU-task methods (and through them the HTTP core and keys).
    """

    def __init__(self, compute: AsyncCompute) -> None:
        self._compute = compute
        self.http = compute.http

    def provider_port(self) -> HTTPCore:
        """The raw API under every call: ``await port.request("GET", "/instances")``."""
        return self.http

    def get_remote_operations(self) -> RemoteOperations:
        """Commands and file copies on task instances."""
        return RemoteOperations(self._compute)

    def get_ssh_key_manager(self) -> AsyncSSHKeys:
        """The organization's SSH keys: ``client.ssh_keys``."""
        return self._compute.ssh_keys

    def get_ssh_tunnel_manager(self) -> SSHTunnelManager:
        """Port forwarding to tasks (refused by the local server; see the class)."""
        return SSHTunnelManager()

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        """The caller's identity when ``user_id`` is its token name or ``"me"``; else ``None``."""
        me = await self.http.request("GET", "/whoami")
        if user_id in ("me", me.get("tokenName")):
            return {"id": me.get("tokenName"), "organizationId": me.get("organizationId")}
        return None

    async def get_user_teammates(self, user_id: str) -> list[dict[str, Any]]:
        """Always ``[]``: the local server has tokens, not users with teams."""
        return []

    async def list_projects(self) -> list[dict[str, str]]:
        """The projects this key reaches: its organization."""
        me = await self.http.request("GET", "/whoami")
        org = str(me["organizationId"])
        return [{"id": org, "name": org}]

    async def ensure_dev_task(self) -> AsyncTask:
        """Return the running development task, starting one when none runs."""
        running = await self._compute.list_tasks(
            status=[TaskStatus.PENDING, TaskStatus.RUNNING], limit=100
        )
        task = next((t for t in running if t.name == DEV_TASK_NAME), None)
        if task is None:
            task = await self._compute.run(_DEV_COMMAND, name=DEV_TASK_NAME)
        await task.wait(until="running")
        return task

    @asynccontextmanager
    async def dev_context(self, auto_stop: bool = False) -> AsyncIterator[AsyncTask]:
        """A long-lived development task, reused across calls while it runs.

        Args:
            auto_stop: Cancel the task when the context exits.

        Yields:
            The running dev task: ``shell()``, ``upload_code_to_task``, ``ssh()`` work on it.
        """
        task = await self.ensure_dev_task()
        try:
            yield task
        finally:
            if auto_stop:
                await task.cancel()
