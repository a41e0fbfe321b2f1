"""A flow's task block ``env`` values are write-only, as a task's are (docs/production.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vi_flow.server.state import STORE_KEY

from .conftest import Server

pytestmark = pytest.mark.anyio

SECRET = "S3CRET-value-7q"


def _spec(**env: str) -> dict[str, Any]:
    block = {"block": "task", "id": "fit", "settings": {"command": "true", "env": env}}
    return {"name": "secret", "blocks": [{"block": "template", "id": "hi"}, block]}


def _env(flow_spec: dict[str, Any]) -> dict[str, str]:
    return dict(flow_spec["blocks"][1]["settings"]["env"])


async def _stored_env(server: Server, flow_id: str) -> dict[str, Any]:
    flow = await server.app[STORE_KEY].get_flow("org_default", flow_id)
    return dict(flow.spec.blocks[1].settings["env"])


async def test_answers_show_env_names_only(server: Server) -> None:
    made = await server.call(
        "POST", "/flows", json=_spec(API_KEY=SECRET), headers={"Idempotency-Key": "k1"}
    )
    assert made.status == 201 and _env(made.body["spec"]) == {"API_KEY": "<redacted>"}
    again = await server.call(
        "POST", "/flows", json=_spec(API_KEY=SECRET), headers={"Idempotency-Key": "k1"}
    )
    assert again.body == made.body  # the saved answer is redacted too
    flow_id = made.body["flowId"]
    run = await server.call("POST", "/runs", json={"flowId": flow_id})
    executed = await server.call("POST", f"/flows/{flow_id}/execute", json={"trace": True})
    run_id = executed.body["executionId"]
    for path in (
        f"/flows/{flow_id}",
        "/flows",
        f"/runs/{run.body['runId']}",
        f"/runs/{run_id}",
        "/runs",
        f"/runs/{run_id}/trace",
        f"/runs/{run_id}/events",
    ):
        answer = await server.call("GET", path)
        assert answer.status == 200, (path, answer.body)
        assert SECRET not in answer.raw.decode(), path
    assert SECRET not in json.dumps(run.body) and "<redacted>" in json.dumps(run.body)
    assert await _stored_env(server, flow_id) == {"API_KEY": SECRET}  # what the task gets


async def test_a_spec_sent_back_as_read_keeps_its_values(server: Server) -> None:
    made = await server.call("POST", "/flows", json=_spec(API_KEY=SECRET, MODE="fast"))
    flow_id, read = made.body["flowId"], made.body["spec"]
    read["blocks"][1]["settings"]["env"]["MODE"] = "slow"  # one value changed, one kept
    put = await server.call(
        "PUT", f"/flows/{flow_id}", json=read, headers={"If-Match": made.headers["ETag"]}
    )
    assert put.status == 200, put.body
    assert await _stored_env(server, flow_id) == {"API_KEY": SECRET, "MODE": "slow"}
    read["blocks"][1]["settings"]["env"]["NEW"] = "<redacted>"
    unknown = await server.call("PUT", f"/flows/{flow_id}", json=read)
    assert unknown.status == 422, unknown.body
    assert unknown.body["error"]["message"].startswith("blocks[1].settings.env.NEW:")
    fresh = await server.call("POST", "/flows", json=_spec(TOKEN="<redacted>"))
    assert fresh.status == 422 and "stands for the value stored before" in fresh.raw.decode()
    assert await _stored_env(server, flow_id) == {"API_KEY": SECRET, "MODE": "slow"}
