"""Tool pauses: durable pause, resume, exact resend no-op, 409s, timeout, restart."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .conftest import Server, StartServer, data, names

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

TOOL: dict[str, Any] = {
    "block": "tool",
    "id": "ask",
    "settings": {"tool": "weather", "arguments": {"city": "{{ parameters.city }}"}},
}
ECHO = {
    "block": "template",
    "id": "say",
    "settings": {"template": "It is {{ steps.ask.output.temp }}"},
}


async def _paused(server: Server, **body: Any) -> dict[str, Any]:
    flow = await server.flow(TOOL, ECHO)
    answer = await server.call(
        "POST", f"/flows/{flow}/execute", json={"parameters": {"city": "Oslo"}, **body}
    )
    assert answer.status == 200 and answer.body["state"] == "paused", answer.body
    return dict(answer.body)


async def test_pause_then_resume_with_wait(server: Server) -> None:
    paused = await _paused(server)
    call = paused["toolCalls"][0]
    assert paused["stepId"] == "ask" and call["function"]["name"] == "weather"
    assert call["function"]["arguments"] == '{"city":"Oslo"}' and call["type"] == "function"
    run_id = paused["executionId"]
    results = {"toolResults": [{"toolCallId": call["id"], "output": {"temp": 21}}]}
    answer = await server.call(
        "POST", f"/runs/{run_id}/tool-results", json=results, params={"wait": "true"}
    )
    assert answer.status == 200, answer.body
    assert answer.body["state"] == "completed" and answer.body["output"] == "It is 21"
    events, _ = await server.sse("GET", f"/runs/{run_id}/events")
    assert names(events) == [
        "run_started", "step_started", "step_paused", "tool_calls_required", "step_output",
        "step_completed", "step_started", "step_output", "step_completed", "flow_completed",
    ]  # fmt: skip


async def test_exact_resend_is_a_noop_and_continuation_runs_once(server: Server) -> None:
    paused = await _paused(server)
    run_id, call_id = paused["executionId"], paused["toolCalls"][0]["id"]
    body = {"toolResults": [{"toolCallId": call_id, "output": {"temp": 5}}]}
    first, second = await asyncio.gather(
        server.call("POST", f"/runs/{run_id}/tool-results", json=body),
        server.call("POST", f"/runs/{run_id}/tool-results", json=body),
    )
    assert first.status == second.status == 200
    assert first.body == second.body == {"accepted": [call_id]}
    again = await server.call(
        "POST", f"/runs/{run_id}/tool-results", json=body, params={"wait": "true"}
    )
    assert again.status == 200 and again.body["state"] == "completed"
    events, _ = await server.sse("GET", f"/runs/{run_id}/events")
    assert names(events).count("flow_completed") == 1 and names(events).count("step_started") == 2


async def test_conflicts_name_the_ids(server: Server) -> None:
    paused = await _paused(server)
    run_id, call_id = paused["executionId"], paused["toolCalls"][0]["id"]
    unknown = await server.call("POST", f"/runs/{run_id}/tool-results",
                                json={"toolResults": [{"toolCallId": "call_bogus", "output": 1}]})  # fmt: skip
    assert unknown.status == 409 and "call_bogus" in unknown.body["error"]["message"]
    # QA AP: a NUL in the id was a 409 "unknown" where every other id a body names is a 422
    nul = {"toolResults": [{"toolCallId": call_id + "\x00", "output": 1}]}
    refused = await server.call("POST", f"/runs/{run_id}/tool-results", json=nul)
    assert refused.status == 422, refused.body
    assert refused.body["error"]["message"] == (
        "toolResults[0].toolCallId: expected an id without a NUL character"
    )
    ok = {"toolResults": [{"toolCallId": call_id, "output": {"temp": 1}}]}
    assert (
        await server.call("POST", f"/runs/{run_id}/tool-results", json=ok, params={"wait": "1"})
    ).status == 200
    other = {"toolResults": [{"toolCallId": call_id, "output": {"temp": 2}}]}
    changed = await server.call("POST", f"/runs/{run_id}/tool-results", json=other)
    assert changed.status == 409 and call_id in changed.body["error"]["message"]
    late = await server.call("POST", f"/runs/{run_id}/tool-results",
                             json={"toolResults": [{"toolCallId": "call_late", "output": 1}]})  # fmt: skip
    assert late.status == 409 and "not paused" in late.body["error"]["message"]
    assert "call_late" in late.body["error"]["message"]
    empty = await server.call("POST", f"/runs/{run_id}/tool-results", json={"toolResults": []})
    assert empty.status == 422
    nope = await server.call("POST", "/runs/run_nope/tool-results", json=ok)
    assert nope.status == 404 and nope.body["error"]["code"] == "RUN_NOT_FOUND"


async def test_stream_stays_open_across_a_pause(server: Server) -> None:
    flow = await server.flow(TOOL, ECHO)

    async def answer_when_asked() -> None:
        for _ in range(200):
            runs = await server.call("GET", "/runs", params={"flowId": flow})
            if runs.body["items"]:
                run_id = runs.body["items"][0]["runId"]
                outcome = await server.call("GET", f"/runs/{run_id}/trace")
                if outcome.body["steps"]:
                    break
            await asyncio.sleep(0.02)
        events, _ = await server.sse("GET", f"/runs/{run_id}/events", limit=4)
        call_id = data(events[3])["toolCalls"][0]["id"]
        await server.call("POST", f"/runs/{run_id}/tool-results",
                          json={"toolResults": [{"toolCallId": call_id, "output": {"temp": 9}}]})  # fmt: skip

    helper = asyncio.create_task(answer_when_asked())
    events, _ = await server.sse(
        "POST", f"/flows/{flow}/events", json={"parameters": {"city": "X"}}
    )
    await helper
    assert events[-1].event == "flow_completed" and data(events[-1])["output"] == "It is 9"
    assert [int(e.id or 0) for e in events] == list(range(1, len(events) + 1))


async def test_pause_timeout_ends_the_run_with_error(server: Server) -> None:
    flow = await server.flow({**TOOL, "settings": {**TOOL["settings"], "timeout": 0.2}}, ECHO)
    outcome = (
        await server.call("POST", f"/flows/{flow}/execute", json={"parameters": {"city": "A"}})
    ).body
    events, _ = await server.sse("GET", f"/runs/{outcome['executionId']}/events")
    assert names(events)[-2:] == ["step_failed", "flow_completed"]
    final = data(events[-1])
    assert final["status"] == "Error" and "pause timeout" in final["error"]
    run = (await server.call("GET", f"/runs/{outcome['executionId']}")).body
    assert run["status"]["conditions"][-1]["reason"] == "ToolResultsTimeout"


async def test_paused_run_survives_a_restart(start_server: StartServer) -> None:
    server = await start_server()
    paused = await _paused(server)
    await server.stop()
    server = await start_server(home=server.home)
    run_id, call_id = paused["executionId"], paused["toolCalls"][0]["id"]
    run = (await server.call("GET", f"/runs/{run_id}")).body
    assert run["status"]["conditions"][-1]["condition"] == "Running"
    body = {"toolResults": [{"toolCallId": call_id, "output": {"temp": 30}}]}
    answer = await server.call(
        "POST", f"/runs/{run_id}/tool-results", json=body, params={"wait": "true"}
    )
    assert answer.body["state"] == "completed" and answer.body["output"] == "It is 30"


async def test_cancel_a_paused_run(server: Server) -> None:
    paused = await _paused(server)
    run_id = paused["executionId"]
    answer = await server.call("POST", f"/runs/{run_id}/cancel")
    assert (
        answer.status == 200 and answer.body["status"]["conditions"][-1]["condition"] == "Cancelled"
    )
    events, _ = await server.sse("GET", f"/runs/{run_id}/events")
    assert events[-1].event == "flow_completed" and data(events[-1])["status"] == "Cancelled"


async def test_several_calls_answered_in_parts(server: Server) -> None:
    calls = [
        {"name": "a", "arguments": {"n": 1}},
        {"name": "b", "arguments": {"n": "{{ message }}"}},
    ]
    flow = await server.flow({"block": "tool", "id": "both", "settings": {"calls": calls}})
    paused = (await server.call("POST", f"/flows/{flow}/execute", json={"message": "m"})).body
    first, second = paused["toolCalls"]
    assert second["function"] == {"name": "b", "arguments": '{"n":"m"}'}
    url = f"/runs/{paused['executionId']}/tool-results"
    part = {"toolResults": [{"toolCallId": first["id"], "output": "A"}]}
    answer = await server.call("POST", url, json=part, params={"wait": "true"})
    assert answer.body["state"] == "paused"
    rest = {"toolResults": [{"toolCallId": second["id"], "output": "B", "isError": True}]}
    answer = await server.call("POST", url, json=rest, params={"wait": "true"})
    assert answer.body["state"] == "completed" and answer.body["output"] == ["A", "B"]
