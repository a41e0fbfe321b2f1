"""Starting a task's process off the event loop, and learning of its exit from a pidfd.

``asyncio.create_subprocess_exec`` forks on the event loop and, before Python 3.12, starts
one watcher thread per child; with 50 tasks submitted at once those forks and thread starts
queue behind each other on the loop. :func:`start_process` is ``subprocess.Popen`` for a
worker thread instead, so the loop keeps serving while a fork and ``exec`` happen, and
learns of the exit through a pidfd the loop watches (a worker thread blocked in ``wait``
where the kernel has no pidfds). :class:`TaskProcess` offers what the provider uses of an asyncio
process: ``pid``, ``returncode`` and ``wait()``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["TaskProcess", "start_process"]


class TaskProcess:
    """A started task process; its exit status is collected as soon as it ends.

    Args:
        popen: The started process (reaped only here).
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        """The exit status once reaped: the code, or ``-N`` after signal ``N``."""
        self._exited = asyncio.get_running_loop().create_future()
        self._watch()

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfds here: a thread waits instead
            waiter = asyncio.ensure_future(asyncio.to_thread(self._popen.wait))
            waiter.add_done_callback(lambda _: self._reaped())
            return
        loop.add_reader(pidfd, self._readable, pidfd)

    def _readable(self, pidfd: int) -> None:
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        self._popen.wait()  # it has exited: this reaps it without blocking
        self._reaped()

    def _reaped(self) -> None:
        self.returncode = self._popen.returncode
        if not self._exited.done():
            self._exited.set_result(self.returncode)

    async def wait(self) -> int:
        """Wait for the process to end; its exit status."""
        code: int = await asyncio.shield(self._exited)
        return code


def start_process(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], stdout: int, stderr: int,
    pass_fds: Sequence[int] = (), stdin: int = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start ``argv`` as the leader of a new session (and process group), stdin empty
    unless given, with ``pass_fds`` open in it too (blocking: call it on a worker thread,
    then wrap it in a :class:`TaskProcess` on the loop).

    Raises:
        OSError: It could not be started (as ``exec`` reports it).
    """
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        pass_fds=pass_fds,
    )
