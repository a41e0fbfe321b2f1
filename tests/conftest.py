"""Fixtures shared by every test: the anyio backend, a private vi_flow home, no leftovers.

The suite runs the home's server inside the test process (``local_server =
"in-process"``) unless a test opts into the default background server: hundreds of
tests would otherwise each start a server process. The background mode has its own
suite (``tests/localserver/``). Whatever server a test leaves in its home is stopped
by its pid afterwards, and the test fails: a server that outlives its test is a bug.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vi_flow.models.server import RUN_FILE, ServerInfo


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point every vi_flow setting at the test's own directory, never the user's."""
    for name in (
        "VI_FLOW_API_KEY",
        "VI_FLOW_ORGANIZATION_ID",
        "VI_FLOW_BASE_URL",
        "VI_FLOW_LOG",
        "VI_FLOW_SERVER_IDLE_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VI_FLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VI_FLOW_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("VI_FLOW_LOCAL_SERVER", "in-process")
    yield
    leftovers = [p for p in tmp_path.rglob(RUN_FILE) if _stop_server_of(p)]
    assert not leftovers, f"the test left a background server running: {leftovers}"


def _stop_server_of(run_file: Path) -> bool:
    """Stop the server a run file names, if it is another live process; True if it was."""
    try:
        info = ServerInfo.from_json(run_file.read_bytes())
    except (OSError, ValueError):
        return False
    if info.pid == os.getpid() or not _alive(info.pid):
        return False
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True
