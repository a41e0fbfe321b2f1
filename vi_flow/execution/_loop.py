"""The tool-call loop of one execution: answer pauses with the handler, bounded by ``max_tool_rounds``.

:class:`ToolLoop` turns the server's :class:`~vi_flow.models.ExecutionOutcome` into an
:class:`ExecuteResult`, a :class:`PausedResult` (no handler) or a
:class:`~vi_flow.FlowExecutionError`; with a handler it answers each pause through
``POST /v1/runs/{id}/tool-results?wait=true`` until the run completes. Streams use the
same loop to answer ``tool_calls_required`` events on a side request.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, TypeAlias

from .._config import NOT_GIVEN, NotGiven, Timeout
from .._errors import (
    APIError,
    APITimeoutError,
    ConflictError,
    FlowExecutionError,
    ToolCallLimitError,
)
from .._http import HTTPCore, path
from ..models._base import to_wire
from ..models.common import Condition
from ..models.events import ExecutionOutcome, ToolCall, ToolCallsRequired, ToolResult
from ..models.runs import Run
from ._results import ExecuteResult, PausedResult, ToolResultsArg
from ._tools import ToolHandler, call_tool_handler, coerce_tool_results

__all__ = ["TimeoutArg", "ToolLoop", "check_rounds", "request_timeout", "stream_timeout"]

log = logging.getLogger("vi_flow")

TimeoutArg: TypeAlias = Timeout | float | None
"""A per-call timeout: seconds, a :class:`~vi_flow.Timeout`, or ``None`` for the client's."""


def request_timeout(timeout: TimeoutArg) -> Timeout | float | NotGiven:
    """The client's default when ``None``, else ``timeout`` as given."""
    return NOT_GIVEN if timeout is None else timeout


def stream_timeout(timeout: TimeoutArg) -> Timeout | NotGiven:
    """For streams a number bounds connecting and each idle gap, never the whole stream."""
    if timeout is None:
        return NOT_GIVEN
    if isinstance(timeout, Timeout):
        return timeout
    seconds = Timeout.coerce(timeout)
    return Timeout(connect=seconds.connect, read=seconds.read, total=None)


def check_rounds(max_tool_rounds: object) -> int:
    """Return ``max_tool_rounds`` when it is an int >= 0.

    Raises:
        ValueError: Anything else.
    """
    if not isinstance(max_tool_rounds, int) or isinstance(max_tool_rounds, bool):
        raise ValueError(f"max_tool_rounds must be an int, got {max_tool_rounds!r}")
    if max_tool_rounds < 0:
        raise ValueError(f"max_tool_rounds must be 0 or more, got {max_tool_rounds}")
    return max_tool_rounds


def run_goes_on(exc: APITimeoutError, execution_id: str) -> APITimeoutError:
    """``exc`` naming the run it leaves going on: a ``timeout`` bounds the call, not the
    run, and the caller of ``execute`` has no other way to learn its id."""
    return APITimeoutError(
        f"{exc.message}; run {execution_id} goes on: follow it with"
        f" flow.run({execution_id!r}).events(), or stop it with .cancel()",
        request_id=exc.request_id,
        execution_id=execution_id,
    )


class ToolLoop:
    """Answers one execution's tool calls and settles its outcome.

    Args:
        http: The client's request loop.
        handler: The ``tool_handler``, or ``None`` to hand pauses back to the caller.
        max_tool_rounds: How many pauses the handler may answer.
        timeout: The per-request timeout.
        allow_async: Whether an awaitable from the handler is awaited (``False`` for
            the sync ``Flow``).
    """

    def __init__(
        self,
        http: HTTPCore,
        handler: ToolHandler | None,
        max_tool_rounds: int = 10,
        timeout: TimeoutArg = None,
        *,
        allow_async: bool = True,
    ) -> None:
        self.http = http
        self.handler = handler
        self.max_tool_rounds = max_tool_rounds
        self.timeout = timeout
        self.allow_async = allow_async
        self.rounds = 0

    async def settle(self, outcome: ExecutionOutcome) -> ExecuteResult | PausedResult:
        """Follow an outcome through every handled pause to its result."""
        while outcome.state == "paused" and self.handler is not None:
            results = await self.answer(outcome.execution_id, outcome.tool_calls)
            outcome = await self.post(outcome.execution_id, results, step_id=outcome.step_id)
        return self._result(outcome)

    async def resume(
        self, paused: PausedResult, tool_results: ToolResultsArg
    ) -> ExecuteResult | PausedResult:
        """Send the caller's results for a pause (``PausedResult.resume``)."""
        results = coerce_tool_results(tool_results, paused.tool_calls)
        outcome = await self.post(paused.execution_id, results, step_id=paused.step_id)
        return await self.settle(outcome)

    async def on_event(self, event: ToolCallsRequired) -> None:
        """Answer a streamed ``tool_calls_required`` on a side request (with a handler)."""
        if self.handler is None:
            return
        results = await self.answer(event.execution_id, event.tool_calls)
        try:
            await self.post_nowait(event.execution_id, results)
        except ConflictError:  # the run stopped waiting (timed out, cancelled) meanwhile:
            ended = await self._ended(event.execution_id, step_id=event.step_id)
            if ended is None:  # its end is on the stream
                raise

    async def _ended(
        self, execution_id: str, *, failed_only: bool = False, step_id: str | None = None
    ) -> FlowExecutionError | None:
        """The failure of ``execution_id`` when it has ended (but for a success, with
        ``failed_only``), else None.

        Results sent after the run stopped waiting for them (a handler slower than the
        step's ``timeout``) answer 409; what the caller needs is how the run ended. It
        ended at the paused step ``step_id``, the one answered (a timeout, a cancel).
        """
        run = await self.http.request("GET", path("/runs/{}", execution_id), cast=Run)
        last = run.status.conditions[-1] if run.status.conditions else None
        if last is None or not last.condition.terminal:
            return None
        if failed_only and last.condition is Condition.SUCCEEDED:
            return None
        why = last.message or f"the run ended {last.condition.value}"
        reason = f" ({last.reason})" if last.reason else ""
        code = _REASON_CODES.get(last.reason or "")  # QA AG: the error had neither
        return FlowExecutionError(
            f"{why}{reason}",
            execution_id=execution_id,
            step_id=step_id,
            code=code,
            status=last.condition,
        )

    async def answer(self, execution_id: str, calls: list[ToolCall]) -> list[ToolResult]:
        """Run the handler for one pause, counting the round.

        Raises:
            ToolCallLimitError: The handler already answered ``max_tool_rounds`` pauses;
                the run is cancelled (best effort) so it does not wait forever.
        """
        if self.rounds >= self.max_tool_rounds:
            await self._cancel(execution_id)
            raise ToolCallLimitError(
                f"run {execution_id} asked for tools again after {self.rounds} round(s);"
                f" max_tool_rounds={self.max_tool_rounds} (the run was cancelled)",
                execution_id=execution_id,
                rounds=self.rounds,
            )
        self.rounds += 1
        assert self.handler is not None
        return await call_tool_handler(self.handler, calls, allow_async=self.allow_async)

    async def post(
        self, execution_id: str, results: list[ToolResult], *, step_id: str | None = None
    ) -> ExecutionOutcome:
        """``POST /runs/{id}/tool-results?wait=true``: send results, get the next outcome.

        Raises:
            FlowExecutionError: The run ended before the results came (see :meth:`_ended`).
        """
        try:
            return await self.http.request(
                "POST",
                path("/runs/{}/tool-results", execution_id),
                json={"toolResults": to_wire(results)},
                params={"wait": True},
                timeout=request_timeout(self.timeout),
                cast=ExecutionOutcome,
            )
        except APITimeoutError as exc:
            raise run_goes_on(exc, execution_id) from exc
        except ConflictError:
            # a run that succeeded was answered by another client meanwhile: the 409 says so
            ended = await self._ended(execution_id, failed_only=True, step_id=step_id)
            if ended is None:
                raise
            raise ended from None

    async def post_nowait(self, execution_id: str, results: list[ToolResult]) -> None:
        """``POST /runs/{id}/tool-results``: send results while a stream goes on."""
        await self.http.request(
            "POST",
            path("/runs/{}/tool-results", execution_id),
            json={"toolResults": to_wire(results)},
            timeout=request_timeout(self.timeout),
        )

    async def _cancel(self, execution_id: str) -> None:
        with contextlib.suppress(APIError):
            await self.http.request("POST", path("/runs/{}/cancel", execution_id))

    def _result(self, outcome: ExecutionOutcome) -> ExecuteResult | PausedResult:
        if outcome.state == "completed":
            return ExecuteResult(
                execution_id=outcome.execution_id,
                output=outcome.output,
                usage=outcome.usage,
                steps=outcome.steps,
                tool_rounds=self.rounds,
            )
        if outcome.state == "paused":
            return PausedResult(
                execution_id=outcome.execution_id,
                step_id=outcome.step_id or "",
                tool_calls=outcome.tool_calls,
                usage=outcome.usage,
                steps=outcome.steps,
                resumer=self,
            )
        raise _failure(outcome)


_REASON_CODES = {"ToolResultsTimeout": "TOOL_RESULTS_TIMEOUT"}
"""A run's end reason -> the code its ``flow_completed`` carries, where one does."""


def _failure(outcome: ExecutionOutcome) -> FlowExecutionError:
    message: Any = outcome.error
    if not message:
        status = outcome.status.value if outcome.status is not None else outcome.state
        message = f"the run ended {status}"
    return FlowExecutionError(
        str(message),
        execution_id=outcome.execution_id,
        step_id=outcome.failed_step,
        code=outcome.error_code,
        status=outcome.status,
    )
