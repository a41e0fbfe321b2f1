"""``vi-flow tokens``: list, create and revoke an organization's API keys (admin keys only).

``create`` prints the new key alone on stdout (so ``KEY=$(vi-flow tokens create ci)``
works); it is the only time the key is shown. ``list`` shows names, never keys.
"""

from __future__ import annotations

import click

from ._lazy import LazyGroup
from ._output import emit_json, json_option, table, wants_json, when
from ._state import state

__all__ = ["tokens"]

_org_option = click.option(
    "--organization",
    "organization_id",
    metavar="ORG_ID",
    help="The organization (default: the API key's own).",
)


@click.group(cls=LazyGroup)
def tokens() -> None:
    """List, create and revoke API keys (needs an admin key, such as HOME/admin-token)."""


@tokens.command("list")
@_org_option
@json_option
def list_(organization_id: str | None, as_json: bool) -> None:
    """List the organization's API keys: names and creation times, never the keys."""
    items = state().client().tokens.list(organization_id=organization_id)
    if wants_json(as_json):
        emit_json(items)
        return
    rows = [(t.name, "yes" if t.admin else "no", when(t.created_at)) for t in items]
    table(["NAME", "ADMIN", "CREATED"], rows)


@tokens.command("create")
@click.argument("name")
@_org_option
@json_option
def create(name: str, organization_id: str | None, as_json: bool) -> None:
    """Create an API key named NAME and print it (once: it is stored hashed)."""
    created = state().client().tokens.create(name, organization_id=organization_id)
    if wants_json(as_json):
        emit_json(created)
        return
    click.echo(created.token)
    click.echo(f"Keep this key now: it is never shown again ({name!r}).", err=True)


@tokens.command("revoke")
@click.argument("name")
@_org_option
@json_option
def revoke(name: str, organization_id: str | None, as_json: bool) -> None:
    """Revoke every API key named NAME; they are refused from the next request on."""
    revoked = state().client().tokens.revoke(name, organization_id=organization_id)
    if wants_json(as_json):
        emit_json(revoked)
    else:
        click.echo(f"revoked {revoked.revoked} key(s) named {name!r}")
