"""``client.volumes``: create, list, get and delete persistent volumes."""

from __future__ import annotations

import builtins
from typing import Any, Literal

from .._http import path
from .._pagination import AsyncPaginator, Order, check_order
from ..models import Page, PaginationParams
from ..models.limits import MAX_VOLUME_GB, check_int
from ..models.tasks import Volume, VolumeRequest
from ._base import AsyncResource

__all__ = ["AsyncVolumes"]


class AsyncVolumes(AsyncResource):
    """Manage volumes: ``client.volumes``.

    Calling it (``await client.volumes()``) lists every volume, as the seed's
    ``Client.volumes()`` does.
    """

    async def __call__(self) -> builtins.list[Volume]:
        """List every volume, newest first."""
        return [v async for v in self.list().all_items()]

    async def create(
        self,
        size_gb: int = 1,
        *,
        name: str | None = None,
        interface: Literal["block", "file"] = "file",
        region: str | None = None,
    ) -> Volume:
        """Create a volume.

        Args:
            size_gb: Capacity in GB, 1 to 65,536.
            name: Display name (letters, digits, ``.``, ``_``, ``-``); used as ``volume://name``.
            interface: ``"file"`` (multi-attach) or ``"block"`` (exclusive attach).
            region: Where; the provider's default when omitted.

        Raises:
            ValueError: ``size_gb`` is not an integer from 1 to 65,536 (nothing is sent).
            UnprocessableEntityError: A bad name (``/`` or ``..`` in it).
            ConflictError: The name is taken in this organization.
        """
        check_int("size_gb", size_gb, 1, MAX_VOLUME_GB)  # the server's limit, not any int
        body = VolumeRequest(size_gb=size_gb, name=name, interface=interface, region=region)
        return await self._http.request("POST", "/volumes", json=body, cast=Volume)

    def list(
        self,
        *,
        pagination: PaginationParams | dict[str, Any] | None = None,
        order: Order = "newest",
    ) -> AsyncPaginator[Volume]:
        """List volumes, newest first (``order="oldest"`` for oldest first)."""
        params = PaginationParams.coerce(pagination)
        chosen = check_order(order)

        async def fetch(p: PaginationParams) -> Page[Volume]:
            query = {"pageSize": p.page_size, "pageToken": p.page_token, "order": chosen}
            return await self._http.request("GET", "/volumes", params=query, cast=Page[Volume])

        return AsyncPaginator(fetch, params)

    async def get(self, volume: str) -> Volume:
        """Get a volume by id or name (``NotFoundError`` when missing)."""
        return await self._http.request("GET", path("/volumes/{}", volume), cast=Volume)

    async def delete(self, volume: str) -> None:
        """Delete a volume by id or name, permanently.

        Raises:
            ConflictError: A task that has not ended mounts it (the message names it).
        """
        await self._http.request("DELETE", path("/volumes/{}", volume))
