"""A loopback TCP proxy that can cut connections, to test what survives a dropped link."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress


class CuttingProxy:
    """Forwards 127.0.0.1:port to an upstream port.

    ``swallow_answers``: the first N connections forward the request, wait for the answer
    to start, then close without passing it on (the server did the work; the client never
    heard). ``cut()`` closes every open connection now; ``stall()`` keeps them open but
    stops passing the server's bytes on (a hung proxy: the client hears silence).
    ``cut_after``: each connection is cut once it has passed that many of the server's
    bytes on (called once per connection: a link that drops every so many bytes).
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        swallow_answers: int = 0,
        cut_after: Callable[[], int] | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.swallow_answers = swallow_answers
        self.cut_after = cut_after
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._stalled: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def stall(self) -> None:
        """Keep every open connection but pass nothing more from the server to the client."""
        self._stalled.update(self._writers)

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        swallow = self.connections <= self.swallow_answers
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.update((writer, up_writer))
        to_server = asyncio.ensure_future(self._pipe(reader, up_writer))
        if swallow:
            await up_reader.read(1)  # the server answered: the work is done
            to_server.cancel()
            writer.transport.abort()
            up_writer.transport.abort()
            return
        budget = None if self.cut_after is None else self.cut_after()
        await self._pipe(up_reader, writer, budget)
        to_server.cancel()
        if budget is not None:
            up_writer.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, budget: int | None = None
    ) -> None:
        with suppress(ConnectionError, OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if writer in self._stalled:
                    continue  # read and dropped, so the server is never held up
                if budget is not None and len(data) >= budget:
                    writer.write(data[:budget])
                    await writer.drain()
                    writer.transport.abort()
                    return
                if budget is not None:
                    budget -= len(data)
                writer.write(data)
                await writer.drain()
        with suppress(Exception):
            writer.close()


@asynccontextmanager
async def cutting_proxy(
    upstream_port: int, *, swallow_answers: int = 0, cut_after: Callable[[], int] | None = None
) -> AsyncIterator[CuttingProxy]:
    proxy = CuttingProxy(upstream_port, swallow_answers=swallow_answers, cut_after=cut_after)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
