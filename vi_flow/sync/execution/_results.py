"""The blocking ``PausedResult``: answer a paused run's tool calls with one call over the portal."""

from __future__ import annotations

from ..._portal import Portal
from ...execution import ExecuteResult
from ...execution import PausedResult as AsyncPausedResult
from ...execution._results import ToolResultsArg
from ...models.events import StepTrace, TokenUsage, ToolCall

__all__ = ["PausedResult"]


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
