"""Blocking ``Flow``, ``Job``, ``Run`` and ``PausedResult``: each method one call over the portal.

They wrap :class:`~vi_flow.execution.AsyncFlow`, :class:`~vi_flow.execution.AsyncJob` and
:class:`~vi_flow.execution.AsyncRun` living on the sync client's portal thread. Streams
iterate here too: ``Flow.events()`` and ``Flow.steps()`` hand events across the portal in
batches, and ``break`` closes the stream.

A sync ``tool_handler`` runs in a worker thread of the portal's loop, so it may block
and may even call this same sync client; an async handler raises ``TypeError`` before
any request (use ``vi_flow.AsyncClient`` for those).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .._portal import Portal
from ..execution import AsyncFlow, AsyncJob, AsyncRun, ExecuteResult
from ..execution import PausedResult as AsyncPausedResult
from ..execution._loop import TimeoutArg
from ..execution._request import ToolChoice, Version
from ..execution._results import ToolResultsArg
from ..execution._tools import SyncToolHandler, ToolHandlerReturn, check_handler
from ..models.common import Condition
from ..models.events import RunTrace, StepCompleted, StepTrace, StreamEvent, TokenUsage, ToolCall
from ..models.runs import Run as RunModel

__all__ = ["Flow", "Job", "PausedResult", "Run"]

# Events cross the portal in batches of up to this many: large enough that a fast stream
# costs few round trips, while a slow one still delivers each event as it arrives.
_BATCH = 1024


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

    return call


class PausedResult:
    """A run paused until the client answers its tool calls (blocking ``resume``).

    Example:
        ```python
        result = client.flow("flow_abc123").execute(message="hi", tools=tools)
        while isinstance(result, PausedResult):
            result = result.resume(tool_results=[run_tool(c) for c in result.tool_calls])
        ```

    Attributes:
        execution_id: The run id.
        step_id: The paused step.
        tool_calls: The calls to answer.
        usage: Tokens used so far.
        steps: Traces of the steps run so far.
    """

    def __init__(self, paused: AsyncPausedResult, portal: Portal) -> None:
        self._paused = paused
        self._portal = portal
        self.execution_id: str = paused.execution_id
        self.step_id: str = paused.step_id
        self.tool_calls: list[ToolCall] = paused.tool_calls
        self.usage: TokenUsage | None = paused.usage
        self.steps: list[StepTrace] = paused.steps

    def __repr__(self) -> str:
        return (
            f"PausedResult(execution_id={self.execution_id!r}, step_id={self.step_id!r},"
            f" tool_calls={self.tool_calls!r})"
        )

    def resume(self, tool_results: ToolResultsArg) -> ExecuteResult | PausedResult:
        """Answer the tool calls and wait for the run to complete or pause again.

        See :meth:`vi_flow.execution.PausedResult.resume` for the accepted shapes.
        """
        return _wrap(self._portal.call(self._paused.resume, tool_results), self._portal)


def _wrap(
    result: ExecuteResult | AsyncPausedResult, portal: Portal
) -> ExecuteResult | PausedResult:
    return PausedResult(result, portal) if isinstance(result, AsyncPausedResult) else result


class Run:
    """A previous execution, blocking: inspect it, follow its events, cancel it.

    Attributes:
        execution_id: The run id.
    """

    def __init__(self, run: AsyncRun, portal: Portal) -> None:
        self._run = run
        self._portal = portal
        self.execution_id = run.execution_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(execution_id={self.execution_id!r})"

    def get(self) -> RunModel:
        """Return the run as stored. See :meth:`AsyncRun.get`."""
        return self._portal.call(self._run.get)

    def status(self) -> Condition:
        """Return the run's current condition."""
        return self._portal.call(self._run.status)

    def trace(self) -> RunTrace:
        """Return per-step timing and tokens (and snapshots when traced)."""
        return self._portal.call(self._run.trace)

    def step_trace(self, step_id: str) -> StepTrace:
        """Return the trace of one step."""
        return self._portal.call(self._run.step_trace, step_id)

    def events(
        self, *, after: int | None = None, timeout: TimeoutArg = None
    ) -> Iterator[StreamEvent]:
        """Iterate the run's events, replayed from ``after`` then live to ``FlowCompleted``."""
        events = self._run.events(after=after, timeout=timeout)
        return self._portal.iterate(lambda: events, batch=_BATCH)

    def cancel(self) -> RunModel:
        """Cancel the run and return it."""
        return self._portal.call(self._run.cancel)

    def submit_tool_results(
        self, tool_results: ToolResultsArg, *, tool_calls: Sequence[ToolCall] | None = None
    ) -> list[str]:
        """Answer a paused run's tool calls without waiting. See :meth:`AsyncRun.submit_tool_results`."""
        return self._portal.call(self._run.submit_tool_results, tool_results, tool_calls=tool_calls)


class Job(Run):
    """A run submitted with ``Flow.execute_async``, blocking.

    Attributes:
        execution_id: The run id, available at once.
    """

    def __init__(self, job: AsyncJob, portal: Portal) -> None:
        super().__init__(job, portal)
        self._job = job

    def wait(self, *, timeout: float | None = None, poll_interval: float = 1.0) -> Condition:
        """Poll until the run ends and return its final condition.

        Raises:
            TaskTimeoutError: The run had not ended after ``timeout`` seconds.
        """
        return self._portal.call(self._job.wait, timeout=timeout, poll_interval=poll_interval)

    def result(self, *, timeout: float | None = None, poll_interval: float = 1.0) -> ExecuteResult:
        """Wait for the run and return its output. See :meth:`AsyncJob.result`."""
        return self._portal.call(self._job.result, timeout=timeout, poll_interval=poll_interval)


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

    def execute(
        self,
        *,
        message: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        block_overrides: Mapping[str, Mapping[str, Any]] | None = None,
        attachments: Sequence[str] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: ToolChoice | None = None,
        tool_handler: SyncToolHandler | None = None,
        max_tool_rounds: int = 10,
        trace: bool = False,
        version: Version = "draft",
        timeout: TimeoutArg = None,
    ) -> ExecuteResult | PausedResult:
        """Execute the flow to completion. See :meth:`AsyncFlow.execute`.

        Raises:
            TypeError: An async ``tool_handler`` (before any request).
        """
        result = self._portal.call(
            self._flow.execute,
            message=message,
            parameters=parameters,
            block_overrides=block_overrides,
            attachments=attachments,
            tools=tools,
            tool_choice=tool_choice,
            tool_handler=_sync_only(tool_handler),
            max_tool_rounds=max_tool_rounds,
            trace=trace,
            version=version,
            timeout=timeout,
        )
        return _wrap(result, self._portal)

    def events(
        self,
        *,
        message: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        block_overrides: Mapping[str, Mapping[str, Any]] | None = None,
        attachments: Sequence[str] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: ToolChoice | None = None,
        tool_handler: SyncToolHandler | None = None,
        max_tool_rounds: int = 10,
        trace: bool = False,
        version: Version = "draft",
        timeout: TimeoutArg = None,
        cancel_on_disconnect: bool = False,
    ) -> Iterator[StreamEvent]:
        """Execute the flow and iterate every event. See :meth:`AsyncFlow.events`."""
        events = self._flow.events(
            message=message,
            parameters=parameters,
            block_overrides=block_overrides,
            attachments=attachments,
            tools=tools,
            tool_choice=tool_choice,
            tool_handler=_sync_only(tool_handler),
            max_tool_rounds=max_tool_rounds,
            trace=trace,
            version=version,
            timeout=timeout,
            cancel_on_disconnect=cancel_on_disconnect,
        )
        return self._portal.iterate(lambda: events, batch=_BATCH)

    def steps(
        self,
        *,
        message: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        block_overrides: Mapping[str, Mapping[str, Any]] | None = None,
        attachments: Sequence[str] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: ToolChoice | None = None,
        tool_handler: SyncToolHandler | None = None,
        max_tool_rounds: int = 10,
        trace: bool = False,
        version: Version = "draft",
        timeout: TimeoutArg = None,
    ) -> Iterator[StepCompleted]:
        """Execute the flow and iterate each ``StepCompleted``. See :meth:`AsyncFlow.steps`."""
        steps = self._flow.steps(
            message=message,
            parameters=parameters,
            block_overrides=block_overrides,
            attachments=attachments,
            tools=tools,
            tool_choice=tool_choice,
            tool_handler=_sync_only(tool_handler),
            max_tool_rounds=max_tool_rounds,
            trace=trace,
            version=version,
            timeout=timeout,
        )
        return self._portal.iterate(lambda: steps, batch=_BATCH)

    def execute_async(
        self,
        *,
        message: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        block_overrides: Mapping[str, Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: ToolChoice | None = None,
        trace: bool = False,
        version: Version = "draft",
        timeout: TimeoutArg = None,
    ) -> Job:
        """Submit the flow and return at once with a job. See :meth:`AsyncFlow.execute_async`."""
        job = self._portal.call(
            self._flow.execute_async,
            message=message,
            parameters=parameters,
            block_overrides=block_overrides,
            tools=tools,
            tool_choice=tool_choice,
            trace=trace,
            version=version,
            timeout=timeout,
        )
        return Job(job, self._portal)

    def run(self, execution_id: str) -> Run:
        """Return a handle on a previous execution of this flow (no request is made)."""
        return Run(self._flow.run(execution_id), self._portal)
