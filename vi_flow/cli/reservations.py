"""``vi-flow reservations``: hold capacity for a time window; tasks run in it by id."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ._lazy import LazyGroup
from ._output import (
    Order,
    emit_json,
    first,
    iso_time,
    json_option,
    kv_table,
    order_option,
    table,
    wants_json,
    when,
)
from ._params import FiniteFloat, int_range, status_option
from ._state import state

if TYPE_CHECKING:
    from ..models.tasks import Reservation

__all__ = ["reservations"]

# ReservationStatus's values, written out: the CLI imports no models to start
STATUSES = ["scheduled", "active", "expired", "cancelled"]


@click.group(cls=LazyGroup)
def reservations() -> None:
    """Reserve capacity ahead of time; run tasks in it with --reservation ID."""


def _millis(value: str | None) -> int | None:
    """Parse ``now``, an ISO 8601 time (local when it names no zone, as ``--since`` reads
    one and as Python's ``datetime.timestamp`` does) or ms since the epoch."""
    if value is None or value == "now":
        return None
    if value.isdigit():
        return int(value)
    try:
        moment = iso_time(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not 'now', an ISO time (2030-01-02T15:00) or ms since the epoch",
            param_hint="'--start'",
        ) from None
    return int(moment.timestamp() * 1000)  # QA: a time without a zone was UTC here only


def _rows(items: list[Reservation]) -> list[tuple[object, ...]]:
    return [
        (
            r.reservation_id,
            r.name,
            r.status.value,
            r.instance_type,
            when(r.start_time),
            when(r.end_time),
        )
        for r in items
    ]


@reservations.command("create")
@click.option("--gpu", help="GPU shorthand to hold (a100:2), or give --instance-type.")
@click.option("--instance-type", help="An instance type from 'vi-flow instances find'.")
@click.option("--cpus", type=int_range(1), help="CPU cores to hold.")
@click.option(
    "--start",
    help="'now' (default), an ISO time (local unless it names a zone, as tables' "
    "times do with Z), or ms since the epoch.",
)
@click.option(
    "--hours",
    "duration_hours",
    default=1.0,
    show_default=True,
    type=FiniteFloat(min=0, min_open=True),
    help="Window length.",
)
@click.option("--name", help="Display name.")
@json_option
def create(
    gpu: str | None,
    instance_type: str | None,
    cpus: int | None,
    start: str | None,
    duration_hours: float,
    name: str | None,
    as_json: bool,
) -> None:
    """Reserve capacity for a window and print the reservation id."""
    reservation = (
        state()
        .client()
        .reservations.create(
            gpu=gpu,
            instance_type=instance_type,
            cpus=cpus,
            start_time=_millis(start),
            duration_hours=duration_hours,
            name=name,
        )
    )
    if wants_json(as_json):
        emit_json(reservation)
    else:
        click.echo(reservation.reservation_id)


@reservations.command("list")
@status_option(STATUSES)
@click.option("--limit", default=50, show_default=True, type=int_range(1))
@order_option
@json_option
def list_(statuses: tuple[str, ...], limit: int, order: Order, as_json: bool) -> None:
    """List reservations, newest first."""
    listed = state().client().reservations.list(status=list(statuses) or None, order=order)
    items = first(listed, limit, "reservations")
    if wants_json(as_json):
        emit_json(items)
    else:
        table(["RESERVATION ID", "NAME", "STATUS", "INSTANCE", "START", "END"], _rows(items))


@reservations.command("get")
@click.argument("reservation_id")
@json_option
def get(reservation_id: str, as_json: bool) -> None:
    """Show one reservation."""
    r = state().client().reservations.get(reservation_id)
    if wants_json(as_json):
        emit_json(r)
        return
    gpus = f"{r.gpu_count} x {r.gpu_type}" if r.gpu_count else "-"
    kv_table(
        [
            ("reservation id", r.reservation_id),
            ("name", r.name),
            ("status", r.status.value),
            ("instance", r.instance_type),
            ("gpus", gpus),
            ("cpus", r.cpus),
            ("start", when(r.start_time)),
            ("end", when(r.end_time)),
            ("region", r.region),
        ]
    )


@reservations.command("cancel")
@click.argument("reservation_id")
@json_option
def cancel(reservation_id: str, as_json: bool) -> None:
    """Cancel a reservation."""
    r = state().client().reservations.cancel(reservation_id)
    if wants_json(as_json):
        emit_json(r)
    else:
        click.echo(f"{r.reservation_id}: {r.status.value}")
