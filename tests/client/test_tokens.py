"""``client.tokens`` against the embedded local server: another organization, key secrecy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import vi_flow
from vi_flow import AuthenticationError, PermissionDeniedError

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as c:
        yield c


async def test_an_admin_manages_another_organizations_keys(client: vi_flow.AsyncClient) -> None:
    org = (await client.http.request("POST", "/organizations", json={"name": "b"}))[
        "organizationId"
    ]
    created = await client.tokens.create("deploy", organization_id=org)
    assert created.token not in repr(created) and "deploy" in repr(created)
    assert [t.name for t in await client.tokens.list(organization_id=org)] == ["deploy"]
    assert "deploy" not in [t.name for t in await client.tokens.list()]  # the own organization
    endpoint = await client.http.connection.endpoint()
    async with vi_flow.AsyncClient(base_url=endpoint.base_url, api_key=created.token) as b:
        assert (await b.flows.list()).items == []
        with pytest.raises(PermissionDeniedError, match="admin"):
            await b.tokens.list()  # its own organization, found through whoami
        revoked = await client.tokens.revoke("deploy", organization_id=org)
        assert (revoked.name, revoked.revoked) == ("deploy", 1)
        with pytest.raises(AuthenticationError):
            await b.flows.list()
    assert await client.tokens.list(organization_id=org) == []


async def test_a_key_given_without_an_organization_acts_in_its_own(
    client: vi_flow.AsyncClient,
) -> None:
    endpoint = await client.http.connection.endpoint()
    async with vi_flow.AsyncClient(base_url=endpoint.base_url, api_key=endpoint.api_key) as admin:
        names = [t for t in await admin.tokens.list() if t.admin]
    assert len(names) == 1
