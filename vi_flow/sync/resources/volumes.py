"""Sync ``client.volumes``: each method is one typed line over the portal to :mod:`vi_flow.resources.volumes`."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any, Literal

from ..._pagination import Order
from ...models import PaginationParams
from ...models.tasks import (
    Volume,
)
from .._pagination import PaginatedResponse

if TYPE_CHECKING:
    from ..._portal import Portal
    from ...resources.volumes import AsyncVolumes

__all__ = ["Volumes"]


class Volumes:
    """Manage volumes (blocking): ``client.volumes``; ``client.volumes()`` lists them all."""

    def __init__(self, volumes: AsyncVolumes, portal: Portal) -> None:
        self._async = volumes
        self._portal = portal

    def __call__(self) -> builtins.list[Volume]:
        """List every volume, newest first."""
        return self._portal.call(self._async)

    def create(
        self,
        size_gb: int = 1,
        *,
        name: str | None = None,
        interface: Literal["block", "file"] = "file",
        region: str | None = None,
    ) -> Volume:
        """Create a volume."""
        return self._portal.call(
            self._async.create, size_gb, name=name, interface=interface, region=region
        )

    def list(
        self,
        *,
        pagination: PaginationParams | dict[str, Any] | None = None,
        order: Order = "newest",
    ) -> PaginatedResponse[Volume]:
        """List volumes, newest first (``order="oldest"``: oldest first)."""
        return PaginatedResponse(self._async.list(pagination=pagination, order=order), self._portal)

    def get(self, volume: str) -> Volume:
        """Get a volume by id or name."""
        return self._portal.call(self._async.get, volume)

    def delete(self, volume: str) -> None:
        """Delete a volume by id or name."""
        self._portal.call(self._async.delete, volume)
