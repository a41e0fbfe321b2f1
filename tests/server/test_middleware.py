"""Request ids, JSON error bodies and the OpenAPI document."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from .conftest import Server, StartServer

pytestmark = pytest.mark.anyio


async def test_every_response_has_a_request_id(server: Server) -> None:
    answers = [
        await server.call("GET", "/flows"),
        await server.call("GET", "/flows/flow_nope"),
        await server.call("GET", "/flows", token="bad"),
        await server.call("GET", "/nowhere"),
        await server.call("PATCH", "/flows"),
        await server.call("GET", "/openapi.json", token=""),
    ]
    ids = [a.headers["X-Request-Id"] for a in answers]
    assert all(i.startswith("req_") for i in ids)
    assert len(set(ids)) == len(ids)
    for answer in answers[1:5]:
        assert answer.body["error"]["requestId"] == answer.headers["X-Request-Id"]


async def test_a_client_request_id_is_echoed(server: Server) -> None:
    answer = await server.call("GET", "/flows/flow_x", headers={"X-Request-Id": "abc-123"})
    assert answer.headers["X-Request-Id"] == "abc-123"
    assert answer.body["error"]["requestId"] == "abc-123"
    odd = await server.call("GET", "/flows", headers={"X-Request-Id": "bad id\twith tabs"})
    assert odd.headers["X-Request-Id"].startswith("req_")


async def test_unknown_route_and_method_are_json_errors(server: Server) -> None:
    route = await server.call("GET", "/nowhere")
    assert route.status == 404 and route.body["error"]["code"] == "NOT_FOUND"
    method = await server.call("PATCH", "/flows")
    assert method.status == 405
    assert "GET" in method.headers["Allow"]


def _add_broken_routes(app: web.Application) -> None:
    async def boom(request: web.Request) -> web.Response:
        """Fail on purpose."""
        raise RuntimeError("secret detail")

    async def stream(request: web.Request) -> web.StreamResponse:
        """Stream two SSE frames."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"id: 1\nevent: ping\ndata: {}\n\n")
        await resp.write_eof()
        return resp

    app.router.add_get("/v1/boom", boom)
    app.router.add_get("/v1/stream", stream)


async def test_unexpected_errors_are_500_with_the_request_id(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(prepare=_add_broken_routes)
    with caplog.at_level(logging.ERROR, logger="vi_flow.server"):
        answer = await server.call("GET", "/boom")
    assert answer.status == 500
    error = answer.body["error"]
    assert error["code"] == "INTERNAL"
    assert error["requestId"] == answer.headers["X-Request-Id"]
    assert "secret detail" not in error["message"]
    assert answer.headers["X-Request-Id"] in caplog.text


async def test_streamed_responses_have_a_request_id(start_server: StartServer) -> None:
    server = await start_server(prepare=_add_broken_routes)
    async with server.session.get(
        f"{server.root}/v1/stream", headers={"Authorization": f"Bearer {server.token}"}
    ) as resp:
        assert resp.headers["X-Request-Id"].startswith("req_")
        assert b"event: ping" in await resp.read()


async def test_openapi_lists_every_route(start_server: StartServer) -> None:
    server = await start_server(prepare=_add_broken_routes)
    doc = (await server.call("GET", "/openapi.json", token="")).body
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    for path, method in [
        ("/v1/flows", "get"),
        ("/v1/flows", "post"),
        ("/v1/flows/{flowId}", "put"),
        ("/v1/flows/{flowId}/publish", "post"),
        ("/v1/runs/{runId}/cancel", "post"),
        ("/v1/whoami", "get"),
        ("/v1/boom", "get"),
    ]:
        assert method in paths[path], (path, method)
    assert paths["/v1/boom"]["get"]["summary"] == "Fail on purpose."
    assert paths["/v1/flows"]["post"]["summary"].startswith("Create a flow")
    assert paths["/v1/flows/{flowId}"]["get"]["parameters"][0]["name"] == "flowId"
    ops = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ops) == len(set(ops))
