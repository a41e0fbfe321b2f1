"""Files a user's processes share (the config file, an ``~/.ssh/config``, the home's
run file): written whole or not at all, and changed by one process at a time.

A reader never sees a file half written (:func:`replace_file` renames a finished one
over it), and two writers never lose each other's change (:func:`updating` holds a lock
beside the file while one reads, edits and replaces it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["UPDATE_TIMEOUT", "replace_file", "updating"]

UPDATE_TIMEOUT = 30.0
"""Seconds to wait for another process's change of the same file."""


def replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a file beside it, synced, then renamed over
    it), mode 0600; nothing is left behind when it fails.

    Raises:
        OSError: It could not be written.
    """
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
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
