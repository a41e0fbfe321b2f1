"""AsyncFlow.events/steps and AsyncRun.events against the local server, tool calls included."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import vi_flow
from vi_flow._errors import FlowExecutionError
from vi_flow.execution import ToolHandlerWarning
from vi_flow.models import (
    Condition,
    FlowCompleted,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    StreamEvent,
    ToolCall,
    ToolCallsRequired,
)

from .conftest import ASK, FAIL_FLOW, GREET, LOOP_FLOW, TOOL_FLOW, new_flow

pytestmark = pytest.mark.anyio


async def collect(events: Any) -> list[StreamEvent]:
    return [event async for event in events]


async def test_events_from_run_started_to_flow_completed(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, {"name": "two", "blocks": [GREET, GREET | {"id": "again"}]})
    events = await collect(flow.events(message="Ada"))
    assert isinstance(events[0], RunStarted) and events[0].flow_id == flow.flow_id
    assert isinstance(events[-1], FlowCompleted)
    assert events[-1].status is Condition.SUCCEEDED
    assert events[-1].output == "Hello Ada"
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    started = [e for e in events if isinstance(e, StepStarted)]
    assert [(s.step_id, s.index) for s in started] == [("greet", 0), ("again", 1)]


async def test_steps_yields_completed_steps(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    steps = await collect(flow.steps(message="m", tool_handler=lambda calls: ["out"]))
    assert [s.step_id for s in steps] == ["greet", "ask", "final"]
    assert all(isinstance(s, StepCompleted) for s in steps)
    assert steps[-1].output == "got out"


async def test_steps_without_a_handler_raise_at_a_pause_instead_of_waiting(
    aclient: vi_flow.AsyncClient,
) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    seen: list[str] = []
    with pytest.raises(vi_flow.ToolCallsPendingError) as info:
        with anyio.fail_after(20):  # it used to wait for the server's pause timeout (1 h)
            async for step in flow.steps(message="m"):
                seen.append(step.step_id)  # noqa: PERF401 - the list must survive the raise
    assert seen == ["greet"]
    error = info.value
    assert [c.function.name for c in error.tool_calls] and error.execution_id in str(error)
    run = flow.run(error.execution_id)  # the run stays paused: the error says how to go on
    await run.submit_tool_results(["late"], tool_calls=error.tool_calls)
    events = await collect(run.events())
    assert isinstance(events[-1], FlowCompleted) and events[-1].output == "got late"


async def test_steps_of_failed_run_raise_after_completed_ones(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, FAIL_FLOW)
    seen: list[str] = []
    with pytest.raises(FlowExecutionError) as info:
        async for step in flow.steps(message="m"):
            seen.append(step.step_id)  # noqa: PERF401 - the list must survive the raise
    assert seen == ["greet"]
    assert info.value.step_id == "broken"


async def test_events_of_failed_run_end_with_status(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, FAIL_FLOW)
    events = await collect(flow.events(message="m"))
    failed = [e for e in events if isinstance(e, StepFailed)]
    assert [f.step_id for f in failed] == ["broken"]
    last = events[-1]
    assert isinstance(last, FlowCompleted)
    assert last.status is Condition.FAILED and last.failed_step == "broken"


async def test_events_answer_tool_calls_without_ending_the_stream(
    aclient: vi_flow.AsyncClient,
) -> None:
    calls: list[ToolCall] = []

    async def handler(batch: list[ToolCall]) -> list[Any]:
        calls.extend(batch)
        return [len(calls)]

    flow = await new_flow(aclient, LOOP_FLOW)
    events = await collect(flow.events(tool_handler=handler))
    required = [e for e in events if isinstance(e, ToolCallsRequired)]
    assert len(required) == 3 == len(calls)
    last = events[-1]
    assert isinstance(last, FlowCompleted) and last.output == 3


async def test_events_handler_exception_warns_and_goes_on(aclient: vi_flow.AsyncClient) -> None:
    def broken(calls: list[ToolCall]) -> list[Any]:
        raise RuntimeError("tool down")

    flow = await new_flow(aclient, TOOL_FLOW)
    with pytest.warns(ToolHandlerWarning, match="tool down"):
        events = await collect(flow.events(message="m", tool_handler=broken))
    last = events[-1]
    assert isinstance(last, FlowCompleted) and last.status is Condition.SUCCEEDED
    assert "RuntimeError: tool down" in last.output


async def test_events_without_handler_answered_by_run(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    seen: list[StreamEvent] = []
    async for event in flow.events(message="m"):
        seen.append(event)
        if isinstance(event, ToolCallsRequired):
            run = flow.run(event.execution_id)
            accepted = await run.submit_tool_results(["manual"], tool_calls=event.tool_calls)
            assert accepted == [event.tool_calls[0].id]
    last = seen[-1]
    assert isinstance(last, FlowCompleted) and last.output == "got manual"


async def test_events_max_tool_rounds(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, LOOP_FLOW)
    with pytest.raises(vi_flow.ToolCallLimitError):
        await collect(flow.events(tool_handler=lambda calls: [1], max_tool_rounds=1))


async def test_run_events_replay_all_or_after(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    live = await collect(flow.events(message="m", tool_handler=lambda calls: ["r"]))
    run = flow.run(live[0].execution_id)
    assert await collect(run.events()) == live
    assert await collect(run.events(after=5)) == live[5:]
    with pytest.raises(ValueError, match="after"):
        run.events(after=-1)


async def test_early_break_closes_the_stream(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    events = flow.events(message="m", tool_handler=lambda calls: ["r"])
    async for event in events:
        assert isinstance(event, RunStarted)
        break
    await events.aclose()  # type: ignore[attr-defined]
    result = await flow.execute(message="again", tool_handler=lambda calls: ["r"])
    assert result.execution_id != event.execution_id


async def test_stream_start_errors_surface_on_iteration(aclient: vi_flow.AsyncClient) -> None:
    from vi_flow._errors import FlowNotFoundError, UnprocessableEntityError

    from .conftest import PARAM_FLOW

    with pytest.raises(FlowNotFoundError):
        await collect(aclient.flow("flow_missing").events(message="m"))
    flow = await new_flow(aclient, PARAM_FLOW)
    with pytest.raises(UnprocessableEntityError, match="city"):
        await collect(flow.steps())


async def test_more_open_streams_than_a_pool_of_100_leave_the_client_usable(
    aclient: vi_flow.AsyncClient,
) -> None:
    # Found by QA: one client had a pool of 100 connections. With 100 streams open (each
    # holds its connection for the run's life), every other call waited, the tool results
    # those streams were waiting for included: none of them could end.
    flow = await new_flow(aclient, TOOL_FLOW)
    streams, paused = 110, anyio.Event()
    waiting = 0

    async def handler(calls: Any) -> list[str]:
        nonlocal waiting
        waiting += 1
        if waiting == streams:
            paused.set()
        await paused.wait()  # every stream is open and paused at once
        return ["r"]

    async def one(outputs: list[Any]) -> None:
        events = await collect(flow.events(message="m", tool_handler=handler))
        outputs.append(events[-1].status)

    outputs: list[Any] = []
    with anyio.fail_after(90):
        async with anyio.create_task_group() as group:
            for _ in range(streams):
                group.start_soon(one, outputs)
            await paused.wait()
            assert (await aclient.flows.get(flow.flow_id)).flow_id == flow.flow_id
    assert outputs == [Condition.SUCCEEDED] * streams


async def test_a_handler_slower_than_the_pause_gets_the_runs_own_end(
    aclient: vi_flow.AsyncClient,
) -> None:
    # Found by QA: results sent after the step stopped waiting answered 409, and the SDK
    # raised that ConflictError ("unknown tool call id") instead of how the run ended,
    # also from events(), which does not raise for a failed run.
    ask = ASK | {"settings": ASK["settings"] | {"timeout": 1}}
    flow = await new_flow(aclient, {"name": "impatient", "blocks": [ask]})

    async def slow(calls: Any) -> list[str]:
        await anyio.sleep(2.5)
        return ["late"]

    with pytest.raises(FlowExecutionError, match="ToolResultsTimeout") as late:
        await flow.execute(message="m", tool_handler=slow)
    # QA AG: the error had no code and no step, where the run's flow_completed has both
    assert (late.value.code, late.value.step_id) == ("TOOL_RESULTS_TIMEOUT", ask["id"])
    events = await collect(flow.events(message="m", tool_handler=slow))
    assert isinstance(events[-1], FlowCompleted) and events[-1].status is Condition.ERROR
    assert events[-1].error_code == "TOOL_RESULTS_TIMEOUT"


async def test_aclose_ends_the_streams_being_read_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # QA: events() of a paused run, or of a long quiet step, and an HTTP log follow went
    # on waiting after their client's aclose(), until their silence bound (30 s).
    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", "http")
    client = vi_flow.AsyncClient()
    paused = await new_flow(client, TOOL_FLOW)
    quiet = await new_flow(client, {"name": "quiet", "blocks": [
        {"block": "task", "id": "t", "settings": {"command": "sleep 30"}}]})  # fmt: skip
    task = await client.run("echo one; sleep 30")
    outcomes: list[BaseException | None] = []
    started = anyio.Event()

    async def read(stream: Any) -> None:
        try:
            async for _ in stream:
                started.set()
            outcomes.append(None)
        except Exception as exc:
            outcomes.append(exc)

    try:
        async with anyio.create_task_group() as group:
            for stream in (paused.events(), quiet.events(), task.follow_logs()):
                started = anyio.Event()
                group.start_soon(read, stream)
                with anyio.fail_after(20):
                    await started.wait()
            await anyio.sleep(0.2)
            with anyio.fail_after(3):  # at once, not after twice the 15 s heartbeat
                await client.aclose()
                while len(outcomes) < 3:
                    await anyio.sleep(0.01)
    finally:
        async with vi_flow.AsyncClient() as other:
            await other.cancel(task.task_id)
            for flow in (paused, quiet):
                async for page in other.runs.list(flow_id=flow.flow_id):
                    for run in page.items:
                        await other.runs.cancel(run.run_id)
    assert [type(outcome) for outcome in outcomes] == [vi_flow.ClientStateError] * 3, outcomes
