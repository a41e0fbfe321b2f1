"""The OpenAPI document tells the truth: bodies, answers, statuses and media types."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import Server, spec

pytestmark = pytest.mark.anyio


async def _doc(server: Server) -> dict[str, Any]:
    answer = await server.call("GET", "/openapi.json", token="")
    assert answer.status == 200
    return dict(answer.body)


def _schema(doc: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    content = doc["paths"][path][method]["responses"][status]["content"]
    return dict(content["application/json"]["schema"])


def _component(doc: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    return dict(doc["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]])


async def test_bodies_statuses_and_media_types_are_declared(server: Server) -> None:
    doc = await _doc(server)
    paths = doc["paths"]
    assert "requestBody" in paths["/v1/flows"]["post"]
    assert "201" in paths["/v1/flows"]["post"]["responses"]
    assert "202" in paths["/v1/flows/{flowId}/jobs"]["post"]["responses"]
    assert "201" in paths["/v1/tasks"]["post"]["responses"]
    for path, method in (("/v1/runs/{runId}/events", "get"), ("/v1/flows/{flowId}/events", "post")):
        assert "text/event-stream" in paths[path][method]["responses"]["200"]["content"]
    download = paths["/v1/runs/{runId}/artifacts/{path}"]["get"]["responses"]["200"]
    assert "application/octet-stream" in download["content"]
    assert paths["/v1/health"]["get"]["security"] == []
    assert "security" not in paths["/v1/flows"]["get"]
    names = [p["name"] for p in paths["/v1/flows"]["get"]["parameters"]]
    assert names == ["pageSize", "pageToken", "order", "X-Request-Id"]
    bodiless = {("post", "/v1/flows/{flowId}/publish"), ("post", "/v1/runs/{runId}/cancel")}
    for path, item in paths.items():
        for method, op in item.items():
            if method in ("post", "put") and (method, path) not in bodiless:
                assert "requestBody" in op, (method, path)


async def test_every_reference_resolves(server: Server) -> None:
    doc = await _doc(server)
    text = json.dumps(doc)
    refs = {part.split('"', 1)[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs and refs <= set(doc["components"]["schemas"])


async def test_the_schemas_name_what_the_server_answers(server: Server) -> None:
    doc = await _doc(server)
    flow = (await server.call("POST", "/flows", json=spec("f", "a"))).body
    flow_schema = _component(doc, _schema(doc, "/v1/flows", "post", "201"))
    assert set(flow) == set(flow_schema["properties"])
    assert set(flow_schema["required"]) <= set(flow)
    spec_schema = _component(doc, flow_schema["properties"]["spec"])
    assert set(flow["spec"]) == set(spec_schema["properties"])
    run = (await server.call("POST", "/runs", json={"flowId": flow["flowId"]})).body
    run_schema = _component(doc, _schema(doc, "/v1/runs/{runId}", "get", "200"))
    assert set(run) == set(run_schema["properties"])
    page = _schema(doc, "/v1/runs", "get", "200")
    assert page["required"] == ["items", "nextPage"]


_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
    "array": list,
    "object": dict,
}


def _violations(doc: dict[str, Any], schema: dict[str, Any], value: Any, at: str) -> list[str]:
    """What ``value`` breaks of ``schema`` (the subset of JSON Schema the document uses)."""
    if "$ref" in schema:
        return _violations(doc, _component(doc, schema), value, at)
    if "anyOf" in schema:
        options = [_violations(doc, s, value, at) for s in schema["anyOf"]]
        return [] if any(not o for o in options) else [f"{at}: matches no anyOf option"]
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(value, _TYPES[kind]) and not (
            kind in ("integer", "number") and value is True
        )
        if not ok or (kind in ("integer", "number") and isinstance(value, bool)):
            return [f"{at}: expected {kind}, got {value!r}"[:200]]
    found: list[str] = []
    if isinstance(value, dict):
        found += [f"{at}.{n}: required" for n in schema.get("required", []) if n not in value]
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                found += _violations(doc, sub, value[name], f"{at}.{name}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                found += _violations(doc, extra, item, f"{at}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += _violations(doc, schema["items"], item, f"{at}[{i}]")
    return found


async def test_real_answers_match_their_schemas(server: Server) -> None:
    doc = await _doc(server)
    flow = await server.call("POST", "/flows", json=spec("f", "a", "b"))
    flow_id = flow.body["flowId"]
    run_id = (await server.call("POST", f"/flows/{flow_id}/execute", json={})).body["executionId"]
    job = await server.call("POST", f"/flows/{flow_id}/jobs", json={})
    volume = await server.call("POST", "/volumes", json={"sizeGb": 1, "name": "v"})
    answers = [
        ("/v1/flows", "post", "201", flow),
        ("/v1/flows/{flowId}/jobs", "post", "202", job),
        ("/v1/volumes", "post", "201", volume),
        ("/v1/flows", "get", "200", await server.call("GET", "/flows")),
        ("/v1/runs", "get", "200", await server.call("GET", "/runs")),
        ("/v1/runs/{runId}/trace", "get", "200", await server.call("GET", f"/runs/{run_id}/trace")),
        ("/v1/volumes", "get", "200", await server.call("GET", "/volumes")),
        ("/v1/instances", "get", "200", await server.call("GET", "/instances")),
        ("/v1/health", "get", "200", await server.call("GET", "/health")),
    ]
    for path, method, status, answer in answers:
        assert str(answer.status) == status, (path, answer.body)
        schema = _schema(doc, path, method, status)
        assert _violations(doc, schema, answer.body, path) == []


async def test_queries_headers_events_and_links_are_declared(server: Server) -> None:
    paths = (await _doc(server))["paths"]

    def names(path: str, method: str, where: str) -> set[str]:
        return {p["name"] for p in paths[path][method]["parameters"] if p["in"] == where}

    assert {"flowId", "condition"} <= names("/v1/runs", "get", "query")
    assert {"earliestStartTime", "durationHours", "gpu"} <= names(
        "/v1/reservations/availability", "get", "query"
    )
    assert {"status", "limit"} <= names("/v1/tasks", "get", "query")
    assert "Last-Event-ID" in names("/v1/runs/{runId}/events", "get", "header")
    assert "If-Match" in names("/v1/flows/{flowId}", "put", "header")
    for path in ("/v1/flows", "/v1/runs", "/v1/tasks", "/v1/volumes", "/v1/reservations"):
        assert "Idempotency-Key" in names(path, "post", "header"), path
    for path, method in (("/v1/flows/{flowId}", "put"), ("/v1/volumes/{volumeId}", "delete")):
        assert "Idempotency-Key" in names(path, method, "header"), (path, method)
    assert "Idempotency-Key" not in names("/v1/flows/{flowId}", "get", "header")
    created = paths["/v1/flows"]["post"]["responses"]["201"]
    assert {"X-Request-Id", "ETag", "Idempotent-Replayed"} <= set(created["headers"])
    targets = {link["operationId"] for link in created["links"].values()}
    assert {"get_v1_flows_flowId", "delete_v1_flows_flowId", "post_v1_flows_flowId_execute"} <= (
        targets
    )
    stream = paths["/v1/runs/{runId}/events"]["get"]["responses"]["200"]
    assert "X-Heartbeat-Interval" in stream["headers"]
    events = stream["content"]["text/event-stream"]["schema"]["oneOf"]
    kinds = {e["properties"]["event"]["const"] for e in events}
    assert {"run_started", "step_completed", "tool_calls_required", "flow_completed"} <= kinds
    data = next(e for e in events if e["properties"]["event"]["const"] == "flow_completed")
    assert data["properties"]["data"]["contentMediaType"] == "application/json"
    execute = paths["/v1/flows/{flowId}/execute"]["post"]["responses"]["200"]
    assert execute["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ExecutionOutcome"
    }
    assert not [p for p in paths if not p.startswith("/v1/")]  # the console's pages are not API


async def test_bodies_say_what_the_server_refuses(server: Server) -> None:
    doc = await _doc(server)
    schemas, paths = doc["components"]["schemas"], doc["paths"]
    blocks = {v["properties"]["block"]["const"]: v for v in schemas["FlowBlock"]["oneOf"]}
    assert {"template", "task", "tool", "llm"} <= set(blocks)
    template = blocks["template"]["properties"]["settings"]
    assert "template" in template["properties"] and template["additionalProperties"] is False
    assert schemas["TaskConfig"]["required"] == ["command"]
    assert schemas["VolumeRequest"]["properties"]["sizeGb"]["minimum"] == 1
    created = paths["/v1/organizations"]["post"]["requestBody"]
    assert created["required"] and created["content"]["application/json"]["schema"]["required"]
    name = schemas["FlowSpec"]["properties"]["name"]
    assert name["minLength"] == 1 and name["maxLength"] == 256
    flow = await server.call("POST", "/flows", json={"name": " ", "blocks": []})
    assert flow.status == 422  # blank, as the pattern says
