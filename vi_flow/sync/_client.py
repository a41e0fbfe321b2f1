"""``Client``: the blocking client, one ``AsyncClient`` living on one portal thread."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from .._client import AsyncClient, ClientState
from .._config import NOT_GIVEN, NotGiven, Timeout
from .._http import Sleep
from .._portal import Portal
from .compute import Instances, Reservations, SSHKeys, Tasks, Volumes
from .platform import SyncPlatformMethods
from .resources import Flows, Runs

if TYPE_CHECKING:
    from typing_extensions import Self

    from .execution import Flow

__all__ = ["Client"]


class Client(SyncPlatformMethods):
    """The blocking vi_flow client: the same API as :class:`AsyncClient`, without ``await``.

    It runs one ``AsyncClient`` on a private portal thread, so it also works from code that
    already runs an event loop (Jupyter). Ctrl-C during a call cancels the work.

    Example:
        ```python
        with vi_flow.Client() as client:
            for flow in client.flows.list().all_items():
                print(flow.flow_id)
        ```

    Args: the same as :class:`AsyncClient`.
    """

    _async: AsyncClient

    def __init__(
        self,
        *,
        api_key: str | NotGiven | None = NOT_GIVEN,
        organization_id: str | NotGiven | None = NOT_GIVEN,
        base_url: str | NotGiven | None = NOT_GIVEN,
        timeout: Timeout | float | NotGiven | None = NOT_GIVEN,
        max_retries: int | NotGiven | None = NOT_GIVEN,
        home: str | Path | NotGiven | None = NOT_GIVEN,
        sleep: Sleep | None = None,
    ) -> None:
        self._portal = Portal()
        # Entered as a context of the portal, so that closing the portal (also at
        # interpreter exit for a client nobody closed) closes the async client too.
        client = AsyncClient(
            api_key=api_key,
            organization_id=organization_id,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            home=home,
            sleep=sleep,
        )
        self._async = self._portal.enter_async_context(client)
        self.flows = Flows(self._async.flows, self._portal)
        self.runs = Runs(self._async.runs, self._portal)
        self.tasks = Tasks(self._async.tasks, self._portal)
        self.volumes = Volumes(self._async.volumes, self._portal)
        self.instances = Instances(self._async.instances, self._portal)
        self.reservations = Reservations(self._async.reservations, self._portal)
        self.ssh_keys = SSHKeys(self._async.ssh_keys, self._portal)

    @property
    def async_client(self) -> AsyncClient:
        """The ``AsyncClient`` this client drives (it lives on the portal thread)."""
        return self._async

    @property
    def state(self) -> ClientState:
        """``OPEN`` until :meth:`close`."""
        return self._async.state

    def flow(self, flow_id: str) -> Flow:
        """Return a blocking execution proxy for a flow (no request is made)."""
        from .execution import Flow

        return Flow(self._async.flow(flow_id), self._portal)

    def close(self) -> None:
        """Close connections (and an in-process server), stop the portal; idempotent."""
        self._portal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self._async._settings.base_url!r}, state={self.state.value})"
