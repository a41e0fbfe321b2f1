"""Capacity accounting for the local scheduler: which CPUs, memory and GPUs are free.

The machine's CPUs and GPUs form two kinds of pool: the general pool (what no active
reservation holds) and one pool per active reservation. :func:`free_capacity` says what
is free in a pool given the jobs launching or running now, :func:`fit` picks the GPU ids
a queued task gets if it can start now (memory is one machine-wide pool that tasks asking
for ``memory_gb`` draw from; reservations do not hold memory), and the reservation checks decide whether a task
bound to a reservation may wait for it (:func:`check_reservation_fits`) or must fail
because the reservation ended (:func:`reservation_ended`). Pure functions over the
:class:`~vi_flow.server.providers.local.machine.Machine`, the
:class:`~vi_flow.server.providers.local.reservations.ReservationBook` and the jobs.
"""

from __future__ import annotations

from collections.abc import Iterable

from ....models.tasks import ReservationStatus
from ...clock import now_ms
from ..base import CapacityError, InvalidRequest, LaunchSpec
from .machine import Machine
from .process import Job
from .reservations import ReservationBook, reservation_status

__all__ = [
    "check_reservation_fits",
    "fit",
    "free_capacity",
    "free_memory_gb",
    "next_boundary",
    "reservation_ended",
]

_ENDED = (ReservationStatus.CANCELLED, ReservationStatus.EXPIRED)


def check_reservation_fits(reservations: ReservationBook, spec: LaunchSpec) -> None:
    """Refuse a task whose reservation is unknown, over, or too small for it.

    Raises:
        InvalidRequest: The reservation is unknown, cancelled or expired.
        CapacityError: The task asks for more than the reservation holds.
    """
    res = reservations.get(spec.reservation_id or "")
    if res is None:
        raise InvalidRequest(f"reservationId: reservation {spec.reservation_id!r} not found")
    status = reservation_status(res, now_ms())
    if status in _ENDED:
        raise InvalidRequest(f"reservationId: reservation {res.reservation_id!r} is {status}")
    wanted = spec.placement
    if (
        wanted.cpus > res.cpus
        or wanted.gpu_count > res.gpu_count
        or (wanted.gpu_count and wanted.gpu_type != res.gpu_type)
    ):
        raise CapacityError(
            f"reservationId: the task asks for {wanted.cpus} CPUs and {wanted.gpu_count} x "
            f"{wanted.gpu_type or 'GPU'}; reservation {res.reservation_id!r} holds "
            f"{res.cpus} CPUs and {res.gpu_count} x {res.gpu_type or 'GPU'}"
        )


def reservation_ended(reservations: ReservationBook, spec: LaunchSpec, now: int) -> bool:
    """Whether ``spec``'s reservation is gone, cancelled or expired (never started: no)."""
    if not spec.reservation_id:
        return False
    status = reservations.status(spec.reservation_id, now)
    if status is None:
        return True
    return status in _ENDED


def next_boundary(reservations: ReservationBook) -> float:
    """Seconds until the next reservation window opens or closes (at most 5 s)."""
    now = now_ms()
    times = reservations.boundaries_after(now)
    return min([5.0, *[(t - now) / 1000 + 0.01 for t in times]])


def fit(
    machine: Machine, reservations: ReservationBook, jobs: Iterable[Job], spec: LaunchSpec, now: int
) -> list[int] | None:
    """GPU ids to give ``spec`` if its CPUs, memory and GPUs are free now, else ``None``."""
    if spec.reservation_id and reservations.status(spec.reservation_id, now) != (
        ReservationStatus.ACTIVE
    ):
        return None
    free_cpus, free_gpus = free_capacity(machine, reservations, jobs, spec.reservation_id, now)
    placement = spec.placement
    if placement.cpus > free_cpus:
        return None
    if placement.memory_gb > free_memory_gb(machine, jobs):
        return None
    matching = [
        g.index
        for g in machine.gpus
        if g.index in free_gpus and placement.gpu_type in (None, g.gpu_type)
    ]
    if len(matching) < placement.gpu_count:
        return None
    return matching[: placement.gpu_count]


def free_memory_gb(machine: Machine, jobs: Iterable[Job]) -> float:
    """Memory (GB) that no launching or running task has asked for."""
    running = [j for j in jobs if j.state in ("launching", "running")]
    return machine.memory_gb - sum(j.spec.placement.memory_gb or 0 for j in running)


def free_capacity(
    machine: Machine,
    reservations: ReservationBook,
    jobs: Iterable[Job],
    reservation_id: str | None,
    now: int,
) -> tuple[int, list[int]]:
    """Free CPUs and GPU ids for the general pool or for one reservation's pool."""
    running = [j for j in jobs if j.state in ("launching", "running")]
    if reservation_id:
        return _reservation_free(machine, reservations, running, reservation_id, now)
    return _general_free(machine, reservations, running, now)


def _reservation_free(
    machine: Machine,
    reservations: ReservationBook,
    running: list[Job],
    reservation_id: str,
    now: int,
) -> tuple[int, list[int]]:
    used_gpus = {i for j in running for i in j.gpu_ids}
    active = reservations.active(now)
    res = next((r for r in active if r.reservation_id == reservation_id), None)
    if res is None:
        return 0, []
    mine = [j for j in running if j.spec.reservation_id == reservation_id]
    cpus = res.cpus - sum(j.spec.placement.cpus for j in mine)
    gpus = res.gpu_count - sum(len(j.gpu_ids) for j in mine)
    free = [
        g.index
        for g in machine.gpus
        if g.index not in used_gpus and res.gpu_type in (None, g.gpu_type)
    ]
    general_cpus = machine.cpus - sum(j.spec.placement.cpus for j in running)
    return min(cpus, general_cpus), free[: max(gpus, 0)]


def _general_free(
    machine: Machine, reservations: ReservationBook, running: list[Job], now: int
) -> tuple[int, list[int]]:
    used_gpus = {i for j in running for i in j.gpu_ids}
    active = reservations.active(now)
    # a task of a reservation that ended (cancelled, expired) runs on: the general pool's
    held = {r.reservation_id for r in active}
    general = [j for j in running if j.spec.reservation_id not in held]
    cpus = machine.cpus - sum(r.cpus for r in active)
    cpus -= sum(j.spec.placement.cpus for j in general)
    reserved_gpu_left = sum(
        max(r.gpu_count - _gpus_used_by(r.reservation_id, running), 0) for r in active
    )
    free = [g.index for g in machine.gpus if g.index not in used_gpus]
    keep = max(len(free) - reserved_gpu_left, 0)
    return cpus, free[:keep]


def _gpus_used_by(reservation_id: str, running: list[Job]) -> int:
    return sum(len(j.gpu_ids) for j in running if j.spec.reservation_id == reservation_id)
