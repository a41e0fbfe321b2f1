"""Walking and removing directory trees that a task shapes: outputs, task directories, volumes.

A task decides what its directories hold: a tree 30,000 levels deep, a link where a
directory was a moment ago. :class:`Walk` goes through such a tree depth first in a
loop (a deep tree is no ``RecursionError``) holding at most :data:`HELD` directory
descriptors besides the top (a tree deeper than the open-file limit is no ``EMFILE``),
and never follows a link: every name is opened relative to its parent's descriptor with
``O_NOFOLLOW``. A parent whose descriptor was closed to stay within :data:`HELD` is
opened again as ``..`` of its child and must be the very directory it was (device and
inode), so a directory moved meanwhile ends the walk instead of leading it elsewhere.

:func:`remove_tree` empties and removes a tree with it. :func:`set_aside` renames a
directory to be removed (a deleted volume's data, in the transaction that deletes its
row) where :func:`left_aside` finds it again, for a removal that failed or never ran.
Everything here blocks: call it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

__all__ = [
    "HELD",
    "Entry",
    "TreeMoved",
    "Walk",
    "left_aside",
    "open_dir",
    "put_back",
    "remove_tree",
    "set_aside",
    "try_remove_tree",
]

log = logging.getLogger("vi_flow.server")

HELD = 32
"""The most directory descriptors a walk holds besides its top."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ASIDE = ".deleted-"


class TreeMoved(OSError):
    """A directory being walked was moved or removed meanwhile: the walk cannot go up."""


@attrs.frozen
class Entry:
    """A name met by a :class:`Walk`.

    Attributes:
        parent: The descriptor of the directory that holds it, valid until the walk
            goes on.
        name: Its name in that directory.
        status: Its ``lstat``; for a directory, taken once its contents were walked.
        walked: Whether it is a directory whose contents were all walked.
    """

    parent: int
    name: str
    status: os.stat_result
    walked: bool = False


@attrs.define
class _Level:
    """A directory being walked: its descriptor (``None`` while closed to stay within
    :data:`HELD`), its device and inode, the names left, its name in its parent."""

    fd: int | None
    ident: tuple[int, int]
    names: list[str]
    name: str = ""


def _ident(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


class Walk:
    """Depth first through the tree below the directory open as ``top``: an
    :class:`Entry` for each name that is not a directory, and one for each directory
    after everything in it. Links are entries, never entered.

    Args:
        top: A descriptor of the top directory (``O_RDONLY``); the caller's, never closed
            here.
        prepare: Called with each directory's descriptor before its names are read
            (:func:`remove_tree` makes it writable).
        strict: Raise the ``OSError`` of a directory that cannot be opened or read, or
            of a walk that cannot go on (:class:`TreeMoved`); by default such a
            directory is skipped, and such a walk ends early.
    """

    def __init__(
        self,
        top: int,
        *,
        prepare: Callable[[int], None] | None = None,
        strict: bool = False,
        unlock: bool = False,
    ) -> None:
        self._top = top
        self._prepare = prepare
        self._strict = strict
        self._unlock = unlock
        self._stack: list[_Level] = []
        self._first_open = 1  # the open levels below the top are stack[_first_open:]

    def path(self, name: str) -> str:
        """``name`` in the directory being walked, as a POSIX path relative to the top."""
        return "/".join([*(level.name for level in self._stack[1:]), name])

    def __iter__(self) -> Iterator[Entry]:
        status = os.fstat(self._top)
        self._stack = [_Level(self._top, _ident(status), self._names(self._top))]
        self._first_open = 1
        try:
            yield from self._walk()
        except OSError:
            if self._strict:
                raise
        finally:
            for level in self._stack[1:]:  # ended early: no descriptor is left open
                if level.fd is not None:
                    os.close(level.fd)
            self._stack = []

    def _walk(self) -> Iterator[Entry]:
        stack = self._stack
        while True:
            level = stack[-1]
            if level.names:
                entry = self._visit(level, level.names.pop())
                if entry is not None:
                    yield entry
            elif len(stack) > 1:
                yield self._leave()
            else:
                return

    def _names(self, fd: int) -> list[str]:
        if self._prepare is not None:
            self._prepare(fd)
        with os.scandir(fd) as entries:
            return [entry.name for entry in entries]

    def _visit(self, level: _Level, name: str) -> Entry | None:
        """The entry of a name that is not a directory; a directory is entered instead."""
        assert level.fd is not None  # the deepest level is always open
        try:
            status = os.stat(name, dir_fd=level.fd, follow_symlinks=False)
            if not stat.S_ISDIR(status.st_mode):
                return Entry(level.fd, name, status)
            fd = open_dir(name, level.fd, unlock=self._unlock)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link or a file swapped in
                return self._as_it_is_now(level.fd, name)
            if self._strict:
                raise
            return None
        self._enter(fd, name)
        return None

    def _as_it_is_now(self, parent: int, name: str) -> Entry | None:
        try:
            status = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return None if stat.S_ISDIR(status.st_mode) else Entry(parent, name, status)

    def _enter(self, fd: int, name: str) -> None:
        try:
            status = os.fstat(fd)
            if status.st_dev != self._stack[0].ident[0]:
                log.warning("a mount point is left in place (not walked): %s", self.path(name))
                os.close(fd)
                return
            names = self._names(fd)
        except OSError:
            os.close(fd)
            if self._strict:
                raise
            return
        self._stack.append(_Level(fd, _ident(status), names, name))
        if len(self._stack) - self._first_open > HELD:
            oldest = self._stack[self._first_open]
            assert oldest.fd is not None
            os.close(oldest.fd)
            oldest.fd = None
            self._first_open += 1

    def _leave(self) -> Entry:
        """Go up from the deepest directory, all of it walked; its entry."""
        child = self._stack.pop()
        assert child.fd is not None
        try:
            parent = self._stack[-1]
            if parent.fd is None:
                parent.fd = _reopen(child.fd, parent.ident)
                self._first_open = len(self._stack) - 1
            return Entry(parent.fd, child.name, os.fstat(child.fd), walked=True)
        finally:
            os.close(child.fd)


def _reopen(child: int, ident: tuple[int, int]) -> int:
    """The parent of the directory open as ``child``, which must be ``ident``."""
    try:
        fd = os.open("..", _DIR_FLAGS, dir_fd=child)
    except OSError as exc:
        raise TreeMoved(exc.errno, f"a directory walked was removed: {exc.strerror}") from None
    if _ident(os.fstat(fd)) != ident:
        os.close(fd)
        raise TreeMoved(errno.ESTALE, "a directory walked was moved meanwhile")
    return fd


def _writable(fd: int) -> None:
    os.fchmod(fd, stat.S_IRWXU)  # a task may have made it read-only


def open_dir(name: str | Path, dir_fd: int | None, *, unlock: bool) -> int:
    """Open the directory ``name`` (never through a link); with ``unlock``, one its owner
    cannot read (mode 000, which a task may set) is given ``rwx`` for its owner first.

    QA: a server that is not root could not open such a directory, even its own, so it
    never removed it (a pruned task's files, a deleted volume stayed on disk for ever).
    Root reads any. The mode is changed through a handle that needs no permission
    (``O_PATH``), so a link put in its place is never followed.
    """
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        if not unlock:
            raise
    handle = os.open(name, _PATH_FLAGS, dir_fd=dir_fd)
    try:
        os.chmod(f"/proc/self/fd/{handle}", stat.S_IRWXU)
    finally:
        os.close(handle)
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _empty(top: int) -> None:
    """Remove everything below the directory open as ``top``; a mount point is left."""
    for entry in Walk(top, prepare=_writable, strict=True, unlock=True):
        if entry.walked:
            with contextlib.suppress(OSError):  # a mount point left inside it
                os.rmdir(entry.name, dir_fd=entry.parent)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.name, dir_fd=entry.parent)


def remove_tree(root: Path) -> bool:
    """Remove the directory ``root`` and everything under it, following no link.

    Every name is opened relative to its parent's descriptor with ``O_NOFOLLOW``: a link
    (to a volume, to ``/etc``) is unlinked, never entered, even if it replaced a
    directory while this ran. A directory on another file system (a mount point) is
    left in place. Directories a task made read-only are made writable first.

    Returns:
        Whether ``root`` existed as a directory and is gone.

    Raises:
        OSError: What stopped the removal (what was removed stays removed).
    """
    try:
        fd = open_dir(root, None, unlock=True)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:  # ELOOP: root itself is a link
        log.warning("%s is not a directory, left in place: %s", root, exc)
        return False
    try:
        _empty(fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(root)
    except OSError as exc:  # a mount point was left inside
        log.warning("%s is not empty, left in place: %s", root, exc)
        return False
    return True


def set_aside(path: Path) -> Path | None:
    """Rename the directory ``path`` to a name :func:`left_aside` finds, in the same
    parent (one file system: the rename is atomic, and follows no link).

    Returns:
        Its new path; ``None`` when there is nothing at ``path``.
    """
    aside = path.with_name(_ASIDE + path.name)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    return aside


def put_back(aside: Path, path: Path) -> None:
    """Undo :func:`set_aside` (what set it aside was not committed)."""
    os.rename(aside, path)


def left_aside(parent: Path) -> list[tuple[Path, Path]]:
    """What :func:`set_aside` left in ``parent``: ``(where it is, where it was)``."""
    try:
        names = [name for name in os.listdir(parent) if name.startswith(_ASIDE)]
    except FileNotFoundError:
        return []
    return [(parent / name, parent / name.removeprefix(_ASIDE)) for name in names]


def try_remove_tree(path: Path) -> bool:
    """:func:`remove_tree`, what stopped it logged (and ``False``)."""
    try:
        return remove_tree(path)
    except OSError as exc:
        log.warning("%s was not removed: %s", path, exc)
        return False
