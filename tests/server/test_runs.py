"""Runs over real HTTP: creation, progress, filters, cancel, delete, the engine hook."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aiohttp import web

from vi_flow.models.runs import Run
from vi_flow.server.state import ENGINE_KEY

from .conftest import Server, StartServer, spec

pytestmark = pytest.mark.anyio


async def _wait_for(server: Server, run_id: str, condition: str) -> dict[str, Any]:
    with anyio.fail_after(5):
        while True:
            run = (await server.call("GET", f"/runs/{run_id}")).body
            if run["status"]["conditions"][-1]["condition"] == condition:
                return run  # type: ignore[no-any-return]
            await anyio.sleep(0.01)


async def _flow(server: Server, body: dict[str, Any] | None = None) -> str:
    return (await server.call("POST", "/flows", json=body or spec("f", "a"))).body["flowId"]  # type: ignore[no-any-return]


async def test_a_run_goes_pending_running_succeeded(server: Server) -> None:
    flow_id = await _flow(server)
    created = await server.call("POST", "/runs", json={"flowId": flow_id, "message": "hi"})
    assert created.status == 201
    run = created.body
    assert run["status"]["conditions"][0]["condition"] == "Pending"
    assert run["spec"]["flowId"] == flow_id and run["spec"]["message"] == "hi"
    assert run["spec"]["flowVersion"] == "draft"
    done = await _wait_for(server, run["runId"], "Succeeded")
    assert [c["condition"] for c in done["status"]["conditions"]] == [
        "Pending",
        "Running",
        "Succeeded",
    ]


async def test_unknown_flow_or_version(server: Server) -> None:
    missing = await server.call("POST", "/runs", json={"flowId": "flow_nope"})
    assert missing.status == 404 and missing.body["error"]["code"] == "FLOW_NOT_FOUND"
    flow_id = await _flow(server)
    version = await server.call("POST", "/runs", json={"flowId": flow_id, "version": 4})
    assert version.status == 404 and version.body["error"]["code"] == "FLOW_VERSION_NOT_FOUND"
    bad = await server.call("POST", "/runs", json={"flowId": flow_id, "version": "latest"})
    assert bad.status == 422 and bad.body["error"]["message"].startswith("version:")
    nothing = await server.call("POST", "/runs", json={})
    assert nothing.status == 422 and nothing.body["error"]["message"].startswith("flowId:")


async def test_the_production_version_runs_by_default(server: Server) -> None:
    flow_id = await _flow(server, spec("v1"))
    await server.call("POST", f"/flows/{flow_id}/publish")
    await server.call("POST", f"/flows/{flow_id}/promote", json={"version": 1})
    await server.call("PUT", f"/flows/{flow_id}", json=spec("draft"))
    run = (await server.call("POST", "/runs", json={"flowId": flow_id})).body
    assert run["spec"]["flowVersion"] == "1" and run["spec"]["flow"]["name"] == "v1"
    draft = (await server.call("POST", "/runs", json={"flowId": flow_id, "version": "draft"})).body
    assert draft["spec"]["flow"]["name"] == "draft"


async def test_required_inputs_and_defaults(server: Server) -> None:
    body = {"name": "in", "inputs": [{"name": "q"}, {"name": "n", "required": False, "default": 3}]}
    flow_id = await _flow(server, body)
    missing = await server.call("POST", "/runs", json={"flowId": flow_id})
    assert missing.status == 422
    assert missing.body["error"]["message"].startswith("parameters.q:")
    ok = await server.call("POST", "/runs", json={"flowId": flow_id, "parameters": {"q": "x"}})
    assert ok.body["spec"]["parameters"] == {"q": "x", "n": 3}


async def test_list_filters_and_pages(server: Server) -> None:
    first, second = await _flow(server), await _flow(server)
    runs = [
        (await server.call("POST", "/runs", json={"flowId": f})).body["runId"]
        for f in (first, second, first)
    ]
    for run_id in runs:
        await _wait_for(server, run_id, "Succeeded")
    by_flow = await server.call("GET", "/runs", params={"flowId": first})
    assert [r["runId"] for r in by_flow.body["items"]] == [runs[2], runs[0]]  # newest first
    done = await server.call("GET", "/runs", params={"condition": "Succeeded", "pageSize": "2"})
    assert len(done.body["items"]) == 2 and done.body["nextPage"]
    rest = await server.call(
        "GET", "/runs", params={"condition": "Succeeded", "pageToken": done.body["nextPage"]}
    )
    assert [r["runId"] for r in rest.body["items"]] == [runs[0]]
    none = await server.call("GET", "/runs", params={"condition": "Running"})
    assert none.body == {"items": [], "nextPage": None}


class _IdleEngine:
    """An engine that starts nothing, so runs stay Pending until cancelled."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.forgotten: list[str] = []

    def charge(self, conn: Any, org_id: str) -> None:
        pass  # free

    async def start(self, run: Run) -> None:
        self.started.append(run.run_id)

    async def cancel(self, run: Run) -> None:
        self.cancelled.append(run.run_id)

    async def forget(self, key: tuple[str, str]) -> None:
        self.forgotten.append(key[1])


async def test_engine_hook_cancel_and_delete(start_server: StartServer) -> None:
    engine = _IdleEngine()

    def prepare(app: web.Application) -> None:
        app[ENGINE_KEY] = engine

    server = await start_server(prepare=prepare)
    run_id = (await server.call("POST", "/runs", json={"flowId": await _flow(server)})).body[
        "runId"
    ]
    assert engine.started == [run_id]
    busy = await server.call("DELETE", f"/runs/{run_id}")
    assert busy.status == 409 and busy.body["error"]["code"] == "CONFLICT"

    cancelled = await server.call("POST", f"/runs/{run_id}/cancel")
    assert cancelled.body["status"]["conditions"][-1]["condition"] == "Cancelled"
    assert cancelled.body["spec"]["killedAt"] is not None
    assert engine.cancelled == [run_id]
    again = await server.call("POST", f"/runs/{run_id}/cancel")
    assert again.body["status"] == cancelled.body["status"] and engine.cancelled == [run_id]

    assert (await server.call("DELETE", f"/runs/{run_id}")).body == {
        "runId": run_id,
        "deleted": True,
    }
    assert engine.forgotten == [run_id]
    gone = await server.call("GET", f"/runs/{run_id}")
    assert gone.status == 404 and gone.body["error"]["code"] == "RUN_NOT_FOUND"


async def test_interrupted_runs_are_marked_error_after_restart(start_server: StartServer) -> None:
    def idle(app: web.Application) -> None:
        app[ENGINE_KEY] = _IdleEngine()

    server = await start_server(prepare=idle)
    run_id = (await server.call("POST", "/runs", json={"flowId": await _flow(server)})).body[
        "runId"
    ]
    await server.stop()
    restarted = await start_server(server.home)
    last = (await restarted.call("GET", f"/runs/{run_id}")).body["status"]["conditions"][-1]
    assert last["condition"] == "Error" and last["reason"] == "ServerRestarted"


async def test_a_chosen_run_id(server: Server) -> None:
    flow_id = await _flow(server)
    body = {"flowId": flow_id, "runId": "run_mine"}
    assert (await server.call("POST", "/runs", json=body)).body["runId"] == "run_mine"
    taken = await server.call("POST", "/runs", json=body)
    assert taken.status == 409
    bad = await server.call("POST", "/runs", json={"flowId": flow_id, "runId": "mine"})
    assert bad.status == 422 and bad.body["error"]["message"].startswith("runId:")
