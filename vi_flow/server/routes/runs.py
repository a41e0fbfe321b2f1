"""Run routes: list (by flow and condition), create, get, cancel, delete.

``POST /v1/runs`` stores a Pending run and hands it to the run engine registered under
:data:`~vi_flow.server.state.ENGINE_KEY` (by ``routes/executions``), which moves it on.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
from aiohttp import web

from ...models.common import Condition
from ...models.execution import check_version
from ...models.runs import DeletedRun, RunSpec
from ..errors import APIProblem
from ..flowsecrets import shown_run
from ..helpers import idempotent, json_response, org_of, page_response, paginate, read_json
from ..state import ENGINE_KEY, STORE_KEY, RunStarter
from ..store import Store
from ..validation import check_chosen_id, resolve_parameters

__all__ = ["setup"]

log = logging.getLogger("vi_flow.server")


def _starter(app: web.Application) -> RunStarter:
    return app[ENGINE_KEY]


@attrs.frozen
class _CreateRun:
    flow_id: str
    run_id: str | None = None
    version: Any = None
    message: str | None = None
    parameters: dict[str, Any] = attrs.Factory(dict)


def _version_arg(value: Any) -> str | int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        value = int(value)  # query strings and forms send numbers as text
    try:
        return check_version(value)  # a number SQLite holds: 2**63 would be a 500
    except ValueError as exc:
        raise APIProblem.validation("version", str(exc).removeprefix("version: ")) from None


async def _default_version(store: Store, org: str, flow_id: str) -> str | int:
    flow = await store.get_flow(org, flow_id)
    return "production" if flow.production_version is not None else "draft"


_CONDITIONS = tuple(c.value for c in Condition)


def _condition(raw: str | None) -> str | None:
    """The ``condition`` filter: a run condition as the server writes it (422 otherwise:
    an unknown one matched nothing, silently)."""
    if not raw:
        return None
    if raw not in _CONDITIONS:
        raise APIProblem.validation(
            "condition", f"must be one of {', '.join(_CONDITIONS)}, got {raw[:40]!r}"
        )
    return raw


async def list_runs(request: web.Request) -> web.Response:
    """List the organization's runs, newest first (``order=oldest``); filter by flowId, condition."""
    page = paginate(request)
    runs, cursor = await request.app[STORE_KEY].list_runs(
        org_of(request),
        page.size,
        page.after,
        flow_id=request.query.get("flowId") or None,
        condition=_condition(request.query.get("condition")),
        newest=page.newest,
    )
    return page_response([shown_run(run) for run in runs], cursor, page)


@idempotent
async def create_run(request: web.Request) -> web.Response:
    """Start a run of a flow version (production if promoted, else draft); answers 201 Pending."""
    body = await read_json(request, _CreateRun)
    run_id = check_chosen_id(body.run_id, "run", "runId")
    store, org = request.app[STORE_KEY], org_of(request)
    if body.version is None:
        version = await _default_version(store, org, body.flow_id)
    else:
        version = _version_arg(body.version)
    flow, label = await store.resolve_flow_version(org, body.flow_id, version)
    spec = RunSpec(
        flow=flow,
        training_project=flow.training_project,
        flow_id=body.flow_id,
        flow_version=label,
        message=body.message,
        parameters=resolve_parameters(flow, body.parameters),
    )
    starter = _starter(request.app)
    run = await store.create_run(org, spec, run_id, answer_status=201, charge=starter.charge)
    await starter.start(run)
    return json_response(shown_run(run), 201)


async def get_run(request: web.Request) -> web.Response:
    """Get one run with its condition history."""
    run = await request.app[STORE_KEY].get_run(request.match_info["runId"], org_of(request))
    return json_response(shown_run(run))


async def cancel_run(request: web.Request) -> web.Response:
    """Cancel a run; a run that already finished is answered as it is."""
    store = request.app[STORE_KEY]
    run = await store.get_run(request.match_info["runId"], org_of(request))
    if run.status.condition is not None and run.status.condition.terminal:
        return json_response(shown_run(run))
    await _starter(request.app).cancel(run)
    run = await store.set_run_condition(
        (run.organization_id, run.run_id),
        Condition.CANCELLED,
        "cancelled by the user",
        "UserCancelled",
    )
    return json_response(shown_run(run))


@idempotent
async def delete_run(request: web.Request) -> web.Response:
    """Delete a finished run; a run still Pending or Running is 409 CONFLICT."""
    org, run_id = org_of(request), request.match_info["runId"]
    await request.app[STORE_KEY].delete_run(org, run_id, answer_status=200)
    await _starter(request.app).forget((org, run_id))
    return json_response(DeletedRun(run_id=run_id))


def setup(app: web.Application) -> None:
    """Add the run routes under ``/v1/runs``."""
    app.router.add_get("/v1/runs", list_runs)
    app.router.add_post("/v1/runs", create_run)
    app.router.add_get("/v1/runs/{runId}", get_run)
    app.router.add_delete("/v1/runs/{runId}", delete_run)
    app.router.add_post("/v1/runs/{runId}/cancel", cancel_run)
