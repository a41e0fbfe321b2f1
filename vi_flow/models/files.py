"""Files a user's processes share (the config file, an ``~/.ssh/config``, the home's
run file): written whole or not at all, and changed by one process at a time.

A reader never sees a file half written (:func:`replace_file` renames a finished one
over it), and two writers never lose each other's change (:func:`updating` holds a lock
beside the file while one reads, edits and replaces it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["UPDATE_TIMEOUT", "replace_file", "through_link", "updating"]

UPDATE_TIMEOUT = 30.0
"""Seconds to wait for another process's change of the same file."""


def replace_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``path`` whole or not at all (a file beside it, synced, then renamed over
    it), with ``mode`` (0600 unless said); nothing is left behind when it fails.

    Raises:
        OSError: It could not be written.
    """
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        if mode != 0o600:  # mkstemp's own
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def through_link(path: Path) -> Path:
    """Where writing ``path`` lands: the file a link there points to (a dotfile kept in a
    repository and linked into place stays one file), else ``path`` itself; its folder
    is made (mode 0700) if missing.

    Raises:
        OSError: A loop of links, or a file where a folder on the way should be.
    """
    target = path
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)  # a loop raises (not so without strict: 3.13)
        except FileNotFoundError:
            target = path.resolve()  # a link to a file not made yet: it is made there
        except RuntimeError:  # Python 3.12 and older: a loop of links (3.13: OSError ELOOP)
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None
    for folder in reversed(target.parents):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return target


@contextlib.contextmanager
def updating(path: Path) -> Iterator[None]:
    """Hold the lock of ``path`` (``.NAME.lock`` beside it) while reading, editing and
    replacing it, so that processes changing it at once each keep the others' changes.

    Raises:
        OSError: Another process held it for :data:`UPDATE_TIMEOUT` seconds (its lock file
            is named), or the lock file cannot be made.
    """
    import filelock

    lock = path.with_name(f".{path.name}.lock")
    try:
        with filelock.FileLock(lock, timeout=UPDATE_TIMEOUT, mode=0o600):
            yield
    except filelock.Timeout:
        raise OSError(
            f"another process has been changing {path} for over {UPDATE_TIMEOUT:.0f} s"
            f" (its lock: {lock})"
        ) from None
