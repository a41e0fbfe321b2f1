"""Sync ``client.instances``: each method is one typed line over the portal to :mod:`vi_flow.resources.instances`."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from ...models.tasks import (
    AvailableInstance,
)

if TYPE_CHECKING:
    from ..._portal import Portal
    from ...resources.instances import AsyncInstances

__all__ = ["Instances"]


class Instances:
    """Discover instances (blocking): ``client.instances``."""

    def __init__(self, instances: AsyncInstances, portal: Portal) -> None:
        self._async = instances
        self._portal = portal

    def list(
        self,
        *,
        gpu_type: str | None = None,
        max_price: float | None = None,
        min_gpu_memory_gb: int | None = None,
        gpu_count: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[AvailableInstance]:
        """List instance types matching every constraint given, cheapest first."""
        return self._portal.call(
            self._async.list,
            gpu_type=gpu_type,
            max_price=max_price,
            min_gpu_memory_gb=min_gpu_memory_gb,
            gpu_count=gpu_count,
            limit=limit,
        )
