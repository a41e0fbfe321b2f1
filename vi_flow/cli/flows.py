"""``vi-flow flows``: list, get, create (from a YAML spec), delete, publish and promote flows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ._failures import EXIT_USAGE, CommandFailed
from ._lazy import LazyGroup
from ._output import (
    Order,
    emit_done,
    emit_json,
    first,
    json_option,
    kv_table,
    order_option,
    table,
    wants_json,
    when,
)
from ._params import int_range
from ._specfile import load_spec_file
from ._state import state

if TYPE_CHECKING:
    from ..models import Flow

__all__ = ["flows"]

_FIELD_MESSAGE = re.compile(r"^(?P<field>[\w.\[\]]+): (?P<problem>.+)$")


@click.group(cls=LazyGroup)
def flows() -> None:
    """Create, list, publish and delete flows."""


@flows.command("list")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=int_range(1),
    help="Show at most this many flows.",
)
@order_option
@json_option
def list_(limit: int, order: Order, as_json: bool) -> None:
    """List flows, newest first."""
    pages = state().client().flows.list(order=order)
    items = first(pages.all_items(), limit, "flows")
    if wants_json(as_json):
        emit_json(items)
        return
    rows = [
        (
            f.flow_id,
            f.spec.name,
            len(f.spec.blocks),
            f.production_version or "-",
            f.latest_version or "-",
            when(f.metadata.last_updated),
        )
        for f in items
    ]
    table(["FLOW ID", "NAME", "BLOCKS", "PRODUCTION", "LATEST", "UPDATED"], rows)


def _show_flow(flow: Flow) -> None:
    pairs = [
        ("flow id", flow.flow_id),
        ("name", flow.spec.name),
        ("organization", flow.organization_id),
        ("production version", flow.production_version or "-"),
        ("latest version", flow.latest_version or "-"),
        ("created", when(flow.metadata.time_created)),
        ("updated", when(flow.metadata.last_updated)),
        ("etag", flow.etag),
    ]
    pairs += [(f"step {i}", f"{b.id or '-'} ({b.block})") for i, b in enumerate(flow.spec.blocks)]
    pairs += [
        (f"input {i.name}", "required" if i.required else f"= {i.default!r}")
        for i in flow.spec.inputs
    ]
    kv_table(pairs)


@flows.command("get")
@click.argument("flow_id")
@json_option
def get(flow_id: str, as_json: bool) -> None:
    """Show one flow: its steps, inputs and versions."""
    flow = state().client().flows.get(flow_id)
    if wants_json(as_json):
        emit_json(flow)
    else:
        _show_flow(flow)


@flows.command("create")
@click.option(
    "-f",
    "--file",
    "spec_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
    help="The flow spec, YAML or JSON (name, blocks, inputs, ...); - reads it from stdin.",
)
@click.option("--id", "flow_id", help="Choose the flow id instead of a generated one.")
@json_option
def create(spec_file: Path, flow_id: str | None, as_json: bool) -> None:
    """Create a flow from a spec file.

    \b
    Example spec.yaml:
      name: greet
      blocks:
        - block: template
          id: hello
          settings: {template: "Hello, {{ message }}!"}
    """
    from .. import UnprocessableEntityError

    spec = load_spec_file(spec_file)
    try:
        flow = state().client().flows.create(spec.data, flow_id=flow_id)
    except UnprocessableEntityError as exc:
        match = _FIELD_MESSAGE.match(exc.message)
        if not match:
            raise
        message = spec.describe(match["field"], match["problem"])
        raise CommandFailed(f"not a valid flow: {message}", exit_code=EXIT_USAGE) from None
    if wants_json(as_json):
        emit_json(flow)
    else:
        click.echo(flow.flow_id)


@flows.command("delete")
@click.argument("flow_id")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def delete(flow_id: str, yes: bool, as_json: bool) -> None:
    """Delete a flow (its runs stay)."""
    if not yes and state().interactive:  # asked on stderr: stdout is the answer's
        click.confirm(f"Delete flow {flow_id}?", abort=True, err=True)
    state().client().flows.delete(flow_id)
    emit_done(as_json, {"deleted": flow_id}, f"deleted {flow_id}")


@flows.command("publish")
@click.argument("flow_id")
@json_option
def publish(flow_id: str, as_json: bool) -> None:
    """Publish the draft as a new numbered version and print its number."""
    version = state().client().flows.publish(flow_id)
    if wants_json(as_json):
        emit_json({"flowId": flow_id, "version": version})
    else:
        click.echo(f"published {flow_id} version {version}")


@flows.command("promote")
@click.argument("flow_id")
@click.argument("version", type=int_range(1))
@json_option
def promote(flow_id: str, version: int, as_json: bool) -> None:
    """Make published VERSION the production version of a flow."""
    flow = state().client().flows.promote(flow_id, version)
    if wants_json(as_json):
        emit_json(flow)
    else:
        click.echo(f"{flow_id}: production version is now {flow.production_version}")
