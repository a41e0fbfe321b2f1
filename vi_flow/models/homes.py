"""Whose a home is: a vi-flow home is used only by the user it belongs to.

Whoever owns a directory controls what is in it: another user's home could hold a
``server.json`` that sends this user's requests (and the secrets in them) to that user's
server, or links named ``admin-token`` or ``logs/server.log`` through which a server
would write its secrets, or append its log, into files of that user's choosing. So the
client and the server refuse a home, or one of the files a server writes in it, that
another user owns, as ``ssh`` refuses another user's configuration. Links are judged
by who made them (``lstat``), never by what they point at.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from .server import (
    LOCK_FILE,
    LOG_DIR,
    LOG_FILE,
    RUN_FILE,
    START_LOCK_FILE,
    STDIO_FILE,
    STOPPED_FILE,
)

__all__ = ["foreign_home", "foreign_owner"]

#: What a server writes in its home, beside the home itself: a link or a file another
#: user put at one of these names is refused (a subfolder's own files are safe once the
#: subfolder is the user's and 0700).
_WRITTEN = (
    "admin-token",
    "state.db",
    "state.db-wal",
    "state.db-shm",
    "state.db-journal",  # SQLite's, before the database turns to WAL
    RUN_FILE,
    LOCK_FILE,
    START_LOCK_FILE,
    STOPPED_FILE,
    LOG_DIR,
    f"{LOG_DIR}/{LOG_FILE}",
    f"{LOG_DIR}/{STDIO_FILE}",
    "ssh",
    "client",
    "tasks",
    "volumes",
    "compute",
    "models",  # where `vi-flow demo` saves the model it trained
)


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def foreign_owner(path: Path, *, follow: bool = False) -> str | None:
    """Who owns ``path`` when it is not this process's user, else ``None`` (also when it
    does not exist). ``follow``: judge what a link points at (for the home itself, which
    a user may well reach through a link of their own)."""
    try:
        st = path.stat() if follow else path.lstat()
    except OSError:
        return None
    return None if st.st_uid == os.geteuid() else _user(st.st_uid)


def foreign_home(home: Path) -> str | None:
    """Why ``home`` may not be used by this process's user, or ``None`` when it may.

    The home must belong to this user, and so must each file or link a server writes in
    it (:data:`_WRITTEN`); the message names the first that does not.
    """
    owner = foreign_owner(home, follow=True)
    if owner is not None:
        return (
            f"cannot use {home} as the vi-flow home: it belongs to {owner}, and this process"
            f" runs as {_user(os.geteuid())}; a home is used only by its owner (set"
            " VI_FLOW_HOME to a directory of yours)"
        )
    for name in _WRITTEN:
        owner = foreign_owner(home / name)
        if owner is not None:
            return (
                f"cannot use {home} as the vi-flow home: {home / name} belongs to {owner},"
                f" not to {_user(os.geteuid())}, whose home it is; remove it (another user"
                " may have put it there)"
            )
    return None
