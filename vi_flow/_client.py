"""``AsyncClient``: the async entry point that owns the connection and the resource namespaces.

The client composes its parts: the resource namespaces (``flows``, ``runs``, ``tasks``...),
``compute`` (seed 002's GPU-task methods) and ``platform`` (its escape hatches). The
seed's names (``client.run``, ``client.logs``...) are forwarded to those parts.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from ._config import (
    NOT_GIVEN,
    NotGiven,
    Settings,
    Timeout,
    check_retries,
    resolve_settings,
    shown_url,
)
from ._errors import ClientStateError
from ._forward import forward
from ._http import Connection, HTTPCore, Sleep
from .compute._facade import AsyncCompute
from .compute._ops import ComputeClient
from .compute._platform import AsyncPlatform
from .resources.flows import AsyncFlows
from .resources.instances import AsyncInstances
from .resources.reservations import AsyncReservations
from .resources.runs import AsyncRuns
from .resources.ssh_keys import AsyncSSHKeys
from .resources.tasks import AsyncTasks
from .resources.tokens import AsyncTokens
from .resources.volumes import AsyncVolumes

if TYPE_CHECKING:
    from typing_extensions import Self

    from .execution import AsyncFlow

__all__ = ["AsyncClient", "ClientState"]


class ClientState(enum.Enum):
    """Where a client is in its life; a closed client cannot be reopened."""

    OPEN = "open"
    CLOSED = "closed"


class AsyncClient:
    """The async vi_flow client.

    With nothing configured it talks to the home's local server on 127.0.0.1, starting it
    in the background when none runs (one server per home, shared by every process; see
    ``local_server`` in the configuration); give ``base_url`` (or ``VI_FLOW_BASE_URL``)
    to reach a remote server instead.

    Example:
        ```python
        async with vi_flow.AsyncClient() as client:
            page = await client.flows.list(pagination={"page_size": 50})
            result = await client.flow(page.items[0].flow_id).execute(message="hi")
        ```

    Args:
        api_key: Bearer token (``VI_FLOW_API_KEY``); the local server's admin token by default.
        organization_id: Organization to act in (``VI_FLOW_ORGANIZATION_ID``).
        base_url: ``"local"`` (default) or the server's URL ending in ``/v1``.
        timeout: A :class:`Timeout` or seconds, per call unless overridden; ``None`` for
            no limit at all (as in :meth:`with_options`).
        max_retries: Retries of a failed call (default 2).
        home: State directory of the local server (``VI_FLOW_HOME``).
        http_transport: ``"aiohttp"`` (default) or ``"stdlib"``: plain calls over
            ``http.client``, which starts faster in a short-lived process; streams still
            use aiohttp (``VI_FLOW_HTTP_TRANSPORT``).
        sleep: How to wait between retries; tests pass a fake so they never wait.
    """

    def __init__(
        self,
        *,
        api_key: str | NotGiven | None = NOT_GIVEN,
        organization_id: str | NotGiven | None = NOT_GIVEN,
        base_url: str | NotGiven | None = NOT_GIVEN,
        timeout: Timeout | float | NotGiven | None = NOT_GIVEN,
        max_retries: int | NotGiven | None = NOT_GIVEN,
        home: str | Path | NotGiven | None = NOT_GIVEN,
        http_transport: str | NotGiven | None = NOT_GIVEN,
        sleep: Sleep | None = None,
    ) -> None:
        _configure_logging()
        settings = resolve_settings(
            api_key=api_key,
            organization_id=organization_id,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            home=home,
            http_transport=http_transport,
        )
        self._init(
            HTTPCore(
                Connection(settings),
                timeout=settings.timeout,
                max_retries=settings.max_retries,
                sleep=sleep or anyio.sleep,
            ),
            owner=True,
        )

    def _init(self, http: HTTPCore, *, owner: bool) -> None:
        self.http = http
        self._owner = owner
        self._pid = os.getpid()
        self.flows = AsyncFlows(http)
        self.runs = AsyncRuns(http)
        self.tasks = AsyncTasks(http)
        self.volumes = AsyncVolumes(http)
        self.instances = AsyncInstances(http)
        self.reservations = AsyncReservations(http)
        self.ssh_keys = AsyncSSHKeys(http, self._settings.home)
        self.tokens = AsyncTokens(http)
        context = ComputeClient(self.tasks, self.ssh_keys, self._settings.home, http)
        self.compute = AsyncCompute(http, context, self.volumes, self.instances, self.reservations)
        self.platform = AsyncPlatform(self.compute)

    @property
    def _settings(self) -> Settings:
        return self.http.connection.settings

    @property
    def _sleep(self) -> Sleep:
        return self.http.sleep

    @property
    def state(self) -> ClientState:
        """``OPEN`` until :meth:`aclose`; a closed client cannot be reopened."""
        return ClientState.CLOSED if self.http.connection.closed else ClientState.OPEN

    def with_options(
        self,
        *,
        timeout: Timeout | float | NotGiven | None = NOT_GIVEN,
        max_retries: int | None = None,
    ) -> Self:
        """Return a client with other defaults that shares this one's connection pool.

        Closing the derived client does nothing; close the original.
        """
        new_timeout = None if isinstance(timeout, NotGiven) else Timeout.coerce(timeout)
        # checked as the constructor checks it (QA: -3, "x" and 2.5 were taken, and "x"
        # failed as a TypeError inside the first retry)
        max_retries = None if max_retries is None else check_retries(max_retries)
        clone = object.__new__(type(self))
        clone._init(
            self.http.with_options(timeout=new_timeout, max_retries=max_retries), owner=False
        )
        return clone

    def flow(self, flow_id: str) -> AsyncFlow:
        """Return an execution proxy for a flow (no request is made)."""
        from .execution import AsyncFlow

        return AsyncFlow(self.http, flow_id)

    def get_provider_init(self) -> Self:
        """Seed 002's initialization interface: the client itself (``list_projects``, keys)."""
        return self

    # -- seed 002's names, forwarded to the parts that do the work --------------------

    run = forward("compute", AsyncCompute.run)
    submit = forward("compute", AsyncCompute.submit)
    status = forward("compute", AsyncCompute.status)
    cancel = forward("compute", AsyncCompute.cancel)
    get_task = forward("compute", AsyncCompute.get_task)
    list_tasks = forward("compute", AsyncCompute.list_tasks)
    logs = forward("compute", AsyncCompute.logs)
    follow_logs = forward("compute", AsyncCompute.follow_logs)
    shell = forward("compute", AsyncCompute.shell)
    ssh = forward("compute", AsyncCompute.ssh)
    resolve_ssh_endpoint = forward("compute", AsyncCompute.resolve_ssh_endpoint)
    get_task_ssh_connection_info = forward("compute", AsyncCompute.get_task_ssh_connection_info)
    wait_for_ssh = forward("compute", AsyncCompute.wait_for_ssh)
    upload_code_to_task = forward("compute", AsyncCompute.upload_code_to_task)
    create_volume = forward("compute", AsyncCompute.create_volume)
    list_volumes = forward("compute", AsyncCompute.list_volumes)
    delete_volume = forward("compute", AsyncCompute.delete_volume)
    mount_volume = forward("compute", AsyncCompute.mount_volume)
    find_instances = forward("compute", AsyncCompute.find_instances)
    normalize_instance_request = forward("compute", AsyncCompute.normalize_instance_request)
    reserve = forward("compute", AsyncCompute.reserve)
    list_reservations = forward("compute", AsyncCompute.list_reservations)
    get_reservation = forward("compute", AsyncCompute.get_reservation)
    reservation_availability = forward("compute", AsyncCompute.reservation_availability)
    list_ssh_keys = forward("compute", AsyncCompute.list_ssh_keys)
    list_platform_ssh_keys = forward("compute", AsyncCompute.list_platform_ssh_keys)
    create_platform_ssh_key = forward("compute", AsyncCompute.create_platform_ssh_key)
    delete_platform_ssh_key = forward("compute", AsyncCompute.delete_platform_ssh_key)
    ensure_default_ssh_key = forward("compute", AsyncCompute.ensure_default_ssh_key)
    get_model = forward("compute", AsyncCompute.get_model)
    provider_port = forward("platform", AsyncPlatform.provider_port)
    get_remote_operations = forward("platform", AsyncPlatform.get_remote_operations)
    get_ssh_key_manager = forward("platform", AsyncPlatform.get_ssh_key_manager)
    get_ssh_tunnel_manager = forward("platform", AsyncPlatform.get_ssh_tunnel_manager)
    get_user = forward("platform", AsyncPlatform.get_user)
    get_user_teammates = forward("platform", AsyncPlatform.get_user_teammates)
    list_projects = forward("platform", AsyncPlatform.list_projects)
    ensure_dev_task = forward("platform", AsyncPlatform.ensure_dev_task)
    dev_context = forward("platform", AsyncPlatform.dev_context)

    async def aclose(self) -> None:
        """Close connections (and an in-process server this client holds); idempotent.

        The home's background server keeps running, with the work it was given.
        """
        if self._owner:
            await self.http.connection.aclose()

    async def __aenter__(self) -> Self:
        if self.state is ClientState.CLOSED:
            raise ClientStateError("this client is closed; create a new one")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        url = shown_url(self._settings.base_url)
        return f"AsyncClient(base_url={url!r}, state={self.state.value})"


_logging_configured = False


def _configure_logging() -> None:
    """Honour ``VI_FLOW_LOG=debug|info``: log requests to stderr (tokens are never logged)."""
    global _logging_configured
    level = os.environ.get("VI_FLOW_LOG", "").upper()
    if _logging_configured or level not in ("DEBUG", "INFO"):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("vi_flow")
    logger.addHandler(handler)
    logger.setLevel(level)
    _logging_configured = True
