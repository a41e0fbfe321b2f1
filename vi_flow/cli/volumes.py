"""``vi-flow volumes``: create, list, delete and mount persistent volumes."""

from __future__ import annotations

from typing import Literal

import click

from ._lazy import LazyGroup
from ._output import (
    Order,
    emit_done,
    emit_json,
    first,
    json_option,
    order_option,
    table,
    wants_json,
    when,
)
from ._params import int_range
from ._state import state

__all__ = ["volumes"]


@click.group(cls=LazyGroup)
def volumes() -> None:
    """Create, list, mount and delete persistent volumes."""


@volumes.command("create")
@click.option("--name", help="Name, unique in the organization (volume://NAME).")
@click.option("--size-gb", default=1, show_default=True, type=int_range(1), help="Capacity.")
@click.option(
    "--interface",
    type=click.Choice(["file", "block"]),
    default="file",
    show_default=True,
    help="file: many tasks may mount it; block: one at a time.",
)
@json_option
def create(name: str | None, size_gb: int, interface: str, as_json: bool) -> None:
    """Create a volume and print its id."""
    kind: Literal["file", "block"] = "block" if interface == "block" else "file"
    volume = state().client().volumes.create(size_gb, name=name, interface=kind)
    if wants_json(as_json):
        emit_json(volume)
    else:
        click.echo(volume.volume_id)


@volumes.command("list")
@click.option("--limit", default=50, show_default=True, type=int_range(1))
@order_option
@json_option
def list_(limit: int, order: Order, as_json: bool) -> None:
    """List volumes, newest first."""
    pages = state().client().volumes.list(order=order)
    items = first(pages.all_items(), limit, "volumes")
    if wants_json(as_json):
        emit_json(items)
        return
    rows = [
        (
            v.volume_id,
            v.name,
            v.size_gb,
            v.interface,
            ", ".join(v.attached_to) or "-",
            when(v.created_at),
        )
        for v in items
    ]
    table(["VOLUME ID", "NAME", "SIZE GB", "INTERFACE", "MOUNTED BY", "CREATED"], rows)


@volumes.command("delete")
@click.argument("volume")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def delete(volume: str, yes: bool, as_json: bool) -> None:
    """Delete VOLUME (id or name) and its data; refused while a running task mounts it."""
    if not yes and state().interactive:  # asked on stderr: stdout is the answer's
        click.confirm(f"Delete volume {volume} and all its data?", abort=True, err=True)
    state().client().volumes.delete(volume)
    emit_done(as_json, {"deleted": volume}, f"deleted {volume}")


@volumes.command("mount")
@click.argument("volume")
@click.argument("task_id")
@click.option("--path", "mount_path", help="Where the task sees it (default /volumes/NAME).")
@json_option
def mount(volume: str, task_id: str, mount_path: str | None, as_json: bool) -> None:
    """Attach VOLUME (id or name) to a pending or running task."""
    task = state().client().tasks.mount_volume(task_id, volume, mount_path=mount_path)
    if wants_json(as_json):
        emit_json(task)
    else:
        click.echo(f"mounted {volume} on {task.task_id}")
