"""``client.runs``: list, get, create, cancel, delete and prune runs."""

from __future__ import annotations

from typing import Any

from .._http import path
from .._pagination import AsyncPaginator, Order, check_order
from ..models import Condition, DeletedRun, Page, PaginationParams, Run
from ..models.execution import check_version  # the one check, shared with the server
from ..models.retention import PruneResult, parse_age
from ._base import AsyncResource

__all__ = ["AsyncRuns", "condition_named"]


def condition_named(value: Condition | str) -> Condition:
    """The run condition ``value`` names, in any case (``"succeeded"`` -> ``Succeeded``).

    Raises:
        ValueError: Not a condition; the message lists the known ones.
    """
    if isinstance(value, Condition) and value.known:
        return value
    known = {c.value.lower(): c for c in Condition}
    found = known.get(str(value).strip().lower()) if isinstance(value, str) else None
    if found is None:
        names = ", ".join(c.value for c in Condition)
        raise ValueError(f"condition must be one of {names} (any case), got {value!r}")
    return found


class AsyncRuns(AsyncResource):
    """Manage runs: ``client.runs``."""

    def list(
        self,
        pagination: PaginationParams | dict[str, Any] | None = None,
        *,
        flow_id: str | None = None,
        condition: Condition | str | None = None,
        order: Order = "newest",
    ) -> AsyncPaginator[Run]:
        """List runs, newest first, optionally of one flow or in one condition.

        Args:
            flow_id: Only runs of this flow.
            condition: Only runs whose current condition is this (``"Succeeded"``, in any
                case, or a ``Condition``).
            order: ``"newest"`` first (the default) or ``"oldest"`` first.
            pagination: ``PaginationParams`` or a dict such as ``{"page_size": 50}``.
        """
        if flow_id is not None and (not isinstance(flow_id, str) or not flow_id):
            raise ValueError(f"flow_id must be a non-empty string or None, got {flow_id!r}")
        params = PaginationParams.coerce(pagination)
        filters = {
            "flowId": flow_id,
            "condition": condition_named(condition).value if condition else None,
            "order": check_order(order),
        }

        async def fetch(p: PaginationParams) -> Page[Run]:
            query = {**filters, "pageSize": p.page_size, "pageToken": p.page_token}
            return await self._http.request("GET", "/runs", params=query, cast=Page[Run])

        return AsyncPaginator(fetch, params)

    async def get(self, run_id: str) -> Run:
        """Get one run, with its condition history."""
        return await self._http.request("GET", path("/runs/{}", run_id), cast=Run)

    async def create(
        self,
        flow_id: str,
        *,
        version: str | int = "draft",
        message: str | None = None,
        parameters: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> Run:
        """Start a run of a flow in the background; it moves Pending -> Running -> done.

        Args:
            flow_id: The flow to run.
            version: ``"draft"``, ``"production"`` or a published version number.
            message: The user message, the flow's primary input.
            parameters: Flat dict of flow inputs.
            run_id: A chosen id (``run_`` followed by letters, digits, ``-`` or ``_``).
        """
        body = {
            "runId": run_id,
            "flowId": flow_id,
            "version": check_version(version),
            "message": message,
            "parameters": parameters or {},
        }
        return await self._http.request("POST", "/runs", json=body, cast=Run)

    async def cancel(self, run_id: str) -> Run:
        """Ask the server to cancel a run; returns it with its new condition."""
        return await self._http.request("POST", path("/runs/{}/cancel", run_id), cast=Run)

    async def delete(self, run_id: str) -> DeletedRun:
        """Delete a finished run (a running one gives ``ConflictError``)."""
        return await self._http.request("DELETE", path("/runs/{}", run_id), cast=DeletedRun)

    async def prune(
        self,
        older_than: str | float,
        *,
        dry_run: bool = False,
        organization_id: str | None = None,
    ) -> PruneResult:
        """Delete finished runs, tasks and idempotency records older than ``older_than``.

        Runs go with their events; tasks with their directories. Pending and running
        work is never touched. The call returns when the prune is done (no timeout).

        Args:
            older_than: Seconds, or a text such as ``"30d"``, ``"12h"`` (units s, m, h,
                d, w).
            dry_run: Only count what would go.
            organization_id: Another organization (admin keys only), or ``"*"`` for all;
                the key's own organization by default.

        Raises:
            ValueError: ``older_than`` is not an age (negative, garbage), named.
        """
        body = {
            "olderThan": parse_age(older_than, "older_than"),
            "dryRun": dry_run,
            "organizationId": organization_id,
        }
        # A prune answers once it is done (about 3,000 runs/s): no read timeout cuts it off.
        return await self._http.request(
            "POST", "/retention/prune", json=body, cast=PruneResult, timeout=None
        )
