"""Writing into a task's directory from the host, the way an untrusted task cannot redirect.

A task may replace anything in its directory with a symbolic link (``workspace/data ->
/``, ``workspace -> /usr/lib``), and the server writes there as itself (as root, when it
runs as root): the volume links of ``mount``, the working directory, the log files. So
every such write walks its path one component at a time from a descriptor of the task
directory, ``openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW)``, makes a missing
directory relative to the one it found (``mkdirat``) and acts on the last name relative
to it: a link anywhere on the way is refused with :class:`LinkInTheWay`, never followed.
Everything here blocks: call it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["LinkInTheWay", "append_beneath", "link_beneath", "makedirs_beneath", "open_beneath"]

_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
T = TypeVar("T")


class LinkInTheWay(OSError):
    """A path in a task's directory goes through a symbolic link (or a file where a
    directory belongs); nothing was written."""


def _parts(root: Path, path: Path) -> tuple[str, ...]:
    parts = path.relative_to(root).parts
    if not parts or ".." in parts:
        raise ValueError(f"{path} is not a path below {root}")
    return parts


def _step(fd: int, name: str, path: Path, make: bool) -> int:
    """The directory ``name`` below ``fd`` (made when ``make``), never through a link."""
    if make:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=fd)
    try:
        return os.open(name, _DIR, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LinkInTheWay(
                errno.ELOOP, f"{name} is a link or a file, not a directory", str(path)
            ) from None
        raise


def _at(root: Path, path: Path, act: Callable[[int, str], T], *, make: bool) -> T:
    """``act(directory fd, last name)`` for ``path`` below ``root``, the directories on
    the way made when ``make``."""
    *dirs, last = _parts(root, path)
    fd = os.open(root, _DIR)
    try:
        for name in dirs:
            fd, parent = _step(fd, name, path, make), fd
            os.close(parent)
        return act(fd, last)
    finally:
        os.close(fd)


def makedirs_beneath(root: Path, path: Path) -> None:
    """Make the directory ``path`` below ``root`` and those above it (as ``mkdir -p``).

    Raises:
        LinkInTheWay: A component is a link or a file.
    """
    if path == root:
        return
    _at(root, path, lambda fd, name: os.close(_step(fd, name, path, True)), make=True)


def link_beneath(root: Path, path: Path, target: Path) -> bool:
    """Make ``path`` (below ``root``, its directories made) a symbolic link to ``target``.

    Returns:
        ``True`` when made; ``False`` when ``path`` already is a link to ``target``.

    Raises:
        FileExistsError: Something else is at ``path``.
        LinkInTheWay: A directory on the way is a link or a file.
    """

    def make(fd: int, name: str) -> bool:
        try:
            os.symlink(target, name, target_is_directory=True, dir_fd=fd)
        except FileExistsError:
            try:
                if os.readlink(name, dir_fd=fd) == str(target):
                    return False
            except OSError:
                pass
            raise
        return True

    return _at(root, path, make, make=True)


def unlink_beneath(root: Path, path: Path, target: Path) -> None:
    """Remove ``path`` (below ``root``) when it is a symbolic link to ``target``, as
    :func:`link_beneath` made it; anything else there, or on the way, is left alone."""

    def unlink(fd: int, name: str) -> None:
        with contextlib.suppress(OSError):
            if os.readlink(name, dir_fd=fd) == str(target):
                os.unlink(name, dir_fd=fd)

    with contextlib.suppress(OSError):  # LinkInTheWay or gone: nothing of ours to remove
        _at(root, path, unlink, make=False)


def open_beneath(root: Path, path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of ``path`` below ``root`` with ``O_NOFOLLOW``, the directories on the
    way walked without links (not made); the file must be a regular one.

    Raises:
        LinkInTheWay: A link (or a FIFO, a directory ...) on the way or at ``path``.
    """

    def opened(fd: int, name: str) -> int:
        try:
            found = os.open(
                name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=fd
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LinkInTheWay(errno.ELOOP, f"{name} is a link", str(path)) from None
            raise
        if not stat.S_ISREG(os.fstat(found).st_mode):
            os.close(found)
            raise LinkInTheWay(errno.EINVAL, f"{name} is not a regular file", str(path))
        os.set_blocking(found, True)
        return found

    return _at(root, path, opened, make=False)


def append_beneath(root: Path, path: Path, text: str) -> None:
    """Append ``text`` as one line to the file ``path`` below ``root`` (made if missing)."""
    fd = open_beneath(root, path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(text.rstrip("\n") + "\n")
