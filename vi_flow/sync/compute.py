"""The blocking face of GPU tasks: the ``Task`` handle, the task resources, ``Compute``.

Each method is one typed line over the portal to its async twin in
:mod:`vi_flow.compute` and :mod:`vi_flow.resources`; no logic lives here. Streams
(``follow_logs``, ``logs(follow=True)``) become plain iterators via ``portal.iterate``.

One default differs on purpose: the sync ``shell(command=...)`` also prints the
command's output as it arrives (``echo=True``), as the seed's ``flow.shell(task_id,
command="nvidia-smi")`` does; the async one only returns it. Both return a
``ShellResult``.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from ..compute._task import StatusView, TaskFields
from ..models import PaginationParams
from ..models.tasks import (
    AvailabilitySlot,
    AvailableInstance,
    Reservation,
    SSHEndpoint,
    SSHKey,
    TaskConfig,
    TaskLogs,
    TaskOutputFile,
    TaskStatus,
    Volume,
)
from ..models.tasks import (
    Task as TaskData,
)
from .pagination import PaginatedResponse

if TYPE_CHECKING:
    from typing_extensions import Self

    from .._portal import Portal
    from ..compute._facade import AsyncCompute, ModelArtifacts
    from ..compute._ops import Until
    from ..compute._task import AsyncTask
    from ..compute._upload import UploadResult
    from ..compute.ssh import ShellResult
    from ..resources.instances import AsyncInstances
    from ..resources.reservations import AsyncReservations
    from ..resources.ssh_keys import AsyncSSHKeys, KeyPair
    from ..resources.tasks import AsyncTasks, LogStream
    from ..resources.volumes import AsyncVolumes

__all__ = ["Compute", "Instances", "Reservations", "SSHKeys", "Task", "Tasks", "Volumes"]


class Task(TaskFields):
    """A blocking handle on one task. See :class:`vi_flow.compute.AsyncTask`.

    ``task.status`` is the last known status (a string); ``task.status()`` reads the
    current one from the server.
    """

    def __init__(self, task: AsyncTask, portal: Portal) -> None:
        self._async = task
        self._portal = portal

    @property
    def data(self) -> TaskData:
        """The last task state read from the server."""
        return self._async.data

    @property
    def status(self) -> StatusView[TaskStatus]:
        """The last known status; ``task.status()`` reads the current one."""
        return StatusView(self._async.data.status.value, self._current_status)

    def _current_status(self) -> TaskStatus:
        return self._portal.call(self._async.status)

    def refresh(self) -> Self:
        """Read the task's current state from the server; returns the handle."""
        self._portal.call(self._async.refresh)
        return self

    def wait(
        self, timeout: float | None = None, until: Until = "terminal", poll_interval: float = 1.0
    ) -> TaskStatus:
        """Wait until the task ended (or runs); ``TaskTimeoutError`` on timeout."""
        return self._portal.call(self._async.wait, timeout, until, poll_interval)

    def cancel(self, force: bool = False) -> None:
        """Stop the task."""
        self._portal.call(self._async.cancel, force)

    def logs(self, tail: int = 100, stream: LogStream = "stdout") -> str:
        """Return the last ``tail`` lines of the log now (empty while pending)."""
        return self._portal.call(self._async.logs, tail, stream)

    def follow_logs(
        self, stream: LogStream = "stdout", *, poll_interval: float = 0.5
    ) -> Iterator[str]:
        """Iterate log lines as written, until the task ended and all are read."""
        return self._portal.iterate(
            lambda: self._async.follow_logs(stream, poll_interval=poll_interval)
        )

    def shell(
        self, command: str | Sequence[str] | None = None, *, echo: bool = True
    ) -> ShellResult:
        """Run a command in the task (printing its output) or open an interactive shell."""
        return self._portal.call(self._async.shell, command, echo=echo)

    def ssh_command(self) -> str:
        """Return an ``ssh`` command line for your own OpenSSH client (host key pinned)."""
        return self._portal.call(self._async.ssh_command)

    def wait_for_ssh(self, timeout: float = 600.0) -> Self:
        """Wait until the task runs and answers over SSH."""
        self._portal.call(self._async.wait_for_ssh, timeout)
        return self

    def upload_code(
        self, source_dir: str | Path | None = None, target_dir: str = "/workspace"
    ) -> UploadResult:
        """Upload a directory to the task (honours ``.gitignore``/``.flowignore``)."""
        return self._portal.call(self._async.upload_code, source_dir, target_dir)


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
    ) -> PaginatedResponse[TaskData]:
        """List tasks, newest first: ``.items`` is the first page; ``.all_items()`` all."""
        return PaginatedResponse(
            self._async.list(status=status, pagination=pagination), self._portal
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

    def logs(self, task_id: str, *, tail: int = 100, stream: LogStream = "stdout") -> TaskLogs:
        """Read the last ``tail`` lines of a task's log."""
        return self._portal.call(self._async.logs, task_id, tail=tail, stream=stream)

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


class Volumes:
    """Manage volumes (blocking): ``client.volumes``; ``client.volumes()`` lists them all."""

    def __init__(self, volumes: AsyncVolumes, portal: Portal) -> None:
        self._async = volumes
        self._portal = portal

    def __call__(self) -> builtins.list[Volume]:
        """List every volume, newest first."""
        return self._portal.call(self._async)

    def create(
        self,
        size_gb: int = 1,
        *,
        name: str | None = None,
        interface: Literal["block", "file"] = "file",
        region: str | None = None,
    ) -> Volume:
        """Create a volume."""
        return self._portal.call(
            self._async.create, size_gb, name=name, interface=interface, region=region
        )

    def list(
        self, *, pagination: PaginationParams | dict[str, Any] | None = None
    ) -> PaginatedResponse[Volume]:
        """List volumes, newest first."""
        return PaginatedResponse(self._async.list(pagination=pagination), self._portal)

    def get(self, volume: str) -> Volume:
        """Get a volume by id or name."""
        return self._portal.call(self._async.get, volume)

    def delete(self, volume: str) -> None:
        """Delete a volume by id or name."""
        self._portal.call(self._async.delete, volume)


class Instances:
    """Discover instances (blocking): ``client.instances``."""

    def __init__(self, instances: AsyncInstances, portal: Portal) -> None:
        self._async = instances
        self._portal = portal

    def list(
        self,
        *,
        gpu_type: str | None = None,
        max_price: float | None = None,
        min_gpu_memory_gb: int | None = None,
        gpu_count: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[AvailableInstance]:
        """List instance types matching every constraint given, cheapest first."""
        return self._portal.call(
            self._async.list,
            gpu_type=gpu_type,
            max_price=max_price,
            min_gpu_memory_gb=min_gpu_memory_gb,
            gpu_count=gpu_count,
            limit=limit,
        )


class Reservations:
    """Manage reservations (blocking): ``client.reservations``."""

    def __init__(self, reservations: AsyncReservations, portal: Portal) -> None:
        self._async = reservations
        self._portal = portal

    def create(
        self,
        *,
        gpu: str | None = None,
        instance_type: str | None = None,
        cpus: int | None = None,
        start_time: int | None = None,
        duration_hours: float = 1.0,
        name: str | None = None,
        auto_renew: bool = False,
    ) -> Reservation:
        """Reserve capacity."""
        return self._portal.call(
            self._async.create,
            gpu=gpu,
            instance_type=instance_type,
            cpus=cpus,
            start_time=start_time,
            duration_hours=duration_hours,
            name=name,
            auto_renew=auto_renew,
        )

    def list(self) -> builtins.list[Reservation]:
        """List reservations."""
        return self._portal.call(self._async.list)

    def get(self, reservation_id: str) -> Reservation:
        """Get one reservation."""
        return self._portal.call(self._async.get, reservation_id)

    def cancel(self, reservation_id: str) -> Reservation:
        """Cancel a reservation."""
        return self._portal.call(self._async.cancel, reservation_id)

    def availability(
        self,
        *,
        instance_type: str | None = None,
        gpu: str | None = None,
        earliest_start_time: int | None = None,
        latest_end_time: int | None = None,
        duration_hours: float | None = None,
    ) -> builtins.list[AvailabilitySlot]:
        """List windows that could be reserved."""
        return self._portal.call(
            self._async.availability,
            instance_type=instance_type,
            gpu=gpu,
            earliest_start_time=earliest_start_time,
            latest_end_time=latest_end_time,
            duration_hours=duration_hours,
        )


class SSHKeys:
    """Manage SSH keys (blocking): ``client.ssh_keys``."""

    def __init__(self, ssh_keys: AsyncSSHKeys, portal: Portal) -> None:
        self._async = ssh_keys
        self._portal = portal

    def create(self, name: str, public_key: str) -> SSHKey:
        """Register a public key."""
        return self._portal.call(self._async.create, name, public_key)

    def list(self) -> builtins.list[SSHKey]:
        """List registered keys."""
        return self._portal.call(self._async.list)

    def get(self, key_id: str) -> SSHKey:
        """Get one registered key."""
        return self._portal.call(self._async.get, key_id)

    def delete(self, key_id: str) -> None:
        """Unregister a key."""
        self._portal.call(self._async.delete, key_id)

    def ensure_default(self) -> tuple[KeyPair, SSHKey]:
        """Create (once) and register the default key pair."""
        return self._portal.call(self._async.ensure_default)


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
        if follow:
            chosen = stream or ("stderr" if stderr else "stdout")
            return self._portal.iterate(lambda: self._async.follow_logs(task_id, chosen))  # type: ignore[arg-type]
        return self._portal.call(self._async.logs, task_id, False, tail, stderr, source, stream)

    def follow_logs(
        self, task_id: str, stream: LogStream = "stdout", *, poll_interval: float = 0.5
    ) -> Iterator[str]:
        """Iterate a task's log lines as written, until it ended and all are read."""
        return self._portal.iterate(
            lambda: self._async.follow_logs(task_id, stream, poll_interval=poll_interval)
        )

    def shell(
        self,
        task_id: str,
        command: str | Sequence[str] | None = None,
        node: int | None = None,
        progress_context: object | None = None,
        record: bool = False,
        *,
        echo: bool = True,
    ) -> ShellResult:
        """Run a command in a task (printing its output), or an interactive shell."""
        return self._portal.call(
            self._async.shell, task_id, command, node, progress_context, record, echo=echo
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
        self, requirements: Mapping[str, Any] | None = None, limit: int = 10
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

    def reservation_availability(
        self, params: Mapping[str, Any]
    ) -> builtins.list[AvailabilitySlot]:
        """List windows that could be reserved."""
        return self._portal.call(self._async.reservation_availability, params)

    def list_ssh_keys(self, project_id: str | None = None) -> builtins.list[SSHKey]:
        """List registered SSH keys."""
        return self._portal.call(self._async.list_ssh_keys, project_id)

    def list_platform_ssh_keys(self) -> builtins.list[SSHKey]:
        """List registered SSH keys."""
        return self._portal.call(self._async.list_platform_ssh_keys)

    def create_platform_ssh_key(self, name: str, public_key: str) -> SSHKey:
        """Register a public key."""
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
