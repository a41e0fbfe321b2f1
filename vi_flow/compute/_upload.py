"""Upload a directory to a task as one stream, honouring ignore files, never escaping the target.

Files are chosen by :func:`~vi_flow.compute._ignore.collect_files` (git's view of the
tree, or nested ``.gitignore`` files; ``.flowignore`` files too). :func:`send_tree` sends
them all as one tar stream into ``tar -x`` running in the task (one SSH channel, however
many files), after one check that no directory or file on the way is a symbolic link;
where the task has no ``tar``, :func:`upload_files` writes them one by one over SFTP with
the same checks. Either way only plain relative paths below ``target_dir`` are written.
Local reads run in a worker thread.
"""

from __future__ import annotations

import posixpath
import stat
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import attrs

from .._errors import ViFlowError
from ._ignore import IgnoreRules, collect_files

if TYPE_CHECKING:
    import asyncssh

__all__ = [
    "IgnoreRules",
    "UploadError",
    "UploadResult",
    "check_target_dir",
    "collect_files",
    "progress_bar",
    "remote_path",
    "send_tree",
    "upload_files",
]

_CHUNK = 256 * 1024


class UploadError(ViFlowError):
    """An upload was refused because it would write outside its target directory."""


class _BadTargetDir(UploadError, ValueError):
    """A target directory no upload may use: an argument to fix (a ``ValueError`` too)."""


@attrs.frozen
class UploadResult:
    """What an upload sent.

    Attributes:
        target_dir: The remote directory written to, as the task's SFTP server shows it
            (``/workspace`` is the task's working directory).
        files: Number of files sent.
        bytes: Bytes sent.
        skipped: Source paths left out because they are symbolic links that leave the
            source directory or point to directories.
        path: Where the files are on the task's machine (``None`` when unknown).
    """

    target_dir: str
    files: int
    bytes: int
    skipped: list[str] = attrs.Factory(list)
    path: str | None = None


def remote_path(target_dir: str, relative: str) -> str:
    """Join a relative POSIX path under ``target_dir``, refusing any escape.

    Raises:
        UploadError: ``relative`` is absolute, empty, or has ``.``/``..`` parts.
    """
    parts = relative.split("/")
    if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UploadError(f"refusing to upload {relative!r}: not a plain relative path")
    if "\n" in relative:
        raise UploadError(f"refusing to upload {relative!r}: a newline in a file name")
    return posixpath.join(target_dir, *parts)


WORKSPACE = "/workspace"
"""The task's working directory as the SFTP server shows it."""


def check_target_dir(target_dir: str) -> str:
    """Validate and normalise the remote target directory; relative ones are in ``/workspace``.

    Raises:
        UploadError: It is empty or contains ``..``.
    """
    if not target_dir:
        raise _BadTargetDir(
            "target_dir must not be empty: give a directory of the task's workspace"
            " ('.' for the workspace itself)"
        )
    if ".." in target_dir.split("/"):
        raise _BadTargetDir(f"refusing target_dir {target_dir!r}: it must not contain '..'")
    return posixpath.normpath(posixpath.join(WORKSPACE, target_dir))


Progress = Callable[[int], None]

#: Prints each path read on stdin (relative to the task's working directory) that is a
#: symbolic link; run first, so that the tar below never writes through one. "." first
#: when the workspace itself is one: the session then starts where it points (QA AI: the
#: upload answered success and the files went to the session's private /tmp).
_FIND_LINKS = (
    'if [ -L "${VI_FLOW_WORKSPACE:-.}" ]; then echo .; fi; '
    'while IFS= read -r p; do if [ -L "$p" ]; then printf "%s\\n" "$p"; fi; done'
)
#: Unpacks the tar stream on stdin into "$1" (made first), as the task's own user.
_EXTRACT = 'mkdir -p -- "$1" && exec tar -x -f - --no-same-owner -C "$1"'
_NOT_FOUND = 127  # the shell's status for a command it cannot find


def _workspace_relative(target: str) -> str:
    """``target`` (the SFTP view, ``/workspace/...``) from the task's working directory."""
    return posixpath.relpath(target, WORKSPACE)


def _paths_on_the_way(relative_target: str, files: list[tuple[str, Path]]) -> list[str]:
    """The target, every directory to pass through and every file to write, in order."""
    seen: dict[str, None] = {}
    parts = relative_target.split("/")
    for i in range(len(parts)):
        if parts[i] not in ("..", "."):
            seen["/".join(parts[: i + 1])] = None
    for relative, _ in files:
        names = relative.split("/")
        for i in range(len(names)):
            seen[posixpath.join(relative_target, *names[: i + 1])] = None
    return list(seen)


async def _refuse_remote_links(conn: asyncssh.SSHClientConnection, paths: list[str]) -> bool:
    """Refuse a symbolic link among ``paths``; ``False`` when the task has no ``sh``."""
    from .ssh import run_remote

    listing = "".join(p + "\n" for p in paths).encode("utf-8", "surrogateescape")
    try:
        found = await run_remote(conn, ["sh", "-c", _FIND_LINKS], input=listing)
    except BrokenPipeError:  # it ended before reading: no shell to run it
        return False
    if found.exit_status == _NOT_FOUND:
        return False
    _check_status(found.exit_status, found.exit_signal)
    if found.exit_status != 0:
        raise UploadError(f"could not check the target in the task: {found.stderr.strip()}")
    if found.stdout:
        first = posixpath.normpath(posixpath.join(WORKSPACE, found.stdout.splitlines()[0]))
        raise UploadError(f"refusing to write through the remote symbolic link {first}")
    return True


def _check_status(status: int | None, signal: object) -> None:
    """A command that ended with neither a status nor a signal: the server closed its
    session (it stopped: QA AG saw "unpacking in the task failed (exit None): ")."""
    if status is None and signal is None:
        raise ConnectionResetError("the task's server closed the session before the command ended")


async def send_tree(
    conn: asyncssh.SSHClientConnection,
    files: list[tuple[str, Path]],
    target_dir: str,
    *,
    progress: Progress | None = None,
) -> tuple[int, int] | None:
    """Send ``files`` as one tar stream into ``tar -x`` in the task; return (files, bytes).

    Returns ``None`` when the task has no ``sh`` or ``tar`` (nothing was written; use
    :func:`upload_files`).

    Raises:
        UploadError: A path escapes ``target_dir``, a remote entry on the way is a
            symbolic link, or ``tar`` in the task failed (its message is quoted).
    """
    from .ssh import build_remote_command

    target = check_target_dir(target_dir)
    for relative, _ in files:
        remote_path(target, relative)
    relative_target = _workspace_relative(target)
    if not await _refuse_remote_links(conn, _paths_on_the_way(relative_target, files)):
        return None
    command = build_remote_command(["sh", "-c", _EXTRACT, "sh", relative_target])
    proc = await conn.create_process(command, encoding=None)
    async with proc:
        sent = await _stream_tar(proc, files, progress)
        errors = await proc.stderr.read()
        done = await proc.wait(check=False)
    if done.exit_status == _NOT_FOUND:
        return None
    _check_status(done.exit_status, done.exit_signal)
    if done.exit_status != 0:
        why = errors.decode("utf-8", "replace").strip()
        raise UploadError(f"unpacking in the task failed (exit {done.exit_status}): {why}")
    return len(files), sent


async def _stream_tar(
    proc: asyncssh.SSHClientProcess[bytes], files: list[tuple[str, Path]], progress: Progress | None
) -> int:
    import asyncssh

    send, receive = anyio.create_memory_object_stream[bytes](8)

    async def pump() -> None:
        """Copy the chunks to the remote stdin; if it closes early (no ``tar``, or it
        failed) or the connection drops, stop: the producer then stops too, and the
        exit status (none, for a dropped connection) says why."""
        with receive:
            try:
                async for chunk in receive:
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
                proc.stdin.write_eof()
            except (BrokenPipeError, ConnectionError, asyncssh.ConnectionLost):
                pass  # dropped while draining (CI saw it wrapped in a task group's group)

    async with anyio.create_task_group() as group:
        group.start_soon(pump)
        sent = await anyio.to_thread.run_sync(_write_tar, files, send, progress)
    return sent


class _ToStream:
    """A file object for :mod:`tarfile` (in a worker thread) that sends what it is given
    to the event loop in chunks of about ``_CHUNK`` bytes."""

    def __init__(self, send: anyio.abc.ObjectSendStream[bytes]) -> None:
        self._send = send
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= _CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            anyio.from_thread.run(self._send.send, bytes(self._buffer))
            self._buffer.clear()


def _write_tar(
    files: list[tuple[str, Path]],
    send: anyio.abc.ObjectSendStream[bytes],
    progress: Progress | None,
) -> int:
    out, sent = _ToStream(send), 0
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for relative, local in files:
                sent += _add_file(tar, relative, local)
                if progress is not None:
                    anyio.from_thread.run_sync(progress, local.stat().st_size)
        out.flush()
    except anyio.BrokenResourceError:
        pass  # the remote side stopped reading; its exit status tells why
    finally:
        anyio.from_thread.run(send.aclose)
    return sent


def _add_file(tar: tarfile.TarFile, relative: str, local: Path) -> int:
    info = tar.gettarinfo(str(local), arcname=relative)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # the task's sandbox refuses set-ID modes: a set-UID file failed the whole upload
    # halfway (QA AV); dropped here, as OpenSSH's scp and sftp do
    info.mode &= ~(stat.S_ISUID | stat.S_ISGID)
    with local.open("rb") as handle:
        tar.addfile(info, handle)
    return info.size


async def upload_files(
    sftp: asyncssh.SFTPClient,
    files: list[tuple[str, Path]],
    target_dir: str,
    *,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Write ``files`` under ``target_dir`` over SFTP; return (files, bytes) sent.

    Raises:
        UploadError: A path escapes ``target_dir`` or an existing remote entry on the
            way is a symbolic link.
    """
    target = check_target_dir(target_dir)
    plan = [(remote_path(target, rel), local) for rel, local in files]
    made: set[str] = set()
    await _ensure_dir(sftp, target, made, nested=False)
    sent = 0
    for remote, local in plan:
        await _ensure_parents(sftp, target, posixpath.dirname(remote), made)
        await _refuse_link(sftp, remote)
        sent += await _send_file(sftp, local, remote, progress)
    return len(plan), sent


async def _ensure_parents(sftp: asyncssh.SFTPClient, top: str, parent: str, made: set[str]) -> None:
    relative = posixpath.relpath(parent, top)
    if relative == ".":
        return
    current = top
    for part in relative.split("/"):
        current = posixpath.join(current, part)
        await _ensure_dir(sftp, current, made, nested=True)


async def _ensure_dir(
    sftp: asyncssh.SFTPClient, directory: str, made: set[str], *, nested: bool
) -> None:
    """Make ``directory`` (its parents too unless ``nested``); refuse a symbolic link,
    the target directory included (a task could point ``code`` anywhere)."""
    import asyncssh

    if directory in made:
        return
    try:
        attrs_ = await sftp.lstat(directory)
    except asyncssh.SFTPNoSuchFile:
        if nested:
            await sftp.mkdir(directory)
        else:
            await sftp.makedirs(directory, exist_ok=True)
    else:
        if attrs_.type == asyncssh.FILEXFER_TYPE_SYMLINK:
            raise UploadError(f"refusing to write through the remote symbolic link {directory}")
    made.add(directory)


async def _refuse_link(sftp: asyncssh.SFTPClient, remote: str) -> None:
    import asyncssh

    try:
        attrs_ = await sftp.lstat(remote)
    except asyncssh.SFTPNoSuchFile:
        return
    if attrs_.type == asyncssh.FILEXFER_TYPE_SYMLINK:
        raise UploadError(f"refusing to write through the remote symbolic link {remote}")


async def _send_file(
    sftp: asyncssh.SFTPClient, local: Path, remote: str, progress: Progress | None
) -> int:
    sent = 0
    handle = await anyio.to_thread.run_sync(local.open, "rb")
    try:
        async with sftp.open(remote, "wb") as out:
            while chunk := await anyio.to_thread.run_sync(handle.read, _CHUNK):
                await out.write(chunk)
                sent += len(chunk)
                if progress is not None:
                    progress(len(chunk))
    finally:
        handle.close()
    return sent


def progress_bar(total: int) -> tuple[Callable[[int], None], Callable[[], None]] | None:
    """Return (advance, stop) of a rich progress bar on a terminal; ``None`` elsewhere."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("uploading", total=total)
    bar.start()
    return (lambda n: bar.advance(task, n)), bar.stop
