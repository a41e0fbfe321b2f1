"""``vi-flow runs resume``: answer a paused run's tool calls from the command line.

``--tool-result CALL_ID=JSON`` answers one call by its id; each value is checked as JSON
before anything is sent. Without ``--tool-result`` on a terminal, the run's pending calls
are read from its events and each is asked for in turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..models.events import ToolCall, ToolResult
    from ._state import CliState

__all__ = ["parse_call_results", "pending_calls", "prompt_results"]

#: Seconds without a new event after which the replay of a paused run is taken as done.
QUIET_S = 0.5


def _json_value(call_id: str, raw: str) -> Any:
    import orjson

    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(
            f"the result for call {call_id!r} is not JSON: {raw!r} ({exc}); "
            f"quote a string, for example {call_id}='\"sunny\"'",
            param_hint="'--tool-result'",
        ) from None


def parse_call_results(values: Iterable[str]) -> list[ToolResult]:
    """``CALL_ID=JSON`` strings as tool results, every value checked before any request.

    Raises:
        click.BadParameter: No ``=``, an empty call id, a call id given twice, or a value
            that is not JSON (each names the call id).
    """
    from ..models.events import ToolResult

    results: dict[str, ToolResult] = {}
    for item in values:
        call_id, sep, raw = item.partition("=")
        call_id = call_id.strip()
        if not sep or not call_id:
            raise click.BadParameter(
                f"{item!r} is not CALL_ID=JSON (for example call_1='{{\"temp_c\": 21}}')",
                param_hint="'--tool-result'",
            )
        if call_id in results:
            raise click.BadParameter(
                f"call {call_id!r} answered twice", param_hint="'--tool-result'"
            )
        results[call_id] = ToolResult(tool_call_id=call_id, output=_json_value(call_id, raw))
    return list(results.values())


def pending_calls(cli: CliState, run_id: str) -> list[ToolCall]:
    """The tool calls a paused run waits for (``[]`` when it waits for none).

    Replays the run's events: the calls of the last ``tool_calls_required`` are pending
    when no step event came after it (an answered pause is followed by the step going on).
    """
    import anyio

    from .. import AsyncClient

    kwargs: dict[str, Any] = {}
    if cli.base_url:
        kwargs["base_url"] = cli.base_url
    if cli.api_key:
        kwargs["api_key"] = cli.api_key

    async def read() -> list[ToolCall]:
        async with AsyncClient(**kwargs) as client:
            run = await client.runs.get(run_id)
            events = client.flow(run.spec.flow_id).run(run_id).events()
            return await _last_pause(events)

    return anyio.run(read)


async def _last_pause(events: Any) -> list[ToolCall]:
    import contextlib

    import anyio

    from ..models.events import FlowCompleted, LogLine, StepPaused, ToolCallsRequired

    calls: list[ToolCall] = []
    async with contextlib.aclosing(events):
        while True:
            with anyio.move_on_after(QUIET_S if calls else 30):
                event = await events.__anext__()
                if isinstance(event, FlowCompleted):
                    return []
                if isinstance(event, ToolCallsRequired):
                    calls = list(event.tool_calls)
                elif not isinstance(event, (StepPaused, LogLine)):
                    calls = []
                continue
            return calls


def prompt_results(calls: list[ToolCall]) -> list[ToolResult]:
    """Ask for each call's result on the terminal (JSON, asked again until it parses)."""
    from ..models.events import ToolResult

    results = []
    for call in calls:
        click.echo(f"{call.id}: {call.function.name}({call.function.arguments})", err=True)
        while True:
            raw = click.prompt(f"result for {call.id} (JSON)", err=True)
            try:
                value = _json_value(call.id, raw)
            except click.BadParameter as exc:
                click.echo(exc.format_message(), err=True)
                continue
            results.append(ToolResult(tool_call_id=call.id, output=value))
            break
    return results
