"""A server whose stop was accepted takes no new work (503), and still answers reads."""

from __future__ import annotations

import pytest

from vi_flow.server.routes.lifecycle import LIFECYCLE_KEY

from .conftest import Server, spec

pytestmark = pytest.mark.anyio


async def test_once_stopping_changes_are_503_and_reads_go_on(server: Server) -> None:
    # A force stop cancelled what ran when it began, while executes and jobs accepted
    # during it ran on, with no owner once the server was gone (found by QA).
    flow = (await server.call("POST", "/flows", json=spec("f", "a"))).body["flowId"]
    server.app[LIFECYCLE_KEY].stopping = True
    try:
        for method, path, body in (
            ("POST", f"/flows/{flow}/execute", {}),
            ("POST", f"/flows/{flow}/jobs", {}),
            ("POST", "/tasks", {"command": "true"}),
            ("POST", "/flows", spec("g", "a")),
            ("DELETE", f"/flows/{flow}", None),
        ):
            answer = await server.call(method, path, json=body)
            assert answer.status == 503, (path, answer.body)
            assert answer.body["error"]["code"] == "SERVER_STOPPING"
        assert (await server.call("GET", f"/flows/{flow}")).status == 200
        assert (await server.call("GET", "/runs")).body["items"] == []  # nothing was made
        again = await server.call("POST", "/server/shutdown", json={})
        assert again.status != 503  # a second stop request is answered as the first
    finally:
        server.app[LIFECYCLE_KEY].stopping = False
