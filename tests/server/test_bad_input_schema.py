"""The server refuses what its OpenAPI document refuses (issue 12, Schemathesis's checks).

Each case is a request the document calls invalid, sent to a real server over HTTP: it
must be a 4xx naming the field, and nothing may be made. Also what the document says
beyond bodies: an ``Idempotency-Key`` covers the query, and ``Allow`` lists only the
methods a path has.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Server, spec

pytestmark = pytest.mark.anyio


def _refused(answer: Any, field: str, status: int = 422) -> None:
    assert answer.status == status, answer.body
    assert answer.body["error"]["message"].startswith(field), answer.body


@pytest.mark.parametrize("name", [{}, 3, "a\x0fb", " "])
async def test_a_token_name_is_a_string_without_control_characters(
    server: Server, name: object
) -> None:
    org = (await server.call("POST", "/organizations", json={"name": "o"})).body["organizationId"]
    path = f"/organizations/{org}/tokens"
    _refused(await server.call("POST", path, json={"name": name}), "name")
    assert (await server.call("GET", path)).body["items"] == []


@pytest.mark.parametrize(
    "name",
    ["invoice\u202egpj.exe", "a\u2067b", "c\x85d", "d\u200fe", "f\u2028g", " \u3000",
     "deploy\u200b-prod", "deploy\u2060-prod", "deploy\u00ad-prod", "\ufeffdeploy"],
)  # fmt: skip
async def test_names_hold_no_direction_or_c1_controls(server: Server, name: str) -> None:
    # A right-to-left override in a name turned what followed it around in the console
    # ("invoice\u202egpj.exe" shows as "invoiceexe.jpg"; found by QA). A right-to-left mark
    # does it too; a line separator breaks a name shown on one line; a blank name names
    # nothing (a task's was accepted).
    _refused(await server.call("POST", "/flows", json={**spec("f", "a"), "name": name}), "name")
    task = await server.call("POST", "/tasks", json={"command": "true", "name": name})
    _refused(task, "name")
    _refused(await server.call("POST", "/volumes", json={"name": name}), "name")
    assert (await server.call("GET", "/flows")).body["items"] == []
    fine = await server.call("POST", "/flows", json={**spec("f", "a"), "name": "مرحبا שלום"})
    assert fine.status == 201, fine.body  # right-to-left text itself is welcome
    joined = await server.call(
        "POST", "/flows", json={**spec("f", "a"), "name": "👩\u200d💻 می\u200cخواهم"}
    )
    assert joined.status == 201, joined.body  # and the joiners emoji and scripts need


@pytest.mark.parametrize("description", [{}, 3, ["a"]])
async def test_a_scalar_of_another_json_type_is_refused_not_converted(
    server: Server, description: object
) -> None:
    body = {**spec("f", "a"), "inputs": [{"name": "x", "description": description}]}
    _refused(await server.call("POST", "/flows", json=body), "inputs[0].description")
    _refused(await server.call("POST", "/tasks", json={"command": "true", "cpus": "2"}), "cpus")
    assert (await server.call("GET", "/flows")).body["items"] == []


async def test_bodies_must_be_json_objects(server: Server) -> None:
    _refused(await server.call("POST", "/console/sign-in", json=[None, None]), "body")
    flow = (await server.call("POST", "/flows", json=spec("f", "a"))).body["flowId"]
    answer = await server.call(
        "POST", f"/flows/{flow}/jobs", data=b"\x0c", headers={"Content-Type": "application/json"}
    )
    assert answer.status == 400, answer.body  # a form feed is not JSON's whitespace
    assert (await server.call("GET", "/runs")).body["items"] == []


async def test_a_bad_cancel_body_is_refused_for_a_finished_task_too(server: Server) -> None:
    task = (await server.call("POST", "/tasks", json={"command": "true"})).body["taskId"]
    path = f"/tasks/{task}/cancel"
    _refused(await server.call("POST", path, json={"force": {}}), "force")
    _refused(await server.call("POST", path, json={"gracePeriod": 1e54}), "gracePeriod")
    answer = await server.call("GET", f"/tasks/{task}/logs", headers={"Last-Event-ID": "x"})
    _refused(answer, "Last-Event-ID")
    for query in ({"since": "-1"}, {"follow": "maybe"}, {"stream": "stdin"}):
        answer = await server.call("GET", f"/tasks/{task}/logs", params={"follow": "1", **query})
        _refused(answer, next(iter(query)))  # the stream's parameters: 422 like the rest


async def test_an_idempotency_key_covers_the_query(server: Server) -> None:
    key = {"Idempotency-Key": "k1"}
    first = await server.call(
        "POST", "/flows", json=spec("f", "a"), params={"flowId": "flow_one"}, headers=key
    )
    assert first.status == 201, first.body
    again = await server.call(
        "POST", "/flows", json=spec("f", "a"), params={"flowId": "\x84"}, headers=key
    )
    assert again.status == 422, again.body  # not a replay of flow_one's answer


async def test_allow_lists_only_the_methods_of_the_path(server: Server) -> None:
    answer = await server.call("DELETE", "/reservations/availability")
    assert answer.status == 405, answer.body
    assert answer.headers["Allow"] == "GET,HEAD"  # a GET route answers HEAD too
