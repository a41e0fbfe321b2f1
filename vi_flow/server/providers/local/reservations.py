"""Reservations of the local provider: capacity windows kept in a JSON file.

:class:`ReservationBook` holds every reservation (``<home>/compute/reservations.json``,
written atomically from a worker thread) and answers the scheduler's questions: which
reservations are active now, what a window leaves free, and where a new one would fit.
A reservation's status follows the clock (``scheduled`` -> ``active`` -> ``expired``)
unless it was cancelled. An ``auto_renew`` reservation starts a new window of the same
length each time one ends, until cancelled: it is checked against every later window
when made (it holds its capacity open-ended), so a renewal can never fail.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import attrs

from ....models._base import from_wire, to_wire
from ....models.limits import check_time_ms
from ....models.tasks import (
    AvailabilitySlot,
    Reservation,
    ReservationRequest,
    ReservationStatus,
)
from ...clock import now_ms
from ...home import replace_file
from ..base import CapacityError, InvalidRequest, Placement
from .machine import Machine

__all__ = ["FOREVER", "ReservationBook", "reservation_status", "window_end"]

log = logging.getLogger("vi_flow.server")


#: The end of an auto-renewing reservation's hold (ms): it renews until cancelled.
FOREVER = 2**62


def _renews(res: Reservation) -> bool:
    return res.auto_renew and res.status != ReservationStatus.CANCELLED


def window_end(res: Reservation, now: int) -> int:
    """The end of ``res``'s window that contains ``now`` (its stored end unless it renews)."""
    if not _renews(res) or now < res.end_time:
        return res.end_time
    period = res.end_time - res.start_time
    return res.end_time + ((now - res.end_time) // period + 1) * period


def reservation_status(res: Reservation, now: int) -> ReservationStatus:
    """The status of ``res`` at ``now`` (ms)."""
    if res.status == ReservationStatus.CANCELLED:
        return res.status
    if now >= window_end(res, now):
        return ReservationStatus.EXPIRED
    if now >= res.start_time:
        return ReservationStatus.ACTIVE
    return ReservationStatus.SCHEDULED


def _held_until(res: Reservation) -> int:
    return FOREVER if _renews(res) else res.end_time


def _overlaps(res: Reservation, start: int, end: int) -> bool:
    return (
        res.status != ReservationStatus.CANCELLED
        and res.start_time < end
        and start < _held_until(res)
    )


def _readable(item: Any) -> Reservation | None:
    """The stored reservation, or ``None`` (with a server warning) when it cannot be used.

    One bad record (written by an older server, or edited by hand) must not make every
    reservation list, or the scheduler, fail.
    """
    try:
        res = from_wire(item, Reservation)
        check_time_ms("startTime", res.start_time)
        check_time_ms("endTime", res.end_time)
        if res.end_time <= res.start_time:
            raise ValueError("endTime: must be after startTime")
    except Exception as exc:  # any decoding failure: the book goes on without it
        name = item.get("reservationId", "?") if isinstance(item, dict) else "?"
        log.warning("skipped an unreadable reservation record %s: %r", name, exc)
        return None
    return res


class ReservationBook:
    """The local provider's reservations.

    Args:
        path: The JSON file they persist to.
        machine: What the machine offers (windows are checked against it).
    """

    def __init__(self, path: Path, machine: Machine) -> None:
        self.path = path
        self.machine = machine
        self._items: dict[str, Reservation] = {}
        self._saving = asyncio.Lock()

    # -- persistence ---------------------------------------------------------------------

    def _read(self) -> dict[str, Reservation]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        items = [_readable(item) for item in data] if isinstance(data, list) else []
        return {r.reservation_id: r for r in items if r is not None}

    def _write(self, items: list[Reservation]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(self.path, json.dumps(to_wire(items)).encode())

    async def load(self) -> None:
        """Read the file (in a thread)."""
        self._items = await asyncio.to_thread(self._read)

    async def _save(self) -> None:
        """Write the book as it is now. One save at a time, each taking the book as it is
        when its turn comes: saves written at once raced on their file, and an older
        copy could be renamed in last, losing what was made meanwhile."""
        async with self._saving:
            await asyncio.to_thread(self._write, list(self._items.values()))

    # -- queries -------------------------------------------------------------------------

    def get(self, reservation_id: str) -> Reservation | None:
        """A reservation as stored (status not refreshed), or ``None``."""
        return self._items.get(reservation_id)

    def status(self, reservation_id: str, now: int) -> ReservationStatus | None:
        """The status of a reservation at ``now``, ``None`` if unknown."""
        res = self._items.get(reservation_id)
        return None if res is None else reservation_status(res, now)

    def active(self, now: int) -> list[Reservation]:
        """Reservations whose window contains ``now``."""
        return [
            r
            for r in self._items.values()
            if reservation_status(r, now) == ReservationStatus.ACTIVE
        ]

    def boundaries_after(self, now: int) -> list[int]:
        """Future window starts and ends (when the scheduler must look again)."""
        return [
            t
            for r in self._items.values()
            if r.status != ReservationStatus.CANCELLED
            for t in (r.start_time, window_end(r, now))
            if t > now
        ]

    def all(self) -> list[Reservation]:
        """Every reservation with its status (and current window, if it renews) as of now."""
        now = now_ms()
        return [self._as_of(r, now) for r in self._items.values()]

    @staticmethod
    def _as_of(res: Reservation, now: int) -> Reservation:
        end = window_end(res, now)
        start = res.start_time if end == res.end_time else end - (res.end_time - res.start_time)
        status = reservation_status(res, now)
        return attrs.evolve(res, status=status, start_time=start, end_time=end)

    def window_free(self, gpu_type: str | None, start: int, end: int) -> tuple[int, int]:
        """CPUs and GPUs (of ``gpu_type``; any when ``None``) no reservation holds in the window."""
        overlapping = [r for r in self._items.values() if _overlaps(r, start, end)]
        cpus = self.machine.cpus - sum(r.cpus for r in overlapping)
        typed = [g for g in self.machine.gpus if gpu_type in (None, g.gpu_type)]
        held = sum(r.gpu_count for r in overlapping if gpu_type in (None, r.gpu_type))
        return max(cpus, 0), max(len(typed) - held, 0)

    # -- changes -------------------------------------------------------------------------

    async def create(self, placement: Placement, request: ReservationRequest) -> Reservation:
        """Hold ``placement`` for the requested window.

        Raises:
            InvalidRequest: A non-positive duration.
            CapacityError: Other reservations hold what is asked in that window.
        """
        if request.duration_hours <= 0:
            raise InvalidRequest(f"durationHours: must be positive, got {request.duration_hours}")
        start = request.start_time or now_ms()
        end = start + int(request.duration_hours * 3600 * 1000)
        held_until = FOREVER if request.auto_renew else end
        cpus, gpus = self.window_free(placement.gpu_type, start, held_until)
        if placement.cpus > cpus or placement.gpu_count > gpus:
            window = (
                "from its start on (it auto-renews)" if request.auto_renew else "in that window"
            )
            raise CapacityError(
                f"reservation: asked for {placement.cpus} CPUs and {placement.gpu_count} "
                f"x {placement.gpu_type or 'GPU'}; free {window}: {cpus} CPUs, {gpus} GPUs"
            )
        from ...store import new_id

        res = Reservation(
            reservation_id=new_id("res"),
            name=request.name or f"{placement.instance_type}-reservation",
            status=ReservationStatus.SCHEDULED,
            instance_type=placement.instance_type,
            gpu_type=placement.gpu_type,
            gpu_count=placement.gpu_count,
            cpus=placement.cpus,
            start_time=start,
            end_time=end,
            created_at=now_ms(),
            auto_renew=request.auto_renew,
        )
        await self._change(res.reservation_id, res)
        return self._as_of(res, now_ms())

    async def cancel(self, reservation_id: str) -> Reservation:
        """Mark a reservation cancelled; one that has ended already (expired, or
        cancelled before) stays as it is, and is answered so.

        Raises:
            InvalidRequest: Unknown reservation.
        """
        res = self._items.get(reservation_id)
        if res is None:
            raise InvalidRequest(f"reservation {reservation_id!r} not found")
        now = self._as_of(res, now_ms())
        if now.status in (ReservationStatus.EXPIRED, ReservationStatus.CANCELLED):
            return now  # QA AH: an expired one was rewritten "cancelled", its history lost
        res = attrs.evolve(res, status=ReservationStatus.CANCELLED)
        await self._change(reservation_id, res)
        return res

    async def _change(self, reservation_id: str, res: Reservation) -> None:
        """Set a reservation and save the book; as it was when the save fails."""
        before = self._items.get(reservation_id)
        self._items[reservation_id] = res
        try:
            await self._save()
        except Exception:
            if self._items.get(reservation_id) is res:
                if before is None:
                    del self._items[reservation_id]
                else:
                    self._items[reservation_id] = before
            raise

    def availability(
        self, placement: Placement, start: int, end: int, duration_ms: int
    ) -> list[AvailabilitySlot]:
        """Windows in ``[start, end]`` of at least ``duration_ms`` where ``placement`` fits."""
        edges = sorted(
            {start, end}
            | {
                t
                for r in self._items.values()
                if _overlaps(r, start, end)
                for t in (r.start_time, _held_until(r))
                if start < t < end
            }
        )
        slots: list[AvailabilitySlot] = []
        for left, right in itertools.pairwise(edges):
            cpus, gpus = self.window_free(placement.gpu_type, left, right)
            if cpus < placement.cpus or gpus < placement.gpu_count:
                continue
            begin = left
            if slots and slots[-1].end_time == left:
                last = slots.pop()
                cpus, gpus, begin = min(cpus, last.cpus), min(gpus, last.gpu_count), last.start_time
            slots.append(AvailabilitySlot(placement.instance_type, begin, right, gpus, cpus))
        return [s for s in slots if s.end_time - s.start_time >= duration_ms]
