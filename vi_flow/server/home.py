"""One server per home: the exclusive lock a server holds for its life, and its run file.

Every server (``vi-flow serve``, the background server, the in-process one) takes
:class:`HomeLock` before it opens the database, so two servers never share one home. The
lock is an OS file lock (``flock``), so it vanishes with the process, also after
``kill -9``. Once the server answers it publishes its
:class:`~vi_flow.models.server.ServerInfo` in ``<home>/server.json``, written to a
unique temporary file and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

import orjson

from ..models.files import replace_file
from ..models.homes import foreign_home
from ..models.server import HOME_SERVED, LOCK_FILE, RUN_FILE, STOPPED_FILE, ServerInfo

__all__ = [
    "DISK_LOW",
    "HomeBusyError",
    "HomeError",
    "HomeLock",
    "disk_full",
    "prepare_home",
    "publish",
    "read_run_file",
    "replace_file",
    "restrict_home",
    "unpublish",
]


DISK_LOW = 64 * 1024
"""Free bytes under which a file system counts as full: less than a few pages of a log
or of SQLite, nothing more can be written."""


def disk_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has (nearly) no space left for this
    process (blocking). Root may write into the blocks a file system keeps for root."""
    try:
        fs = os.statvfs(path)
    except OSError:
        return False
    blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
    return blocks * fs.f_frsize < DISK_LOW


class HomeError(RuntimeError):
    """The home cannot be used: not writable, full, or not a directory."""


class HomeBusyError(HomeError):
    """Another server holds the home's lock.

    Attributes:
        home: The home.
        holder: What the holder published about itself, if anything yet.
    """

    def __init__(self, home: Path, holder: ServerInfo | None) -> None:
        self.home = home
        self.holder = holder
        if holder is None:
            who = "another vi-flow server (it has not published its address yet)"
        else:
            who = f"the vi-flow server at {holder.url} (pid {holder.pid}, {holder.mode})"
        super().__init__(
            f"home {home} {HOME_SERVED} {who}; use that server, or stop it with "
            f"'VI_FLOW_HOME={home} vi-flow server stop'"
        )


def prepare_home(home: Path) -> None:
    """Create the home (mode 0700) if missing.

    Raises:
        HomeError: It cannot be created, is not a directory, or belongs to another user
            (or holds a file or link of theirs where the server writes); names the home
            and why.
    """
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise HomeError(f"cannot use {home} as the vi-flow home: {exc.strerror or exc}") from None
    if not os.access(home, os.W_OK | os.X_OK):
        raise HomeError(f"cannot use {home} as the vi-flow home: it is not writable")
    if (why := foreign_home(home)) is not None:
        raise HomeError(why)
    # QA: a file where a directory belongs made every create a bare 500, and a directory
    # named admin-token was blamed on the database
    for name, what, directory in _HOME_PARTS:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(home / name).st_mode) != directory:
                kind = "not a directory" if directory else "a directory"
                raise HomeError(
                    f"cannot use {home} as the vi-flow home: {home / name} is {kind}"
                    f" (the server keeps {what} there); move it away"
                )


_HOME_PARTS = (  # (name, what the server keeps there, whether it is a directory)
    ("tasks", "its tasks' files", True),
    ("volumes", "volumes", True),
    ("logs", "its log", True),
    ("ssh", "its SSH host key", True),
    ("admin-token", "the admin token", False),
    ("state.db", "its database", False),
)


_SECRET_FILES = ("state.db", "state.db-wal", "state.db-shm", "admin-token", "server.log")


def restrict_home(home: Path) -> None:
    """Only the server's user may read the home: it 0700, its database, tokens, log and
    SSH keys 0600 (an existing home made by an older version included; blocking)."""
    with contextlib.suppress(OSError):
        os.chmod(home, 0o700)
    for name in _SECRET_FILES:
        with contextlib.suppress(OSError):
            os.chmod(home / name, 0o600)
    keys = home / "ssh"
    if keys.is_dir():
        with contextlib.suppress(OSError):
            os.chmod(keys, 0o700)
        for key in keys.iterdir():
            with contextlib.suppress(OSError):
                os.chmod(key, 0o600)


class HomeLock:
    """The exclusive, process-lifetime lock of one home.

    One ``flock`` on ``<home>/server.lock``, taken without waiting and held on a
    descriptor no child inherits. It is written here rather than taken from ``filelock``
    (which the client's start lock uses, for its timeout): the server needs none of that
    library's waiting, and its import costs a server 1.1 MB of resident memory, a tenth
    of all that the server holds beyond a bare aiohttp.web + sqlite3 one (issue 15).

    Args:
        home: The home directory.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or fail.

        Raises:
            HomeBusyError: Another server holds it.
            HomeError: The home cannot hold a lock file.
        """
        prepare_home(self.home)
        path = self.home / LOCK_FILE
        for _ in range(8):  # the file replaced between our open and our lock: lock the new one
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise HomeError(f"cannot lock the vi-flow home {self.home}: {exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, path):
                    self._fd = fd
                    return
            except BlockingIOError:
                os.close(fd)
                raise HomeBusyError(self.home, read_run_file(self.home)) from None
            except OSError as exc:
                os.close(fd)
                raise HomeError(f"cannot lock the vi-flow home {self.home}: {exc}") from None
            os.close(fd)
        raise HomeError(f"cannot lock the vi-flow home {self.home}: {path} keeps being replaced")

    def release(self) -> None:
        """Let the lock go (the process exiting does the same); again is a no-op."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):  # unlocked also where a forked child holds a copy
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open on ``fd`` (not removed or replaced)."""
    try:
        held, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def read_run_file(home: Path) -> ServerInfo | None:
    """The run file's contents; ``None`` when there is none or it is not a run file."""
    try:
        return ServerInfo.from_json((home / RUN_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def publish(info: ServerInfo) -> None:
    """Write ``<home>/server.json`` atomically, mode 0600.

    Raises:
        HomeError: It could not be written (read-only or full disk); nothing is left.
    """
    home = Path(info.home)
    try:
        replace_file(home / RUN_FILE, info.to_json())
    except OSError as exc:
        raise HomeError(f"cannot write {home / RUN_FILE}: {exc.strerror or exc}") from None


def mark_stopped(home: Path, pid: int) -> None:
    """Say in ``<home>/server.stopped`` that the server ``pid`` is stopping on request
    (:data:`~vi_flow.models.server.STOPPED_FILE`); best effort, atomic, mode 0600."""
    with contextlib.suppress(OSError):
        replace_file(home / STOPPED_FILE, orjson.dumps({"pid": pid}))


def unpublish(home: Path, secret: str) -> None:
    """Remove the run file if it is still the one of the server that owns ``secret``."""
    current = read_run_file(home)
    if current is not None and current.secret == secret:
        with contextlib.suppress(OSError):
            (home / RUN_FILE).unlink()
