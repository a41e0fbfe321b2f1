"""The blocking Flow, Job, Run and PausedResult against the local server."""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from typing import Any

import pytest

import vi_flow
from vi_flow._errors import (
    ConflictError,
    FlowExecutionError,
    TaskTimeoutError,
    ToolCallLimitError,
)
from vi_flow.execution import ExecuteResult, ToolHandlerWarning
from vi_flow.models import (
    Condition,
    FlowCompleted,
    LogLine,
    RunStarted,
    ToolCall,
    ToolCallsRequired,
)
from vi_flow.sync.execution import Flow, Job, PausedResult, Run

from .conftest import FAIL_FLOW, GREET, LOOP_FLOW, TOOL_FLOW, emit_flow


def new_flow(client: vi_flow.Client, spec: dict[str, Any]) -> Flow:
    flow = client.flow(client.flows.create(spec).flow_id)
    assert isinstance(flow, Flow)
    return flow


def test_execute_and_pause_resume(client: vi_flow.Client) -> None:
    flow = new_flow(client, TOOL_FLOW)
    paused = flow.execute(message="bob")
    assert isinstance(paused, PausedResult)
    assert paused.step_id == "ask" and paused.tool_calls[0].function.name == "lookup"
    result = paused.resume(tool_results=["sunny"])
    assert isinstance(result, ExecuteResult)
    assert result.output == "got sunny"


def test_sync_handler_runs_in_a_worker_thread_and_may_use_the_client(
    client: vi_flow.Client,
) -> None:
    flow = new_flow(client, TOOL_FLOW)
    threads: list[str] = []

    def handler(calls: list[ToolCall]) -> list[Any]:
        threads.append(threading.current_thread().name)
        return [client.flows.get(flow.flow_id).spec.name]  # a call back into this client

    result = flow.execute(message="m", tool_handler=handler)
    assert isinstance(result, ExecuteResult)
    assert result.output == "got tools"
    assert threads and threads[0] != threading.current_thread().name


@pytest.mark.timeout(60)
def test_more_than_40_handlers_that_call_execute_on_their_client_all_finish(
    client: vi_flow.Client,
) -> None:
    # QA: handlers ran on anyio's 40 worker threads; 45 threads whose handlers each
    # called execute() (with a handler) on the same client took all 40, the inner
    # handlers never got a thread, and the client hung for good.
    flow = new_flow(client, LOOP_FLOW)
    inner = new_flow(client, {"name": "inner", "blocks": [LOOP_FLOW["blocks"][0]]})
    holding = threading.Barrier(45, timeout=30)  # all 45 outer handlers at once

    def outer(calls: list[ToolCall]) -> list[Any]:
        if calls[0].function.arguments == {"n": 1}:
            holding.wait()
        nested = inner.execute(tool_handler=lambda calls: ["in"])
        assert isinstance(nested, ExecuteResult)
        return [nested.output]

    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(flow.execute(tool_handler=outer)))
        for _ in range(45)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(45)
    assert len(results) == 45 and all(isinstance(r, ExecuteResult) for r in results)


def test_an_output_past_the_servers_limits_is_an_error_result_and_the_run_goes_on(
    client: vi_flow.Client,
) -> None:
    # QA: execute() raised the server's 422 and left the run paused for its hour
    flow = new_flow(client, TOOL_FLOW)
    with pytest.warns(ToolHandlerWarning, match="past the server's limits"):
        result = flow.execute(message="m", tool_handler=lambda calls: ["x" * 9_000_000])
    assert isinstance(result, ExecuteResult) and "past the server's limits" in str(result.output)
    assert client.runs.get(result.execution_id).status.condition is Condition.SUCCEEDED


def test_a_pause_answered_elsewhere_is_a_conflict_not_a_failure(client: vi_flow.Client) -> None:
    # QA: a second resume() with other results, or one after another client answered,
    # raised FlowExecutionError "run ... failed: the run ended Succeeded"
    flow = new_flow(client, TOOL_FLOW)
    paused = flow.execute(message="m")
    assert isinstance(paused, PausedResult)
    assert isinstance(paused.resume(tool_results=["sunny"]), ExecuteResult)
    with pytest.raises(ConflictError, match="already answered"):
        paused.resume(tool_results=["rain"])
    other = flow.execute(message="m")
    assert isinstance(other, PausedResult)
    flow.run(other.execution_id).submit_tool_results(["snow"], tool_calls=other.tool_calls)
    with pytest.raises(ConflictError, match="already answered"):
        other.resume(tool_results=["hail"])


def test_a_large_output_goes_without_a_resource_warning(client: vi_flow.Client) -> None:
    # QA: every body over 1 MiB printed aiohttp's "Sending a large body directly with
    # raw bytes" ResourceWarning to the user
    flow = new_flow(client, TOOL_FLOW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = flow.execute(message="m", tool_handler=lambda calls: ["z" * 3_000_000])
    assert isinstance(result, ExecuteResult) and len(str(result.output)) > 3_000_000
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_limit_and_handler_errors(client: vi_flow.Client) -> None:
    flow = new_flow(client, LOOP_FLOW)
    with pytest.raises(ToolCallLimitError):
        flow.execute(tool_handler=lambda calls: [1], max_tool_rounds=1)

    def broken(calls: list[ToolCall]) -> list[Any]:
        raise ValueError("bad input")

    with pytest.warns(ToolHandlerWarning, match="bad input"):
        result = flow.execute(tool_handler=broken)
    assert isinstance(result, ExecuteResult)


@pytest.mark.parametrize("escape", [SystemExit(3), KeyboardInterrupt()], ids=repr)
def test_a_handler_that_exits_raises_in_the_caller_and_the_client_goes_on(
    client: vi_flow.Client, escape: BaseException
) -> None:
    # sys.exit() in a handler reaches the caller as it would from any function, and
    # `with Client()` can close: the client's loop used to die with it, so that every
    # later call raised ClientStateError and the close raised RuntimeError.
    flow = new_flow(client, TOOL_FLOW)

    def leave(calls: list[ToolCall]) -> list[Any]:
        raise escape

    with pytest.raises(type(escape)):
        flow.execute(message="m", tool_handler=leave)
    with pytest.raises(type(escape)):
        list(flow.events(message="m", tool_handler=leave))
    result = flow.execute(message="m", tool_handler=lambda calls: ["r"])
    assert isinstance(result, ExecuteResult) and result.output == "got r"


def test_handler_returning_awaitable_is_a_handler_error(client: vi_flow.Client) -> None:
    async def later() -> list[Any]:
        return ["x"]

    flow = new_flow(client, TOOL_FLOW)
    with pytest.warns(ToolHandlerWarning, match="awaitable"):
        result = flow.execute(message="m", tool_handler=lambda calls: later())  # type: ignore[arg-type, return-value]
    assert isinstance(result, ExecuteResult)


def test_failed_run_raises(client: vi_flow.Client) -> None:
    flow = new_flow(client, FAIL_FLOW)
    with pytest.raises(FlowExecutionError) as info:
        flow.execute(message="m")
    assert info.value.step_id == "broken"


def test_events_and_steps_iterate(client: vi_flow.Client) -> None:
    flow = new_flow(client, TOOL_FLOW)
    events = list(flow.events(message="m", tool_handler=lambda calls: ["r"]))
    assert isinstance(events[0], RunStarted)
    assert any(isinstance(e, ToolCallsRequired) for e in events)
    last = events[-1]
    assert isinstance(last, FlowCompleted) and last.output == "got r"
    steps = list(flow.steps(message="m", tool_handler=lambda calls: ["r"]))
    assert [s.step_id for s in steps] == ["greet", "ask", "final"]


def test_many_events_cross_in_batches_and_break_closes(client: vi_flow.Client) -> None:
    flow = new_flow(client, emit_flow(2000))
    events = list(flow.events())
    assert sum(isinstance(e, LogLine) for e in events) == 2000
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    for event in flow.events():
        assert isinstance(event, RunStarted)
        break
    run = flow.run(event.execution_id)
    assert isinstance(run, Run)
    assert list(run.events(after=len(events) - 1))[-1].event_id == len(events)


def test_job_and_run(client: vi_flow.Client) -> None:
    flow = new_flow(client, {"name": "one", "blocks": [GREET]})
    job = flow.execute_async(message="j")
    assert isinstance(job, Job)
    assert job.wait(timeout=10, poll_interval=0.02) is Condition.SUCCEEDED
    assert job.result().output == "Hello j"
    assert job.trace().steps[0].step_id == "greet"
    assert job.step_trace("greet").status is Condition.SUCCEEDED
    assert job.get().run_id == job.execution_id
    assert job.status() is Condition.SUCCEEDED

    slow = new_flow(client, emit_flow(1000, interval=0.01)).execute_async()
    with pytest.raises(TaskTimeoutError):
        slow.wait(timeout=0.1, poll_interval=0.02)
    slow.cancel()
    assert slow.wait(timeout=10, poll_interval=0.02) is Condition.CANCELLED


def test_submit_tool_results_while_iterating(client: vi_flow.Client) -> None:
    flow = new_flow(client, TOOL_FLOW)
    last = None
    for event in flow.events(message="m"):
        if isinstance(event, ToolCallsRequired):
            flow.run(event.execution_id).submit_tool_results(
                {event.tool_calls[0].id: "by hand"}, tool_calls=event.tool_calls
            )
        last = event
    assert isinstance(last, FlowCompleted) and last.output == "got by hand"


def test_sync_steps_without_a_handler_raise_at_a_pause(client: vi_flow.Client) -> None:
    flow = new_flow(client, TOOL_FLOW)
    with pytest.raises(vi_flow.ToolCallsPendingError, match="steps\\(\\) has no tool_handler"):
        list(flow.steps(message="m"))


def test_sync_steps_of_failed_run_raise(client: vi_flow.Client) -> None:
    flow = new_flow(client, FAIL_FLOW)
    seen: list[str] = []
    with pytest.raises(FlowExecutionError) as info:
        for step in flow.steps(message="m"):
            seen.append(step.step_id)  # noqa: PERF401 - the list must survive the raise
    assert seen == ["greet"] and info.value.step_id == "broken"


def test_a_stream_left_open_is_closed_with_the_client_not_by_the_loops_shutdown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Ctrl-C outside a hop leaves the CLI's stream open at a yield, and the CLI exits.
    # Closing the client closes the stream through its hops; left to the loop's
    # shutdown, the stream and the request under it were closed at once, in any order,
    # and "generator didn't stop after athrow()" was logged when the inner went first.
    left: list[str] = []
    shutdown = asyncio.BaseEventLoop.shutdown_asyncgens

    async def recording(loop: asyncio.BaseEventLoop) -> None:
        # Still open ones only: a closed one may stay in the set while something refers to
        # it (Python 3.13 keeps the stream's until later).
        gens = loop._asyncgens  # type: ignore[attr-defined]
        left.extend(repr(agen) for agen in gens if agen.ag_frame is not None)
        await shutdown(loop)

    monkeypatch.setattr(asyncio.BaseEventLoop, "shutdown_asyncgens", recording)
    caplog.set_level(logging.ERROR, logger="asyncio")
    with vi_flow.Client() as client:
        flow = new_flow(client, emit_flow(200, interval=0.05))
        events = iter(flow.events())
        assert isinstance(next(events), RunStarted)
        next(events)
    assert not [agen for agen in left if "HTTPCore" in agen or "read_chunks" in agen], left
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
