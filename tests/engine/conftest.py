"""Fixtures for the engine tests: a real server on 127.0.0.1 over a real SQLite home.

``start_server(home=None, **settings)`` starts the real aiohttp application (with the
engine) on a free loopback port; ``Server.call`` makes raw JSON requests and
``Server.sse`` reads a whole SSE response with :func:`vi_flow._sse.iter_sse`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.live_server import LiveServer, Starter
from vi_flow._sse import ServerSentEvent, iter_sse
from vi_flow.server.state import ServerSettings


class Server(LiveServer):
    """A running server; ``sse`` reads event streams, ``flow`` creates flows."""

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
    async with Starter(Server) as starter:

        async def start(home: Path | None = None, **settings: Any) -> Server:
            settings.setdefault("heartbeat_interval", 0.2)
            return await starter.start(ServerSettings(home=home or tmp_path / "home", **settings))

        yield start


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
