"""AsyncFlow.execute against the local server: results, pauses, the tool loop, errors."""

from __future__ import annotations

from typing import Any

import pytest

import vi_flow
from vi_flow._errors import (
    ConflictError,
    FlowExecutionError,
    FlowNotFoundError,
    ToolCallLimitError,
    UnprocessableEntityError,
)
from vi_flow.execution import ExecuteResult, PausedResult, ToolHandlerWarning
from vi_flow.models import Condition, FlowCompleted, ToolCall, ToolResult

from .conftest import FAIL_FLOW, GREET, LOOP_FLOW, PARAM_FLOW, TOOL_FLOW, new_flow, paused_at_ask

pytestmark = pytest.mark.anyio


async def test_execute_completes_with_output_and_step_traces(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, {"name": "one", "blocks": [GREET]})
    result = await flow.execute(message="Ada")
    assert isinstance(result, ExecuteResult)
    assert result.output == "Hello Ada"
    assert result.status is Condition.SUCCEEDED
    assert [s.step_id for s in result.steps] == ["greet"]
    assert result.execution_id.startswith("run_")


async def test_parameters_defaults_and_missing_required(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, PARAM_FLOW)
    result = await flow.execute(parameters={"city": "Oslo"})
    assert isinstance(result, ExecuteResult)
    assert result.output == "Oslo in C"
    with pytest.raises(UnprocessableEntityError, match="city"):
        await flow.execute(parameters={"unit": "F"})


async def test_block_overrides_change_one_execution(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, {"name": "one", "blocks": [GREET]})
    result = await flow.execute(
        message="x", block_overrides={"greet": {"template": "Bye {{ message }}"}}
    )
    assert isinstance(result, ExecuteResult)
    assert result.output == "Bye x"


async def test_pause_without_handler_then_resume(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    paused = await flow.execute(message="bob")
    assert isinstance(paused, PausedResult)
    assert paused.step_id == "ask"
    [call] = paused.tool_calls
    assert call.function.name == "lookup"
    assert call.function.parsed_arguments() == {"q": "bob"}
    result = await paused.resume(tool_results={call.id: "sunny"})
    assert isinstance(result, ExecuteResult)
    assert result.output == "got sunny"


async def test_resume_twice_with_same_results_runs_once(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    paused = await flow.execute(message="bob")
    assert isinstance(paused, PausedResult)
    results = [ToolResult(tool_call_id=paused.tool_calls[0].id, output="once")]
    first = await paused.resume(tool_results=results)
    second = await paused.resume(tool_results=results)
    assert isinstance(first, ExecuteResult) and isinstance(second, ExecuteResult)
    assert first.output == second.output == "got once"
    trace = await flow.run(paused.execution_id).trace()
    assert [s.step_id for s in trace.steps] == ["greet", "ask", "final"]


async def test_resume_with_wrong_results_is_type_error(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    paused = await flow.execute(message="bob")
    assert isinstance(paused, PausedResult)
    with pytest.raises(TypeError, match="one per call"):
        await paused.resume(tool_results=["a", "b"])


async def test_unknown_call_id_is_conflict_naming_it(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    paused = await flow.execute(message="bob")
    assert isinstance(paused, PausedResult)
    with pytest.raises(ConflictError, match="call_nope"):
        await flow.run(paused.execution_id).submit_tool_results(
            [ToolResult(tool_call_id="call_nope", output=1)]
        )


async def test_results_by_call_id_need_no_tool_calls_and_each_needs_an_output(
    aclient: vi_flow.AsyncClient,
) -> None:
    # QA AK: {call_id: output} without tool_calls= raised "each tool result must be a
    # ToolResult or a dict with 'tool_call_id', got 'call_...'" (naming a good id), and a
    # dict without 'output' answered the call null, as if on purpose
    flow, paused = await paused_at_ask(aclient)
    run, call = flow.run(paused.execution_id), paused.tool_calls[0].id
    with pytest.raises(TypeError, match=f"the tool result for call '{call}' has no 'output'"):
        await run.submit_tool_results([{"tool_call_id": call}])
    with pytest.raises(TypeError, match="not one result's dict"):
        await run.submit_tool_results({"tool_call_id": call, "output": "x"})
    assert await run.submit_tool_results({call: "sunny"}) == [call]
    events = [event async for event in run.events(after=0)]
    assert isinstance(events[-1], FlowCompleted) and events[-1].output == "got sunny", events[-1]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_tool_handler_resumes_automatically(aclient: vi_flow.AsyncClient, kind: str) -> None:
    seen: list[list[ToolCall]] = []

    def sync_handler(calls: list[ToolCall]) -> list[Any]:
        seen.append(calls)
        return [{"n": c.function.parsed_arguments()["n"] * 10} for c in calls]

    async def async_handler(calls: list[ToolCall]) -> list[Any]:
        return sync_handler(calls)

    flow = await new_flow(aclient, LOOP_FLOW)
    handler = sync_handler if kind == "sync" else async_handler
    result = await flow.execute(tool_handler=handler)
    assert isinstance(result, ExecuteResult)
    assert result.output == {"n": 30}
    assert result.tool_rounds == 3
    assert [c[0].function.name for c in seen] == ["lookup"] * 3


async def test_tool_handler_dict_and_tool_result_shapes(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    result = await flow.execute(message="m", tool_handler=lambda calls: {calls[0].id: "by id"})
    assert isinstance(result, ExecuteResult) and result.output == "got by id"
    result = await flow.execute(
        message="m",
        tool_handler=lambda calls: [ToolResult(tool_call_id=calls[0].id, output="typed")],
    )
    assert isinstance(result, ExecuteResult) and result.output == "got typed"


async def test_max_tool_rounds_exceeded_raises_and_cancels(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, LOOP_FLOW)
    with pytest.raises(ToolCallLimitError, match="max_tool_rounds=2") as info:
        await flow.execute(tool_handler=lambda calls: ["x"], max_tool_rounds=2)
    run_id = str(info.value).split()[1]
    assert await flow.run(run_id).status() is Condition.CANCELLED


async def test_handler_exception_sends_error_result_and_warns(aclient: vi_flow.AsyncClient) -> None:
    def broken(calls: list[ToolCall]) -> list[Any]:
        raise KeyError("no such city")

    flow = await new_flow(aclient, TOOL_FLOW)
    with pytest.warns(ToolHandlerWarning, match="KeyError"):
        result = await flow.execute(message="m", tool_handler=broken)
    assert isinstance(result, ExecuteResult)
    assert "tool handler failed: KeyError" in result.output
    trace = await flow.run(result.execution_id).trace()
    assert trace.status is Condition.SUCCEEDED


async def test_handler_bad_return_is_error_result(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, TOOL_FLOW)
    with pytest.warns(ToolHandlerWarning, match="one per call"):
        result = await flow.execute(message="m", tool_handler=lambda calls: ["a", "b"])
    assert isinstance(result, ExecuteResult)
    assert "tool handler failed" in result.output


async def test_failed_run_raises_flow_execution_error(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, FAIL_FLOW)
    with pytest.raises(FlowExecutionError) as info:
        await flow.execute(message="m")
    assert info.value.step_id == "broken"
    assert "nowhere" in info.value.message
    assert await flow.run(info.value.execution_id).status() is Condition.FAILED
    assert info.value.code == "TEMPLATE_ERROR"  # QA AF: only the StepFailed event had it


async def test_a_template_reaches_a_step_whose_id_is_no_dotted_name(
    aclient: vi_flow.AsyncClient,
) -> None:
    """QA AR: step ids "a.b", "a b", "1st" were accepted, but no template could name them
    ("template refers to 'steps.a.b.output', which is not defined" of a step that ran)."""

    def made(step_id: str, value: object) -> dict[str, Any]:
        return {"block": "template", "id": step_id, "settings": {"template": value}}

    reads = {
        "dotted": "{{ steps.a.b.output }}",
        "short": "{{ steps.a.output }}",  # step "a" is still itself
        "spaced": "{{ steps.a b.output | upper }}",
        "digit": "{{ steps.1st.output.k[1] }}",
        "accented": "{{ steps.étape.output }}",
        "missing": "{{ steps.a.b.nothing }}",
    }
    blocks = [made("a", "A"), made("a.b", "AB"), made("a b", "ab"), made("1st", {"k": [0, 7]})]
    blocks += [made("étape", "É"), made("out", {k: v for k, v in reads.items() if k != "missing"})]
    flow = await new_flow(aclient, {"name": "ids", "blocks": blocks})
    result = await flow.execute()
    assert result.output == {
        "dotted": "AB", "short": "A", "spaced": "AB", "digit": 7, "accented": "É"
    }  # fmt: skip
    failing = await new_flow(aclient, {"name": "ids", "blocks": [*blocks[:5], made("out", reads)]})
    with pytest.raises(FlowExecutionError) as info:
        await failing.execute()
    assert "'steps.a.b.nothing', which is not defined" in info.value.message


async def test_every_way_of_running_a_failing_flow_names_its_code(
    aclient: vi_flow.AsyncClient,
) -> None:
    flow = await new_flow(aclient, FAIL_FLOW)
    with pytest.raises(FlowExecutionError) as streamed:
        async for _ in flow.steps(message="m"):
            pass
    job = await flow.execute_async(message="m")
    with pytest.raises(FlowExecutionError) as waited:
        await job.result(timeout=30)
    assert streamed.value.code == waited.value.code == "TEMPLATE_ERROR"
    final = [e async for e in flow.run(job.execution_id).events()][-1]
    assert final.error_code == "TEMPLATE_ERROR"  # the flow_completed event carries it


async def test_unknown_flow_and_unpublished_version(aclient: vi_flow.AsyncClient) -> None:
    with pytest.raises(FlowNotFoundError):
        await aclient.flow("flow_missing").execute(message="m")
    flow = await new_flow(aclient, {"name": "one", "blocks": [GREET]})
    with pytest.raises(FlowNotFoundError):
        await flow.execute(message="m", version=7)


async def test_published_version_runs(aclient: vi_flow.AsyncClient) -> None:
    flow = await new_flow(aclient, {"name": "one", "blocks": [GREET]})
    version = await aclient.flows.publish(flow.flow_id)
    result = await flow.execute(message="v", version=version)
    assert isinstance(result, ExecuteResult)
    run = await flow.run(result.execution_id).get()
    assert run.spec.flow_version == str(version)
