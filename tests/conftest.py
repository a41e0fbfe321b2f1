"""Fixtures shared by every test: the anyio backend and a private vi_flow home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point every vi_flow setting at the test's own directory, never the user's."""
    for name in ("VI_FLOW_API_KEY", "VI_FLOW_ORGANIZATION_ID", "VI_FLOW_BASE_URL", "VI_FLOW_LOG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VI_FLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VI_FLOW_CONFIG_DIR", str(tmp_path / "config"))
    yield
