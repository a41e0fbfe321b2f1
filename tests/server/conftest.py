"""Fixtures for the local server tests: a real server on 127.0.0.1 over a real SQLite home."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from vi_flow.server.app import create_app
from vi_flow.server.bootstrap import read_admin_token
from vi_flow.server.state import ServerSettings


@attrs.define
class Answer:
    """One HTTP answer: status, decoded JSON body and headers."""

    status: int
    body: Any
    headers: Any


@attrs.define
class Server:
    """A running server and a raw aiohttp session to call it with."""

    root: str
    token: str
    home: Path
    app: web.Application
    session: aiohttp.ClientSession
    runner: web.AppRunner

    async def stop(self) -> None:
        """Stop the server gracefully (the fixture's cleanup then skips it)."""
        await self.runner.cleanup()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Answer:
        """Call ``/v1<path>`` with the admin token unless ``token`` is given ("" for none)."""
        hdrs = dict(headers or {})
        token = self.token if token is None else token
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, f"{self.root}/v1{path}", json=json, headers=hdrs, params=params, data=data
        ) as resp:
            raw = await resp.read()
            body = await resp.json(content_type=None) if raw else None
            return Answer(resp.status, body, resp.headers)


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start servers (optionally on a prepared app) that are stopped after the test."""
    runners: list[web.AppRunner] = []
    session = aiohttp.ClientSession()

    async def start(
        home: Path | None = None, prepare: Callable[[web.Application], None] | None = None
    ) -> Server:
        home = home or tmp_path / "home"
        app = create_app(ServerSettings(home=home))
        if prepare is not None:
            prepare(app)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        token = read_admin_token(home) or ""
        return Server(f"http://127.0.0.1:{port}", token, home, app, session, runner)

    yield start
    await session.close()
    for runner in runners:
        if runner.server is not None:
            await runner.cleanup()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    """One running server with a fresh home."""
    return await start_server()


def spec(name: str = "demo", *blocks: str) -> dict[str, Any]:
    """A flow spec body with template blocks of the given ids."""
    return {"name": name, "blocks": [{"block": "template", "id": b} for b in blocks]}
