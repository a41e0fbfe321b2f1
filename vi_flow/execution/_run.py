"""Handles on one execution: :class:`AsyncRun` (inspect, stream, cancel) and :class:`AsyncJob`
(a run submitted with ``execute_async``: poll, wait, result).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Generator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import anyio
from typing_extensions import Self

from .._config import bad_seconds, is_number
from .._errors import FlowExecutionError, TaskTimeoutError
from .._http import HTTPCore, path
from ..models._base import to_wire
from ..models.common import Condition
from ..models.events import (
    FlowCompleted,
    RunTrace,
    StepTrace,
    StreamEvent,
    ToolCall,
)
from ..models.runs import Run
from ._loop import TimeoutArg, ToolLoop, stream_timeout
from ._results import ExecuteResult, ToolResultsArg
from ._stream import ResumableEventStream
from ._tools import coerce_tool_results, explicit_tool_results

__all__ = ["AsyncJob", "AsyncRun", "run_stream"]


def _check_id(execution_id: object) -> str:
    if not isinstance(execution_id, str) or not execution_id:
        raise ValueError(f"execution_id must be a non-empty str, got {execution_id!r}")
    return execution_id


def run_stream(
    http: HTTPCore,
    *,
    first: AbstractAsyncContextManager[aiohttp.ClientResponse] | None = None,
    execution_id: str | None = None,
    after: int | None = None,
    timeout: TimeoutArg = None,
    loop: ToolLoop | None = None,
) -> AsyncIterator[StreamEvent]:
    """Events of one run, resumed with ``Last-Event-ID`` over as many connections as needed.

    Args:
        http: The client's request loop.
        first: The connection that starts the run (``POST .../events``); later
            connections (and all of them without it) are ``GET /runs/{id}/events``.
        execution_id: The run, when known.
        after: Start after this event id.
        timeout: Bounds connecting and each idle gap.
        loop: A :class:`~vi_flow.execution._loop.ToolLoop` answering tool calls.
    """
    pending = [first] if first is not None else []

    def connect(
        stream: ResumableEventStream,
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        if pending:
            return pending.pop()
        headers = None
        if stream.last_event_id is not None:
            headers = {"Last-Event-ID": str(stream.last_event_id)}
        url = path("/runs/{}/events", stream.execution_id or "")
        return http.stream("GET", url, headers=headers, timeout=stream_timeout(timeout))

    async def still_running(stream: ResumableEventStream) -> bool:
        run = await http.request("GET", path("/runs/{}", stream.execution_id or ""), cast=Run)
        condition = run.status.condition
        return condition is None or not condition.terminal

    stream = ResumableEventStream(
        connect,
        still_running=still_running,
        sleep=http.pause,
        execution_id=execution_id,
        last_event_id=after,
        on_tool_calls=None if loop is None else loop.on_event,
    )
    return stream.__aiter__()


class AsyncRun:
    """An execution: inspect it, follow its events, cancel it.

    Get one from ``client.flow(flow_id).run(execution_id)`` (no request is made).

    Example:
        ```python
        run = client.flow("flow_abc123").run(result.execution_id)
        trace = await run.trace()
        async for event in run.events(after=0):
            print(event)
        ```

    Attributes:
        execution_id: The run id.
    """

    def __init__(self, http: HTTPCore, execution_id: str) -> None:
        self._http = http
        self.execution_id = _check_id(execution_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(execution_id={self.execution_id!r})"

    def __await__(self) -> Generator[Any, None, Self]:
        """Awaiting a handle gives the handle: the seed's ``run = await flow.run(id)`` works."""
        return self._itself().__await__()

    async def _itself(self) -> Self:
        return self

    async def get(self) -> Run:
        """Return the run as stored (spec, condition history, metadata).

        Raises:
            RunNotFoundError: No such run in this organization.
        """
        return await self._http.request("GET", path("/runs/{}", self.execution_id), cast=Run)

    async def status(self) -> Condition:
        """Return the run's current condition (``Pending`` before the first one)."""
        condition = (await self.get()).status.condition
        return condition if condition is not None else Condition.PENDING

    async def trace(self) -> RunTrace:
        """Return per-step timing and tokens (and input/output snapshots when traced)."""
        url = path("/runs/{}/trace", self.execution_id)
        return await self._http.request("GET", url, cast=RunTrace)

    async def step_trace(self, step_id: str) -> StepTrace:
        """Return the trace of one step.

        Raises:
            NotFoundError: The run has no such step.
        """
        url = path("/runs/{}/steps/{}/trace", self.execution_id, step_id)
        return await self._http.request("GET", url, cast=StepTrace)

    def events(
        self, *, after: int | None = None, timeout: TimeoutArg = None
    ) -> AsyncIterator[StreamEvent]:
        """Stream the run's events: replayed from ``after``, then live to ``FlowCompleted``.

        A finished run is replayed and the iterator ends. A dropped connection resumes
        with ``Last-Event-ID``: nothing is lost or repeated.

        Args:
            after: Start after this event id (``None`` or ``0``: from the first event).
            timeout: Bounds connecting and each idle gap, in seconds.
        """
        if after is not None and (
            not isinstance(after, int) or isinstance(after, bool) or after < 0
        ):
            raise ValueError(f"after must be an event id >= 0, got {after!r}")
        return run_stream(
            self._http, execution_id=self.execution_id, after=after or None, timeout=timeout
        )

    async def cancel(self) -> Run:
        """Cancel the run (a finished run is left as it is) and return it."""
        url = path("/runs/{}/cancel", self.execution_id)
        return await self._http.request("POST", url, cast=Run)

    async def submit_tool_results(
        self, tool_results: ToolResultsArg, *, tool_calls: Sequence[ToolCall] | None = None
    ) -> list[str]:
        """Answer a paused run's tool calls without waiting; return the accepted call ids.

        Use it while streaming without a ``tool_handler``: on ``ToolCallsRequired`` run the
        tools and send their results here; the stream goes on.

        Args:
            tool_results: ``ToolResult`` objects or dicts with ``tool_call_id``, or a
                ``{call_id: output}`` dict; plain outputs in a list need ``tool_calls``
                to know the ids.
            tool_calls: The calls being answered (``event.tool_calls``).

        Raises:
            ConflictError: The run is not paused, or a call id is unknown (named).
        """
        if tool_calls is not None:
            results = coerce_tool_results(tool_results, tool_calls)
        else:
            results = explicit_tool_results(tool_results)
        url = path("/runs/{}/tool-results", self.execution_id)
        answer = await self._http.request("POST", url, json={"toolResults": to_wire(results)})
        accepted = answer.get("accepted", []) if isinstance(answer, dict) else []
        return [str(i) for i in accepted]


class AsyncJob(AsyncRun):
    """A run submitted with ``execute_async``: it runs on the server while you do other things.

    Example:
        ```python
        job = await flow.execute_async(message="summarise the report")
        status = await job.wait(timeout=300)
        result = await job.result()
        ```

    Attributes:
        execution_id: The run id, available at once.
    """

    async def wait(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the seed API takes timeout=
        poll_interval: float = 1.0,
    ) -> Condition:
        """Poll until the run ends and return its final condition.

        Args:
            timeout: Give up after this many seconds (``None``: wait as long as it takes).
            poll_interval: Seconds between polls.

        Raises:
            TaskTimeoutError: The run had not ended after ``timeout`` seconds (with ``0``:
                when it is looked at once).
            TypeError: ``timeout`` or ``poll_interval`` is not a number.
            ValueError: ``timeout`` is negative, or ``poll_interval`` not positive.
        """
        if not is_number(poll_interval) or not poll_interval > 0:
            raise bad_seconds("poll_interval", poll_interval, "a positive number of seconds")
        if timeout is not None and (not is_number(timeout) or not timeout >= 0):
            raise bad_seconds("timeout", timeout, "a number of seconds >= 0, or None")
        if timeout is not None and timeout > 2**53:  # 10**400 passes float: as good as ever
            timeout = math.inf
        if timeout == 0:  # one look: move_on_after(0) would not look at all
            condition = await self.status()
            if condition.terminal:
                return condition
        with anyio.move_on_after(timeout) as scope:
            while True:
                condition = await self.status()
                if condition.terminal:
                    return condition
                await self._http.pause(poll_interval)
        assert scope.cancelled_caught
        raise TaskTimeoutError(
            f"run {self.execution_id} had not finished after {timeout} s; it keeps running"
            " (wait again, or cancel() it)"
        )

    async def result(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the seed API takes timeout=
        poll_interval: float = 1.0,
    ) -> ExecuteResult:
        """Wait for the run, then return its output like ``execute`` does.

        Raises:
            TaskTimeoutError: The run had not ended after ``timeout`` seconds.
            FlowExecutionError: The run failed, errored or was cancelled.
        """
        await self.wait(timeout=timeout, poll_interval=poll_interval)
        final = await self._final_event()
        if final is None or final.status is not Condition.SUCCEEDED:
            message = (final.error if final else None) or "the run did not succeed"
            step, code = (final.failed_step, final.error_code) if final else (None, None)
            raise FlowExecutionError(
                message,
                execution_id=self.execution_id,
                step_id=step,
                code=code,
                status=final.status if final else None,
            )
        trace = await self.trace()
        return ExecuteResult(
            execution_id=self.execution_id,
            output=final.output,
            usage=final.usage,
            steps=trace.steps,
        )

    async def _final_event(self) -> FlowCompleted | None:
        events = self.events()
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if isinstance(event, FlowCompleted):
                    return event
        return None
