"""A real HTTP server on 127.0.0.1 that answers from a script, for fault cases.

The local server is what most tests talk to; this one exists for answers the local server
never gives on purpose (500s, garbage JSON, Retry-After, repeated page tokens).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

Answer = Callable[[web.Request], web.StreamResponse | Awaitable[web.StreamResponse]]


class Scripted:
    """Serves ``answers`` in order (the last one repeats) and records every request."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        given = answer(request)
        return await given if inspect.isawaitable(given) else given


def json_answer(status: int, body: bytes, **headers: str) -> Answer:
    def answer(_: web.Request) -> web.StreamResponse:
        hdrs = {"Content-Type": "application/json", "X-Request-Id": "req_test", **headers}
        return web.Response(status=status, body=body, headers=hdrs)

    return answer


@asynccontextmanager
async def scripted_server(answers: list[Answer]) -> AsyncIterator[tuple[str, Scripted]]:
    """Run a scripted server; yields its base URL (ending in /v1) and the recorder."""
    scripted = Scripted(answers)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", scripted
    finally:
        await runner.cleanup()
