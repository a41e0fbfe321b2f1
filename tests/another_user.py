"""Run a piece of a test as a user that is not root, as a server that is not root runs."""

from __future__ import annotations

import os
from collections.abc import Callable

NOBODY = 65534


def as_another_user(work: Callable[[], bool]) -> bool:
    """``work()`` run as a user that is not root (``nobody``, in a forked child, when this
    test runs as root: root opens any file or directory, whatever its mode)."""
    if os.geteuid() != 0:
        return work()
    pid = os.fork()
    if pid == 0:  # the child: nothing of the parent's is touched, then it exits at once
        code = 3
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = 0 if work() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 1), status
    return os.WEXITSTATUS(status) == 0
