"""Blocking file helpers for task directories: log tails, incremental reads, outputs.

Everything here touches the file system and is meant to run in a worker thread
(``asyncio.to_thread``); nothing here knows about the event loop or the database.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ...models.loglines import decode_line, split_lines
from ...models.tasks import TaskOutputFile
from .logfile import NotALogFile, open_beneath

__all__ = [
    "UnsafePath",
    "file_size",
    "list_outputs",
    "read_from",
    "resolve_inside",
    "tail_lines",
]

_TAIL_BLOCK = 64 * 1024


class UnsafePath(ValueError):
    """A requested path would leave its directory (``..``, absolute, symlink escape)."""


def file_size(path: Path) -> int:
    """The size of the regular file ``path`` in bytes; 0 when it does not exist or is
    something else (a link a task put in place of its log is not followed)."""
    try:
        status = path.lstat()
    except OSError:
        return 0
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

    Reads backwards in blocks, so a huge log costs only what is returned.
    """
    if count <= 0:
        return []
    fd = _open_log(root, path)
    if fd is None:
        return []
    with os.fdopen(fd, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        data = b""
        position = end
        start = min(start, end)
        while position > start and data.count(b"\n") <= count:
            step = min(_TAIL_BLOCK, position - start)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
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


def resolve_inside(root: Path, relative: str) -> Path:
    """``root / relative`` if it stays inside ``root`` after resolving symlinks.

    Raises:
        UnsafePath: ``relative`` is absolute, contains ``..`` or resolves outside ``root``.
    """
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith("/") or ".." in parts or not relative.strip("/"):
        raise UnsafePath(f"path {relative!r} must be relative and stay inside the directory")
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise UnsafePath(f"path {relative!r} leaves the directory")
    return target


def list_outputs(root: Path) -> list[TaskOutputFile]:
    """Regular files under ``root`` (relative POSIX paths, sorted); links leaving it skipped."""
    if not root.is_dir():
        return []
    base = root.resolve()
    found: list[TaskOutputFile] = []
    for directory, _dirs, files in os.walk(base):
        for name in files:
            path = Path(directory) / name
            real = path.resolve()
            if base not in real.parents or not real.is_file():
                continue
            found.append(TaskOutputFile(path.relative_to(base).as_posix(), real.stat().st_size))
    return sorted(found, key=lambda f: f.path)
