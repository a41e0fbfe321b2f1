"""Sync ``client.runs``: each method is one typed line over the portal to :mod:`vi_flow.resources.runs`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._pagination import Order
from ...models import Condition, DeletedRun, PaginationParams, Run
from ...models.retention import PruneResult
from .._pagination import PaginatedResponse

if TYPE_CHECKING:
    from ..._portal import Portal
    from ...resources.runs import AsyncRuns

__all__ = ["Runs"]


class Runs:
    """Manage runs (blocking): ``client.runs``. See :class:`vi_flow.resources.runs.AsyncRuns`."""

    def __init__(self, runs: AsyncRuns, portal: Portal) -> None:
        self._async = runs
        self._portal = portal

    def list(
        self,
        pagination: PaginationParams | dict[str, Any] | None = None,
        *,
        flow_id: str | None = None,
        condition: Condition | str | None = None,
        order: Order = "newest",
    ) -> PaginatedResponse[Run]:
        """List runs, newest first, optionally of one flow or in one condition."""
        paginator = self._async.list(pagination, flow_id=flow_id, condition=condition, order=order)
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

    def prune(
        self,
        older_than: str | float,
        *,
        dry_run: bool = False,
        organization_id: str | None = None,
    ) -> PruneResult:
        """Delete finished runs, tasks and idempotency records older than ``older_than``."""
        return self._portal.call(
            self._async.prune, older_than, dry_run=dry_run, organization_id=organization_id
        )
