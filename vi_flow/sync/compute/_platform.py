"""``Platform``: seed 002's escape hatches and account calls, blocking, over
:class:`~vi_flow.compute._platform.AsyncPlatform`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...compute._platform import SSHTunnelManager

if TYPE_CHECKING:
    from ..._http import HTTPCore
    from ..._portal import Portal
    from ...compute._platform import AsyncPlatform
    from ...compute._upload import UploadResult
    from ...compute.ssh import ShellResult

from ..resources.ssh_keys import SSHKeys
from ._task import Task

__all__ = ["Platform", "RawAPI", "RemoteOperations"]


class RawAPI:
    """The raw API under every call, blocking: ``port.request("GET", "/instances")``."""

    def __init__(self, http: HTTPCore, portal: Portal) -> None:
        self._http = http
        self._portal = portal

    def request(
        self, method: str, url: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        """Send one request with the client's retries; returns the decoded JSON."""
        return self._portal.call(self._http.request, method, url, json=json, params=params)


class RemoteOperations:
    """Commands and file copies on task instances, blocking."""

    def __init__(self, platform: AsyncPlatform, portal: Portal) -> None:
        self._ops = platform.get_remote_operations()
        self._portal = portal

    def execute_command(self, task_id: str, command: str | Sequence[str]) -> ShellResult:
        """Run a command in the task and return its output and exit status."""
        return self._portal.call(self._ops.execute_command, task_id, command)

    def upload(
        self, task_id: str, source_dir: str | Path, target_dir: str = "/workspace"
    ) -> UploadResult:
        """Copy a directory into the task over SFTP."""
        return self._portal.call(self._ops.upload, task_id, source_dir, target_dir)


class Platform:
    """Seed 002's escape hatches and account calls, blocking: ``client.platform``.

    See :class:`vi_flow.compute._platform.AsyncPlatform` for each method's documentation.
    """

    def __init__(self, platform: AsyncPlatform, portal: Portal, ssh_keys: SSHKeys) -> None:
        self._async = platform
        self._portal = portal
        self._ssh_keys = ssh_keys

    def provider_port(self) -> RawAPI:
        """The raw API under every call."""
        return RawAPI(self._async.http, self._portal)

    def get_remote_operations(self) -> RemoteOperations:
        """Commands and file copies on task instances."""
        return RemoteOperations(self._async, self._portal)

    def get_ssh_key_manager(self) -> SSHKeys:
        """The organization's SSH keys: ``client.ssh_keys``."""
        return self._ssh_keys

    def get_ssh_tunnel_manager(self) -> SSHTunnelManager:
        """Port forwarding to tasks (refused by the local server)."""
        return self._async.get_ssh_tunnel_manager()

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        """The caller's identity for its token name or ``"me"``; else ``None``."""
        return self._portal.call(self._async.get_user, user_id)

    def get_user_teammates(self, user_id: str) -> list[dict[str, Any]]:
        """Always ``[]`` on the local server."""
        return self._portal.call(self._async.get_user_teammates, user_id)

    def list_projects(self) -> list[dict[str, str]]:
        """The projects this key reaches: its organization."""
        return self._portal.call(self._async.list_projects)

    def ensure_dev_task(self) -> Task:
        """Return the running development task, starting one when none runs."""
        return Task(self._portal.call(self._async.ensure_dev_task), self._portal)

    @contextmanager
    def dev_context(self, auto_stop: bool = False) -> Iterator[Task]:
        """A long-lived development task, reused while it runs; cancelled on exit if ``auto_stop``."""
        task = self.ensure_dev_task()
        try:
            yield task
        finally:
            if auto_stop:
                task.cancel()
