"""Sync ``client.tokens``: each method is one typed line over the portal to :mod:`vi_flow.resources.tokens`."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from ...models.server import APIToken, CreatedToken, RevokedTokens

if TYPE_CHECKING:
    from ..._portal import Portal
    from ...resources.tokens import AsyncTokens

__all__ = ["Tokens"]


class Tokens:
    """Manage API keys (blocking): ``client.tokens``."""

    def __init__(self, tokens: AsyncTokens, portal: Portal) -> None:
        self._async = tokens
        self._portal = portal

    def list(self, *, organization_id: str | None = None) -> builtins.list[APIToken]:
        """List the organization's API keys: names, never the keys."""
        return self._portal.call(self._async.list, organization_id=organization_id)

    def create(self, name: str, *, organization_id: str | None = None) -> CreatedToken:
        """Create an API key; the answer is the only place the key appears."""
        return self._portal.call(self._async.create, name, organization_id=organization_id)

    def revoke(self, name: str, *, organization_id: str | None = None) -> RevokedTokens:
        """Revoke every key named ``name``; they are refused at once."""
        return self._portal.call(self._async.revoke, name, organization_id=organization_id)
