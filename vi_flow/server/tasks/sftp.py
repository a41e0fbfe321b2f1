"""SFTP rooted in a task directory: every path is walked from the root, never followed.

Each request walks its path one component at a time from a descriptor of the task root,
``openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW)`` (``os.open(..., dir_fd=)``), and
acts on the last component relative to the directory it found (``dir_fd=``,
``O_NOFOLLOW``, ``follow_symlinks=False``). Nothing is checked by name and then used by
name again, so a symbolic link that the task swaps in between is never followed: a link
anywhere in a path is refused with *permission denied*. ``..`` is resolved lexically and
never climbs above the root. A ``+logs`` login gets no SFTP at all.

``logs/`` is the server's, read-only to the task as in its sandbox: nothing in it or of
it may be written, moved, removed or linked (a hard link would make a log writable from
the workspace; ``logs`` moved away and replaced by a link would make the server bind and
write its target).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import asyncssh
from asyncssh import SFTPAttrs, SFTPName

__all__ = ["MAX_READ", "FileShare", "TaskSFTPServer", "components"]

MAX_READ = 256 * 1024
"""The most one SFTP read answers (OpenSSH's sftp-server answers at most as much)."""


class FileShare(Protocol):
    """The share of open files an SFTP session counts against."""

    def take(self) -> None:
        """Count one more open file, or raise ``asyncssh.SFTPFailure`` past the share."""

    def give_back(self) -> None:
        """Count one open file closed."""

    def ended(self) -> None:
        """The session ended (every file it opened was closed)."""


_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def components(path: bytes) -> list[bytes]:
    """The names of ``path`` below the root, ``..`` resolved lexically (never above it)."""
    normal = posixpath.normpath(posixpath.join(b"/", path))
    return [part for part in normal.split(b"/") if part and part != b"."]


_READ_ONLY = b"logs"  # the entry of the root that the server alone writes
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _in_logs(path: bytes) -> bool:
    return components(path)[:1] == [_READ_ONLY]


def _logs_refusal() -> asyncssh.SFTPPermissionDenied:
    return asyncssh.SFTPPermissionDenied(
        "logs/ is read-only: the server writes the task's logs (read them, or copy them elsewhere)"
    )


def _outside_logs(path: bytes) -> None:
    """Refuse a change to ``logs/`` or anything in it."""
    if _in_logs(path):
        raise _logs_refusal()


def _not_a_file(shown: bytes) -> asyncssh.SFTPPermissionDenied:
    name = shown.decode(errors="replace")
    return asyncssh.SFTPPermissionDenied(f"{name} is not a regular file")


def _link_refusal(shown: bytes) -> asyncssh.SFTPPermissionDenied:
    name = shown.decode(errors="replace")
    return asyncssh.SFTPPermissionDenied(
        f"{name} goes through a symbolic link; SFTP never follows one (it could lead "
        "outside the task directory)"
    )


def _is_link(dir_fd: int, name: bytes) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_at(dir_fd: int, name: bytes, flags: int, shown: bytes, mode: int = 0o777) -> int:
    """``openat`` that never follows a link: one is refused, naming the path."""
    try:
        return os.open(name, flags, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(dir_fd, name):
            raise _link_refusal(shown) from None
        raise


def _open_flags(pflags: int) -> int:
    """SFTP v3 open flags as ``os.open`` flags."""
    read, write = pflags & asyncssh.FXF_READ, pflags & asyncssh.FXF_WRITE
    flags = os.O_RDWR if read and write else os.O_WRONLY if write else os.O_RDONLY
    for bit, extra in (
        (asyncssh.FXF_APPEND, os.O_APPEND),
        (asyncssh.FXF_CREAT, os.O_CREAT),
        (asyncssh.FXF_TRUNC, os.O_TRUNC),
        (asyncssh.FXF_EXCL, os.O_EXCL),
    ):
        if pflags & bit:
            flags |= extra
    return flags


_DISPOSITIONS = {
    asyncssh.FXF_CREATE_NEW: os.O_CREAT | os.O_EXCL,
    asyncssh.FXF_CREATE_TRUNCATE: os.O_CREAT | os.O_TRUNC,
    asyncssh.FXF_OPEN_OR_CREATE: os.O_CREAT,
    asyncssh.FXF_TRUNCATE_EXISTING: os.O_TRUNC,
}


def _open56_flags(desired_access: int, flags: int) -> int:
    """SFTP v5/v6 access and disposition as ``os.open`` flags."""
    read = desired_access & asyncssh.ACE4_READ_DATA
    write = desired_access & (asyncssh.ACE4_WRITE_DATA | asyncssh.ACE4_APPEND_DATA)
    result = os.O_RDWR if read and write else os.O_WRONLY if write else os.O_RDONLY
    result |= _DISPOSITIONS.get(flags & asyncssh.FXF_ACCESS_DISPOSITION, 0)
    if flags & asyncssh.FXF_APPEND_DATA or desired_access & asyncssh.ACE4_APPEND_DATA:
        result |= os.O_APPEND
    return result


def _file_mode(flags: int) -> str:
    access = flags & os.O_ACCMODE
    if access == os.O_RDONLY:
        return "rb"
    prefix = "a" if flags & os.O_APPEND else "r" if access == os.O_RDWR else "w"
    return f"{prefix}+b" if access == os.O_RDWR else f"{prefix}b"


_SET_ID = stat.S_ISUID | stat.S_ISGID


def _checked_mode(mode: int) -> int:
    """``mode``'s permission bits; a set-user-ID or set-group-ID bit is refused.

    The SFTP server writes as the server's user (root under a root server), outside the
    sandbox and its filter: a session made set-UID root programs on the host's disk
    (QA AT), which a task's own ``chmod u+s`` cannot.
    """
    if mode & _SET_ID:
        raise asyncssh.SFTPPermissionDenied(
            f"mode {stat.S_IMODE(mode):04o}: set-user-ID and set-group-ID bits are refused"
            " in a task's files (as in its sandbox)"
        )
    return stat.S_IMODE(mode)


def _set_attributes(path: str, attrs: SFTPAttrs) -> None:
    """Apply ``attrs`` to ``path`` (a ``/proc/self/fd/N`` path: exactly that inode); all
    are checked before any is applied."""
    mode = None if attrs.permissions is None else _checked_mode(attrs.permissions)
    if attrs.uid is not None and attrs.gid is not None:
        # as in the sandbox, which has no CAP_CHOWN: a file's owner stays (the server,
        # root or not, would give a task's file to any user of the host)
        now = os.stat(path)
        if (attrs.uid, attrs.gid) != (now.st_uid, now.st_gid):
            raise asyncssh.SFTPPermissionDenied("a task's files keep their owner and group")
    if attrs.size is not None:
        os.truncate(path, attrs.size)
    if mode is not None:
        os.chmod(path, mode)
    if attrs.atime is not None and attrs.mtime is not None:
        os.utime(path, (attrs.atime, attrs.mtime))


class TaskSFTPServer(asyncssh.SFTPServer):
    """SFTP in one task directory, every path walked beneath its root without links.

    Args:
        channel: The SSH channel.
        root: The task directory (the SFTP ``/``).
        refusal: Set for a login that may not use SFTP (``+logs``): every request is
            answered *permission denied* with it.
        read_only: Set for a task that has ended: its files may be read, and every
            change is answered *permission denied* with it.
        files: Counts the session's open files against a share (``take`` raises
            ``SFTPFailure`` past it); none: not counted.
    """

    def __init__(
        self,
        channel: asyncssh.SSHServerChannel[bytes],
        root: Path,
        refusal: str = "",
        *,
        files: FileShare | None = None,
        read_only: str = "",
    ) -> None:
        super().__init__(channel)
        self._root = os.fsencode(os.path.realpath(root))
        self._refusal = refusal
        self._read_only = read_only
        self._root_fd = -1 if refusal else os.open(self._root, _DIR & ~os.O_NOFOLLOW)
        self._files = files
        self._logs: weakref.WeakSet[Any] = weakref.WeakSet()  # open handles of logs/

    def _writable(self, path: bytes) -> None:
        """Refuse a change to an ended task's files, or to ``logs/``."""
        if self._read_only:
            raise asyncssh.SFTPPermissionDenied(self._read_only)
        _outside_logs(path)

    # -- the walk ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _parent(self, path: bytes) -> Iterator[tuple[int, bytes]]:
        """``(directory fd, last name)`` of ``path``; the root itself is ``(root, b".")``."""
        if self._refusal:
            raise asyncssh.SFTPPermissionDenied(self._refusal)
        *dirs, last = components(path) or [b"."]
        fd = self._root_fd
        try:
            for name in dirs:
                step = _open_at(fd, name, _DIR, path)
                if fd != self._root_fd:
                    os.close(fd)
                fd = step
            yield fd, last
        finally:
            if fd != self._root_fd:
                os.close(fd)

    @contextlib.contextmanager
    def _node(self, path: bytes, flags: int = os.O_PATH) -> Iterator[int]:
        """A descriptor of ``path`` itself, never of a link's target."""
        with self._parent(path) as (parent, last):
            fd = _open_at(parent, last, flags | _NOFOLLOW, path)
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):  # O_PATH | O_NOFOLLOW opens a link itself
                raise _link_refusal(path)
            yield fd
        finally:
            os.close(fd)

    def map_path(self, path: bytes) -> bytes:
        """Never used: every request walks its path (a request that would map by name is refused)."""
        raise asyncssh.SFTPOpUnsupported("not supported by this server")

    # -- files ---------------------------------------------------------------------------

    def _open(self, path: bytes, flags: int, attrs: SFTPAttrs) -> Any:
        perms = 0o666 if attrs.permissions is None else _checked_mode(attrs.permissions)
        if flags & _WRITES:
            self._writable(path)
        # Non-blocking, then a regular file only: opening a FIFO the task made would
        # block the server's event loop (every organization's API and shells) until the
        # task chose to open its other end.
        with self._parent(path) as (parent, last):
            try:
                fd = _open_at(parent, last, flags | _NOFOLLOW | os.O_NONBLOCK, path, perms)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # a FIFO with no reader, opened for writing
                    raise _not_a_file(path) from None
                raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _not_a_file(path)
        os.set_blocking(fd, True)
        return open(fd, _file_mode(flags), buffering=0)  # the SFTP session closes it

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """Count one open file (or directory) against the share while the body opens it;
        give it back when the body fails."""
        if self._files is not None:
            self._files.take()
        try:
            yield
        except BaseException:
            if self._files is not None:
                self._files.give_back()
            raise

    def _counted_open(self, path: bytes, flags: int, attrs: SFTPAttrs) -> Any:
        with self._counted():
            handle = self._open(path, flags, attrs)
        if _in_logs(path):  # read-only as its path is: see fsetstat
            self._logs.add(handle)
        return handle

    def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> Any:
        """Open a file beneath the root (a link is refused)."""
        return self._counted_open(path, _open_flags(pflags), attrs)

    def open56(self, path: bytes, desired_access: int, flags: int, attrs: SFTPAttrs) -> Any:
        """Open a file beneath the root, SFTP v5/v6 flags (a link is refused)."""
        return self._counted_open(path, _open56_flags(desired_access, flags), attrs)

    def close(self, file_obj: Any) -> None:
        """Close a file this session opened (and count it closed). Never raises: the
        session's end closes every file left open in one loop, which an error would end
        (and ``close(2)`` frees the descriptor even when it reports one)."""
        try:
            file_obj.close()
        except OSError:
            pass
        finally:
            if self._files is not None:
                self._files.give_back()

    def read(self, file_obj: Any, offset: int, size: int) -> bytes:
        """At most :data:`MAX_READ` bytes at ``offset``: a client asking for 4 GiB in one
        request made the server hold several times that (SFTP lets a read return less,
        and clients ask again for the rest)."""
        file_obj.seek(offset)
        data: bytes = file_obj.read(min(size, MAX_READ))
        return data

    def lstat(self, path: bytes) -> os.stat_result:
        """Attributes of ``path`` itself."""
        with self._parent(path) as (parent, last):
            return os.stat(last, dir_fd=parent, follow_symlinks=False)

    def stat(self, path: bytes) -> os.stat_result:
        """Attributes of ``path``; a link is described, never followed."""
        return self.lstat(path)

    def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Set attributes of ``path`` (a link is refused)."""
        self._writable(path)
        with self._node(path) as fd:
            _set_attributes(f"/proc/self/fd/{fd}", attrs)

    def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Set attributes of ``path`` (a link is refused)."""
        self.setstat(path, attrs)

    def fsetstat(self, file_obj: Any, attrs: SFTPAttrs) -> None:
        """Set attributes of an open file; one opened in ``logs/`` is refused, as its
        path is (QA: a read-only handle of a log changed its owner and mode)."""
        if self._read_only:
            raise asyncssh.SFTPPermissionDenied(self._read_only)
        if file_obj in self._logs:
            raise _logs_refusal()
        _set_attributes(f"/proc/self/fd/{file_obj.fileno()}", attrs)  # checked as setstat's

    def statvfs(self, path: bytes) -> os.statvfs_result:
        """File system attributes where ``path`` lives."""
        with self._node(path) as fd:
            return os.statvfs(fd)

    # -- directories and names ------------------------------------------------------------

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        """The entries of a directory beneath the root, each described as itself. A
        directory being read holds descriptors as an open file does, and counts as one
        (a client that reads part of many directories holds them all)."""
        if self._files is not None:
            self._files.take()
        try:
            with self._node(path, os.O_RDONLY | os.O_DIRECTORY) as fd:
                here = SFTPAttrs.from_local(os.fstat(fd))
                for name in (b".", b".."):
                    yield SFTPName(name, attrs=here)
                with os.scandir(fd) as entries:
                    for entry in entries:
                        attrs = SFTPAttrs.from_local(entry.stat(follow_symlinks=False))
                        yield SFTPName(os.fsencode(entry.name), attrs=attrs)
        finally:
            if self._files is not None:
                self._files.give_back()

    def exit(self) -> None:
        """Close the root's descriptor when the session ends; its share ends with it.

        The channel gets an exit status (0; 1 for a refused login) before it closes:
        without one, ``scp`` reported every copy, done in full, as failed (exit 1).
        """
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1
        if self._files is not None:
            self._files.ended()
        with contextlib.suppress(OSError):  # the client has gone already
            self.channel.exit(1 if self._refusal else 0)

    def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Create a directory."""
        mode = 0o777 if attrs.permissions is None else _checked_mode(attrs.permissions)
        self._writable(path)
        with self._parent(path) as (parent, last):
            os.mkdir(last, mode, dir_fd=parent)

    def rmdir(self, path: bytes) -> None:
        """Remove an empty directory."""
        self._writable(path)
        with self._parent(path) as (parent, last):
            os.rmdir(last, dir_fd=parent)

    def remove(self, path: bytes) -> None:
        """Remove a file or a link (the link itself)."""
        self._writable(path)
        with self._parent(path) as (parent, last):
            os.unlink(last, dir_fd=parent)

    def realpath(self, path: bytes) -> bytes:
        """``path`` made absolute and normal; a link in it is refused."""
        with self._parent(path) as (parent, last):
            if _is_link(parent, last):
                raise _link_refusal(path)
        return b"/" + b"/".join(components(path))

    def _move(self, oldpath: bytes, newpath: bytes, *, replace: bool) -> None:
        self._writable(oldpath)
        self._writable(newpath)
        with self._parent(oldpath) as (old_dir, old), self._parent(newpath) as (new_dir, new):
            if not replace:
                with contextlib.suppress(FileNotFoundError):
                    os.stat(new, dir_fd=new_dir, follow_symlinks=False)
                    raise asyncssh.SFTPFileAlreadyExists("file already exists")
            os.replace(old, new, src_dir_fd=old_dir, dst_dir_fd=new_dir)

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        """Rename, refusing to replace an existing name (SFTP's rename)."""
        self._move(oldpath, newpath, replace=False)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        """Rename, replacing an existing name."""
        self._move(oldpath, newpath, replace=True)

    def readlink(self, path: bytes) -> bytes:
        """A link's text (the link is read, not followed)."""
        with self._parent(path) as (parent, last):
            return os.fsencode(os.readlink(last, dir_fd=parent))

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        """Make a link (an absolute target is taken beneath the root); SFTP never follows it."""
        if posixpath.isabs(oldpath):
            oldpath = self._root + b"/" + b"/".join(components(oldpath))
        self._writable(newpath)
        with self._parent(newpath) as (parent, last):
            os.symlink(oldpath, last, dir_fd=parent)

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        """Make a hard link to a file beneath the root (a link is linked as itself); a
        log is never linked (the link would be writable)."""
        self._writable(oldpath)
        self._writable(newpath)
        with self._parent(oldpath) as (old_dir, old), self._parent(newpath) as (new_dir, new):
            os.link(old, new, src_dir_fd=old_dir, dst_dir_fd=new_dir, follow_symlinks=False)
