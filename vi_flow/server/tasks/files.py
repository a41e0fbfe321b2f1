"""Blocking file helpers for task directories: log tails, incremental reads, outputs.

Everything here touches the file system and is meant to run in a worker thread
(``asyncio.to_thread``); nothing here knows about the event loop or the database.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ...models.limits import MAX_LOG_TAIL_BYTES, is_unicode
from ...models.loglines import decode_line, first_char_start, split_lines
from ...models.tasks import TaskOutputFile
from ..trees import Walk, open_dir
from .logfile import READ_SIZE, NotALogFile, Unreadable, open_beneath

__all__ = [
    "Unreadable",
    "UnsafePath",
    "file_size",
    "list_outputs",
    "open_output",
    "output_path",
    "read_from",
    "tail_lines",
]

_TAIL_BLOCK = 64 * 1024


class UnsafePath(ValueError):
    """A requested path would leave its directory (``..``, absolute, symlink escape)."""


def file_size(path: Path) -> int:
    """The size of the regular file ``path`` in bytes; 0 when it does not exist or is
    something else (a link a task put in place of its log is not followed)."""
    try:  # the directory too is taken as itself: a link put in place of logs/ is not followed
        parent = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        status = os.stat(path.name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return 0
    finally:
        os.close(parent)
    return status.st_size if stat.S_ISREG(status.st_mode) else 0


def _open_log(root: Path, path: Path) -> int | None:
    """A task's log opened as :func:`.logfile.open_beneath` does; ``None`` when it cannot
    be (missing, or replaced by a link)."""
    with contextlib.suppress(NotALogFile):
        return open_beneath(root, path)
    return None


def tail_lines(root: Path, path: Path, count: int, start: int = 0) -> list[str]:
    """The last ``count`` lines of the log ``path`` of the task directory ``root`` (none
    before byte offset ``start``), split as :mod:`vi_flow.models.loglines` does.

    Reads backwards in blocks, each once, and at most ``count`` times :data:`READ_SIZE`
    bytes and a ``\\r\\n`` (a line handed out whole is that long at most), and never more
    than :data:`MAX_LOG_TAIL_BYTES`: a huge log costs only what is returned. A line cut by
    that bound is left out, but for one line longer than it (one line of 60 MB), which
    comes back as its end: its last ``count`` pieces, counted from that end.
    """
    if count <= 0:
        return []
    fd = _open_log(root, path)
    if fd is None:
        return []
    blocks: list[bytes] = []
    ends = 0  # line ends in the blocks read so far
    with os.fdopen(fd, "rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        # QA: at count * READ_SIZE, a line of exactly READ_SIZE bytes lost its first byte
        # (and a CRLF one two), or was left out as cut
        bound = position - min(count * (READ_SIZE + 2), MAX_LOG_TAIL_BYTES)
        floor = max(min(start, position), bound)
        while position > floor and ends <= count:
            step = min(_TAIL_BLOCK, position - floor)
            position -= step
            block = os.pread(fd, step, position)
            blocks.append(block)
            ends += block.count(b"\n")
        partial = position > 0 and os.pread(fd, 1, position - 1) != b"\n"  # a line's end
    data = b"".join(reversed(blocks))
    first = data.find(b"\n") + 1  # where the first whole line starts (0: none does)
    if partial and position == bound and 0 < first < len(data):
        data = data[first:]  # the line the bound cut, unless it is the last
    elif partial:
        if first in (0, len(data)):  # all of it is the end of one long line: its last
            ending = 2 if data.endswith(b"\r\n") else 1 if first else 0  # pieces, from there
            data = data[max(0, len(data) - count * READ_SIZE - ending) :]
        data = data[first_char_start(data) :]  # from a character's start (QA: U+FFFD first)
    lines, rest = split_lines(b"", data)
    if rest:
        lines.append(decode_line(rest))
    return lines[-count:]


def read_from(root: Path, path: Path, offset: int, limit: int = 1 << 20) -> bytes:
    """Up to ``limit`` bytes of the log ``path`` of the task directory ``root`` from byte
    ``offset`` (``b""`` if none)."""
    fd = _open_log(root, path)
    if fd is None:
        return b""
    with os.fdopen(fd, "rb") as handle:
        return os.pread(handle.fileno(), limit, offset)


def output_path(root: Path, relative: str) -> Path:
    """``root / relative``, checked without touching the disk (what is there is the
    task's to change at any moment: :func:`open_output` opens it safely).

    Raises:
        UnsafePath: ``relative`` is empty, absolute or contains ``..``.
    """
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if relative.startswith("/") or ".." in relative.replace("\\", "/").split("/") or not parts:
        raise UnsafePath(f"path {relative!r} must be relative and stay inside the directory")
    return root.joinpath(*parts)


def open_output(root: Path, relative: str) -> int | None:
    """The output file ``relative`` of the output directory ``root``, open for reading;
    ``None`` when there is no such regular file.

    A task may swap any part of the path for a link between a check and an open, so the
    file is opened one component at a time without following links (as a log is:
    :func:`.logfile.open_beneath`), never by a path resolved beforehand.

    Raises:
        UnsafePath: ``relative`` is empty, absolute or contains ``..``.
        Unreadable: The file is there, but the server may not read it (a task took the
            permission away from a server that is not root).
    """
    path = output_path(root, relative)
    try:
        return open_beneath(root, path)
    except Unreadable:
        raise
    except NotALogFile:  # a link, a FIFO, a directory...: not an output file
        return None


def list_outputs(root: Path) -> list[TaskOutputFile]:
    """Regular files under ``root`` (relative POSIX paths, sorted); links are not followed
    nor listed, and what a task changes during the walk is skipped, never read through.
    A tree of any depth is listed (:class:`~vi_flow.server.trees.Walk`). A file whose
    path is not UTF-8 is left out: no JSON answer or URL can name it.

    A directory the task made unreadable (``chmod 000``) is given its owner's permissions
    back and listed, as a root server lists it: a server that is not root, and so the
    task's own user, left its files out without a word, and ``get_model`` missed a
    checkpoint (QA AZ). One of another user stays unread.
    """
    try:
        top = open_dir(root, None, unlock=True)
    except OSError:  # the directory itself is missing, unreadable or a link: no outputs
        return []
    try:
        walk = Walk(top, unlock=True)
        found = [
            TaskOutputFile(path, entry.status.st_size)
            for entry in walk
            if stat.S_ISREG(entry.status.st_mode) and is_unicode(path := walk.path(entry.name))
        ]
    except OSError:  # its own names could not be read
        return []
    finally:
        os.close(top)
    return sorted(found, key=lambda f: f.path)
