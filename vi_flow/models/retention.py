"""Retention: how long finished runs and tasks are kept, and what a prune removed.

:func:`parse_age` is the one reading of an age (``"30d"``, ``"12h"``, ``3600``) shared
by the CLI, the client and the server, so all three refuse the same bad values with the
same words.
"""

from __future__ import annotations

import math
import re

import attrs

from .limits import shown

__all__ = ["MAX_AGE", "PruneResult", "RetentionPolicy", "parse_age"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
MAX_AGE = 100 * 365 * 86400
"""A hundred years: an age past it is surely a mistake (and overflows a cutoff)."""


def parse_age(value: object, name: str = "olderThan") -> float:
    """An age in seconds from a number of seconds or a text such as ``"30d"``.

    Units: ``s``, ``m``, ``h``, ``d`` (days) and ``w`` (weeks); no unit means seconds.

    Raises:
        ValueError: Negative, not finite, over a hundred years or not an age; the message
            names ``name`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{name}: expected seconds or a text such as '30d', got {shown(value)}")
    if isinstance(value, str):
        found = _AGE.match(value)
        if found is None:
            raise ValueError(
                f"{name}: expected a number with an optional unit s, m, h, d or w"
                f" (such as '30d'), got {shown(value)}"
            )
        seconds = float(found[1]) * _UNITS[found[2] or "s"]
    elif isinstance(value, int) and abs(value) > MAX_AGE:
        seconds = math.inf  # float() of a huge integer would overflow
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_AGE:
        raise ValueError(f"{name}: must be between 0 and 100 years, got {value!r}")
    return seconds


@attrs.frozen
class RetentionPolicy:
    """An organization's retention: what its periodic prune removes.

    Attributes:
        organization_id: The organization.
        days: Finished runs and tasks older than this many days are pruned; ``None``
            keeps them forever.
        inherited: Whether ``days`` is the server's default (no override of its own).
    """

    organization_id: str
    days: float | None = None
    inherited: bool = True


@attrs.frozen
class PruneResult:
    """What a prune removed (or, in a dry run, would remove).

    Attributes:
        dry_run: Whether nothing was deleted, only counted.
        older_than: The age in seconds: what finished before ``now - older_than`` went.
        cutoff: That moment, in ms since the epoch.
        organizations: The organization pruned, or ``["*"]``: every one.
        runs: Finished runs (with their events, steps and tool answers).
        tasks: Finished tasks (with their mounts records).
        task_directories: Task directories removed from disk.
        idempotency_records: Saved ``Idempotency-Key`` answers.
    """

    dry_run: bool
    older_than: float
    cutoff: int
    organizations: list[str] = attrs.Factory(list)
    runs: int = 0
    tasks: int = 0
    task_directories: int = 0
    idempotency_records: int = 0
