"""The ``tool`` block: ask the client to run named tools, pausing the run until it answers.

Settings: ``tool`` (a name) with ``arguments`` (a JSON object whose strings are
templates), or ``calls``: a list of ``{"name", "arguments"}``; ``timeout`` (seconds to
wait for results, default the server's ``tool_pause_timeout``). The step pauses with
one OpenAI-style tool call per entry. The output is the single call's result output,
or the list of outputs (in call order) for several calls. An error result does not
fail the step: its output is passed on, so a flow can react to it.
"""

from __future__ import annotations

from typing import Any

import orjson

from ....models.events import ToolCall, ToolFunction
from ....models.limits import MAX_STEP_TIMEOUT, check_number
from .base import BlockContext, Pause, StepError, checked_setting

__all__ = ["tool_block"]


def _calls(ctx: BlockContext) -> list[dict[str, Any]]:
    calls = ctx.setting("calls")
    if calls is None and ctx.setting("tool") is not None:
        calls = [{"name": ctx.setting("tool"), "arguments": ctx.setting("arguments", {})}]
    if not isinstance(calls, list) or not calls:
        raise StepError(
            f"tool step {ctx.step_id!r}: settings need 'tool' (a name) or 'calls' (a list)",
            "INVALID_SETTINGS",
        )
    for i, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise StepError(
                f"tool step {ctx.step_id!r}: calls[{i}].name must be a string", "INVALID_SETTINGS"
            )
    return calls


def _tool_call(ctx: BlockContext, call: dict[str, Any]) -> ToolCall:
    arguments = call.get("arguments", {})
    text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    return ToolCall(id=ctx.new_call_id(), function=ToolFunction(name=call["name"], arguments=text))


async def tool_block(ctx: BlockContext) -> Any:
    """Pause for the configured tool calls; on resume return their outputs."""
    if ctx.resume is not None:
        outputs = [result.output for result in ctx.resume.results]
        return outputs[0] if len(outputs) == 1 else outputs
    timeout = None
    if ctx.setting("timeout") is not None:
        timeout = checked_setting(ctx, "timeout", None, check_number, 0.001, MAX_STEP_TIMEOUT)
    return Pause(tool_calls=[_tool_call(ctx, call) for call in _calls(ctx)], timeout=timeout)
