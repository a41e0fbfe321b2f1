"""AsyncJob and AsyncRun against the local server: wait, timeout, result, trace, cancel."""

from __future__ import annotations

import pytest

import vi_flow
from vi_flow._errors import FlowExecutionError, NotFoundError, RunNotFoundError, TaskTimeoutError
from vi_flow.execution import AsyncJob
from vi_flow.models import Condition, Run

from .conftest import FAIL_FLOW, GREET, TOOL_FLOW, emit_flow, new_flow, paused_at_ask

pytestmark = pytest.mark.anyio


async def test_job_wait_and_result(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, {"name": "one", "blocks": [GREET]})
    job = await flow.execute_async(message="job")
    assert isinstance(job, AsyncJob) and job.execution_id.startswith("run_")
    assert await job.wait(timeout=10, poll_interval=0.02) is Condition.SUCCEEDED
    result = await job.result(timeout=10, poll_interval=0.02)
    assert result.output == "Hello job"
    assert [s.step_id for s in result.steps] == ["greet"]


async def test_job_wait_timeout_then_cancel(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, emit_flow(1000, interval=0.01))
    job = await flow.execute_async()
    with pytest.raises(TaskTimeoutError, match=job.execution_id):
        await job.wait(timeout=0.2, poll_interval=0.05)
    cancelled = await job.cancel()
    assert isinstance(cancelled, Run)
    assert await job.wait(timeout=10, poll_interval=0.02) is Condition.CANCELLED
    with pytest.raises(FlowExecutionError) as info:
        await job.result(timeout=10, poll_interval=0.02)
    # QA AK: a cancel read "failed", and only the message told it from a failure
    assert info.value.status is Condition.CANCELLED
    assert f"run {job.execution_id} was cancelled" in str(info.value)


async def test_resuming_a_cancelled_pause_says_it_was_cancelled(
    aclient: vi_flow.AsyncClient,
) -> None:
    flow, paused = await paused_at_ask(aclient)
    await flow.run(paused.execution_id).cancel()
    with pytest.raises(FlowExecutionError) as info:
        await paused.resume(tool_results=["late"])
    assert info.value.status is Condition.CANCELLED, info.value
    assert "was cancelled" in str(info.value) and "failed" not in str(info.value)


async def test_job_of_failing_flow(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, FAIL_FLOW)
    job = await flow.execute_async(message="m")
    assert await job.wait(timeout=10, poll_interval=0.02) is Condition.FAILED
    with pytest.raises(FlowExecutionError) as info:
        await job.result()
    assert info.value.step_id == "broken"


async def test_wait_rejects_bad_poll_interval(aclient: vi_flow.AsyncClient) -> None:
    job = AsyncJob(aclient.http, "run_x")
    with pytest.raises(ValueError, match="poll_interval"):
        await job.wait(poll_interval=0)
    # QA: -1 was taken ("not finished after -1 s"), and "1" raised Python's own
    # "unsupported operand type(s)", naming no argument
    with pytest.raises(ValueError, match=r"timeout must be a number of seconds >= 0.*got -1"):
        await job.wait(timeout=-1)
    with pytest.raises(TypeError, match=r"timeout must be a number of seconds.*got '1'"):
        await job.wait(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"poll_interval must be a positive number.*got '1'"):
        await job.wait(poll_interval="1")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):  # 10**400 s: waits (OverflowError before, QA)
        await job.wait(timeout=10**400)


async def test_wait_with_timeout_0_looks_once(aclient: vi_flow.AsyncClient) -> None:
    # QA: it raised "had not finished after 0 s; it keeps running" for a run that had
    # ended: it never looked (Task.wait(timeout=0) looks once).
    flow = await new_flow(aclient, {"name": "one", "blocks": [GREET]})
    job = await flow.execute_async(message="job")
    assert await job.wait(timeout=10, poll_interval=0.02) is Condition.SUCCEEDED
    assert await job.wait(timeout=0) is Condition.SUCCEEDED
    assert (await job.result(timeout=0)).output == "Hello job"
    going = await (await new_flow(aclient, emit_flow(1000, interval=0.01))).execute_async()
    with pytest.raises(TaskTimeoutError, match="had not finished after 0 s"):
        await going.wait(timeout=0)
    await going.cancel()


async def test_trace_and_step_trace(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    result = await flow.execute(message="t", tool_handler=lambda calls: ["r"], trace=True)
    run = flow.run(result.execution_id)
    trace = await run.trace()
    assert trace.execution_id == result.execution_id
    assert trace.status is Condition.SUCCEEDED
    assert [s.step_id for s in trace.steps] == ["greet", "ask", "final"]
    assert all(s.duration_ms is not None for s in trace.steps)
    greet = await run.step_trace("greet")
    assert greet.output == "Hello t"
    assert greet.input is not None
    with pytest.raises(NotFoundError):
        await run.step_trace("nope")


async def test_run_get_status_and_missing_run(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, {"name": "one", "blocks": [GREET]})
    result = await flow.execute(message="g")
    run = flow.run(result.execution_id)
    stored = await run.get()
    assert stored.run_id == result.execution_id and stored.spec.flow_id == flow.flow_id
    assert await run.status() is Condition.SUCCEEDED
    with pytest.raises(RunNotFoundError):
        await flow.run("run_missing").get()
    with pytest.raises(ValueError, match="execution_id"):
        flow.run("")


async def test_seed_style_await_run_returns_the_handle(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, {"name": "one", "blocks": [GREET]})
    result = await flow.execute(message="a")
    run = await flow.run(result.execution_id)
    assert run.execution_id == result.execution_id
    assert (await run.trace()).status is Condition.SUCCEEDED
