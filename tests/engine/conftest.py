"""Fixtures for the engine tests: a real server on 127.0.0.1 over a real SQLite home.

``start_server(home=None, **settings)`` starts the real aiohttp application (with the
engine) on a free loopback port; ``Server.call`` makes raw JSON requests and
``Server.sse`` reads a whole SSE response with :func:`vi_flow._sse.iter_sse`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import orjson
import pytest
from aiohttp import web

from vi_flow._sse import ServerSentEvent, iter_sse
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
        """Stop the server gracefully (as a restart would)."""
        await self.runner.cleanup()

    def headers(
        self, token: str | None = None, extra: dict[str, str] | None = None
    ) -> dict[str, str]:
        """Authorization plus ``extra``."""
        return {"Authorization": f"Bearer {token or self.token}", **(extra or {})}

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        """Call ``/v1<path>`` with the admin token unless ``token`` is given."""
        async with self.session.request(
            method,
            f"{self.root}/v1{path}",
            json=json,
            params=params,
            headers=self.headers(token, headers),
        ) as resp:
            raw = await resp.read()
            return Answer(resp.status, orjson.loads(raw) if raw else None, resp.headers)

    async def sse(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        limit: int | None = None,
    ) -> tuple[list[ServerSentEvent], Any]:
        """Read an SSE response to its end (or ``limit`` events); return events and headers."""
        events: list[ServerSentEvent] = []
        async with self.session.request(
            method, f"{self.root}/v1{path}", json=json, headers=self.headers(None, headers)
        ) as resp:
            assert resp.status == 200, await resp.text()
            async for event in iter_sse(resp):
                events.append(event)
                if limit is not None and len(events) >= limit:
                    break
            return events, resp.headers

    async def flow(self, *blocks: dict[str, Any], inputs: list[Any] | None = None) -> str:
        """Create a flow of ``blocks``; return its id."""
        spec = {"name": "test", "blocks": list(blocks), "inputs": inputs or []}
        answer = await self.call("POST", "/flows", json={"spec": spec})
        assert answer.status == 201, answer.body
        return str(answer.body["flowId"])


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start servers that are stopped after the test."""
    runners: list[web.AppRunner] = []
    session = aiohttp.ClientSession()

    async def start(home: Path | None = None, **settings: Any) -> Server:
        home = home or tmp_path / "home"
        settings.setdefault("heartbeat_interval", 0.2)
        app = create_app(ServerSettings(home=home, **settings))
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


def names(events: list[ServerSentEvent]) -> list[str]:
    """The ``event:`` names of a list of SSE events."""
    return [e.event for e in events]


def data(event: ServerSentEvent) -> Any:
    """The decoded JSON data of one SSE event."""
    return orjson.loads(event.data)
