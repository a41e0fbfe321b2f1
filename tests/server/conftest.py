"""Fixtures for the local server tests: a real server on 127.0.0.1 over a real SQLite home."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.live_server import LiveServer, Starter
from vi_flow.server.state import ServerSettings


class Server(LiveServer):
    """A running server with a fresh home."""


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start servers (optionally on a prepared app) that are stopped after the test."""
    async with Starter(Server) as starter:

        async def start(
            home: Path | None = None, prepare: Callable[[web.Application], None] | None = None
        ) -> Server:
            return await starter.start(ServerSettings(home=home or tmp_path / "home"), prepare)

        yield start


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    """One running server with a fresh home."""
    return await start_server()


def spec(name: str = "demo", *blocks: str) -> dict[str, Any]:
    """A flow spec body with template blocks of the given ids."""
    return {"name": name, "blocks": [{"block": "template", "id": b} for b in blocks]}
