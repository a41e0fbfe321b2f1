"""Run a piece of a test as a user that is not root, as a server that is not root runs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from vi_flow.server.trees import remove_tree

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


@contextlib.contextmanager
def shared_with_another_user(prefix: str) -> Iterator[Path]:
    """A fresh directory anyone may write in, where the other user of
    :func:`as_another_user` makes its files; removed afterwards, whatever modes they were
    left with (:func:`~vi_flow.server.trees.remove_tree`)."""
    shared = Path(tempfile.mkdtemp(prefix=prefix))
    shared.chmod(0o777)
    try:
        yield shared
    finally:
        remove_tree(shared)
