"""A key in the kernel's user keyring, and a command that looks for it (x86-64 numbers).

The keyrings are the kernel's, per user, not per namespace: tasks that run as one user
(every organization's, on a local server or a cluster's one account) would read each
other's keys. Sandboxed tasks and their shells must find none and add none.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

x86_64_only = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "amd64"), reason="x86-64 call numbers"
)


def probe(name: str, python: str = sys.executable) -> str:
    """A shell command that prints ``search -1 Operation not permitted`` (or ``FOUND``)
    for the key ``name`` and ``add -1 Operation not permitted`` (or ``ADDED``)."""
    return f"""{python} -c '
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
found = libc.syscall(250, 10, -4, b"user", sys.argv[1].encode(), 0)  # keyctl search @u
print("search", found, os.strerror(ctypes.get_errno()) if found < 0 else "FOUND")
added = libc.syscall(248, b"user", b"vi-flow-task-key", b"x", 1, -4)  # add_key @u
print("add", added, os.strerror(ctypes.get_errno()) if added < 0 else "ADDED")
' {name}"""


def refused(out: str) -> bool:
    """Whether ``probe``'s output says both calls failed ``EPERM``."""
    return (
        "search -1 Operation not permitted" in out
        and "add -1 Operation not permitted" in out
        and "FOUND" not in out
        and "ADDED" not in out
    )


@contextmanager
def stored_key() -> Iterator[str]:
    """A key of this process's user, as another organization's task would store it;
    revoked at the end. Yields its name."""
    libc = ctypes.CDLL(None, use_errno=True)
    name = f"vi-flow-other-org-{os.getpid()}"
    stored = libc.syscall(248, b"user", name.encode(), b"SECRET_OF_ANOTHER", 17, -4)
    assert stored > 0, os.strerror(ctypes.get_errno())
    try:
        yield name
    finally:
        libc.syscall(250, 3, stored)  # KEYCTL_REVOKE
