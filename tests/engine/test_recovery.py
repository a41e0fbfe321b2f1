"""Recovery at start-up: half-finished runs get exactly one terminal event."""

from __future__ import annotations

import pytest

from ..live_server import state_sql
from .conftest import Server, StartServer, data, names

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def _sql(server: Server, statement: str, *args: object) -> None:
    state_sql(server.home, statement, *args)


async def test_done_run_without_terminal_event_gets_one(start_server: StartServer) -> None:
    server = await start_server()
    flow = await server.flow({"block": "tool", "id": "t", "settings": {"tool": "x"}})
    run_id = (await server.call("POST", f"/flows/{flow}/execute", json={})).body["executionId"]
    await server.stop()
    outcome = '{"status": "Failed", "error": "boom", "failedStep": "t", "output": null}'
    _sql(server, "UPDATE engine_runs SET state = 'done', pause = NULL, outcome = ? WHERE run_id = ?",
         outcome, run_id)  # fmt: skip
    server = await start_server(home=server.home)
    events, _ = await server.sse("GET", f"/runs/{run_id}/events")
    assert names(events)[-1] == "flow_completed" and data(events[-1])["error"] == "boom"
    run = (await server.call("GET", f"/runs/{run_id}")).body
    assert run["status"]["conditions"][-1]["condition"] == "Failed"


async def test_terminal_event_is_never_written_twice(start_server: StartServer) -> None:
    server = await start_server()
    flow = await server.flow({"block": "template"})
    run_id = (await server.call("POST", f"/flows/{flow}/execute", json={})).body["executionId"]
    await server.stop()
    _sql(server, "UPDATE engine_runs SET closed = 0 WHERE run_id = ?", run_id)
    server = await start_server(home=server.home)
    events, _ = await server.sse("GET", f"/runs/{run_id}/events")
    assert names(events).count("flow_completed") == 1


async def test_post_runs_with_no_credits_is_402_and_stores_nothing(server: Server) -> None:
    # A 402 left a Failed run behind, so the same request with its chosen runId was 409
    # once credits were added (QA round 8).
    flow = await server.flow({"block": "template"})
    await server.call("PUT", "/organizations/org_default/credits", json={"credits": 0})
    body = {"flowId": flow, "runId": "run_nightly_1"}
    headers = {"Idempotency-Key": "nightly-1"}
    answer = await server.call("POST", "/runs", json=body, headers=headers)
    assert answer.status == 402 and answer.body["error"]["code"] == "INSUFFICIENT_CREDITS"
    assert (await server.call("GET", "/runs")).body["items"] == []
    await server.call("PUT", "/organizations/org_default/credits", json={"credits": 1})
    again = await server.call("POST", "/runs", json=body, headers=headers)
    assert again.status == 201 and again.body["runId"] == "run_nightly_1", again.body
    credits = await server.call("GET", "/organizations/org_default/credits")
    assert credits.body["credits"] == 0


async def test_openapi_lists_the_execution_routes(server: Server) -> None:
    paths = (await server.call("GET", "/openapi.json")).body["paths"]
    for path in (
        "/v1/flows/{flowId}/execute",
        "/v1/runs/{runId}/tool-results",
        "/v1/runs/{runId}/events",
    ):
        assert path in paths
