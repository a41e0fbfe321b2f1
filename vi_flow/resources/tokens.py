"""``client.tokens``: list, create and revoke an organization's API keys (admin keys only).

The server stores a key hashed, so :meth:`AsyncTokens.create` is the one answer that holds
it; listing shows names only. Revoking a name refuses its keys at once, in every server
process. Each call acts in the client's organization unless ``organization_id`` names
another (an admin key may manage any organization's keys).
"""

from __future__ import annotations

import attrs

from .._http import path
from ..models import Page
from ..models.server import APIToken, CreatedToken, RevokedTokens
from ._base import AsyncResource

__all__ = ["AsyncTokens"]


@attrs.frozen
class _TokenRequest:
    name: str


class AsyncTokens(AsyncResource):
    """Manage API keys: ``client.tokens``."""

    async def list(self, *, organization_id: str | None = None) -> list[APIToken]:
        """List the organization's API keys: names and creation times, never the keys.

        Raises:
            PermissionDeniedError: The client's key is not an admin key.
            NotFoundError: No such organization.
        """
        url = await self._tokens_path(organization_id)
        page = await self._http.request("GET", url, cast=Page[APIToken])
        return page.items

    async def create(self, name: str, *, organization_id: str | None = None) -> CreatedToken:
        """Create an API key named ``name``; the answer is the only place the key appears.

        Not idempotent: the server keeps no answer to replay (it would hold the key), so
        a retry after a lost answer makes a second key of that name that no one has
        seen; :meth:`revoke` of the name revokes every key of it.

        Raises:
            PermissionDeniedError: The client's key is not an admin key.
            UnprocessableEntityError: ``name`` is empty.
        """
        url = await self._tokens_path(organization_id)
        body = _TokenRequest(name=name)
        return await self._http.request("POST", url, json=body, cast=CreatedToken)

    async def revoke(self, name: str, *, organization_id: str | None = None) -> RevokedTokens:
        """Revoke every key named ``name``; they are refused from the next request on.

        Raises:
            PermissionDeniedError: The client's key is not an admin key.
            NotFoundError: No key has that name.
            ConflictError: ``name`` is the admin token's (replace ``<home>/admin-token``).
        """
        url = await self._tokens_path(organization_id) + path("/{}", name)
        return await self._http.request("DELETE", url, cast=RevokedTokens)

    async def _tokens_path(self, organization_id: str | None) -> str:
        org = organization_id or await self._own_organization()
        return path("/organizations/{}/tokens", org)

    async def _own_organization(self) -> str:
        endpoint = await self._http.connection.endpoint()
        if endpoint.organization_id:
            return endpoint.organization_id
        me = await self._http.request("GET", "/whoami")
        return str(me["organizationId"])
