"""``AsyncTask``: a handle on one task — its last known state and everything you do with it.

A handle holds the client and the last :class:`~vi_flow.models.tasks.Task` the server
sent. Its read-only attributes (``task_id``, ``name``, ``exit_code``...) come from that
state; ``await task.refresh()`` reads it again. ``task.status`` is the last known status
as a string (``"running"``, comparable with :class:`TaskStatus`), and calling it —
``await task.status()`` — asks the server. The same attributes serve the sync ``Task``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..models.tasks import Task, TaskConfig, TaskStatus
from . import _ops
from .ssh import ShellResult, ssh_command_line

if TYPE_CHECKING:
    from typing_extensions import Self

    from ..resources.tasks import LogStream
    from ._ops import ComputeClient, Until
    from ._upload import UploadResult

__all__ = ["AsyncTask", "StatusView", "TaskFields"]

R = TypeVar("R")


class StatusView(str, Generic[R]):
    """A task's last known status (a ``str``) that fetches the current one when called.

    ``task.status == "running"`` compares the cached value; ``task.status()`` asks the
    server (``await`` it on ``AsyncTask``).
    """

    _fetch: Callable[[], R]

    def __new__(cls, value: str, fetch: Callable[[], R]) -> StatusView[R]:
        view = super().__new__(cls, value)
        view._fetch = fetch
        return view

    def __call__(self) -> R:
        return self._fetch()

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return str.__ne__(self, other)

    __hash__ = str.__hash__

    @property
    def enum(self) -> TaskStatus:
        """The status as a :class:`TaskStatus`."""
        return TaskStatus(str(self))

    @property
    def terminal(self) -> bool:
        """Whether the task had ended when this status was read."""
        return self.enum.terminal

    def __repr__(self) -> str:
        return repr(str(self))


class TaskFields:
    """Read-only attributes taken from the last known task state (``self.data``)."""

    @property
    def data(self) -> Task:
        """The last task state read from the server."""
        raise NotImplementedError

    @property
    def task_id(self) -> str:
        """The task id (``task_...``)."""
        return self.data.task_id

    @property
    def name(self) -> str:
        """The display name."""
        return self.data.name

    @property
    def config(self) -> TaskConfig:
        """What was submitted."""
        return self.data.config

    @property
    def exit_code(self) -> int | None:
        """The process's ``exit()`` code, 0-255, once ended; None when a signal ended it."""
        return self.data.exit_code

    @property
    def signal(self) -> int | None:
        """The signal that ended the process (9 for SIGKILL), when one did."""
        return self.data.signal

    @property
    def raw_reason(self) -> str | None:
        """The engine's own words for :attr:`reason` (Slurm's ``state_reason``)."""
        return self.data.raw_reason

    @property
    def message(self) -> str | None:
        """A sentence about the status (why it failed, what it waits for)."""
        return self.data.message

    @property
    def reason(self) -> str | None:
        """A name from the documented list (``NonZeroExit``, ``Killed``, ``Cancelled``,
        ``TimeLimit``, ``PartitionDown``, ...; docs/tasks.md, "How a task ended")."""
        return self.data.reason

    @property
    def instance_type(self) -> str:
        """The instance type it runs on."""
        return self.data.instance_type

    @property
    def gpu_type(self) -> str | None:
        """The GPU model assigned, if any."""
        return self.data.gpu_type

    @property
    def gpu_count(self) -> int:
        """How many GPUs it holds."""
        return self.data.gpu_count

    @property
    def created_at(self) -> int:
        """Submission time, ms since the epoch."""
        return self.data.created_at

    @property
    def started_at(self) -> int | None:
        """When it began running, ms since the epoch."""
        return self.data.started_at

    @property
    def ended_at(self) -> int | None:
        """When it ended, ms since the epoch."""
        return self.data.ended_at

    @property
    def run_id(self) -> str | None:
        """The flow run that launched it, if any."""
        return self.data.run_id

    @property
    def is_running(self) -> bool:
        """Whether it was running when last read."""
        return self.data.status == TaskStatus.RUNNING

    @property
    def is_terminal(self) -> bool:
        """Whether it had ended when last read."""
        return self.data.status.terminal

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task_id={self.task_id!r}, status={self.data.status.value!r})"


class AsyncTask(TaskFields):
    """A handle on one task.

    Example:
        ```python
        task = await client.run("python train.py", gpu="a100")
        await task.wait(until="running")
        async for line in task.follow_logs():
            print(line)
        print(task.exit_code)
        ```

    Args:
        client: The client the task belongs to.
        data: The task state to start from.
    """

    def __init__(self, client: ComputeClient, data: Task) -> None:
        self._client = client
        self._data = data

    @property
    def data(self) -> Task:
        """The last task state read from the server."""
        return self._data

    def _update(self, data: Task) -> None:
        self._data = data

    @property
    def status(self) -> StatusView[Coroutine[Any, Any, TaskStatus]]:
        """The last known status; ``await task.status()`` reads the current one."""
        return StatusView(self._data.status.value, self._current_status)

    async def _current_status(self) -> TaskStatus:
        await self.refresh()
        return self._data.status

    async def refresh(self) -> Self:
        """Read the task's current state from the server; returns the handle."""
        self._data = await self._client.tasks.get(self.task_id)
        return self

    async def wait(
        self, timeout: float | None = None, until: Until = "terminal", poll_interval: float = 1.0
    ) -> TaskStatus:
        """Wait until the task ended (or runs, with ``until="running"``).

        A failed or cancelled task is not an error: its status is returned.

        Raises:
            TaskTimeoutError: ``timeout`` seconds passed first.
        """
        self._data = await _ops.wait_for(
            self._client, self.task_id, until=until, timeout=timeout, poll_interval=poll_interval
        )
        return self._data.status

    async def cancel(self, force: bool = False) -> None:
        """Stop the task (SIGTERM, then SIGKILL after a grace period; at once with ``force``)."""
        self._data = await self._client.tasks.cancel(self.task_id, force=force)

    async def logs(self, tail: int = 100, stream: LogStream = "stdout") -> str:
        """Return the last ``tail`` lines of the log now (empty while pending)."""
        snapshot = await self._client.tasks.logs(self.task_id, tail=tail, stream=stream)
        return snapshot.text

    async def follow_logs(
        self, stream: LogStream = "stdout", *, poll_interval: float = 0.5
    ) -> AsyncIterator[str]:
        """Yield log lines as they are written, until the task ended and all are read.

        Over SSH, or over HTTP where SSH does not answer (the ``log_transport`` setting).
        Afterwards the handle holds the final state (``exit_code``, ``status``).
        """
        lines = _ops.follow_lines(
            self._client,
            self.task_id,
            stream=stream,
            poll_interval=poll_interval,
            on_update=self._update,
        )
        async with contextlib.aclosing(lines):
            async for _, batch in lines:
                for line in batch:
                    yield line

    async def shell(
        self, command: str | Sequence[str] | None = None, *, echo: bool = False
    ) -> ShellResult:
        """Run a command in the task (argv lists are quoted word by word) or open a shell.

        Args:
            command: A shell command line or an argv list; ``None`` for an interactive
                shell on this terminal.
            echo: Also copy the command's output to this process's stdout/stderr.

        Returns:
            Output and exit status (``str(result)`` is the output).

        Raises:
            ShellUnavailableError: The task's provider cannot run commands inside it (Ray).
            TaskEndedError: The task has ended.
        """
        return await _ops.shell(self._client, self.task_id, command, echo=echo)

    async def ssh_command(self) -> str:
        """Return an ``ssh`` command line for your own OpenSSH client (host key pinned)."""
        return ssh_command_line(await _ops.ssh_target(self._client, self.task_id))

    async def wait_for_ssh(self, timeout: float = 600.0) -> Self:
        """Wait until the task runs and answers over SSH.

        Raises:
            TaskTimeoutError: Not reachable within ``timeout`` seconds.
            TaskEndedError: The task ended before it could be reached.
        """
        self._data = await _ops.wait_for_ssh(self._client, self.task_id, timeout=timeout)
        return self

    async def upload_code(
        self, source_dir: str | Path | None = None, target_dir: str = "/workspace"
    ) -> UploadResult:
        """Upload a directory to the task (honours ``.gitignore``/``.flowignore``).

        Raises:
            TaskEndedError: The task has ended.
        """
        return await _ops.upload_code(
            self._client, self.task_id, source_dir=source_dir, target_dir=target_dir
        )
