"""``client.flows``: list, get, create, update, delete, publish and promote flows."""

from __future__ import annotations

from typing import Any

from .._errors import FlowNotFoundError, NotFoundError
from .._http import path
from .._pagination import AsyncPaginator, Order, check_order
from ..models import DeletedFlow, Flow, FlowSpec, Page, PaginationParams
from ..models._base import wire_keys
from ._base import AsyncResource

__all__ = ["AsyncFlows"]


def _spec_body(spec: FlowSpec | dict[str, Any]) -> Any:
    if isinstance(spec, FlowSpec):
        return spec
    if isinstance(spec, dict):
        return wire_keys(spec, FlowSpec)
    raise TypeError(f"spec must be a FlowSpec or a dict, got {type(spec).__name__}")


class AsyncFlows(AsyncResource):
    """Manage flows: ``client.flows``."""

    def list(
        self,
        pagination: PaginationParams | dict[str, Any] | None = None,
        *,
        order: Order = "newest",
    ) -> AsyncPaginator[Flow]:
        """List the organization's flows, newest first.

        Args:
            pagination: ``PaginationParams`` or a dict such as ``{"page_size": 50}``.
            order: ``"newest"`` first (the default) or ``"oldest"`` first.

        Returns:
            A paginator: await it for the first page, ``async for`` it for every page.

        Raises:
            ValueError: The page size or order is out of range (before any request).
        """
        chosen = check_order(order)

        async def fetch(p: PaginationParams) -> Page[Flow]:
            query = {"pageSize": p.page_size, "pageToken": p.page_token, "order": chosen}
            return await self._http.request("GET", "/flows", params=query, cast=Page[Flow])

        return AsyncPaginator(fetch, PaginationParams.coerce(pagination))

    async def get(self, flow_id: str) -> Flow:
        """Get one flow.

        Raises:
            FlowNotFoundError: No flow with this id in the organization.
        """
        try:
            return await self._http.request("GET", path("/flows/{}", flow_id), cast=Flow)
        except NotFoundError as exc:
            raise _flow_not_found(flow_id, exc) from None

    async def create(self, spec: FlowSpec | dict[str, Any], *, flow_id: str | None = None) -> Flow:
        """Create a flow from a ``FlowSpec`` or a dict of its fields.

        Args:
            spec: What the flow does.
            flow_id: A chosen id (``flow_`` followed by letters, digits, ``-`` or ``_``);
                the server makes one up when omitted.

        Raises:
            ValueError: ``flow_id`` is empty or not a string.
            UnprocessableEntityError: The spec is invalid; the message names the field.
            ConflictError: A flow with the chosen id exists.
        """
        if flow_id is not None and (not isinstance(flow_id, str) or not flow_id):
            raise ValueError(f"flow_id must be a non-empty string or None, got {flow_id!r}")
        params = {"flowId": flow_id} if flow_id else None
        return await self._http.request(
            "POST", "/flows", json=_spec_body(spec), params=params, cast=Flow
        )

    async def update(
        self, flow_id: str, spec: FlowSpec | dict[str, Any], *, etag: str | None = None
    ) -> Flow:
        """Replace a flow's draft spec.

        Args:
            flow_id: The flow.
            spec: The new spec.
            etag: The etag read with the flow; when given, a concurrent change fails
                the update with ``PreconditionFailedError`` instead of being lost.
        """
        headers = {"If-Match": etag} if etag else None
        try:
            return await self._http.request(
                "PUT", path("/flows/{}", flow_id), json=_spec_body(spec), headers=headers, cast=Flow
            )
        except NotFoundError as exc:
            raise _flow_not_found(flow_id, exc) from None

    async def delete(self, flow_id: str) -> DeletedFlow:
        """Delete a flow.

        Raises:
            FlowNotFoundError: No flow with this id in the organization.
        """
        try:
            return await self._http.request("DELETE", path("/flows/{}", flow_id), cast=DeletedFlow)
        except NotFoundError as exc:
            raise _flow_not_found(flow_id, exc) from None

    async def publish(self, flow_id: str) -> int:
        """Freeze the draft as a new published version and return its number."""
        data = await self._http.request("POST", path("/flows/{}/publish", flow_id))
        return int(data["version"])

    async def promote(self, flow_id: str, version: int) -> Flow:
        """Make a published version the flow's ``production`` version."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be a positive int, got {version!r}")
        return await self._http.request(
            "POST", path("/flows/{}/promote", flow_id), json={"version": version}, cast=Flow
        )


def _flow_not_found(flow_id: str, exc: NotFoundError) -> NotFoundError:
    if isinstance(exc, FlowNotFoundError) or exc.code == "NOT_THE_API":
        return exc  # a web page at base_url is not a missing flow
    return FlowNotFoundError(
        f"flow {flow_id!r} not found",
        status_code=404,
        code=exc.code,
        request_id=exc.request_id,
        body=exc.body,
    )
