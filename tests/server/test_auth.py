"""Bearer tokens, organizations and isolation between them."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from ..live_server import state_sql
from .conftest import Server, spec

pytestmark = pytest.mark.anyio


async def _second_org(server: Server) -> tuple[str, str]:
    org = await server.call("POST", "/organizations", json={"name": "acme"})
    assert org.status == 201
    org_id = org.body["organizationId"]
    token = await server.call("POST", f"/organizations/{org_id}/tokens", json={"name": "ci"})
    assert token.status == 201
    return org_id, token.body["token"]


async def test_admin_token_file_is_private(server: Server) -> None:
    mode = stat.S_IMODE(os.stat(server.home / "admin-token").st_mode)
    assert mode == 0o600
    rows = state_sql(server.home, "SELECT * FROM tokens")
    assert rows and not any(server.token in str(value) for row in rows for value in row)
    if not os.environ.get("VI_FLOW_DATABASE"):  # a file: not even a free page holds it
        assert server.token.encode() not in (server.home / "state.db").read_bytes()


@pytest.mark.parametrize("token", ["", "vf_wrong"])
async def test_missing_or_wrong_token_is_401(server: Server, token: str) -> None:
    answer = await server.call("GET", "/flows", token=token)
    assert answer.status == 401
    assert answer.body["error"]["code"] == "UNAUTHENTICATED"
    assert server.token not in str(answer.body)


async def test_basic_scheme_is_401(server: Server) -> None:
    answer = await server.call("GET", "/flows", token="", headers={"Authorization": "Basic abc"})
    assert answer.status == 401


async def test_whoami(server: Server) -> None:
    me = await server.call("GET", "/whoami")
    assert me.body == {"organizationId": "org_default", "tokenName": "admin", "admin": True}


async def test_other_organization_cannot_see_flows(server: Server) -> None:
    org_id, token = await _second_org(server)
    mine = (await server.call("POST", "/flows", json=spec("secret"))).body["flowId"]
    assert (await server.call("GET", "/whoami", token=token)).body["organizationId"] == org_id
    theirs = await server.call("GET", f"/flows/{mine}", token=token)
    assert theirs.status == 404
    assert theirs.body["error"]["code"] == "FLOW_NOT_FOUND"
    assert (await server.call("GET", "/flows", token=token)).body["items"] == []
    for method in ("PUT", "DELETE"):
        assert (await server.call(method, f"/flows/{mine}", json=spec(), token=token)).status == 404
    assert (await server.call("GET", f"/flows/{mine}")).status == 200


async def test_other_organization_cannot_see_runs(server: Server) -> None:
    _, token = await _second_org(server)
    flow = (await server.call("POST", "/flows", json=spec("f"))).body["flowId"]
    run = (await server.call("POST", "/runs", json={"flowId": flow})).body["runId"]
    assert (await server.call("GET", f"/runs/{run}", token=token)).status == 404
    assert (await server.call("POST", "/runs", json={"flowId": flow}, token=token)).status == 404
    assert (await server.call("GET", "/runs", token=token)).body["items"] == []


async def test_organization_header_must_match_the_token(server: Server) -> None:
    ok = await server.call("GET", "/flows", headers={"Organization-Id": "org_default"})
    assert ok.status == 200
    other = await server.call("GET", "/flows", headers={"Organization-Id": "org_someone"})
    assert other.status == 404
    assert other.body["error"]["code"] == "NOT_FOUND"


async def test_only_admins_manage_organizations(server: Server) -> None:
    _, token = await _second_org(server)
    denied = await server.call("POST", "/organizations", json={"name": "x"}, token=token)
    assert denied.status == 403
    assert denied.body["error"]["code"] == "PERMISSION_DENIED"
    no_org = await server.call("POST", "/organizations/org_missing/tokens", json={"name": "x"})
    assert no_org.status == 404
    unnamed = await server.call("POST", "/organizations", json={"name": " "})
    assert unnamed.status == 422


async def test_openapi_and_health_need_no_token(server: Server) -> None:
    assert (await server.call("GET", "/openapi.json", token="")).status == 200
    assert (await server.call("GET", "/health", token="")).body == {"status": "ok"}
    ready = await server.call("GET", "/health?ready=true", token="")  # its database answers
    assert (ready.status, ready.body) == (200, {"status": "ok"})
    unclear = await server.call("GET", "/health?ready=maybe", token="")
    assert unclear.status == 422 and "ready" in unclear.body["error"]["message"], unclear.body


async def test_a_revoked_token_is_refused_at_once(server: Server) -> None:
    """Issue 11: tokens can be listed (names only) and revoked; the cache forgets them."""
    org_id, token = await _second_org(server)
    assert (await server.call("GET", "/flows", token=token)).status == 200  # now cached
    listed = await server.call("GET", f"/organizations/{org_id}/tokens")
    assert [t["name"] for t in listed.body["items"]] == ["ci"]
    assert token not in str(listed.body)
    assert (await server.call("GET", f"/organizations/{org_id}/tokens", token=token)).status == 403
    refused = await server.call("DELETE", f"/organizations/{org_id}/tokens/ci", token=token)
    assert refused.status == 403
    revoked = await server.call("DELETE", f"/organizations/{org_id}/tokens/ci")
    assert revoked.status == 200 and revoked.body == {"name": "ci", "revoked": 1}
    gone = await server.call("GET", "/flows", token=token)
    assert gone.status == 401 and gone.body["error"]["code"] == "UNAUTHENTICATED"
    again = await server.call("DELETE", f"/organizations/{org_id}/tokens/ci")
    assert again.status == 404
    whoami = (await server.call("GET", "/whoami")).body
    admin = await server.call(
        "DELETE", f"/organizations/{whoami['organizationId']}/tokens/{whoami['tokenName']}"
    )
    assert admin.status == 409 and "admin token" in admin.body["error"]["message"]


async def test_a_token_deleted_behind_the_server_stops_working_within_a_second(
    server: Server,
) -> None:
    """Another replica revoking it (here: the row deleted directly) is seen within 1 s."""
    import asyncio

    org_id, token = await _second_org(server)
    assert (await server.call("GET", "/flows", token=token)).status == 200
    state_sql(server.home, "DELETE FROM tokens WHERE org_id = ?", org_id)
    await asyncio.sleep(1.1)
    assert (await server.call("GET", "/flows", token=token)).status == 401


async def _raw(server: Server, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send one request written byte for byte; the status and the body of the answer."""
    host, port = server.root.split("//")[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        length = f"Content-Length: {len(body)}\r\n".encode()
        writer.write(head + length + b"Connection: close\r\n\r\n" + body)
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_header_bytes_that_are_not_utf8_are_refused_not_500(server: Server) -> None:
    # Found by QA: raw bytes in Authorization or Idempotency-Key answered 500 (the server
    # encoded the header back to strict UTF-8).
    bad_token = b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
    status, body = await _raw(server, bad_token)
    assert status == 401 and b"UNAUTHENTICATED" in body, body
    auth = f"Authorization: Bearer {server.token}\r\n".encode()
    head = b"POST /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth
    status, body = await _raw(server, head + b"Idempotency-Key: k\xff\xfe\r\n", b'{"name": "k"}')
    assert status == 422 and b"Idempotency-Key" in body, body
    assert (await server.call("GET", "/flows")).body["items"] == []  # nothing was made


async def test_two_authorization_headers_are_refused(server: Server) -> None:
    # Found by QA: the first of two won; a proxy picking the other acts as someone else.
    _, other = await _second_org(server)
    two = f"Authorization: Bearer {server.token}\r\nAuthorization: Bearer {other}\r\n"
    status, body = await _raw(server, b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\n" + two.encode())
    assert status == 400 and b"more than one Authorization" in body, body


async def test_two_organization_id_headers_are_refused(server: Server) -> None:
    # QA: the first of two won (org_default then another: 200; the other way round: 404)
    org, _ = await _second_org(server)
    auth = f"Authorization: Bearer {server.token}\r\n".encode()
    for first, second in (("org_default", org), (org, "org_default")):
        two = f"Organization-Id: {first}\r\nOrganization-Id: {second}\r\n".encode()
        status, body = await _raw(server, b"GET /v1/flows HTTP/1.1\r\nHost: x\r\n" + auth + two)
        assert status == 400 and b"more than one Organization-Id" in body, body
    one = b"Organization-Id: org_default\r\n"
    status, _ = await _raw(server, b"GET /v1/flows HTTP/1.1\r\nHost: x\r\n" + auth + one)
    assert status == 200
