"""Run ids chosen by a client are scoped to its organization (issue 12).

A ``runId`` another organization already uses is no 409 (that answer was an oracle of
what others have): each organization gets its own run under that id, sees only its own
(get, list, events, trace, cancel, tool results, delete) and nothing of the other's,
also after a restart and on a database written before run ids were per organization.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from vi_flow._sse import SSEDecoder
from vi_flow.server.state import STORE_KEY

from ..live_server import SQLITE_ONLY
from .conftest import Server, StartServer

pytestmark = pytest.mark.anyio

SHARED = "run_shared"
PAUSES = {"name": "mine", "blocks": [{"block": "tool", "id": "t", "settings": {"tool": "x"}}]}
ENDS = {"name": "theirs", "blocks": [{"block": "template", "settings": {"template": "theirs"}}]}


async def _second_token(server: Server) -> str:
    org = (await server.call("POST", "/organizations", json={"name": "acme"})).body
    made = await server.call(
        "POST", f"/organizations/{org['organizationId']}/tokens", json={"name": "ci"}
    )
    return str(made.body["token"])


async def _flow(server: Server, spec: dict[str, Any], token: str | None = None) -> str:
    made = await server.call("POST", "/flows", json=spec, token=token)
    assert made.status == 201, made.body
    return str(made.body["flowId"])


async def _condition(server: Server, token: str | None, wanted: str) -> dict[str, Any]:
    for _ in range(200):
        run = (await server.call("GET", f"/runs/{SHARED}", token=token)).body
        if run["status"]["conditions"][-1]["condition"] == wanted:
            return dict(run)
        await asyncio.sleep(0.05)
    raise AssertionError(f"run never became {wanted}: {run}")


async def _paused(server: Server) -> None:
    for _ in range(200):
        trace = (await server.call("GET", f"/runs/{SHARED}/trace")).body
        if trace["steps"] and trace["steps"][0]["status"] == "Running":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the run never paused: {trace}")


async def _events(server: Server, token: str | None) -> list[tuple[str, dict[str, Any]]]:
    answer = await server.call("GET", f"/runs/{SHARED}/events", token=token)
    assert answer.status == 200, answer.body
    return [(e.event or "", orjson.loads(e.data)) for e in SSEDecoder().feed(answer.raw)]


async def test_two_organizations_each_have_their_own_run_under_one_id(
    server: Server, start_server: StartServer
) -> None:
    other = await _second_token(server)
    mine, theirs = await _flow(server, PAUSES), await _flow(server, ENDS, other)
    made = await server.call("POST", "/runs", json={"flowId": mine, "runId": SHARED})
    assert made.status == 201, made.body
    await _paused(server)
    made = await server.call("POST", "/runs", json={"flowId": theirs, "runId": SHARED}, token=other)
    assert made.status == 201, made.body  # no 409: nothing tells them the id is used elsewhere
    again = await server.call("POST", "/runs", json={"flowId": mine, "runId": SHARED})
    assert again.status == 409  # an organization's own id is still taken
    await _condition(server, other, "Succeeded")
    assert (await server.call("GET", f"/runs/{SHARED}")).body["spec"]["flowId"] == mine
    for token, flow in ((None, mine), (other, theirs)):
        listed = (await server.call("GET", "/runs", token=token)).body["items"]
        assert [(r["runId"], r["spec"]["flowId"]) for r in listed] == [(SHARED, flow)]
    events = await _events(server, other)
    assert {data["executionId"] for _, data in events} == {SHARED}
    assert [name for name, _ in events if name == "tool_calls_required"] == []
    assert events[-1][1]["output"] == "theirs"
    trace = (await server.call("GET", f"/runs/{SHARED}/trace", token=other)).body
    assert trace["status"] == "Succeeded" and [s["status"] for s in trace["steps"]] == ["Succeeded"]
    # their tool results and their cancel reach their own (finished) run, never mine
    answers = {"toolResults": [{"toolCallId": "nope", "content": "x"}]}
    refused = await server.call("POST", f"/runs/{SHARED}/tool-results", json=answers, token=other)
    assert refused.status == 409, refused.body
    await server.call("POST", f"/runs/{SHARED}/cancel", token=other)
    assert (await _condition(server, other, "Succeeded"))["spec"]["flowId"] == theirs
    await _paused(server)
    cancelled = await server.call("POST", f"/runs/{SHARED}/cancel")
    assert cancelled.body["status"]["conditions"][-1]["condition"] == "Cancelled"
    mine_events = await _events(server, None)
    assert "tool_calls_required" in [name for name, _ in mine_events]
    assert mine_events[-1][1]["status"] == "Cancelled"
    assert (await _condition(server, other, "Succeeded"))["spec"]["flowId"] == theirs
    assert (await server.call("DELETE", f"/runs/{SHARED}", token=other)).status == 200
    assert (await server.call("GET", f"/runs/{SHARED}", token=other)).status == 404
    assert await _events(server, None) == mine_events
    await server.stop()
    restarted = await start_server(server.home)
    kept = await restarted.call("GET", f"/runs/{SHARED}")
    assert kept.body["spec"]["flowId"] == mine and await _events(restarted, None) == mine_events
    assert (await restarted.call("GET", f"/runs/{SHARED}", token=other)).status == 404


_OLD_RUNS = """CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,
    org_id TEXT NOT NULL, flow_id TEXT NOT NULL, condition TEXT NOT NULL,
    spec TEXT NOT NULL, conditions TEXT NOT NULL, log TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL, etag TEXT NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL)"""
_OLD_ENGINE = {
    "engine_runs": """CREATE TABLE engine_runs (
    run_id TEXT PRIMARY KEY, org_id TEXT NOT NULL, flow_id TEXT NOT NULL,
    flow_version TEXT NOT NULL, state TEXT NOT NULL, request BLOB NOT NULL,
    spec BLOB NOT NULL, step_index INTEGER NOT NULL DEFAULT 0,
    outputs BLOB NOT NULL DEFAULT '{}', pause BLOB, usage BLOB, outcome BLOB,
    closed INTEGER NOT NULL DEFAULT 0, started_at INTEGER NOT NULL, ended_at INTEGER)""",
    "engine_steps": """CREATE TABLE engine_steps (
    run_id TEXT NOT NULL, step_id TEXT NOT NULL, idx INTEGER NOT NULL, block TEXT NOT NULL,
    status TEXT NOT NULL, started_at INTEGER, ended_at INTEGER, duration_ms INTEGER,
    input BLOB, output BLOB, error TEXT, usage BLOB, PRIMARY KEY (run_id, step_id))""",
    "engine_answers": """CREATE TABLE engine_answers (
    run_id TEXT NOT NULL, tool_call_id TEXT NOT NULL, result BLOB NOT NULL,
    PRIMARY KEY (run_id, tool_call_id))""",
    "engine_events": """CREATE TABLE engine_events (
    run_id TEXT NOT NULL, first_id INTEGER NOT NULL, last_id INTEGER NOT NULL,
    frames BLOB NOT NULL, terminal INTEGER NOT NULL, settled INTEGER,
    PRIMARY KEY (run_id, first_id)) WITHOUT ROWID""",
}


def _to_the_old_shape(conn: Any) -> None:
    """The tables as a server before per-organization run ids wrote them."""
    conn.execute(
        "DELETE FROM migrations WHERE name IN ('runs-per-organization-1',"
        " 'engine-2-runs-per-organization', 'engine-3-run-owners')"
    )
    for table, create in {"runs": _OLD_RUNS, **_OLD_ENGINE}.items():
        conn.execute(f"ALTER TABLE {table} RENAME TO old_{table}")
        conn.execute(create)
        old = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        kept = ", ".join(old)
        conn.execute(f"INSERT INTO {table} ({kept}) SELECT {kept} FROM old_{table}")
        conn.execute(f"DROP TABLE old_{table}")


@SQLITE_ONLY
async def test_an_older_database_moves_to_per_organization_run_ids(
    server: Server, start_server: StartServer
) -> None:
    flow = await _flow(server, ENDS)
    made = await server.call("POST", "/runs", json={"flowId": flow, "runId": SHARED})
    assert made.status == 201, made.body
    await _condition(server, None, "Succeeded")
    before = await _events(server, None)
    trace = (await server.call("GET", f"/runs/{SHARED}/trace")).body
    await server.app[STORE_KEY].run(_to_the_old_shape)
    await server.stop()
    restarted = await start_server(server.home)
    assert (await restarted.call("GET", f"/runs/{SHARED}")).body["spec"]["flowId"] == flow
    assert await _events(restarted, None) == before
    assert (await restarted.call("GET", f"/runs/{SHARED}/trace")).body == trace
    other = await _second_token(restarted)
    theirs = await _flow(restarted, ENDS, other)
    made = await restarted.call(
        "POST", "/runs", json={"flowId": theirs, "runId": SHARED}, token=other
    )
    assert made.status == 201, made.body
    assert (await restarted.call("DELETE", f"/runs/{SHARED}")).status == 200
    assert (await _condition(restarted, other, "Succeeded"))["spec"]["flowId"] == theirs


async def test_pruning_one_organization_keeps_the_other_one_s_run_of_that_id(
    server: Server,
) -> None:
    other = await _second_token(server)
    for token in (None, other):
        flow = await _flow(server, ENDS, token)
        made = await server.call(
            "POST", "/runs", json={"flowId": flow, "runId": SHARED}, token=token
        )
        assert made.status == 201, made.body
        await _condition(server, token, "Succeeded")
    mine = await _events(server, None)
    await asyncio.sleep(1.2)
    pruned = await server.call("POST", "/retention/prune", json={"olderThan": 1}, token=other)
    assert pruned.status == 200 and pruned.body["runs"] == 1, pruned.body
    assert (await server.call("GET", f"/runs/{SHARED}", token=other)).status == 404
    assert (await server.call("GET", f"/runs/{SHARED}/events", token=other)).status == 404
    assert (await server.call("GET", f"/runs/{SHARED}")).status == 200
    assert await _events(server, None) == mine
