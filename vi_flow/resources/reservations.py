"""``client.reservations``: hold capacity for a time window, list, cancel, check availability."""

from __future__ import annotations

import builtins
from collections.abc import Iterable

from .._http import path
from .._pagination import Order, check_order
from ..models import Page
from ..models.tasks import (
    AvailabilitySlot,
    Reservation,
    ReservationRequest,
    ReservationStatus,
)
from ._base import AsyncResource, status_query

__all__ = ["AsyncReservations"]


class AsyncReservations(AsyncResource):
    """Manage reservations: ``client.reservations``."""

    async def create(
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
        """Reserve capacity; tasks use it by naming ``reservation_id`` in their config.

        Args:
            gpu: GPU shorthand (``"a100:2"``), or give ``instance_type``.
            instance_type: An instance type from the catalog.
            cpus: CPU cores to hold.
            start_time: Window start, ms since the epoch (now when omitted).
            duration_hours: Window length.
            name: Display name.
            auto_renew: Start a new window of the same length each time one ends, until
                cancelled; the capacity is checked open-ended when it is made.

        Raises:
            UnprocessableEntityError: The window cannot be held (the message says what is free).
            NotImplementedByProviderError: The provider cannot reserve.
        """
        body = ReservationRequest(
            gpu=gpu,
            instance_type=instance_type,
            cpus=cpus,
            start_time=start_time,
            duration_hours=duration_hours,
            name=name,
            auto_renew=auto_renew,
        )
        return await self._http.request("POST", "/reservations", json=body, cast=Reservation)

    async def list(
        self,
        *,
        status: ReservationStatus | str | Iterable[ReservationStatus | str] | None = None,
        order: Order = "newest",
    ) -> list[Reservation]:
        """List the organization's reservations, newest first (``order="oldest"``: oldest first).

        Args:
            status: Only those in this status (``"active"``) or these statuses.
            order: ``"newest"`` first (the default) or ``"oldest"`` first.

        Raises:
            UnprocessableEntityError: A status the server does not know (it names those
                it does).
        """
        wanted = status_query(status, ReservationStatus)
        query = {"status": wanted, "order": check_order(order)}
        page = await self._http.request(
            "GET", "/reservations", params=query, cast=Page[Reservation]
        )
        if wanted is None:
            return page.items
        # a server before this filter answers every reservation: filtered here too
        keep = set(wanted.split(","))
        return [r for r in page.items if r.status.value in keep]

    async def get(self, reservation_id: str) -> Reservation:
        """Get one reservation (``NotFoundError`` when missing)."""
        url = path("/reservations/{}", reservation_id)
        return await self._http.request("GET", url, cast=Reservation)

    async def cancel(self, reservation_id: str) -> Reservation:
        """Cancel a reservation; its capacity is free again."""
        url = path("/reservations/{}", reservation_id)
        return await self._http.request("DELETE", url, cast=Reservation)

    async def availability(
        self,
        *,
        instance_type: str | None = None,
        gpu: str | None = None,
        earliest_start_time: int | None = None,
        latest_end_time: int | None = None,
        duration_hours: float | None = None,
    ) -> builtins.list[AvailabilitySlot]:
        """List windows in which the capacity asked for could be reserved."""
        query = {
            "instanceType": instance_type,
            "gpu": gpu,
            "earliestStartTime": earliest_start_time,
            "latestEndTime": latest_end_time,
            "durationHours": duration_hours,
        }
        page = await self._http.request(
            "GET", "/reservations/availability", params=query, cast=Page[AvailabilitySlot]
        )
        return page.items
