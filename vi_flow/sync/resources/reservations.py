"""Sync ``client.reservations``: each method is one typed line over the portal to :mod:`vi_flow.resources.reservations`."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..._pagination import Order
from ...models.tasks import (
    AvailabilitySlot,
    Reservation,
    ReservationStatus,
)

if TYPE_CHECKING:
    from ..._portal import Portal
    from ...resources.reservations import AsyncReservations

__all__ = ["Reservations"]


class Reservations:
    """Manage reservations (blocking): ``client.reservations``."""

    def __init__(self, reservations: AsyncReservations, portal: Portal) -> None:
        self._async = reservations
        self._portal = portal

    def create(
        self,
        *,
        gpu: str | None = None,
        instance_type: str | None = None,
        cpus: int | None = None,
        start_time: int | None = None,
        duration_hours: float = 1.0,
        name: str | None = None,
        auto_renew: bool = False,
    ) -> Reservation:
        """Reserve capacity."""
        return self._portal.call(
            self._async.create,
            gpu=gpu,
            instance_type=instance_type,
            cpus=cpus,
            start_time=start_time,
            duration_hours=duration_hours,
            name=name,
            auto_renew=auto_renew,
        )

    def list(
        self,
        *,
        status: ReservationStatus | str | Iterable[ReservationStatus | str] | None = None,
        order: Order = "newest",
    ) -> builtins.list[Reservation]:
        """List reservations, newest first (``status``: only those in these statuses)."""
        return self._portal.call(self._async.list, status=status, order=order)

    def get(self, reservation_id: str) -> Reservation:
        """Get one reservation."""
        return self._portal.call(self._async.get, reservation_id)

    def cancel(self, reservation_id: str) -> Reservation:
        """Cancel a reservation."""
        return self._portal.call(self._async.cancel, reservation_id)

    def availability(
        self,
        *,
        instance_type: str | None = None,
        gpu: str | None = None,
        earliest_start_time: int | None = None,
        latest_end_time: int | None = None,
        duration_hours: float | None = None,
    ) -> builtins.list[AvailabilitySlot]:
        """List windows that could be reserved."""
        return self._portal.call(
            self._async.availability,
            instance_type=instance_type,
            gpu=gpu,
            earliest_start_time=earliest_start_time,
            latest_end_time=latest_end_time,
            duration_hours=duration_hours,
        )
