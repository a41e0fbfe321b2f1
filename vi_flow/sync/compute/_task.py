"""The blocking ``Task`` handle: each method one typed line over the portal to :class:`~vi_flow.AsyncTask`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...compute._task import StatusView, TaskFields
from ...models.tasks import (
    Task as TaskData,
)
from ...models.tasks import (
    TaskStatus,
)

if TYPE_CHECKING:
    from typing_extensions import Self

    from ..._portal import Portal
    from ...compute._ops import Until
    from ...compute._task import AsyncTask
    from ...compute._upload import UploadResult
    from ...compute.ssh import ShellResult
    from ...resources.tasks import LogStream

__all__ = ["Task"]


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
