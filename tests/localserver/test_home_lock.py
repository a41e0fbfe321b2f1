"""The home lock itself: exclusive, released with its holder, never handed to a child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vi_flow.models.server import LOCK_FILE
from vi_flow.server.home import HomeBusyError, HomeError, HomeLock

# Tries the home's lock from another process: prints "taken" or "busy".
_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("taken")
except BlockingIOError:
    print("busy")
"""


def _probe(home: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(home / LOCK_FILE)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def test_a_second_lock_on_the_home_is_refused_until_the_first_lets_go(tmp_path: Path) -> None:
    first, second = HomeLock(tmp_path), HomeLock(tmp_path)
    first.acquire()
    with pytest.raises(HomeBusyError, match="already served"):
        second.acquire()
    assert _probe(tmp_path) == "busy"
    first.release()
    first.release()  # again: nothing
    second.acquire()
    assert _probe(tmp_path) == "busy"
    second.release()
    assert _probe(tmp_path) == "taken"


def test_the_lock_file_is_private(tmp_path: Path) -> None:
    lock = HomeLock(tmp_path)
    lock.acquire()
    try:
        assert (tmp_path / LOCK_FILE).stat().st_mode & 0o077 == 0
    finally:
        lock.release()


# Takes the lock, starts a child that inherits every inheritable descriptor, then dies
# without letting the lock go; prints the child's pid.
_HOLDER = """
import os, subprocess, sys
from pathlib import Path
from vi_flow.server.home import HomeLock
HomeLock(Path(sys.argv[1])).acquire()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False)
print(child.pid, flush=True)
os._exit(0)
"""


def test_a_task_outliving_its_server_does_not_keep_the_home_locked(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    child = int(done.stdout)
    try:
        assert _probe(tmp_path) == "taken"
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_removed_lock_file_is_made_again_and_locked(tmp_path: Path) -> None:
    holder = HomeLock(tmp_path)
    holder.acquire()
    (tmp_path / LOCK_FILE).unlink()  # someone removed the held file: a new one is free to lock
    other = HomeLock(tmp_path)
    other.acquire()  # it locks the file the path names now
    try:
        assert _probe(tmp_path) == "busy"
    finally:
        other.release()
        holder.release()


def test_a_home_that_cannot_hold_a_lock_file_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / LOCK_FILE).mkdir()  # a directory where the lock file goes
    with pytest.raises(HomeError, match="cannot lock the vi-flow home"):
        HomeLock(home).acquire()
