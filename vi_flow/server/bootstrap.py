"""First-start set-up: the default organization and its admin token file.

On every start the server makes sure ``org_default`` exists and that
``<home>/admin-token`` (mode 0600) holds a valid admin token of it; a missing or stale
file gets a fresh token. Only the token's sha256 is stored in the database.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from . import _records as rec
from .db import Connection, lock_name

__all__ = ["ADMIN_TOKEN_FILE", "DEFAULT_ORG", "ensure_admin", "read_admin_token"]

DEFAULT_ORG = "org_default"
"""The organization the admin token belongs to."""

ADMIN_TOKEN_FILE = "admin-token"
"""The file name, under the server home, of the admin token."""


def read_admin_token(home: Path) -> str | None:
    """The admin token in ``<home>/admin-token``, or ``None`` when there is none."""
    try:
        return (Path(home) / ADMIN_TOKEN_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) through a new file renamed over it: never
    through a link, nor into a file someone else made there."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def ensure_admin(conn: Connection, home: Path) -> None:
    """Create ``org_default`` and a valid admin token file if missing (DB thread only)."""
    lock_name(conn, "vi_flow.bootstrap")  # replicas starting at once make it once
    if not rec.org_exists(conn, DEFAULT_ORG):
        rec.create_org(conn, "default", DEFAULT_ORG)
    token = read_admin_token(home)
    found = rec.lookup_token(conn, token) if token else None
    if found is not None and found[0] == DEFAULT_ORG and found[2]:
        return
    token = rec.create_token(conn, DEFAULT_ORG, "admin", admin=True)
    _write_private(Path(home) / ADMIN_TOKEN_FILE, token)
