"""``AsyncFlow``: the execution proxy of one flow — execute, stream steps and events, submit jobs.

Every method checks its arguments before any request (a bad ``version``, too many tools,
a non-https attachment raise ``ValueError`` at the call). ``steps()`` and ``events()``
are plain methods returning async iterators, so argument errors surface at the call
too, not at the first ``async for`` step.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from typing_extensions import Unpack

from .._errors import APITimeoutError, FlowExecutionError, ToolCallsPendingError
from .._http import HTTPCore, path
from ..models.common import Condition
from ..models.events import (
    ExecutionOutcome,
    FlowCompleted,
    StepCompleted,
    StreamEvent,
    ToolCallsRequired,
)
from ..models.execution import ExecuteRequest, ExecutionJob
from ._loop import ToolLoop, check_rounds, request_timeout, run_goes_on, stream_timeout
from ._options import ExecuteOptions, RunInputs, check_names, request_of
from ._results import ExecuteResult, PausedResult
from ._run import AsyncJob, AsyncRun, run_stream
from ._tools import check_handler

__all__ = ["AsyncFlow"]


class AsyncFlow:
    """Executes one flow; get it from ``client.flow(flow_id)`` (no request is made).

    Example:
        ```python
        flow = client.flow("flow_abc123")
        result = await flow.execute(message="hi", version=3)
        async for step in flow.steps(message="hi"):
            print(step.step_id, step.output)
        ```

    Every execution method takes the same inputs:

    Args (shared):
        message: The user message, the flow's primary input.
        parameters: Flat dict of flow inputs (``{"name": value}``).
        block_overrides: Per-step settings for this execution, ``{step_id: {field: value}}``.
        attachments: Up to 10 https URLs handed to the blocks.
        tools: OpenAI tool definitions (at most 64) passed to ``llm`` blocks.
        tool_choice: ``"auto"``, ``"none"``, ``"required"`` or
            ``{"type": "function", "function": {"name": ...}}``.
        tool_handler: Answers tool calls so the run resumes by itself. It is called with
            the list of ``ToolCall`` of one pause and returns one result per call: a list
            in call order whose entries are ``ToolResult`` objects, dicts with
            ``tool_call_id`` (the ``ToolResult`` fields) or plain JSON-ready outputs; or
            a dict ``{call_id: output}``. ``async def`` handlers are awaited; sync ones run
            in a worker thread (they may block). A handler that raises or returns
            something else answers every call of that pause with an error result
            (``is_error=True``) and warns with :class:`ToolHandlerWarning`; the run goes on.
        max_tool_rounds: How many pauses the handler may answer (default 10); one more
            raises ``ToolCallLimitError`` and cancels the run.
        trace: Record each step's input and output in the trace (timing and tokens are
            recorded either way).
        version: ``"draft"`` (default), ``"production"`` or a published version number.
        timeout: Per-request timeout in seconds (streams: connecting and each idle gap).
            ``execute`` waits for the whole run in one request: give long runs a larger
            timeout, or use ``events()`` or ``execute_async()``.

    Attributes:
        flow_id: The flow executed.
    """

    def __init__(self, http: HTTPCore, flow_id: str) -> None:
        if not isinstance(flow_id, str) or not flow_id:
            raise ValueError(f"flow_id must be a non-empty str, got {flow_id!r}")
        self._http = http
        self.flow_id = flow_id

    def __repr__(self) -> str:
        return f"AsyncFlow(flow_id={self.flow_id!r})"

    async def execute(self, **options: Unpack[ExecuteOptions]) -> ExecuteResult | PausedResult:
        """Execute the flow to completion (or to a tool-call pause without a handler).

        Returns:
            ``ExecuteResult`` on completion; ``PausedResult`` when the run waits for tool
            calls and no ``tool_handler`` was given.

        Raises:
            ValueError: A bad ``version``, ``tools``, ``attachments``, ``tool_choice`` or
                ``max_tool_rounds`` (nothing is sent).
            TypeError: An argument of the wrong type.
            FlowNotFoundError: No such flow, or the version is not published.
            InsufficientCreditsError: The organization has no credits left.
            UnprocessableEntityError: A required parameter is missing (named).
            FlowExecutionError: The run failed; carries the failing step and the message.
            ToolCallLimitError: The handler answered ``max_tool_rounds`` pauses already.
            APITimeoutError: The ``timeout`` ran out; the run goes on, and the error's
                ``execution_id`` names it once its answer has begun (after a
                second).
        """
        request = request_of(options, ExecuteOptions, "execute")
        loop = self._loop(options)
        return await self._execute(request, loop)

    async def _execute(
        self, request: ExecuteRequest, loop: ToolLoop
    ) -> ExecuteResult | PausedResult:
        try:
            outcome = await self._http.request(
                "POST",
                path("/flows/{}/execute", self.flow_id),
                json=request.to_wire(),
                timeout=request_timeout(loop.timeout),
                cast=ExecutionOutcome,
            )
        except APITimeoutError as exc:
            if exc.execution_id is None:  # its answer had not begun: the run is not known
                raise
            raise run_goes_on(exc, exc.execution_id) from exc
        return await loop.settle(outcome)

    def events(
        self, *, cancel_on_disconnect: bool = False, **options: Unpack[ExecuteOptions]
    ) -> AsyncIterator[StreamEvent]:
        """Execute the flow and stream every event, ``RunStarted`` to ``FlowCompleted``.

        With a ``tool_handler``, each ``ToolCallsRequired`` is answered on a side request
        before it is yielded, and the stream goes on. Without one the stream yields it and
        waits; answer with ``flow.run(event.execution_id).submit_tool_results(...)``.
        A dropped connection resumes with ``Last-Event-ID``: nothing lost or repeated.
        A failed run ends with a ``FlowCompleted`` whose ``status`` says so (no raise).

        Args:
            cancel_on_disconnect: Cancel the run if this client goes away: once it has
                been gone 3 s without resuming the stream (a dropped connection resumes
                at once); by default the run keeps going and can be followed with
                ``flow.run(id).events()``.
            (others): As for :meth:`execute`.

        Raises:
            ValueError: As for :meth:`execute`, at the call.
        """
        request = request_of(options, ExecuteOptions, "events")
        if not isinstance(cancel_on_disconnect, bool):
            raise TypeError(f"cancel_on_disconnect must be a bool, got {cancel_on_disconnect!r}")
        return self._stream(request, self._loop(options), cancel_on_disconnect)

    def _stream(
        self, request: ExecuteRequest, loop: ToolLoop, cancel_on_disconnect: bool
    ) -> AsyncIterator[StreamEvent]:
        body = request.to_wire(cancelOnDisconnect=cancel_on_disconnect or None)
        first = self._http.stream(
            "POST",
            path("/flows/{}/events", self.flow_id),
            json=body,
            timeout=stream_timeout(loop.timeout),
        )
        return run_stream(self._http, first=first, timeout=loop.timeout, loop=loop)

    def steps(self, **options: Unpack[ExecuteOptions]) -> AsyncIterator[StepCompleted]:
        """Execute the flow and yield each ``StepCompleted`` as its step finishes.

        Takes the arguments of :meth:`execute`; tool calls are answered as in :meth:`events`.

        Raises:
            FlowExecutionError: The run failed (after the steps that completed).
            ToolCallsPendingError: The run waits for tool results and no ``tool_handler``
                was given (the run stays paused; see the error).
        """
        check_names(options, ExecuteOptions, "steps")
        answered = options.get("tool_handler") is not None
        return _completed_steps(self.events(**options), answered)

    async def execute_async(self, **options: Unpack[RunInputs]) -> AsyncJob:
        """Submit the flow to run on the server and return at once with a job handle.

        Takes the arguments of :meth:`execute` except ``tool_handler``,
        ``max_tool_rounds`` and ``attachments``.

        Returns:
            An ``AsyncJob`` whose ``execution_id`` is known at once.
        """
        request = request_of(options, RunInputs, "execute_async")
        job = await self._http.request(
            "POST",
            path("/flows/{}/jobs", self.flow_id),
            json=request.to_wire(),
            timeout=request_timeout(options.get("timeout")),
            cast=ExecutionJob,
        )
        return AsyncJob(self._http, job.execution_id)

    def run(self, execution_id: str) -> AsyncRun:
        """Return a handle on a previous execution of this flow (no request is made)."""
        return AsyncRun(self._http, execution_id)

    def _loop(self, options: ExecuteOptions) -> ToolLoop:
        handler = options.get("tool_handler")
        check_handler(handler)
        rounds = check_rounds(options.get("max_tool_rounds", 10))
        return ToolLoop(self._http, handler, rounds, options.get("timeout"))


async def _completed_steps(
    events: AsyncIterator[StreamEvent], answered: bool
) -> AsyncIterator[StepCompleted]:
    """The ``StepCompleted`` of ``events``; a pause for tool calls raises unless
    ``answered`` (a handler answers each before it is yielded)."""
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if isinstance(event, StepCompleted):
                yield event
            elif isinstance(event, ToolCallsRequired) and not answered:
                raise ToolCallsPendingError(
                    execution_id=event.execution_id, tool_calls=list(event.tool_calls)
                )
            elif isinstance(event, FlowCompleted) and event.status is not Condition.SUCCEEDED:
                raise FlowExecutionError(
                    event.error or f"the run ended {event.status.value}",
                    execution_id=event.execution_id,
                    step_id=event.failed_step,
                    code=event.error_code,
                    status=event.status,
                )
