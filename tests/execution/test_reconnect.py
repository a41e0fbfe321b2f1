"""Dropped and ended streams: resume with Last-Event-ID, nothing lost, nothing repeated.

The first tests cut real connections between the client and the local server with a
loopback TCP proxy; the others script an SSE server (real HTTP on 127.0.0.1) to give
answers the local server never gives on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import aiohttp
import anyio.to_thread
import pytest
from aiohttp import web

import vi_flow
from vi_flow._errors import APIConnectionError
from vi_flow.execution._stream import ResumableEventStream
from vi_flow.models import Condition, FlowCompleted, LogLine, StreamEvent, event_to_wire
from vi_flow.server import embedded

from ..proxy import cutting_proxy
from .conftest import emit_flow, new_flow

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def local_server(home: Path) -> AsyncIterator[embedded.EmbeddedServer]:
    server = await anyio.to_thread.run_sync(embedded.acquire, home)
    try:
        yield server
    finally:
        await anyio.to_thread.run_sync(embedded.release, server)


async def test_cut_connections_resume_without_gaps_or_repeats(tmp_path: Path) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with local_server(tmp_path / "home") as server, cutting_proxy(server.port) as proxy:
        direct = vi_flow.AsyncClient(base_url=server.base_url, api_key=server.api_key)
        proxied = vi_flow.AsyncClient(
            base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key=server.api_key, sleep=sleep
        )
        async with direct, proxied:
            created = await new_flow(direct, emit_flow(300, interval=0.002))
            events: list[StreamEvent] = []
            async for event in proxied.flow(created.flow_id).events():
                events.append(event)
                if len(events) in (40, 120):
                    proxy.cut()
            stored = [
                e async for e in direct.flow(created.flow_id).run(events[0].execution_id).events()
            ]
    assert proxy.connections >= 3
    assert [e.event_id for e in events] == list(range(1, len(stored) + 1))
    assert events == stored
    assert isinstance(events[-1], FlowCompleted)
    assert sum(isinstance(e, LogLine) for e in events) == 300
    assert sleeps  # reconnects waited through the injectable sleep


async def test_run_events_follow_resumes_after_cut(tmp_path: Path) -> None:
    async def sleep(seconds: float) -> None:
        return None

    async with local_server(tmp_path / "home") as server, cutting_proxy(server.port) as proxy:
        direct = vi_flow.AsyncClient(base_url=server.base_url, api_key=server.api_key)
        proxied = vi_flow.AsyncClient(
            base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key=server.api_key, sleep=sleep
        )
        async with direct, proxied:
            flow = await new_flow(direct, emit_flow(200, interval=0.002))
            job = await flow.execute_async()
            events: list[StreamEvent] = []
            async for event in proxied.flow(flow.flow_id).run(job.execution_id).events(after=3):
                events.append(event)
                if len(events) == 30:
                    proxy.cut()
            stored = [e async for e in direct.flow(flow.flow_id).run(job.execution_id).events()]
    assert events == stored[3:]


class Relay:
    """A loopback TCP relay whose upstream port can change (a restarted server's new port).

    When the upstream is down it closes the client's connection at once.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.append(up_writer)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


async def test_server_restart_mid_stream_ends_with_the_stored_log(tmp_path: Path) -> None:
    home = tmp_path / "restart-home"

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    server = await anyio.to_thread.run_sync(embedded.acquire, home)
    key = server.api_key
    async with Relay(server.port) as relay:
        client = vi_flow.AsyncClient(
            base_url=f"http://127.0.0.1:{relay.port}/v1", api_key=key, sleep=sleep
        )
        async with client:
            flow = await new_flow(client, emit_flow(5000, interval=0.002))
            events: list[StreamEvent] = []
            async for event in flow.events():
                events.append(event)
                if len(events) == 30:
                    await anyio.to_thread.run_sync(embedded.release, server)
                    server = await anyio.to_thread.run_sync(embedded.acquire, home)
                    relay.upstream_port = server.port
            stored = [e async for e in flow.run(events[0].execution_id).events()]
    await anyio.to_thread.run_sync(embedded.release, server)
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    assert events == stored
    last = events[-1]
    assert isinstance(last, FlowCompleted) and last.status is Condition.ERROR
    assert relay.connections >= 2


# -- scripted SSE server --------------------------------------------------------------


def frame(event: StreamEvent) -> bytes:
    name, data = event_to_wire(event)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.event_id, name.encode(), data)


def log(i: int) -> LogLine:
    return LogLine(execution_id="run_s", event_id=i, step_id="s", line=f"l{i}")


def done(i: int) -> FlowCompleted:
    return FlowCompleted(execution_id="run_s", event_id=i, status="Succeeded", output="ok")


Script = Callable[[int, str | None], bytes]
"""(connection number from 1, Last-Event-ID) -> the whole body to send, then a clean end."""


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Last-Event-ID"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(script(len(seen), seen[-1]))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/events", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/events", seen
    finally:
        await runner.cleanup()


def stream_of(
    session: aiohttp.ClientSession, url: str, *, running: list[bool], sleeps: list[float], **kw: int
) -> ResumableEventStream:
    def connect(
        stream: ResumableEventStream,
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        headers = {"Last-Event-ID": str(stream.last_event_id)} if stream.last_event_id else {}
        return session.get(url, headers=headers)

    async def still_running(stream: ResumableEventStream) -> bool:
        return running.pop(0) if running else False

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return ResumableEventStream(
        connect, still_running=still_running, sleep=sleep, execution_id="run_s", **kw
    )


async def test_clean_end_while_running_reconnects_and_dedupes() -> None:
    def script(n: int, last: str | None) -> bytes:
        if n == 1:
            return b"".join(frame(log(i)) for i in (1, 2, 3))
        return b"".join(frame(e) for e in (log(2), log(3), log(4), done(5)))  # repeats 2, 3

    sleeps: list[float] = []
    async with scripted(script) as (url, seen), aiohttp.ClientSession() as session:
        stream = stream_of(session, url, running=[True], sleeps=sleeps)
        events = [e async for e in stream]
    assert [e.event_id for e in events] == [1, 2, 3, 4, 5]
    assert seen == [None, "3"]
    assert stream.finished and stream.reconnects == 1


async def test_clean_end_of_finished_run_stops() -> None:
    async with scripted(lambda n, last: frame(log(1))) as (url, seen), aiohttp.ClientSession() as s:
        events = [e async for e in stream_of(s, url, running=[False], sleeps=[])]
    assert [e.event_id for e in events] == [1]
    assert len(seen) == 2  # one more try replays what a finished run still has


async def test_an_answer_ended_after_its_headers_for_a_finished_run_replays_it() -> None:
    # QA AM: a proxy that ended the answer right after its headers, for a run that had
    # ended meanwhile, left the stream with no event and no error
    def script(n: int, last: str | None) -> bytes:
        return b"" if n == 1 else frame(log(1)) + frame(done(2))

    async with scripted(script) as (url, seen), aiohttp.ClientSession() as s:
        events = [e async for e in stream_of(s, url, running=[False], sleeps=[])]
    assert [e.event_id for e in events] == [1, 2] and isinstance(events[-1], FlowCompleted)
    assert seen == [None, None]


async def test_reconnects_are_bounded_with_backoff() -> None:
    sleeps: list[float] = []
    async with scripted(lambda n, last: b": nothing\n\n") as (url, _), aiohttp.ClientSession() as s:
        stream = stream_of(s, url, running=[True] * 20, sleeps=sleeps, max_reconnects=3)
        with pytest.raises(APIConnectionError, match="4 times in a row"):
            [e async for e in stream]
    assert sleeps == [0.25, 0.5, 1.0]


async def test_server_retry_field_sets_backoff() -> None:
    sleeps: list[float] = []
    async with scripted(lambda n, last: b"retry: 40\n\n") as (url, _), aiohttp.ClientSession() as s:
        stream = stream_of(s, url, running=[True] * 20, sleeps=sleeps, max_reconnects=2)
        with pytest.raises(APIConnectionError):
            [e async for e in stream]
    assert sleeps == [0.04, 0.08]


async def test_unknown_event_types_pass_through() -> None:
    body = b'id: 1\nevent: brand_new\ndata: {"executionId": "run_s", "x": 1}\n\n' + frame(done(2))
    async with scripted(lambda n, last: body) as (url, _), aiohttp.ClientSession() as s:
        events = [e async for e in stream_of(s, url, running=[], sleeps=[])]
    assert type(events[0]).__name__ == "UnknownEvent"
    assert events[0].execution_id == "run_s"
    assert isinstance(events[1], FlowCompleted)
