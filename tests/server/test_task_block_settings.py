"""A flow's task block is held to what POST /v1/tasks would refuse, when it is stored;
its env values are never shown, even of a shape the task would refuse."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Server

pytestmark = pytest.mark.anyio

SECRET = "S3CRET-value-9z"


def _flow(settings: dict[str, Any]) -> dict[str, Any]:
    block = {"block": "task", "id": "t", "settings": {"command": "true", **settings}}
    return {"name": "f", "blocks": [block]}


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"env": SECRET}, "blocks[0].settings.env:"),
        ({"env": [SECRET]}, "blocks[0].settings.env:"),
        ({"env": {"K": {"v": SECRET}}}, "blocks[0].settings.env.K:"),
        ({"env": {"K": f"{SECRET}\x00"}}, "blocks[0].settings.env.K:"),
        ({"env": {"A=B": SECRET}}, "blocks[0].settings.env:"),
        ({"name": "abc\u202egpj.exe"}, "blocks[0].settings.name:"),
        ({"name": "x" * 5000}, "blocks[0].settings.name:"),
    ],
)
async def test_what_the_task_would_refuse_is_422_at_store(
    server: Server, settings: dict[str, Any], field: str
) -> None:
    # It was stored, then failed at run time, and an env of the wrong shape came back
    # in clear in flows, runs, traces and the run's error (found by QA).
    answer = await server.call("POST", "/flows", json=_flow(settings))
    assert answer.status == 422, answer.body
    assert answer.body["error"]["message"].startswith(field), answer.body
    assert SECRET not in answer.raw.decode() and len(answer.raw) < 2000
    assert (await server.call("GET", "/flows")).body["items"] == []


async def test_a_templated_name_is_checked_when_the_task_is_made(server: Server) -> None:
    flow = {
        "name": "f",
        "inputs": [{"name": "who"}],
        "blocks": [
            {"block": "task", "id": "t", "settings": {"command": "true", "name": "{{ who }}"}}
        ],
    }
    made = await server.call("POST", "/flows", json=flow)
    assert made.status == 201, made.body
    outcome = await server.call(
        "POST", f"/flows/{made.body['flowId']}/execute", json={"parameters": {"who": "a\u202eb"}}
    )
    assert outcome.body["status"] == "Failed", outcome.body
    assert "settings.name" in outcome.body["error"] and "text-direction" in outcome.body["error"]


async def test_an_overridden_env_of_the_wrong_shape_is_never_shown(server: Server) -> None:
    # An override is checked as the flow's own settings are (QA round 8): refused, and
    # its value is not in the answer, nor in any run (none is made).
    made = await server.call("POST", "/flows", json=_flow({}))
    body = {"trace": True, "blockOverrides": {"t": {"env": SECRET}}}
    outcome = await server.call("POST", f"/flows/{made.body['flowId']}/execute", json=body)
    assert outcome.status == 422, outcome.body
    assert outcome.body["error"]["message"].startswith("blockOverrides.t.settings.env:"), (
        outcome.body
    )
    assert SECRET not in outcome.raw.decode()
    assert (await server.call("GET", "/runs")).body["items"] == []
