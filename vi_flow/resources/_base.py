"""What every async resource namespace shares: the client's HTTP core."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._client import AsyncClient
    from .._http import HTTPCore


class AsyncResource:
    """A namespace of API calls (``client.flows``, ``client.runs``...) bound to one client."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @property
    def _http(self) -> HTTPCore:
        return self._client.http
