"""Streams notice silence: 2x the announced heartbeat without a byte, and they resume.

A real server with a small heartbeat sits behind a loopback proxy that stalls: the
socket stays open and nothing more arrives, as with a hung middlebox. The client must
reconnect after twice the heartbeat (not after its whole read timeout) and resume with
``Last-Event-ID``, nothing lost and nothing repeated.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import vi_flow
from tests.live_server import LiveServer, Starter
from vi_flow.execution._stream import silence_limit
from vi_flow.models import FlowCompleted, LogLine, StreamEvent
from vi_flow.server.state import ServerSettings

from ..proxy import cutting_proxy
from .conftest import emit_flow, new_flow

pytestmark = pytest.mark.anyio

HEARTBEAT = 0.2


async def test_a_stalled_stream_resumes_after_twice_the_heartbeat(tmp_path: Path) -> None:
    async def no_wait(seconds: float) -> None:
        return None

    async with Starter(LiveServer) as starter:
        server = await starter.start(
            ServerSettings(home=tmp_path / "home", heartbeat_interval=HEARTBEAT)
        )
        port = int(server.root.rsplit(":", 1)[1])
        async with cutting_proxy(port) as proxy:
            direct = vi_flow.AsyncClient(base_url=f"{server.root}/v1", api_key=server.token)
            proxied = vi_flow.AsyncClient(
                base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key=server.token, sleep=no_wait
            )
            async with direct, proxied:
                flow = await new_flow(direct, emit_flow(30, interval=0.05))
                events: list[StreamEvent] = []
                gaps: list[float] = []
                last = time.monotonic()
                async for event in proxied.flow(flow.flow_id).events():
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
                    events.append(event)
                    if len(events) == 8:
                        proxy.stall()
                run = flow.run(events[0].execution_id or "")
                stored = [e async for e in run.events()]
    assert proxy.connections >= 2  # the stalled connection was given up and replaced
    assert events == stored and isinstance(events[-1], FlowCompleted)
    assert sum(isinstance(e, LogLine) for e in events) == 30
    assert max(gaps) < 10 * HEARTBEAT, gaps  # 2x the heartbeat, not the 60 s read timeout


async def test_streams_announce_their_heartbeat(tmp_path: Path) -> None:
    async with Starter(LiveServer) as starter:
        server = await starter.start(ServerSettings(home=tmp_path / "home", heartbeat_interval=0.5))
        flow = (await server.call("POST", "/flows", json=emit_flow(1))).body["flowId"]
        run_id = (await server.call("POST", f"/flows/{flow}/execute", json={})).body["executionId"]
        answer = await server.call("GET", f"/runs/{run_id}/events")
    assert answer.headers["X-Heartbeat-Interval"] == "0.5"
    assert silence_limit(answer.headers) == 1.0


@pytest.mark.parametrize("value", ["", "soon", "0", "-1", "nan", "inf"])
def test_a_missing_or_odd_heartbeat_leaves_the_read_timeout_alone(value: str) -> None:
    assert silence_limit({"X-Heartbeat-Interval": value}) is None
    assert silence_limit({}) is None
