"""Event log streams: Last-Event-ID replay, live follow, heartbeats, disconnects, restart."""

from __future__ import annotations

import asyncio

import pytest

from vi_flow._sse import ServerSentEvent, iter_sse

from .conftest import Server, StartServer, data, names

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def _ids(events: list[ServerSentEvent]) -> list[int]:
    return [int(e.id or 0) for e in events]


async def _finished_run(server: Server, count: int) -> str:
    flow = await server.flow({"block": "emit", "settings": {"count": count}})
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json={})).body
    assert outcome["state"] == "completed"
    return str(outcome["executionId"])


async def test_last_event_id_replays_exactly_what_was_missed(server: Server) -> None:
    run_id = await _finished_run(server, 500)
    full, _ = await server.sse("GET", f"/runs/{run_id}/events")
    assert _ids(full) == list(range(1, 506)) and full[-1].event == "flow_completed"
    tail, _ = await server.sse("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": "123"})
    assert [(e.id, e.event, e.data) for e in tail] == [(e.id, e.event, e.data) for e in full[123:]]
    query, _ = await server.sse("GET", f"/runs/{run_id}/events?after=504")
    assert _ids(query) == [505]
    bad = await server.call("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": "x"})
    assert bad.status == 422


async def test_replay_beyond_the_memory_ring_reads_sqlite(server: Server) -> None:
    run_id = await _finished_run(server, 20000)
    tail, _ = await server.sse("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": "5"})
    assert _ids(tail) == list(range(6, 20006))
    assert data(tail[0])["line"] == "event 4"


async def test_reconnect_mid_run_loses_and_repeats_nothing(server: Server) -> None:
    flow = await server.flow({"block": "emit", "settings": {"count": 60, "interval": 0.005}})
    job = (await server.call("POST", f"/flows/{flow}/jobs", json={})).body
    first, _ = await server.sse("GET", f"/runs/{job['executionId']}/events", limit=10)
    rest, _ = await server.sse("GET", f"/runs/{job['executionId']}/events",
                               headers={"Last-Event-ID": first[-1].id or ""})  # fmt: skip
    stored, _ = await server.sse("GET", f"/runs/{job['executionId']}/events")
    assert [e.data for e in first + rest] == [e.data for e in stored]
    assert _ids(first + rest) == list(range(1, len(stored) + 1))


async def test_heartbeats_while_idle(server: Server) -> None:
    flow = await server.flow({"block": "tool", "settings": {"tool": "t"}})
    run_id = (await server.call("POST", f"/flows/{flow}/execute", json={})).body["executionId"]
    seen = b""
    async with server.session.get(
        f"{server.root}/v1/runs/{run_id}/events", headers=server.headers()
    ) as resp:
        async for chunk in resp.content.iter_any():
            seen += chunk
            if b": heartbeat" in seen:
                break
    assert b"event: tool_calls_required" in seen and b": heartbeat\n\n" in seen


async def _open_then_drop(server: Server, flow: str, body: dict[str, object]) -> str:
    async with server.session.post(f"{server.root}/v1/flows/{flow}/events", json=body,
                                   headers=server.headers()) as resp:  # fmt: skip
        run_id = resp.headers["X-Execution-Id"]
        async for _ in iter_sse(resp):
            break
    return run_id


async def test_run_keeps_going_when_its_stream_client_leaves(server: Server) -> None:
    flow = await server.flow({"block": "emit", "settings": {"count": 20, "interval": 0.01}})
    run_id = await _open_then_drop(server, flow, {})
    events, _ = await server.sse("GET", f"/runs/{run_id}/events")
    assert data(events[-1])["status"] == "Succeeded" and names(events).count("log") == 20


async def test_cancel_on_disconnect(server: Server) -> None:
    flow = await server.flow({"block": "emit", "settings": {"count": 2000, "interval": 0.005}})
    run_id = await _open_then_drop(server, flow, {"cancelOnDisconnect": True})
    events, _ = await server.sse("GET", f"/runs/{run_id}/events")  # another reader
    assert data(events[-1])["status"] == "Cancelled" and names(events).count("log") < 2000
    run = (await server.call("GET", f"/runs/{run_id}")).body
    assert run["status"]["conditions"][-1]["condition"] == "Cancelled"


@pytest.mark.parametrize("by", ["header", "query"])
async def test_cancel_on_disconnect_waits_for_the_client_to_resume(server: Server, by: str) -> None:
    # Found by QA: a dropped connection cancelled the run at once, though the SDK resumes
    # the stream with Last-Event-ID a moment later ("nothing lost"). QA AP: a resume by
    # ?after=, which the stream reads alike, was not counted, and the run was cancelled.
    flow = await server.flow({"block": "emit", "settings": {"count": 400, "interval": 0.01}})
    run_id = await _open_then_drop(server, flow, {"cancelOnDisconnect": True})
    resumed = {"Last-Event-ID": "1"}
    if by == "query":
        events, _ = await server.sse("GET", f"/runs/{run_id}/events?after=1")
    else:
        events, _ = await server.sse("GET", f"/runs/{run_id}/events", headers=resumed)
    assert data(events[-1])["status"] == "Succeeded" and names(events).count("log") == 400
    # the resumed stream carries the flag on: its client gone for good, the run is cancelled
    flow = await server.flow({"block": "emit", "settings": {"count": 2000, "interval": 0.005}})
    run_id = await _open_then_drop(server, flow, {"cancelOnDisconnect": True})
    async with server.session.get(
        f"{server.root}/v1/runs/{run_id}/events", headers={**server.headers(), **resumed}
    ) as resp:
        async for _ in iter_sse(resp):
            break
    events, _ = await server.sse("GET", f"/runs/{run_id}/events")
    assert data(events[-1])["status"] == "Cancelled" and names(events).count("log") < 2000


async def test_a_quiet_run_is_cancelled_soon_after_its_client_left(
    start_server: StartServer,
) -> None:
    # Found by QA: only a write found the dropped connection, and a quiet run writes a
    # heartbeat every 15 s: it was cancelled 18 s after its client left, not 3 s.
    server = await start_server(heartbeat_interval=30)
    flow = await server.flow({"block": "tool", "settings": {"tool": "t"}})  # waits, silent
    run_id = await _open_then_drop(server, flow, {"cancelOnDisconnect": True})
    left = asyncio.get_running_loop().time()
    while True:
        run = (await server.call("GET", f"/runs/{run_id}")).body
        if run["status"]["conditions"][-1]["condition"] == "Cancelled":
            break
        assert asyncio.get_running_loop().time() - left < 10, run["status"]
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("first_connection", ["closed", "hung open"])
async def test_a_streams_retry_is_answered_at_once_with_its_run(
    start_server: StartServer, first_connection: str
) -> None:
    # A POST .../events holds its Idempotency-Key while the key does not name its run.
    # QA AS: only a write found a closed client gone, and the retry of a quiet run's
    # stream waited for the next heartbeat (15 s) before its first byte. QA AT: a
    # connection that hangs open (a stalled proxy: nothing reads, nothing closes) held
    # the key until the run ended, and every retry waited as long.
    server = await start_server(heartbeat_interval=30)
    flow = await server.flow({"block": "tool", "settings": {"tool": "t"}})  # waits, silent
    keyed = {**server.headers(), "Idempotency-Key": "stream-once"}
    url = f"{server.root}/v1/flows/{flow}/events"
    first = await server.session.post(url, json={}, headers=keyed)
    try:
        run_id = first.headers["X-Execution-Id"]
        async for _ in iter_sse(first):
            break  # and then, hung open, neither reads nor closes
        if first_connection == "closed":
            first.close()
        asked = asyncio.get_running_loop().time()
        async with server.session.post(url, json={}, headers=keyed) as retry:
            waited = asyncio.get_running_loop().time() - asked
            assert retry.headers["X-Execution-Id"] == run_id  # the same run, streamed again
            frames = b""
            async for chunk in retry.content.iter_any():
                frames += chunk
                if b"event: tool_calls_required" in frames:
                    break
        assert waited < 5, waited
    finally:
        first.close()
    assert [run["runId"] for run in (await server.call("GET", "/runs")).body["items"]] == [run_id]


async def test_cancel_a_running_run(server: Server) -> None:
    flow = await server.flow({"block": "emit", "settings": {"count": 500, "interval": 0.01}})
    job = (await server.call("POST", f"/flows/{flow}/jobs", json={})).body
    await server.sse("GET", f"/runs/{job['executionId']}/events", limit=3)
    answer = await server.call("POST", f"/runs/{job['executionId']}/cancel")
    assert answer.body["status"]["conditions"][-1]["condition"] == "Cancelled"
    events, _ = await server.sse("GET", f"/runs/{job['executionId']}/events")
    assert events[-1].event == "flow_completed" and data(events[-1])["status"] == "Cancelled"


async def test_restart_mid_run_marks_error_and_appends_terminal(start_server: StartServer) -> None:
    server = await start_server()
    flow = await server.flow(
        {"block": "emit", "id": "slow", "settings": {"count": 2000, "interval": 0.005}}
    )
    seen: list[ServerSentEvent] = []

    async def watch() -> None:
        async with server.session.post(f"{server.root}/v1/flows/{flow}/events", json={},
                                       headers=server.headers()) as resp:  # fmt: skip
            async for event in iter_sse(resp):
                seen.append(event)  # noqa: PERF401 - watched while it grows

    watcher = asyncio.create_task(watch())
    while len(seen) < 20:
        await asyncio.sleep(0.01)
    run_id = data(seen[0])["executionId"]
    await server.stop()
    await watcher  # the stream ended cleanly when the server stopped
    server = await start_server(home=server.home)
    run = (await server.call("GET", f"/runs/{run_id}")).body
    last = run["status"]["conditions"][-1]
    assert last["condition"] == "Error" and last["reason"] == "ServerRestarted"
    rest, _ = await server.sse(
        "GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": seen[-1].id or ""}
    )
    stored, _ = await server.sse("GET", f"/runs/{run_id}/events")
    assert [e.data for e in seen + rest] == [e.data for e in stored]
    final = data(stored[-1])
    assert stored[-1].event == "flow_completed" and final["status"] == "Error"
    assert final["failedStep"] == "slow" and "server stopped" in final["error"]
    trace = (await server.call("GET", f"/runs/{run_id}/trace")).body
    assert trace["status"] == "Error" and trace["steps"][0]["status"] == "Error"
