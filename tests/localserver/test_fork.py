"""A sync client shared across ``os.fork()``: the child's use of it leaves the parent's alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .kit import script

# The parent calls, forks; the child calls and closes the client it inherited, then the
# parent calls again, with a read timeout short enough to tell a hang from a slow call.
_FORKED = """
import os, sys, time, warnings
import vi_flow
client = vi_flow.Client(timeout=8, max_retries=0)
client.flows.list()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
    pid = os.fork()
if pid == 0:
    code = 1
    try:
        client.flows.list()
        client.close()
        code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
started = time.monotonic()
client.flows.list()
print(f"parent {time.monotonic() - started:.2f}")
client.close()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_closing_the_client_it_inherited_leaves_the_parents_working(home: Path) -> None:
    # Found by QA: the child's copy of the parent's connections, finalized in the child,
    # took the parent's sockets out of the epoll instance both share: the parent's next
    # call waited for its whole read timeout.
    done = script(home, _FORKED)
    assert float(done.stdout.split()[-1]) < 4, done.stdout
    assert "Unclosed" not in done.stderr, done.stderr
