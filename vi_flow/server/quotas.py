"""Per-organization quotas: one organization cannot starve the others on a shared server.

:class:`Quotas` holds the limits, with defaults, each settable with an environment
variable ``VI_FLOW_QUOTA_<NAME>`` (a non-negative whole number, or ``none`` for no
limit) or in :class:`~vi_flow.server.state.ServerSettings`. Going over one answers
``QUOTA_EXCEEDED`` whose message names the quota, what the organization would hold and
the variable that raises it; the request changed nothing. A quota on work that waits
(pending tasks) is ``429``: it clears as the tasks start, so a retry later may pass. A
quota on what is held (reservations) is ``422``: only cancelling one frees it.

- ``reservations``: reservations an organization holds that have not ended (scheduled
  or active);
- ``reserved_cpus`` and ``reserved_gpus``: the CPUs and GPUs those reservations hold
  together;
- ``pending_tasks``: tasks of an organization waiting to start;
- ``events_per_run``: events one run holds (steps, and the ``log`` lines blocks and
  tasks write): a step whose logging would pass it fails with a message naming the
  quota, so one run cannot fill the server's disk;
- ``streams``: answers an organization has open on one server process at once that
  last (event streams, log follows, downloads): each holds descriptors and memory, so
  that one organization's streams cannot use up the server's open files for everyone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import attrs

from ..models.tasks import Reservation, ReservationStatus
from .errors import APIProblem

__all__ = ["ENV_PREFIX", "Quotas", "over_quota"]

ENV_PREFIX = "VI_FLOW_QUOTA_"
"""``VI_FLOW_QUOTA_PENDING_TASKS=50`` sets :attr:`Quotas.pending_tasks`."""

_HELD = (ReservationStatus.SCHEDULED, ReservationStatus.ACTIVE)


def _limit(value: object) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a whole number or 'none', got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"expected a whole number or 'none', got {value!r}") from None
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return number


@attrs.frozen
class Quotas:
    """The per-organization limits (``None``: no limit).

    Attributes:
        reservations: Reservations not yet ended (scheduled or active) per organization.
        reserved_cpus: CPUs those reservations hold together.
        reserved_gpus: GPUs those reservations hold together.
        pending_tasks: Tasks waiting to start per organization.
        events_per_run: Events one run may hold: a step logging past it fails.
        streams: Streamed answers (event streams, log follows, downloads) open at once
            per organization on one server process.
    """

    reservations: int | None = attrs.field(default=100, converter=_limit)
    reserved_cpus: int | None = attrs.field(default=None, converter=_limit)
    reserved_gpus: int | None = attrs.field(default=None, converter=_limit)
    pending_tasks: int | None = attrs.field(default=1000, converter=_limit)
    events_per_run: int | None = attrs.field(default=5_000_000, converter=_limit)
    streams: int | None = attrs.field(default=500, converter=_limit)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Quotas:
        """The defaults, changed by the ``VI_FLOW_QUOTA_<NAME>`` variables that are set.

        Raises:
            ValueError: A variable that is not a whole number or ``none``, named.
        """
        env = os.environ if env is None else env
        given: dict[str, object] = {}
        for field in attrs.fields(cls):
            name = ENV_PREFIX + field.name.upper()
            if env.get(name, "").strip():  # set and not empty
                try:
                    given[field.name] = _limit(env[name])
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return cls(**given)

    def check_reservation(self, held: Iterable[Reservation], cpus: int, gpus: int) -> None:
        """Refuse a new reservation of ``cpus``/``gpus`` over what ``held`` leaves.

        Raises:
            APIProblem: 422 ``QUOTA_EXCEEDED`` naming the quota.
        """
        live = [r for r in held if r.status in _HELD]
        over_quota("reservations", len(live) + 1, self.reservations, "reservations", 422)
        cpus_after = sum(r.cpus for r in live) + cpus
        over_quota("reserved_cpus", cpus_after, self.reserved_cpus, "reserved CPUs", 422)
        gpus_after = sum(r.gpu_count for r in live) + gpus
        over_quota("reserved_gpus", gpus_after, self.reserved_gpus, "reserved GPUs", 422)

    def check_pending_tasks(self, pending: int) -> None:
        """Refuse one more task when ``pending`` already wait.

        Raises:
            APIProblem: 429 ``QUOTA_EXCEEDED`` naming the quota.
        """
        over_quota("pending_tasks", pending + 1, self.pending_tasks, "pending tasks")

    def check_streams(self, open_now: int) -> None:
        """Refuse one more streamed answer when ``open_now`` are open.

        Raises:
            APIProblem: 429 ``QUOTA_EXCEEDED`` naming the quota.
        """
        over_quota("streams", open_now + 1, self.streams, "streams open on this server")


def over_quota(name: str, wanted: int, limit: int | None, what: str, status: int = 429) -> None:
    """Raise ``status`` ``QUOTA_EXCEEDED`` when ``wanted`` passes ``limit`` (``None``: never).

    Raises:
        APIProblem: The message names the quota, the limit and how to raise it.
    """
    if limit is None or wanted <= limit:
        return
    raise APIProblem(
        status,
        "QUOTA_EXCEEDED",
        f"{name}: this would make {wanted} {what} for the organization, over its quota of "
        f"{limit} (the server's {ENV_PREFIX}{name.upper()})",
    )
