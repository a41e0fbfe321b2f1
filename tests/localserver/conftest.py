"""Each test gets a home of its own whose server, if any, is stopped by its pid afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .kit import stop_server


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh home for the default (background) server; its server is stopped afterwards."""
    path = tmp_path / "home"
    monkeypatch.setenv("VI_FLOW_HOME", str(path))
    monkeypatch.delenv("VI_FLOW_LOCAL_SERVER")
    yield path
    stop_server(path)
