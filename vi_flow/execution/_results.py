"""What an execution returns: :class:`ExecuteResult` when it completed, :class:`PausedResult` when
it waits for client-side tool calls (and no ``tool_handler`` was given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeAlias

import attrs

from ..models.common import Condition
from ..models.events import StepTrace, TokenUsage, ToolCall

__all__ = ["ExecuteResult", "PausedResult", "Resumer", "ToolResultsArg"]

ToolResultsArg: TypeAlias = Sequence[Any] | Mapping[str, Any]
"""Tool results as ``resume`` accepts them (see :mod:`vi_flow.execution._tools`)."""


@attrs.frozen
class ExecuteResult:
    """A run that completed.

    Attributes:
        execution_id: The run id; ``flow.run(execution_id)`` inspects it later.
        output: The flow's output (the last step's).
        usage: Tokens the run used, when an ``llm`` step reported them.
        steps: Per-step traces: timing, tokens, and input/output with ``trace=True``.
        status: Always ``Succeeded``.
        tool_rounds: How many times the ``tool_handler`` answered tool calls.
    """

    execution_id: str
    output: Any = None
    usage: TokenUsage | None = None
    steps: list[StepTrace] = attrs.Factory(list)
    status: Condition = Condition.SUCCEEDED
    tool_rounds: int = 0


class Resumer(Protocol):
    """What a :class:`PausedResult` resumes through (the execution's tool loop)."""

    async def resume(
        self, paused: PausedResult, tool_results: ToolResultsArg
    ) -> ExecuteResult | PausedResult:
        """Send ``tool_results`` and return what the run does next."""


@attrs.frozen
class PausedResult:
    """A run paused until the client answers its tool calls.

    Example:
        ```python
        result = await flow.execute(message="weather in Oslo?", tools=tools)
        while isinstance(result, PausedResult):
            outputs = [run_tool(call) for call in result.tool_calls]
            result = await result.resume(tool_results=outputs)
        print(result.output)
        ```

    Attributes:
        execution_id: The run id.
        step_id: The paused step.
        tool_calls: The calls to answer.
        usage: Tokens used so far.
        steps: Traces of the steps run so far.
    """

    execution_id: str
    step_id: str
    tool_calls: list[ToolCall]
    usage: TokenUsage | None = None
    steps: list[StepTrace] = attrs.Factory(list)
    _resumer: Resumer | None = attrs.field(default=None, repr=False, eq=False, alias="resumer")

    async def resume(self, tool_results: ToolResultsArg) -> ExecuteResult | PausedResult:
        """Answer the tool calls and wait for the run to complete or pause again.

        Args:
            tool_results: One result per call: a list in the order of ``tool_calls``
                (``ToolResult`` objects, dicts with ``tool_call_id``, or plain outputs),
                or a dict ``{call_id: output}``. Sending the exact same results twice
                runs the continuation once.

        Returns:
            ``ExecuteResult`` when the run completed, ``PausedResult`` when it paused again.

        Raises:
            TypeError: ``tool_results`` does not answer every call exactly once.
            FlowExecutionError: The run failed after resuming.
            ConflictError: The run is not paused at these calls any more.
        """
        if self._resumer is None:
            raise RuntimeError("this PausedResult was built by hand and cannot resume")
        return await self._resumer.resume(self, tool_results)
