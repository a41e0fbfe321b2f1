"""``Client``: the blocking client, one ``AsyncClient`` living on one portal thread.

Like the async client it composes its parts (the blocking resources, ``compute`` and
``platform``) and forwards seed 002's names to them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from .._client import AsyncClient, ClientState
from .._config import NOT_GIVEN, NotGiven, Timeout, shown_url
from .._forward import forward
from .._http import Sleep
from .._portal import Portal
from .compute import Compute, Platform
from .resources import Flows, Instances, Reservations, Runs, SSHKeys, Tasks, Tokens, Volumes

if TYPE_CHECKING:
    from typing_extensions import Self

    from .execution import Flow

__all__ = ["Client"]


class Client:
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
    _owner: bool

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
        portal = Portal()
        # Entered as a context of the portal, so that closing the portal (also at
        # interpreter exit for a client nobody closed) closes the async client too.
        client = AsyncClient(
            api_key=api_key,
            organization_id=organization_id,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            home=home,
            http_transport=http_transport,
            sleep=sleep,
        )
        self._owner = True
        try:
            self._wire(portal, portal.enter_async_context(client))
        except BaseException:  # a Ctrl-C meanwhile: nothing of this client stays running
            portal.close()
            raise

    def _wire(self, portal: Portal, client: AsyncClient) -> None:
        self._portal = portal
        self._async = client
        self.flows = Flows(self._async.flows, self._portal)
        self.runs = Runs(self._async.runs, self._portal)
        self.tasks = Tasks(self._async.tasks, self._portal)
        self.volumes = Volumes(self._async.volumes, self._portal)
        self.instances = Instances(self._async.instances, self._portal)
        self.reservations = Reservations(self._async.reservations, self._portal)
        self.ssh_keys = SSHKeys(self._async.ssh_keys, self._portal)
        self.tokens = Tokens(self._async.tokens, self._portal)
        self.compute = Compute(self._async.compute, self._portal)
        self.platform = Platform(self._async.platform, self._portal, self.ssh_keys)

    def with_options(
        self,
        *,
        timeout: Timeout | float | NotGiven | None = NOT_GIVEN,
        max_retries: int | None = None,
    ) -> Self:
        """Return a client with other defaults that shares this one's connection pool and
        thread (as :meth:`AsyncClient.with_options`).

        Closing the derived client does nothing; close the original.
        """
        clone = object.__new__(type(self))
        clone._owner = False
        clone._wire(
            self._portal, self._async.with_options(timeout=timeout, max_retries=max_retries)
        )
        return clone

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

    def get_provider_init(self) -> Self:
        """Seed 002's initialization interface: the client itself (``list_projects``, keys)."""
        return self

    # -- seed 002's names, forwarded to the parts that do the work --------------------

    run = forward("compute", Compute.run)
    submit = forward("compute", Compute.submit)
    status = forward("compute", Compute.status)
    cancel = forward("compute", Compute.cancel)
    get_task = forward("compute", Compute.get_task)
    list_tasks = forward("compute", Compute.list_tasks)
    logs = forward("compute", Compute.logs)
    follow_logs = forward("compute", Compute.follow_logs)
    shell = forward("compute", Compute.shell)
    ssh = forward("compute", Compute.ssh)
    resolve_ssh_endpoint = forward("compute", Compute.resolve_ssh_endpoint)
    get_task_ssh_connection_info = forward("compute", Compute.get_task_ssh_connection_info)
    wait_for_ssh = forward("compute", Compute.wait_for_ssh)
    upload_code_to_task = forward("compute", Compute.upload_code_to_task)
    create_volume = forward("compute", Compute.create_volume)
    list_volumes = forward("compute", Compute.list_volumes)
    delete_volume = forward("compute", Compute.delete_volume)
    mount_volume = forward("compute", Compute.mount_volume)
    find_instances = forward("compute", Compute.find_instances)
    normalize_instance_request = forward("compute", Compute.normalize_instance_request)
    reserve = forward("compute", Compute.reserve)
    list_reservations = forward("compute", Compute.list_reservations)
    get_reservation = forward("compute", Compute.get_reservation)
    reservation_availability = forward("compute", Compute.reservation_availability)
    list_ssh_keys = forward("compute", Compute.list_ssh_keys)
    list_platform_ssh_keys = forward("compute", Compute.list_platform_ssh_keys)
    create_platform_ssh_key = forward("compute", Compute.create_platform_ssh_key)
    delete_platform_ssh_key = forward("compute", Compute.delete_platform_ssh_key)
    ensure_default_ssh_key = forward("compute", Compute.ensure_default_ssh_key)
    get_model = forward("compute", Compute.get_model)
    provider_port = forward("platform", Platform.provider_port)
    get_remote_operations = forward("platform", Platform.get_remote_operations)
    get_ssh_key_manager = forward("platform", Platform.get_ssh_key_manager)
    get_ssh_tunnel_manager = forward("platform", Platform.get_ssh_tunnel_manager)
    get_user = forward("platform", Platform.get_user)
    get_user_teammates = forward("platform", Platform.get_user_teammates)
    list_projects = forward("platform", Platform.list_projects)
    ensure_dev_task = forward("platform", Platform.ensure_dev_task)
    dev_context = forward("platform", Platform.dev_context)

    def close(self) -> None:
        """Close connections (and an in-process server), stop the portal; idempotent.
        A client made by :meth:`with_options` leaves them to the original."""
        if self._owner:
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
        url = shown_url(self._async._settings.base_url)
        return f"Client(base_url={url!r}, state={self.state.value})"

    def __del__(self) -> None:
        # QA: a Client dropped unclosed kept its thread and connections until the process
        # exited, without a word (an AsyncClient's aiohttp session warns). They are not
        # closed here: a handle it gave out (client.flow(...)) may still be in use.
        made = getattr(self, "_async", None)  # None: its __init__ was interrupted (Ctrl-C)
        if made is not None and self._owner and made.state is ClientState.OPEN:
            warnings.warn(
                f"unclosed {self!r}: its thread and connections stay until close();"
                " use `with vi_flow.Client() as client:` or call client.close()",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
