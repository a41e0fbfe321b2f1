"""Sync ``client.flows`` and ``client.runs``: each method is one typed line over the portal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..models import Condition, DeletedFlow, DeletedRun, Flow, FlowSpec, PaginationParams, Run
from .pagination import PaginatedResponse

if TYPE_CHECKING:
    from .._portal import Portal
    from ..resources.flows import AsyncFlows
    from ..resources.runs import AsyncRuns

__all__ = ["Flows", "Runs"]


class Flows:
    """Manage flows (blocking): ``client.flows``. See :class:`vi_flow.resources.flows.AsyncFlows`."""

    def __init__(self, flows: AsyncFlows, portal: Portal) -> None:
        self._async = flows
        self._portal = portal

    def list(
        self, *, pagination: PaginationParams | dict[str, Any] | None = None
    ) -> PaginatedResponse[Flow]:
        """List flows: ``.items`` is the first page; iterate for pages; ``.all_items()`` for all."""
        return PaginatedResponse(self._async.list(pagination=pagination), self._portal)

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


class Runs:
    """Manage runs (blocking): ``client.runs``. See :class:`vi_flow.resources.runs.AsyncRuns`."""

    def __init__(self, runs: AsyncRuns, portal: Portal) -> None:
        self._async = runs
        self._portal = portal

    def list(
        self,
        *,
        flow_id: str | None = None,
        condition: Condition | str | None = None,
        pagination: PaginationParams | dict[str, Any] | None = None,
    ) -> PaginatedResponse[Run]:
        """List runs, optionally of one flow or in one condition."""
        paginator = self._async.list(flow_id=flow_id, condition=condition, pagination=pagination)
        return PaginatedResponse(paginator, self._portal)

    def get(self, run_id: str) -> Run:
        """Get one run."""
        return self._portal.call(self._async.get, run_id)

    def create(
        self,
        flow_id: str,
        *,
        version: str | int = "draft",
        message: str | None = None,
        parameters: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> Run:
        """Start a run of a flow in the background, optionally with a chosen id."""
        return self._portal.call(
            self._async.create,
            flow_id,
            version=version,
            message=message,
            parameters=parameters,
            run_id=run_id,
        )

    def cancel(self, run_id: str) -> Run:
        """Cancel a run."""
        return self._portal.call(self._async.cancel, run_id)

    def delete(self, run_id: str) -> DeletedRun:
        """Delete a finished run."""
        return self._portal.call(self._async.delete, run_id)
