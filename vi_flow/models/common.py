"""Types shared by every resource: metadata, conditions, pagination parameters, pages."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import attrs

from ._base import OpenEnum

__all__ = [
    "MAX_PAGE_SIZE",
    "Condition",
    "Page",
    "PaginationParams",
    "ResourceCondition",
    "ResourceMetadata",
]

T = TypeVar("T")

MAX_PAGE_SIZE = 1000


class Condition(OpenEnum):
    """The state of a run. Unknown values from a newer server are kept, not rejected."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ERROR = "Error"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        """Whether a run in this state will not change any more."""
        return self in _TERMINAL


_TERMINAL = frozenset({Condition.SUCCEEDED, Condition.FAILED, Condition.ERROR, Condition.CANCELLED})


@attrs.frozen
class ResourceCondition:
    """One entry of a run's condition history.

    Attributes:
        condition: The state entered.
        message: A human sentence about why (for example the failing step).
        reason: A short machine-readable reason, such as ``ServerRestarted``.
        last_transition_time: When the state was entered, in ms since the epoch.
    """

    condition: Condition
    last_transition_time: int = 0
    message: str | None = None
    reason: str | None = None


@attrs.frozen
class ResourceMetadata:
    """Bookkeeping every resource carries; times are milliseconds since the epoch.

    Attributes:
        time_created: Creation time in ms since the epoch.
        last_updated: Last change in ms since the epoch.
        generation: Increments on every change of the spec.
    """

    time_created: int
    last_updated: int
    generation: int = 1


def _check_page_size(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"page_size must be an int, got {value!r}")
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {value}")


@attrs.frozen
class PaginationParams:
    """How to page through a list.

    Args:
        page_size: Items per page, 1 to 1000.
        page_token: Where to start; ``None`` for the first page.

    Raises:
        ValueError: ``page_size`` is out of range (checked before any request).
    """

    page_size: int = attrs.field(default=100, validator=_check_page_size)
    page_token: str | None = None

    @classmethod
    def coerce(cls, value: PaginationParams | dict[str, Any] | None) -> PaginationParams:
        """Accept ``PaginationParams``, a dict of its fields, or ``None`` (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"page_size", "page_token"}
            if unknown:
                raise ValueError(f"unknown pagination option(s): {', '.join(sorted(unknown))}")
            return cls(**value)
        raise TypeError(f"pagination must be PaginationParams or dict, got {type(value).__name__}")


@attrs.frozen
class Page(Generic[T]):
    """One page of a list as the server sent it.

    Attributes:
        items: The resources on this page.
        next_page: The token of the next page, ``None`` on the last one.
    """

    items: list[T]
    next_page: str | None = None
