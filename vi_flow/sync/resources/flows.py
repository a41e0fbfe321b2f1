"""Sync ``client.flows``: each method is one typed line over the portal to :mod:`vi_flow.resources.flows`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._pagination import Order
from ...models import DeletedFlow, Flow, FlowSpec, PaginationParams
from .._pagination import PaginatedResponse

if TYPE_CHECKING:
    from ..._portal import Portal
    from ...resources.flows import AsyncFlows

__all__ = ["Flows"]


class Flows:
    """Manage flows (blocking): ``client.flows``. See :class:`vi_flow.resources.flows.AsyncFlows`."""

    def __init__(self, flows: AsyncFlows, portal: Portal) -> None:
        self._async = flows
        self._portal = portal

    def list(
        self,
        pagination: PaginationParams | dict[str, Any] | None = None,
        *,
        order: Order = "newest",
    ) -> PaginatedResponse[Flow]:
        """List flows, newest first: ``.items`` is the first page; ``.all_items()`` for all."""
        return PaginatedResponse(self._async.list(pagination=pagination, order=order), self._portal)

    def get(self, flow_id: str) -> Flow:
        """Get one flow (``FlowNotFoundError`` when missing)."""
        return self._portal.call(self._async.get, flow_id)

    def create(self, spec: FlowSpec | dict[str, Any], *, flow_id: str | None = None) -> Flow:
        """Create a flow from a ``FlowSpec`` or a dict, optionally with a chosen id."""
        return self._portal.call(self._async.create, spec, flow_id=flow_id)

    def update(
        self, flow_id: str, spec: FlowSpec | dict[str, Any], *, etag: str | None = None
    ) -> Flow:
        """Replace a flow's draft spec, guarded by ``etag`` when given."""
        return self._portal.call(self._async.update, flow_id, spec, etag=etag)

    def delete(self, flow_id: str) -> DeletedFlow:
        """Delete a flow."""
        return self._portal.call(self._async.delete, flow_id)

    def publish(self, flow_id: str) -> int:
        """Publish the draft as a new version; returns its number."""
        return self._portal.call(self._async.publish, flow_id)

    def promote(self, flow_id: str, version: int) -> Flow:
        """Make a published version the production version."""
        return self._portal.call(self._async.promote, flow_id, version)
