"""``Compute``: the seed's GPU-task methods, blocking, over :class:`~vi_flow.compute.AsyncCompute`.

One default differs on purpose: the sync ``shell(command=...)`` also prints the
command's output as it arrives (``echo=True``), as the seed's ``flow.shell(task_id,
command="nvidia-smi")`` does; the async one only returns it. Both return a
``ShellResult``.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, overload

from ...models.tasks import (
    AvailableInstance,
    Reservation,
    TaskConfig,
    TaskStatus,
    Volume,
)

if TYPE_CHECKING:
    from ..._portal import Portal
    from ...compute._dicts import InstanceRequirements
    from ...compute._facade import AsyncCompute, ModelArtifacts
    from ...compute._task import AsyncTask
    from ...compute._upload import UploadResult
    from ...compute.ssh import ShellResult
    from ...resources.tasks import LogStream
from ...compute._facade import log_choice
from ._task import Task

__all__ = ["Compute"]


class Compute:
    """The seed's GPU-task methods, blocking: ``client.compute`` (and the client's own names).

    See :class:`vi_flow.compute.AsyncCompute` for each method's documentation.
    """

    def __init__(self, compute: AsyncCompute, portal: Portal) -> None:
        self._async = compute
        self._portal = portal

    def _task(self, task: AsyncTask) -> Task:
        return Task(task, self._portal)

    def run(
        self,
        /,
        task: TaskConfig | str | Path | list[str],
        gpu: str | None = None,
        cpus: int | None = None,
        memory_gb: int | None = None,
        wait: bool = False,
        mounts: str | Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Task:
        """Submit a task (``wait=True``: return once it runs)."""
        return self._task(
            self._portal.call(self._async.run, task, gpu, cpus, memory_gb, wait, mounts, **kwargs)
        )

    def submit(
        self,
        command: str | list[str],
        gpu: str | None = None,
        mounts: str | Mapping[str, str] | None = None,
        instance_type: str | None = None,
        wait: bool = False,
    ) -> Task:
        """Submit a shell command (``wait=True``: return once it ended)."""
        return self._task(
            self._portal.call(self._async.submit, command, gpu, mounts, instance_type, wait)
        )

    @overload
    def status(self, task_id: str) -> str: ...

    @overload
    def status(self, task_id: None = None) -> builtins.list[Task]: ...

    def status(self, task_id: str | None = None) -> str | builtins.list[Task]:
        """The status string of a task, or recent tasks when no id is given."""
        if task_id is None:
            return self.list_tasks(limit=100)
        return self._portal.call(self._async.status, task_id)

    def cancel(self, task_id: str, force: bool = False) -> bool:
        """Cancel a task; ``True`` when stopped."""
        return self._portal.call(self._async.cancel, task_id, force)

    def get_task(self, task_id: str) -> Task:
        """Return a handle on an existing task."""
        return self._task(self._portal.call(self._async.get_task, task_id))

    def list_tasks(
        self,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        limit: int = 10,
        force_refresh: bool = False,
    ) -> builtins.list[Task]:
        """List recent tasks, newest first."""
        handles = self._portal.call(self._async.list_tasks, status, limit, force_refresh)
        return [self._task(h) for h in handles]

    @overload
    def logs(
        self,
        task_id: str,
        follow: Literal[False] = False,
        tail: int = 100,
        stderr: bool = False,
        source: str | None = None,
        stream: str | None = None,
    ) -> str: ...

    @overload
    def logs(
        self,
        task_id: str,
        follow: Literal[True],
        tail: int = 100,
        stderr: bool = False,
        source: str | None = None,
        stream: str | None = None,
    ) -> Iterator[str]: ...

    @overload
    def logs(
        self,
        task_id: str,
        follow: bool,
        tail: int = 100,
        stderr: bool = False,
        source: str | None = None,
        stream: str | None = None,
    ) -> str | Iterator[str]: ...

    def logs(
        self,
        task_id: str,
        follow: bool = False,
        tail: int = 100,
        stderr: bool = False,
        source: str | None = None,
        stream: str | None = None,
    ) -> str | Iterator[str]:
        """Recent log lines now, or (``follow=True``) an iterator of lines as written."""
        chosen = log_choice(follow, stderr, stream)
        if follow:
            return self._portal.iterate(lambda: self._async.follow_logs(task_id, chosen))
        return self._portal.call(self._async.logs, task_id, False, tail, stderr, source, stream)

    def follow_logs(
        self,
        task_id: str,
        stream: LogStream = "stdout",
        *,
        poll_interval: float = 0.5,
        since: datetime | timedelta | None = None,
    ) -> Iterator[str]:
        """Iterate a task's log lines as written (since ``since``), until it ended and all
        are read."""
        return self._portal.iterate(
            lambda: self._async.follow_logs(
                task_id, stream, poll_interval=poll_interval, since=since
            )
        )

    def _follow_streams(
        self, task_id: str, stream: LogStream = "both"
    ) -> Iterator[tuple[str, str]]:
        return self._portal.iterate(lambda: self._async._follow_streams(task_id, stream))

    def shell(
        self,
        task_id: str,
        command: str | Sequence[str] | None = None,
        node: int | None = None,
        progress_context: object | None = None,
        record: bool = False,
        *,
        echo: bool = True,
        input: bytes | BinaryIO | None = None,
    ) -> ShellResult:
        """Run a command in a task (printing its output), or an interactive shell."""
        return self._portal.call(
            self._async.shell,
            task_id,
            command,
            node,
            progress_context,
            record,
            echo=echo,
            input=input,
        )

    def ssh(self, task_id: str, node: int | None = None) -> str:
        """Return an ``ssh`` command line for your own OpenSSH client, host key pinned."""
        return self._portal.call(self._async.ssh, task_id, node)

    def resolve_ssh_endpoint(self, task_id: str, node: int | None = None) -> tuple[str, int]:
        """Return the ``(host, port)`` of a task's SSH server."""
        return self._portal.call(self._async.resolve_ssh_endpoint, task_id, node)

    def get_task_ssh_connection_info(self, task_id: str) -> tuple[Path | None, str]:
        """Return ``(private key path, "")``, or ``(None, why)`` when SSH is not possible."""
        return self._portal.call(self._async.get_task_ssh_connection_info, task_id)

    def wait_for_ssh(
        self,
        task_id: str,
        timeout: int = 600,
        show_progress: bool = True,
        progress_adapter: object | None = None,
    ) -> Task:
        """Wait until the task runs and answers over SSH."""
        return self._task(
            self._portal.call(
                self._async.wait_for_ssh, task_id, timeout, show_progress, progress_adapter
            )
        )

    def upload_code_to_task(
        self,
        task_id: str,
        source_dir: Path | str | None = None,
        timeout: int = 600,
        console: object | None = None,
        target_dir: str = "/workspace",
        progress_reporter: object | None = None,
        git_incremental: bool | None = None,
    ) -> UploadResult:
        """Upload a directory to a running task over SFTP."""
        return self._portal.call(
            self._async.upload_code_to_task,
            task_id,
            source_dir,
            timeout,
            console,
            target_dir,
            progress_reporter,
            git_incremental,
        )

    def create_volume(
        self,
        size_gb: int,
        name: str | None = None,
        interface: Literal["block", "file"] = "block",
        region: str | None = None,
    ) -> Volume:
        """Create a persistent volume."""
        return self._portal.call(self._async.create_volume, size_gb, name, interface, region)

    def list_volumes(self, limit: int = 100) -> builtins.list[Volume]:
        """List volumes, newest first."""
        return self._portal.call(self._async.list_volumes, limit)

    def delete_volume(self, volume_id: str) -> None:
        """Delete a volume."""
        self._portal.call(self._async.delete_volume, volume_id)

    def mount_volume(self, volume_id: str, task_id: str, mount_point: str | None = None) -> bool:
        """Attach a volume to a task."""
        return self._portal.call(self._async.mount_volume, volume_id, task_id, mount_point)

    def find_instances(
        self, requirements: InstanceRequirements | Mapping[str, Any] | None = None, limit: int = 10
    ) -> builtins.list[AvailableInstance]:
        """List instance types meeting ``requirements``, cheapest first."""
        return self._portal.call(self._async.find_instances, requirements, limit)

    def normalize_instance_request(
        self, gpu_count: int, gpu_type: str | None = None
    ) -> tuple[str, int, str | None]:
        """Map a GPU count to ``(instance_type, num_instances, warning)``."""
        return self._async.normalize_instance_request(gpu_count, gpu_type)

    def reserve(self, gpu: str, duration_hours: int = 1, auto_renew: bool = False) -> str:
        """Reserve GPU capacity; returns the reservation id."""
        return self._portal.call(self._async.reserve, gpu, duration_hours, auto_renew)

    def list_reservations(
        self, params: Mapping[str, Any] | None = None
    ) -> builtins.list[Reservation]:
        """List reservations."""
        return self._portal.call(self._async.list_reservations, params)

    def get_reservation(self, reservation_id: str) -> Reservation | None:
        """Get a reservation, ``None`` when missing."""
        return self._portal.call(self._async.get_reservation, reservation_id)

    def reservation_availability(self, params: Mapping[str, Any]) -> builtins.list[dict[str, Any]]:
        """List windows that could be reserved, as dicts."""
        return self._portal.call(self._async.reservation_availability, params)

    def list_ssh_keys(self, project_id: str | None = None) -> builtins.list[dict[str, str]]:
        """List registered SSH keys, as dicts."""
        return self._portal.call(self._async.list_ssh_keys, project_id)

    def list_platform_ssh_keys(self) -> builtins.list[dict[str, str]]:
        """List registered SSH keys, as dicts."""
        return self._portal.call(self._async.list_platform_ssh_keys)

    def create_platform_ssh_key(self, name: str, public_key: str) -> dict[str, str]:
        """Register a public key; returns it as a dict."""
        return self._portal.call(self._async.create_platform_ssh_key, name, public_key)

    def delete_platform_ssh_key(self, key_id: str) -> bool:
        """Unregister a key."""
        return self._portal.call(self._async.delete_platform_ssh_key, key_id)

    def ensure_default_ssh_key(self) -> str | None:
        """Create (once) and register the default key pair; returns its key id."""
        return self._portal.call(self._async.ensure_default_ssh_key)

    def get_model(self, run_id: str, save_dir: str | Path | None = None) -> ModelArtifacts:
        """Download a run's artifacts."""
        return self._portal.call(self._async.get_model, run_id, save_dir)
