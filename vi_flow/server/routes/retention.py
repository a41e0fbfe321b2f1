"""Retention routes and the periodic prune.

- ``POST /v1/retention/prune`` ``{"olderThan": "30d" | seconds, "dryRun": false,
  "organizationId": null}`` prunes the caller's organization (an admin key may name
  another one, or ``"*"`` for all) and answers the counts;
- ``GET /v1/organizations/{id}/retention`` answers the organization's policy;
  ``PUT`` (admin) ``{"days": 30}`` overrides the server's default for it, ``{"days": 0}``
  keeps everything, ``{"days": null}`` goes back to the default.

The periodic job prunes each organization by its policy every
``settings.retention.interval`` seconds, in the background of the server; with replicas,
on the one that holds the ``retention`` lock (see :meth:`~vi_flow.server.replicas.Replica.hold`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from ...models.limits import shown
from ...models.retention import MAX_AGE, parse_age
from ..errors import APIProblem
from ..helpers import idempotent, json_response, org_in_path, principal_of, read_body
from ..retention import Pruner
from ..state import REPLICA_KEY, SETTINGS_KEY, STORE_KEY
from ..tasks import TASKS_KEY
from .executions import EXECUTION_ENGINE_KEY

__all__ = ["PRUNER_KEY", "setup"]

log = logging.getLogger("vi_flow.server")

PRUNER_KEY = web.AppKey("vi_flow.pruner", Pruner)
"""The application's :class:`~vi_flow.server.retention.Pruner`."""

ALL = "*"


def _older_than(body: dict[str, Any]) -> float:
    if "olderThan" not in body:
        raise APIProblem.validation("olderThan", "is required (seconds, or a text such as '30d')")
    try:
        return parse_age(body["olderThan"])
    except ValueError as exc:
        raise APIProblem.validation("olderThan", str(exc).removeprefix("olderThan: ")) from None


def _dry_run(body: dict[str, Any]) -> bool:
    value = body.get("dryRun", False)
    if not isinstance(value, bool):
        raise APIProblem.validation("dryRun", f"expected true or false, got {value!r}")
    return value


async def _scope(request: web.Request, wanted: object) -> str | None:
    """The organization to prune (``None``: all), checked against the caller's key."""
    principal = principal_of(request)
    if wanted is None or wanted == principal.organization_id:
        return principal.organization_id
    if not isinstance(wanted, str) or not wanted or "\x00" in wanted:
        what = "an id without a NUL character" if isinstance(wanted, str) and wanted else "an id"
        raise APIProblem.validation("organizationId", f"expected {what} or '*', got {wanted!r:.40}")
    if not principal.admin:
        raise APIProblem(
            403, "PERMISSION_DENIED", "pruning another organization needs an admin key"
        )
    if wanted == ALL:
        return None
    if not await request.app[STORE_KEY].org_exists(wanted):
        raise APIProblem.not_found("NOT_FOUND", "organization", wanted)
    return wanted


_PRUNE_FIELDS = ("olderThan", "organizationId", "dryRun")


def _known_fields(body: dict[str, Any]) -> None:
    """A prune deletes: a field it does not know (``dry_run``, ``organisationId``) is
    refused, not ignored as elsewhere, since ignoring it could delete for real."""
    for name in body:
        if name not in _PRUNE_FIELDS:
            raise APIProblem.validation(
                "body", f"unknown field {shown(name)}: a prune takes {', '.join(_PRUNE_FIELDS)}"
            )


async def prune(request: web.Request) -> web.Response:
    """Delete finished runs, tasks and idempotency records older than ``olderThan``."""
    body = await read_body(request)
    _known_fields(body)
    older_than, dry_run = _older_than(body), _dry_run(body)
    org_id = await _scope(request, body.get("organizationId"))
    result = await request.app[PRUNER_KEY].prune(older_than, org_id, dry_run=dry_run)
    if not dry_run:
        log.info(
            "retention: %s pruned %d runs, %d tasks and %d idempotency records of %s",
            principal_of(request).token_name, result.runs, result.tasks,
            result.idempotency_records, org_id or "every organization",
        )  # fmt: skip
    return json_response(result)


async def get_retention(request: web.Request) -> web.Response:
    """The organization's retention policy (``days: null`` keeps everything)."""
    org_id = await org_in_path(request)
    return json_response(await request.app[PRUNER_KEY].policy(org_id))


def _days(body: dict[str, Any]) -> float | None:
    if "days" not in body:
        raise APIProblem.validation("days", "is required (a number of days, 0 or null)")
    days = body["days"]
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int | float):
        raise APIProblem.validation("days", f"expected a number of days or null, got {shown(days)}")
    if not 0 <= days <= MAX_AGE / 86400:
        raise APIProblem.validation("days", f"must be between 0 and 36500, got {shown(days)}")
    return float(days)


@idempotent
async def put_retention(request: web.Request) -> web.Response:
    """Override an organization's retention (admin): days, 0 (keep all) or null (default)."""
    org_id = await org_in_path(request, admin_for="setting retention")
    days = _days(await read_body(request))
    return json_response(await request.app[PRUNER_KEY].set_policy(org_id, days))


# -- the periodic job ---------------------------------------------------------------------


_FIRST = 60.0
"""Seconds after start-up of the first prune (a server restarted often still prunes)."""


async def _periodic(
    pruner: Pruner, mine: Callable[[], bool], sweeps: Sequence[Callable[[], Awaitable[object]]]
) -> None:
    """Prune every ``interval`` seconds while ``mine()``: with replicas, one of them
    holds the periodic prune at a time. Every replica first runs ``sweeps``: it removes
    the directories of its own tasks that a prune elsewhere deleted
    (:meth:`Pruner.sweep_orphans`) and the data of deleted volumes still set aside
    (:meth:`~vi_flow.server.tasks.volumes.Volumes.remove_deleted`)."""
    wait = min(_FIRST, pruner.settings.interval)
    while True:
        await asyncio.sleep(wait)
        wait = pruner.settings.interval
        try:
            for sweep in sweeps:
                await sweep()
            if mine():
                await pruner.prune_due()
        except Exception:  # a full disk, a locked database: try again next time
            log.exception("retention: the periodic prune failed")


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    pruner = app[PRUNER_KEY]
    await pruner.open()
    held = [False]
    app[REPLICA_KEY].hold("retention", lambda now: held.__setitem__(0, now))
    service = app.get(TASKS_KEY)
    sweeps = [pruner.sweep_orphans] + ([] if service is None else [service.volumes.remove_deleted])
    job = asyncio.get_running_loop().create_task(_periodic(pruner, lambda: held[0], sweeps))
    try:
        yield
    finally:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job


def setup(app: web.Application) -> None:
    """Create the pruner, start its periodic job with the app and add the routes."""
    settings, engine = app[SETTINGS_KEY], app[EXECUTION_ENGINE_KEY]
    service = app.get(TASKS_KEY)
    task_root = None if service is None else (lambda t: service.provider.task_paths(t).root)
    app[PRUNER_KEY] = Pruner(app[STORE_KEY], settings.retention, task_root, engine.log.forget)
    app.cleanup_ctx.append(_retention_ctx)
    app.router.add_post("/v1/retention/prune", prune)
    app.router.add_get("/v1/organizations/{organizationId}/retention", get_retention)
    app.router.add_put("/v1/organizations/{organizationId}/retention", put_retention)
