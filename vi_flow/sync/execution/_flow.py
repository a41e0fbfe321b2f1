"""The blocking ``Flow`` over :class:`~vi_flow.execution.AsyncFlow`.

A sync ``tool_handler`` runs in a worker thread of the portal's loop, so it may block
and may even call this same sync client; an async handler raises ``TypeError`` before
any request (use ``vi_flow.AsyncClient`` for those).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import cast

from typing_extensions import Unpack

from ..._portal import Portal
from ...execution import AsyncFlow, ExecuteResult
from ...execution._options import ExecuteOptions, RunInputs, SyncExecuteOptions, check_names
from ...execution._tools import OwnThread, SyncToolHandler, ToolHandlerReturn, check_handler
from ...models.events import StepCompleted, StreamEvent, ToolCall
from ._results import PausedResult, _wrap
from ._run import _BATCH, Job, Run, iterate_events

__all__ = ["Flow"]


def _sync_only(handler: SyncToolHandler | None) -> SyncToolHandler | None:
    """Check a sync Flow's handler; make an awaitable it returns a handler error."""
    check_handler(handler, allow_async=False)
    if handler is None:
        return None
    user = handler

    def call(calls: list[ToolCall]) -> ToolHandlerReturn:
        returned = user(calls)
        if inspect.isawaitable(returned):
            close = getattr(returned, "close", None)
            if close is not None:
                close()
            raise TypeError("the sync Flow's tool_handler returned an awaitable; make it sync")
        return returned

    return OwnThread(call)


def _async_options(options: SyncExecuteOptions, method: str) -> ExecuteOptions:
    """The async twin's options: the sync handler checked and wrapped (see :func:`_sync_only`)."""
    check_names(options, SyncExecuteOptions, method)
    converted = cast("ExecuteOptions", dict(options))
    if "tool_handler" in options:
        converted["tool_handler"] = _sync_only(options["tool_handler"])
    return converted


class Flow:
    """Executes one flow, blocking; get it from ``client.flow(flow_id)``.

    The same methods and arguments as :class:`~vi_flow.execution.AsyncFlow`, except
    that ``tool_handler`` must be a plain (sync) function; it runs in a worker thread.

    Example:
        ```python
        with vi_flow.Client() as client:
            flow = client.flow("flow_abc123")
            result = flow.execute(message="hi", version=3)
            for event in flow.events(message="hi"):
                print(event)
        ```

    Attributes:
        flow_id: The flow executed.
    """

    def __init__(self, flow: AsyncFlow, portal: Portal) -> None:
        self._flow = flow
        self._portal = portal
        self.flow_id = flow.flow_id

    def __repr__(self) -> str:
        return f"Flow(flow_id={self.flow_id!r})"

    def execute(self, **options: Unpack[SyncExecuteOptions]) -> ExecuteResult | PausedResult:
        """Execute the flow to completion. See :meth:`AsyncFlow.execute`.

        Raises:
            TypeError: An async ``tool_handler`` (before any request).
        """
        result = self._portal.call(self._flow.execute, **_async_options(options, "execute"))
        return _wrap(result, self._portal)

    def events(
        self, *, cancel_on_disconnect: bool = False, **options: Unpack[SyncExecuteOptions]
    ) -> Iterator[StreamEvent]:
        """Execute the flow and iterate every event. See :meth:`AsyncFlow.events`."""
        events = self._flow.events(
            cancel_on_disconnect=cancel_on_disconnect, **_async_options(options, "events")
        )
        return iterate_events(self._portal, events)

    def steps(self, **options: Unpack[SyncExecuteOptions]) -> Iterator[StepCompleted]:
        """Execute the flow and iterate each ``StepCompleted``. See :meth:`AsyncFlow.steps`."""
        steps = self._flow.steps(**_async_options(options, "steps"))
        return self._portal.iterate(lambda: steps, batch=_BATCH)

    def execute_async(self, **options: Unpack[RunInputs]) -> Job:
        """Submit the flow and return at once with a job. See :meth:`AsyncFlow.execute_async`."""
        return Job(self._portal.call(self._flow.execute_async, **options), self._portal)

    def run(self, execution_id: str) -> Run:
        """Return a handle on a previous execution of this flow (no request is made)."""
        return Run(self._flow.run(execution_id), self._portal)
