"""Fixtures shared by every test: the anyio backend, a private vi_flow home, no leftovers.

The suite runs the home's server inside the test process (``local_server =
"in-process"``) unless a test opts into the default background server: hundreds of
tests would otherwise each start a server process. The background mode has its own
suite (``tests/localserver/``). Whatever server a test leaves in its home is stopped
by its pid afterwards, and the test fails: a server that outlives its test is a bug.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vi_flow.models.server import RUN_FILE

from .localserver.kit import stop_server


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
    leftovers = [p for p in tmp_path.rglob(RUN_FILE) if stop_server(p.parent)]
    assert not leftovers, f"the test left a background server running: {leftovers}"
