"""What every async resource namespace shares: the HTTP core it sends requests through."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._http import HTTPCore


class AsyncResource:
    """A namespace of API calls (``client.flows``, ``client.runs``...) over one HTTP core."""

    def __init__(self, http: HTTPCore) -> None:
        self._http = http
