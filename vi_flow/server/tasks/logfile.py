"""Reading a task's log file by byte offset, the way an untrusted task cannot redirect.

A task may replace anything in its directory, so a log is opened one path component at a
time below the task directory with ``O_NOFOLLOW`` (a symbolic link anywhere on the way
is refused, not followed), non-blocking (a FIFO put in its place cannot hang a worker
thread) and must be a regular file. :class:`LogReader` keeps the file open between
reads and hands out whole lines: what it returns ends at a newline, except for the
unfinished last line of a finished task, an unfinished line that holds a ``\\r``, and a
line longer than one read, which are cut at a UTF-8 character boundary. Everything here blocks: call it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path

from ...models.loglines import last_char_end
from .. import beneath

__all__ = ["READ_SIZE", "LogReader", "NotALogFile", "last_char_end", "open_beneath", "whole_lines"]

READ_SIZE = 256 * 1024
"""The most bytes one read returns (a longer line is sent in pieces)."""


class NotALogFile(OSError):
    """The log path leads through a symbolic link or to something not a regular file."""


class Unreadable(NotALogFile):
    """The file, or a directory on its way, may not be read by the server: a task took
    the permission away (``chmod 000``), which binds a server that is not root."""


def open_beneath(root: Path, path: Path) -> int | None:
    """Open ``path`` (inside ``root``) for reading without following any link below
    ``root`` (:func:`vi_flow.server.beneath.open_beneath`); ``None`` when it does not
    exist (yet).

    Raises:
        NotALogFile: A link, a FIFO, a directory ... where the log should be;
            :class:`Unreadable` when the server may not read it.
    """
    try:
        return beneath.open_beneath(root, path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a link, or a file where a directory should be, a FIFO...
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise  # out of descriptors: the file is fine, try again later
        kind = Unreadable if exc.errno == errno.EACCES else NotALogFile
        raise kind(f"{path.name}: {exc.strerror or exc}") from None


def whole_lines(data: bytes, *, final: bool) -> bytes:
    """The part of ``data`` to hand out now: up to its last newline; all of it when the
    log is final; a full read without a newline up to its last whole UTF-8 character.
    An unfinished last line that holds a ``\\r`` (a progress bar redrawing itself) is
    handed out too, up to its last whole character, for the follower to show as it goes
    (:class:`~vi_flow.models.loglines.LineSplitter`)."""
    if final or not data:
        return data
    end = data.rfind(b"\n") + 1
    if data.find(b"\r", end) >= 0 or (not end and len(data) >= READ_SIZE):
        return data[: last_char_end(data)]
    return data[:end]


class LogReader:
    """One log file, read on from any offset; reopened only while it does not exist.

    Args:
        root: The task directory (trusted: the server made it).
        path: The log file inside it.
    """

    def __init__(self, root: Path, path: Path) -> None:
        self.root = root
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()  # a close never races a read still in its thread

    def read(self, offset: int, *, final: bool) -> tuple[int, bytes]:
        """``(start, data)``: whole lines from ``offset`` on (see :func:`whole_lines`);
        ``start`` is 0 instead of ``offset`` when the file was truncated below it.

        Raises:
            NotALogFile: The task put something else where its log was.
        """
        with self._lock:
            if self._fd is None:
                self._fd = open_beneath(self.root, self.path)
                if self._fd is None:
                    return offset, b""
            if os.fstat(self._fd).st_size < offset:  # truncated: start over, as tail -F does
                offset = 0
            data = os.pread(self._fd, READ_SIZE, offset)
        return offset, whole_lines(data, final=final and len(data) < READ_SIZE)

    def fileno(self) -> int | None:
        """The open file's descriptor (to watch it); ``None`` before it was opened."""
        return self._fd

    def close(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
