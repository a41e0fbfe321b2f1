"""Server-wide routes: health, whoami, the OpenAPI document, organizations and tokens.

Organizations and tokens can only be created with an admin token (the one in
``<home>/admin-token``); other tokens get ``403 PERMISSION_DENIED``.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ...models.limits import check_name
from ...models.server import identity_proof
from ..errors import APIProblem
from ..helpers import (
    bool_query,
    idempotent,
    json_response,
    paginate,
    principal_of,
    read_body,
)
from ..middleware import Gone, credentials_gone
from ..state import IDENTITY_KEY, STORE_KEY
from ..validation import limited
from .tasks import drop_logins_of, forget_keys_of_revoked

__all__ = ["setup"]


def _require_admin(request: web.Request) -> None:
    if not principal_of(request).admin:
        raise APIProblem(403, "PERMISSION_DENIED", "this API key is not an admin key")


async def _name_of(request: web.Request) -> str:
    name = (await read_body(request)).get("name")
    limited(check_name, "name", name)  # a string, not blank, without control characters
    assert isinstance(name, str)
    if name in (".", ".."):  # a key is revoked by its name in a URL, where these are dots
        raise APIProblem.validation("name", f"must not be {name!r}")
    return name


_READY_WITHIN = 5.0
"""Seconds ``/v1/health?ready=true`` waits for its database before answering 503."""


async def health(request: web.Request) -> web.Response:
    """Say the server is up (no authentication).

    With ``?ready=true`` it is up *and* its database answers (one transaction, within
    :data:`_READY_WITHIN` s), else ``503``: the check a load balancer
    or an orchestrator makes before sending a replica requests. With ``?challenge=`` (up to
    128 characters) it also proves which server this is: the answer's ``proof`` is
    :func:`~vi_flow.models.server.identity_proof` of the secret in the home's run file,
    which only this process and the home's owner can compute.
    """
    challenge = request.query.get("challenge")
    if bool_query(request, "ready", False):
        await _database_answers(request)
    if challenge is None:
        return json_response({"status": "ok"})
    if not 0 < len(challenge) <= 128:
        raise APIProblem.validation("challenge", "must be 1 to 128 characters")
    proof = identity_proof(request.app[IDENTITY_KEY].secret, challenge)
    return json_response({"status": "ok", "proof": proof})


async def _database_answers(request: web.Request) -> None:
    """Return once the server's database has run one transaction (a PostgreSQL that
    cannot be reached, or an SQLite file gone, answers 503 from the middleware).

    Raises:
        APIProblem: 503 ``DATABASE_UNAVAILABLE`` when it did not answer in time (locked).
    """
    answered = request.app[STORE_KEY].run(lambda c: c.execute("SELECT 1").fetchone())
    try:
        await asyncio.wait_for(answered, _READY_WITHIN)
    except asyncio.TimeoutError:  # (3.10: not yet the builtin TimeoutError)
        raise APIProblem(
            503,
            "DATABASE_UNAVAILABLE",
            f"the server's database did not answer within {_READY_WITHIN:g} s",
        ) from None


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this server (no authentication)."""
    from ..openapi import build_openapi  # about 1,000 lines read by few: loaded on first use

    return json_response(build_openapi(request.app))


async def whoami(request: web.Request) -> web.Response:
    """The organization and token name of the calling API key."""
    principal = principal_of(request)
    return json_response(
        {
            "organizationId": principal.organization_id,
            "tokenName": principal.token_name,
            "admin": principal.admin,
        }
    )


@idempotent
async def create_organization(request: web.Request) -> web.Response:
    """Create an organization (admin only); answers {"organizationId"}."""
    _require_admin(request)
    org_id = await request.app[STORE_KEY].create_org(await _name_of(request), answer_status=201)
    return json_response({"organizationId": org_id}, 201)


async def create_token(request: web.Request) -> web.Response:
    """Create an API key for an organization (admin only); answers {"token"}.

    Not idempotent on purpose: replaying would mean storing the raw token.
    """
    _require_admin(request)
    name = await _name_of(request)
    token = await request.app[STORE_KEY].create_token(request.match_info["organizationId"], name)
    return json_response({"token": token, "name": name}, 201)


async def list_tokens(request: web.Request) -> web.Response:
    """An organization's tokens (admin only): names, never the tokens themselves; the
    list is answered whole (its paging parameters are checked, as every list's)."""
    _require_admin(request)
    paginate(request)
    items = await request.app[STORE_KEY].list_tokens(request.match_info["organizationId"])
    return json_response({"items": items, "nextPage": None})


@idempotent
async def revoke_token(request: web.Request) -> web.Response:
    """Revoke an organization's tokens of one name (admin only); refused at once."""
    _require_admin(request)
    org_id, name = request.match_info["organizationId"], request.match_info["name"]
    # the SSH keys they registered go in the same transaction, then their logins
    count, gone = await request.app[STORE_KEY].revoke_tokens(
        org_id, name, also=forget_keys_of_revoked(request.app), answer_status=200
    )
    drop_logins_of(request.app, org_id, gone)
    await credentials_gone(request.app, Gone(org_id, name))  # its streams end, everywhere
    return json_response({"name": name, "revoked": count})


def setup(app: web.Application) -> None:
    """Add health, whoami, openapi, organization and token routes."""
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/v1/whoami", whoami)
    app.router.add_post("/v1/organizations", create_organization)
    app.router.add_post("/v1/organizations/{organizationId}/tokens", create_token)
    app.router.add_get("/v1/organizations/{organizationId}/tokens", list_tokens)
    app.router.add_delete("/v1/organizations/{organizationId}/tokens/{name}", revoke_token)
