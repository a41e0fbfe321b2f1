"""Fixtures for the local server tests: a real server on 127.0.0.1 over a real SQLite home."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.live_server import LiveServer, Starter
from tests.localserver.kit import run_file, stop_server
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


@pytest.fixture
def served_home(tmp_path: Path) -> Iterator[Path]:
    """A home for a test's own ``vi-flow serve`` (``foreground_serve``); a server still
    on it afterwards is stopped."""
    path = tmp_path / "home"
    yield path
    stop_server(path)


def call_served(home: Path, method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
    """``(status, JSON body, headers)`` of one call to ``/v1<path>`` of the home's server,
    with its admin token."""
    info = run_file(home)
    assert info is not None
    token = (home / "admin-token").read_text().strip()
    request = urllib.request.Request(
        info.url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read()), answer.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers
