"""Fixtures for the CLI tests: a shared embedded server and a CliRunner helper."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from vi_flow.cli._root import cli
from vi_flow.server import embedded

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[embedded.EmbeddedServer]:
    """Hold the embedded server of the test's home, so CLI calls share one server."""
    srv = embedded.acquire(Path(os.environ["VI_FLOW_HOME"]))
    try:
        yield srv
    finally:
        embedded.release(srv)


class Invoker:
    """Runs ``vi-flow`` in-process with click's CliRunner (stdout and stderr apart)."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, **kw: Any) -> Result:
        return self.runner.invoke(cli, list(args), input=input, catch_exceptions=False, **kw)


@pytest.fixture
def vf(server: embedded.EmbeddedServer) -> Invoker:
    """Invoke the CLI against the shared embedded server."""
    return Invoker()


@pytest.fixture
def vf_offline() -> Invoker:
    """Invoke the CLI without starting a server (usage errors, config, help)."""
    return Invoker()


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` and return it."""
    path.write_text(text, encoding="utf-8")
    return path
