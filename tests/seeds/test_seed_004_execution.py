"""Seed 004 (flow execution proxy): each documented method and example, sync then async.

The seed's examples: basic execution; with parameters and version; with tools and
auto-resume; ``steps``; ``events``; ``run(execution_id)``; ``execute_async``; the
version values table; and the errors it names. Where the seed says "Sync Flow cannot
iterate", vi_flow's sync ``Flow`` iterates too, and that is tested here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import vi_flow
from vi_flow import (  # the top-level names: a sync user's PausedResult is the sync one
    AsyncPausedResult,
    FlowExecutionError,
    FlowNotFoundError,
    PausedResult,
    ToolCallLimitError,
)
from vi_flow.execution import ExecuteResult
from vi_flow.models import FlowCompleted, RunStarted, StepCompleted, ToolCall, ToolResult

WEATHER_FLOW: dict[str, Any] = {
    "name": "Weather assistant",
    "inputs": [{"name": "city", "required": False, "default": "Paris"}],
    "blocks": [
        {
            "block": "tool",
            "id": "weather",
            "settings": {"tool": "get_weather", "arguments": {"city": "{{ parameters.city }}"}},
        },
        {
            "block": "template",
            "id": "answer",
            "settings": {"template": "{{ message }}: {{ steps.weather.output }}"},
        },
    ],
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def handle(tool_calls: list[ToolCall]) -> list[ToolResult]:
    """The seed's auto-resume handler: one result per call."""
    results = []
    for call in tool_calls:
        city = json.loads(call.function.arguments)["city"]
        results.append(ToolResult(tool_call_id=call.id, output=f"sunny in {city}"))
    return results


# -- sync ------------------------------------------------------------------------------


def test_sync_basic_execution(client: vi_flow.Client) -> None:
    flow = client.flow("flow_abc123")
    result = flow.execute(message="Summarize this document")
    assert isinstance(result, ExecuteResult)
    print(result.output)
    assert result.output == "model"
    assert [s.step_id for s in result.steps] == ["prepare", "train"]


def test_sync_parameters_and_version(client: vi_flow.Client) -> None:
    created = client.flows.create(WEATHER_FLOW)
    version = client.flows.publish(created.flow_id)
    flow = client.flow(created.flow_id)
    result = flow.execute(
        message="Weather", parameters={"city": "Oslo"}, version=version, tool_handler=handle
    )
    assert isinstance(result, ExecuteResult)
    assert result.output == "Weather: sunny in Oslo"
    client.flows.promote(created.flow_id, version)
    production = flow.execute(message="Prod", version="production", tool_handler=handle)
    assert isinstance(production, ExecuteResult) and production.output == "Prod: sunny in Paris"
    with pytest.raises(ValueError, match="'main'"):
        flow.execute(message="x", version="main")  # type: ignore[arg-type]
    with pytest.raises(FlowNotFoundError):
        flow.execute(message="x", version=version + 5)


def test_sync_tools_and_auto_resume(client: vi_flow.Client) -> None:
    flow = client.flow(client.flows.create(WEATHER_FLOW).flow_id)
    result = flow.execute(message="Weather?", tools=TOOLS, tool_choice="auto", tool_handler=handle)
    assert isinstance(result, ExecuteResult)
    assert result.output == "Weather?: sunny in Paris"
    paused = flow.execute(message="Weather?", tools=TOOLS)
    assert isinstance(paused, PausedResult)
    resumed = paused.resume(tool_results=handle(paused.tool_calls))
    assert isinstance(resumed, ExecuteResult) and resumed.output == result.output
    with pytest.raises(ToolCallLimitError):
        flow.execute(message="Weather?", tools=TOOLS, tool_handler=handle, max_tool_rounds=0)


def test_sync_steps_events_run(client: vi_flow.Client) -> None:
    flow = client.flow("flow_abc123")
    steps = list(flow.steps(message="hi"))
    assert [s.step_id for s in steps] == ["prepare", "train"]
    assert all(isinstance(s, StepCompleted) for s in steps)
    events = list(flow.events(message="hi"))
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], FlowCompleted)
    run = flow.run(events[0].execution_id)
    trace = run.trace()
    print(trace.status, [s.duration_ms for s in trace.steps])
    assert [s.step_id for s in trace.steps] == ["prepare", "train"]


def test_sync_execute_async(client: vi_flow.Client) -> None:
    job = client.flow("flow_abc123").execute_async(message="long job")
    print(job.execution_id)
    assert job.wait(timeout=10, poll_interval=0.02).value == "Succeeded"
    assert job.result().output == "model"


def test_sync_errors(client: vi_flow.Client) -> None:
    with pytest.raises(FlowNotFoundError):
        client.flow("flow_does_not_exist").execute(message="hi")
    bad = client.flows.create(
        {
            "name": "bad",
            "blocks": [{"block": "template", "id": "x", "settings": {"template": "{{ nope }}"}}],
        }
    )
    with pytest.raises(FlowExecutionError) as info:
        client.flow(bad.flow_id).execute(message="hi")
    assert info.value.step_id == "x"


# -- async -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_basic_and_streams(aclient: vi_flow.AsyncClient) -> None:
    flow = aclient.flow("flow_abc123")
    result = await flow.execute(message="Summarize this document")
    assert isinstance(result, ExecuteResult) and result.output == "model"
    steps = [step async for step in flow.steps(message="hi")]
    assert [s.step_id for s in steps] == ["prepare", "train"]
    events = [event async for event in flow.events(message="hi")]
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], FlowCompleted)
    run = flow.run(result.execution_id)
    trace = await run.trace()
    assert trace.execution_id == result.execution_id


@pytest.mark.anyio
async def test_async_tools_auto_resume_sync_and_async_handlers(
    aclient: vi_flow.AsyncClient,
) -> None:
    created = await aclient.flows.create(WEATHER_FLOW)
    flow = aclient.flow(created.flow_id)

    async def async_handle(tool_calls: list[ToolCall]) -> list[ToolResult]:
        return handle(tool_calls)

    for handler in (handle, async_handle):
        result = await flow.execute(
            message="W", parameters={"city": "Rome"}, tools=TOOLS, tool_handler=handler
        )
        assert isinstance(result, ExecuteResult) and result.output == "W: sunny in Rome"
    paused = await flow.execute(message="W", tools=TOOLS)
    assert isinstance(paused, AsyncPausedResult)
    resumed = await paused.resume(tool_results=handle(paused.tool_calls))
    assert isinstance(resumed, ExecuteResult)


@pytest.mark.anyio
async def test_async_execute_async_and_versions(aclient: vi_flow.AsyncClient) -> None:
    flow = aclient.flow("flow_abc123")
    job = await flow.execute_async(message="long")
    assert (await job.wait(timeout=10, poll_interval=0.02)).terminal
    version = await aclient.flows.publish("flow_abc123")
    result = await flow.execute(message="v", version=version)
    assert isinstance(result, ExecuteResult)
    for bad in ("main", "dev", 0, -1):
        with pytest.raises(ValueError, match="version"):
            await flow.execute(message="v", version=bad)  # type: ignore[arg-type]
