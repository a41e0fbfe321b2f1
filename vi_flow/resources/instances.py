"""``client.instances``: the instance types the compute provider can run, cheapest first."""

from __future__ import annotations

from ..models import Page
from ..models.common import MAX_PAGE_SIZE
from ..models.limits import check_int
from ..models.tasks import AvailableInstance
from ._base import AsyncResource

__all__ = ["AsyncInstances"]


class AsyncInstances(AsyncResource):
    """Discover instances: ``client.instances``."""

    async def list(
        self,
        *,
        gpu_type: str | None = None,
        max_price: float | None = None,
        min_gpu_memory_gb: int | None = None,
        gpu_count: int | None = None,
        limit: int | None = None,
    ) -> list[AvailableInstance]:
        """List instance types matching every constraint given, cheapest first.

        Args:
            gpu_type: GPU model (``"a100"``).
            max_price: The most per hour.
            min_gpu_memory_gb: The least memory per GPU.
            gpu_count: The least GPUs per instance.
            limit: At most this many.
        """
        if limit is not None:
            check_int("limit", limit, 1, MAX_PAGE_SIZE)
        query = {
            "gpuType": gpu_type,
            "maxPrice": max_price,
            "minGpuMemoryGb": min_gpu_memory_gb,
            "gpuCount": gpu_count,
            "limit": limit,
        }
        page = await self._http.request(
            "GET", "/instances", params=query, cast=Page[AvailableInstance]
        )
        return page.items
