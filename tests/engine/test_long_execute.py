"""An execute whose run outlasts a heartbeat interval is answered at once and kept alive.

A client times out on silence between bytes (60 s by default): a healthy run that worked
longer than that answered nothing, each retry timed out in turn, and ``execute()``
raised ``APITimeoutError`` while the run went on to succeed (QA AF). The answer now
begins after one heartbeat interval (``200``, ``X-Execution-Id``) with a space each
interval until the outcome's JSON.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

import vi_flow
from vi_flow.models import FlowCompleted
from vi_flow.server.routes.executions import EXECUTION_ENGINE_KEY

from .conftest import Server, StartServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def _emit(count: int, interval: float) -> dict[str, object]:
    return {"block": "emit", "id": "work", "settings": {"count": count, "interval": interval}}


async def test_a_run_longer_than_a_heartbeat_is_answered_with_spaces_then_its_outcome(
    server: Server,
) -> None:
    flow = await server.flow(_emit(5, 0.25))  # about 1.2 s; the heartbeat is 0.2 s
    answer = await server.call("POST", f"/flows/{flow}/execute", json={})
    assert answer.status == 200
    assert answer.raw.startswith(b"  ") and answer.raw.lstrip()[:1] == b"{", answer.raw[:40]
    outcome = orjson.loads(answer.raw)
    assert outcome["state"] == "completed", outcome
    assert answer.headers["X-Execution-Id"] == outcome["executionId"]
    assert answer.headers["Content-Type"].startswith("application/json")


async def test_a_short_run_is_answered_whole(server: Server) -> None:
    flow = await server.flow({"block": "template", "settings": {"template": "hi"}})
    answer = await server.call("POST", f"/flows/{flow}/execute", json={})
    assert answer.status == 200 and answer.raw.startswith(b"{"), answer.raw[:40]
    assert answer.headers["Content-Length"] == str(len(answer.raw))
    # as a longer run's answer is (QA AV: only runs over a second had it)
    assert answer.headers["X-Execution-Id"] == orjson.loads(answer.raw)["executionId"]


async def test_a_replayed_answer_names_its_run_too(server: Server) -> None:
    # QA AY: an answer replayed for an Idempotency-Key named its run in the body only
    flow = await server.flow({"block": "template", "settings": {"template": "hi"}})
    keyed = {"Idempotency-Key": "named-1"}
    first = await server.call("POST", f"/flows/{flow}/execute", json={}, headers=keyed)
    again = await server.call("POST", f"/flows/{flow}/execute", json={}, headers=keyed)
    assert again.headers["Idempotent-Replayed"] == "true" and again.body == first.body
    assert again.headers["X-Execution-Id"] == first.headers["X-Execution-Id"]
    assert again.headers["X-Execution-Id"] == again.body["executionId"]


async def test_execute_outlives_the_clients_read_timeout(server: Server) -> None:
    flow = await server.flow(_emit(8, 0.25))  # about 2 s of silence on the execute answer
    timeout = vi_flow.Timeout(connect=5, read=0.7, total=None)
    client = vi_flow.AsyncClient(
        base_url=f"{server.root}/v1", api_key=server.token, timeout=timeout, max_retries=0
    )
    async with client:
        result = await client.flow(flow).execute()
    assert result.status == "Succeeded" and result.output == {"count": 8}


@pytest.mark.parametrize("transport", ["aiohttp", "stdlib"])
async def test_an_execute_its_timeout_ended_names_the_run_that_goes_on(
    server: Server, transport: str
) -> None:
    # A timeout bounds the call, not the run (configuration.md): the caller had no id
    # to wait for or cancel the run with.
    flow = await server.flow(_emit(8, 0.25))  # about 2 s; its answer begins after 0.2 s
    client = vi_flow.AsyncClient(
        base_url=f"{server.root}/v1", api_key=server.token, http_transport=transport
    )
    async with client:
        with pytest.raises(vi_flow.APITimeoutError) as caught:
            await client.flow(flow).execute(timeout=0.8)
        run_id = caught.value.execution_id
        assert run_id is not None and run_id.startswith("run_"), caught.value
        assert f"run {run_id} goes on: follow it with flow.run('{run_id}')" in str(caught.value)
        events = [event async for event in client.flow(flow).run(run_id).events(after=0)]
        assert isinstance(events[-1], FlowCompleted), events[-1]
        assert events[-1].output == {"count": 8}, events[-1]


async def test_a_timeout_shorter_than_the_heartbeat_names_the_run_too(
    start_server: StartServer,
) -> None:
    # QA AR: the answer began after a heartbeat interval (15 s): an execute(timeout=2)
    # raised without the id of the run that went on. It begins after a second.
    server = await start_server(heartbeat_interval=30)
    flow = await server.flow(_emit(16, 0.25))  # about 4 s
    async with vi_flow.AsyncClient(base_url=f"{server.root}/v1", api_key=server.token) as client:
        with pytest.raises(vi_flow.APITimeoutError) as caught:
            await client.flow(flow).execute(timeout=2.5)
        run_id = caught.value.execution_id
        assert run_id is not None and run_id.startswith("run_"), caught.value
        assert await client.flow(flow).run(run_id).status() == "Running"


async def test_answering_tool_results_with_wait_is_kept_alive_too(server: Server) -> None:
    flow = await server.flow(
        {"block": "tool", "id": "ask", "settings": {"tool": "lookup"}}, _emit(5, 0.25)
    )
    paused = (await server.call("POST", f"/flows/{flow}/execute", json={})).body
    assert paused["state"] == "paused", paused
    call = paused["toolCalls"][0]["id"]
    body = {"toolResults": [{"toolCallId": call, "output": "found"}]}
    answer = await server.call(
        "POST", f"/runs/{paused['executionId']}/tool-results", json=body, params={"wait": "true"}
    )
    assert answer.status == 200 and answer.raw.startswith(b" "), answer.raw[:40]
    assert orjson.loads(answer.raw)["state"] == "completed"


async def test_a_stop_after_the_answer_began_cuts_it_and_a_retry_gets_the_outcome(
    start_server: StartServer,
) -> None:
    """An outcome that fails once the answer began (the server stops before the run
    ends) leaves the answer unfinished, never a whole 200 of spaces: the client's retry
    with its Idempotency-Key gets the run's outcome from the next server."""
    server = await start_server()
    flow = await server.flow(_emit(400, 0.05))  # 20 s: ended by the stop
    headers = server.headers(None, {"Idempotency-Key": "long-1"})
    url = f"{server.root}/v1/flows/{flow}/execute"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={}, headers=headers) as resp,
    ):
        assert resp.status == 200
        run_id = resp.headers["X-Execution-Id"]
        assert await resp.content.readexactly(1) == b" "
        engine = server.app[EXECUTION_ENGINE_KEY]
        stopping = asyncio.ensure_future(server.stop())
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        await stopping
    assert engine.log.stopping
    again = await start_server(home=server.home)
    retry = await again.call(
        "POST", f"/flows/{flow}/execute", json={}, headers={"Idempotency-Key": "long-1"}
    )
    assert retry.status == 200, retry.body
    assert retry.body["executionId"] == run_id
    assert retry.body["state"] in ("failed", "cancelled"), retry.body


async def test_a_retry_after_a_cut_answer_is_kept_alive_while_the_run_goes_on(
    server: Server,
) -> None:
    """QA AG: the first request held its Idempotency-Key's lock until the run ended, so
    a retry after a cut connection waited behind it without a byte, and timed out while
    the run was still working. A request whose client left stops waiting; the retry
    begins its own answer, and the run is never started twice."""
    flow = await server.flow(_emit(60, 0.05))  # 3 s
    headers = server.headers(None, {"Idempotency-Key": "cut-1"})
    url = f"{server.root}/v1/flows/{flow}/execute"
    async with aiohttp.ClientSession() as first:
        async with first.post(url, json={}, headers=headers) as resp:
            run_id = resp.headers["X-Execution-Id"]
            assert await resp.content.readexactly(1) == b" "
    # the connection is closed: the retry
    async with aiohttp.ClientSession() as second:
        async with second.post(url, json={}, headers=headers) as retry:
            assert retry.status == 200 and retry.headers["X-Execution-Id"] == run_id
            assert await retry.content.readexactly(1) == b" "
            run = (await server.call("GET", f"/runs/{run_id}")).body
            assert run["status"]["conditions"][-1]["condition"] == "Running"  # still working
            outcome = orjson.loads(await retry.read())
    assert outcome["executionId"] == run_id and outcome["state"] == "completed", outcome
    runs = (await server.call("GET", "/runs")).body["items"]
    assert [r["runId"] for r in runs] == [run_id]


async def test_a_retry_beside_an_answer_hung_open_is_kept_alive_and_both_get_the_outcome(
    server: Server,
) -> None:
    """A first connection that hangs open (a stalled proxy: nothing reads, nothing
    closes) held the Idempotency-Key until the run ended, and the client's retry waited
    behind it without a byte. The retry now waits beside it: both answer the one run."""
    flow = await server.flow(_emit(120, 0.05))  # 6 s
    headers = server.headers(None, {"Idempotency-Key": "hung-1"})
    url = f"{server.root}/v1/flows/{flow}/execute"
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as first, aiohttp.ClientSession() as second:
        async with first.post(url, json={}, headers=headers) as resp:
            run_id = resp.headers["X-Execution-Id"]
            assert await resp.content.readexactly(1) == b" "  # and then hung open
            asked = loop.time()
            async with second.post(url, json={}, headers=headers) as retry:
                assert await retry.content.readexactly(1) == b" "
                waited = loop.time() - asked
                assert retry.headers["X-Execution-Id"] == run_id
                assert retry.headers["Idempotent-Replayed"] == "true"
                outcome = orjson.loads(await retry.read())
            assert waited < 3, f"the retry's first byte came after {waited:.1f} s"
            assert orjson.loads(await resp.read()) == outcome  # the first answer too
    assert outcome["executionId"] == run_id and outcome["state"] == "completed", outcome
    runs = (await server.call("GET", "/runs")).body["items"]
    assert [r["runId"] for r in runs] == [run_id]
    again = await server.call("POST", f"/flows/{flow}/execute", json={}, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true" and again.body == outcome
