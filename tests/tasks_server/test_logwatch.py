"""A log follow is woken by the next write to the file it has open (inotify), not a poll."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from vi_flow.server.tasks.logwatch import LogChanges

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's"),
]


async def test_a_write_wakes_the_wait_and_quiet_times_out(tmp_path: Path) -> None:
    log = tmp_path / "stdout.log"
    log.write_bytes(b"")
    fd = os.open(log, os.O_RDONLY)
    changes = LogChanges()
    try:
        assert changes.arm(fd)
        assert not changes.arm(fd)  # once per follow
        changes.clear()
        start = time.monotonic()
        await changes.wait(0.05)  # nothing written: the timeout ends it
        assert time.monotonic() - start >= 0.04
        changes.clear()
        with log.open("ab") as out:
            out.write(b"line\n")
        start = time.monotonic()
        await changes.wait(30)
        assert time.monotonic() - start < 10
    finally:
        changes.close()
        changes.close()
        os.close(fd)


async def test_no_file_yet_is_not_watched() -> None:
    changes = LogChanges()
    assert not changes.arm(None)
    changes.close()


async def test_follows_share_one_inotify_instance_closed_with_the_last(tmp_path: Path) -> None:
    from vi_flow.server.tasks import logwatch

    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    fds = []
    for log in logs:
        log.write_bytes(b"")
        fds.append(os.open(log, os.O_RDONLY))
    first, second, same_file = LogChanges(), LogChanges(), LogChanges()
    # One instance per event loop: look at this test's only. A server an earlier test
    # started may still be following a log on its own loop, in another thread, or on
    # this one if the runner shares its loop between tests.
    loop = asyncio.get_running_loop()
    before = logwatch._instances.get(loop)
    try:
        assert first.arm(fds[0]) and second.arm(fds[1]) and same_file.arm(fds[0])
        shared = logwatch._instances[loop]
        assert before is None or shared is before
        for changes in (first, second, same_file):
            changes.clear()
        await _woken(second, logs[1])
        first.close()  # the other follow of a.log keeps its watch
        await _woken(same_file, logs[0])
        second.close()
        assert logwatch._instances[loop] is shared
        same_file.close()
        assert logwatch._instances.get(loop) is before  # closed with its last watch
    finally:
        for changes in (first, second, same_file):
            changes.close()
        for fd in fds:
            os.close(fd)


async def _woken(changes: LogChanges, log: Path) -> None:
    """Append to ``log``; ``changes`` must wake long before its 30 s timeout."""
    with log.open("ab") as out:
        out.write(b"line\n")
    start = time.monotonic()
    await changes.wait(30)
    assert time.monotonic() - start < 10
