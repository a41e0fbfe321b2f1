"""What every async resource namespace shares: the HTTP core it sends requests through,
and how a list's ``status`` filter is sent."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

from ..models._base import OpenEnum

if TYPE_CHECKING:
    from .._http import HTTPCore

S = TypeVar("S", bound=OpenEnum)


def status_query(status: S | str | Iterable[S | str] | None, kind: type[S]) -> str | None:
    """A list's ``status`` filter as the server reads it: one status or several, joined
    with commas (one the client does not know goes as it is: the server names those it
    does); ``None`` for no filter."""
    if status is None:
        return None
    values = [status] if isinstance(status, str) else status
    if isinstance(values, Iterable):
        values = list(values)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TypeError(f"status must be a status such as 'running', or several, got {status!r}")
    return ",".join(kind(v).value for v in values) or None


class AsyncResource:
    """A namespace of API calls (``client.flows``, ``client.runs``...) over one HTTP core."""

    def __init__(self, http: HTTPCore) -> None:
        self._http = http
