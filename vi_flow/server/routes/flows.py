"""Flow routes: list, create, get, replace, delete, publish a version, promote one.

``POST /v1/flows`` and ``PUT /v1/flows/{flowId}`` take the flow spec as the body,
either bare (``{"name": ..., "blocks": [...]}``) or wrapped (``{"spec": {...}}``; error
paths then start with ``spec.``). ``PUT`` and ``DELETE`` honour ``If-Match``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ...models.flows import DeletedFlow, Flow, FlowSpec
from ...models.limits import MAX_FLOW_SPEC, MAX_INT, shown
from ..errors import APIProblem
from ..flowsecrets import holds_redacted, kept_env, shown_flow
from ..helpers import (
    idempotent,
    json_response,
    org_of,
    page_response,
    paginate,
    read_body,
    structure,
)
from ..state import STORE_KEY
from ..validation import check_blocks, check_chosen_id, validate_flow_spec
from .executions import EXECUTION_ENGINE_KEY

__all__ = ["setup"]


def _flow_response(flow: Flow, status: int = 200) -> web.Response:
    return json_response(shown_flow(flow), status, headers={"ETag": f'"{flow.etag}"'})


async def _read_spec(
    request: web.Request, stored: Callable[[], Awaitable[Flow]] | None = None
) -> FlowSpec:
    """The spec of the body, checked; a task's env value ``"<redacted>"`` (a spec sent
    back as it was read) keeps the value of the ``stored`` flow."""
    body: dict[str, Any] = await read_body(request)
    prefix = ""
    if isinstance(body.get("spec"), dict) and "name" not in body:
        body, prefix = body["spec"], "spec."
    spec = validate_flow_spec(structure(body, FlowSpec, prefix), prefix)
    if holds_redacted(spec):
        spec = kept_env(spec, None if stored is None else (await stored()).spec, prefix)
    # Checked at create and update, so a bad block fails now, not at execute.
    check_blocks(spec, request.app[EXECUTION_ENGINE_KEY].registry, prefix)
    if (size := len(orjson.dumps(body))) > MAX_FLOW_SPEC:  # every run keeps a copy
        raise APIProblem.validation(
            prefix.rstrip(".") or "body",
            f"the flow spec is {size} bytes of JSON; the most is {MAX_FLOW_SPEC}",
        )
    return spec


async def list_flows(request: web.Request) -> web.Response:
    """List the organization's flows, newest first (``order=oldest``), one page at a time."""
    page = paginate(request)
    flows, cursor = await request.app[STORE_KEY].list_flows(
        org_of(request), page.size, page.after, newest=page.newest
    )
    return page_response([shown_flow(flow) for flow in flows], cursor, page)


@idempotent
async def create_flow(request: web.Request) -> web.Response:
    """Create a flow from a flow spec; ?flowId= chooses its id (honours Idempotency-Key)."""
    flow_id = check_chosen_id(request.query.get("flowId"), "flow", "flowId")
    spec = await _read_spec(request)
    store = request.app[STORE_KEY]
    flow = await store.create_flow(org_of(request), spec, flow_id, answer_status=201)
    return _flow_response(flow, 201)


async def get_flow(request: web.Request) -> web.Response:
    """Get one flow with its draft spec, etag and versions."""
    flow = await request.app[STORE_KEY].get_flow(org_of(request), request.match_info["flowId"])
    return _flow_response(flow)


@idempotent
async def update_flow(request: web.Request) -> web.Response:
    """Replace a flow's draft spec; If-Match with a stale etag is 412 ETAG_MISMATCH."""
    store, flow_id = request.app[STORE_KEY], request.match_info["flowId"]
    spec = await _read_spec(request, lambda: store.get_flow(org_of(request), flow_id))
    flow = await store.update_flow(
        org_of(request),
        flow_id,
        spec,
        if_match=request.headers.get("If-Match"),
        answer_status=200,
    )
    return _flow_response(flow)


@idempotent
async def delete_flow(request: web.Request) -> web.Response:
    """Delete a flow and its published versions; If-Match as for ``PUT``."""
    flow_id = request.match_info["flowId"]
    if_match = request.headers.get("If-Match")
    await request.app[STORE_KEY].delete_flow(
        org_of(request), flow_id, if_match=if_match, answer_status=200
    )
    return json_response(DeletedFlow(flow_id=flow_id))


@idempotent
async def publish_flow(request: web.Request) -> web.Response:
    """Snapshot the draft spec as the next immutable version; answers {"version": n}."""
    version = await request.app[STORE_KEY].publish_flow(
        org_of(request), request.match_info["flowId"], answer_status=200
    )
    return json_response({"version": version})


async def promote_flow(request: web.Request) -> web.Response:
    """Make a published version the flow's production version."""
    # Read before any conversion: the converter would turn ``true`` into version 1.
    version = (await read_body(request)).get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_INT:
        raise APIProblem.validation(
            "version", f"expected a published version number, got {shown(version)}"
        )
    flow = await request.app[STORE_KEY].promote_flow(
        org_of(request), request.match_info["flowId"], version
    )
    return _flow_response(flow)


def setup(app: web.Application) -> None:
    """Add the flow routes under ``/v1/flows``."""
    app.router.add_get("/v1/flows", list_flows)
    app.router.add_post("/v1/flows", create_flow)
    app.router.add_get("/v1/flows/{flowId}", get_flow)
    app.router.add_put("/v1/flows/{flowId}", update_flow)
    app.router.add_delete("/v1/flows/{flowId}", delete_flow)
    app.router.add_post("/v1/flows/{flowId}/publish", publish_flow)
    app.router.add_post("/v1/flows/{flowId}/promote", promote_flow)
