"""Type-checked only (``nox -s typing``): the public sync and async API as users write it.

mypy --strict must accept every line; ``assert_type`` pins the types users see in their IDE.
"""

from __future__ import annotations

from typing_extensions import assert_type

import vi_flow
from vi_flow.models import DeletedFlow, Flow, Page, Run


async def async_usage() -> None:
    async with vi_flow.AsyncClient(
        timeout=vi_flow.Timeout(connect=5, read=30), max_retries=3
    ) as client:
        first = await client.flows.list(pagination={"page_size": 50})
        assert_type(first, Page[Flow])
        async for page in client.flows.list():
            assert_type(page.items, list[Flow])
        async for flow in client.flows.list().all_items():
            assert_type(flow, Flow)
        flow = await client.flows.create({"name": "f", "blocks": [{"block": "template"}]})
        assert_type(await client.flows.get(flow.flow_id), Flow)
        assert_type(await client.flows.update(flow.flow_id, flow.spec, etag=flow.etag), Flow)
        assert_type(await client.flows.publish(flow.flow_id), int)
        run = await client.runs.create(flow.flow_id, message="hi")
        assert_type(await client.runs.get(run.run_id), Run)
        assert_type(await client.flows.delete(flow.flow_id), DeletedFlow)
        quick = client.with_options(max_retries=0)
        assert_type(quick, vi_flow.AsyncClient)


def sync_usage() -> None:
    with vi_flow.Client() as client:
        flows = client.flows.list(pagination=vi_flow.PaginationParams(page_size=10))
        assert_type(flows, vi_flow.PaginatedResponse[Flow])
        assert_type(flows.items, list[Flow])
        for page in client.flows.list():
            assert_type(page, Page[Flow])
        all_runs = list(client.runs.list().all_items())
        assert_type(all_runs, list[Run])
        flow = client.flows.get("flow_abc123")
        flow.info()
        try:
            client.flows.delete("flow_missing")
        except vi_flow.FlowNotFoundError as exc:
            assert_type(exc.status_code, int)
            assert_type(exc.request_id, str | None)


async def async_execution_and_tasks() -> None:
    from vi_flow.execution import ExecuteResult
    from vi_flow.models.events import StepCompleted, ToolCall

    def handler(calls: list[ToolCall]) -> list[str]:
        return [call.function.name for call in calls]

    async with vi_flow.AsyncClient() as client:
        flow = client.flow("flow_abc123")
        assert_type(flow, vi_flow.AsyncFlow)
        result = await flow.execute(message="hi", tool_handler=handler, version=3)
        if isinstance(result, ExecuteResult):
            assert_type(result.execution_id, str)
        async for step in flow.steps(message="hi"):
            assert_type(step, StepCompleted)
        job = await flow.execute_async(message="hi")
        assert_type(job, vi_flow.AsyncJob)
        await job.wait(timeout=60)
        trace = await flow.run(job.execution_id).trace()
        assert_type(trace.steps[0].step_id, str)
        task = await client.run("python train.py", gpu="a100", wait=True)
        async for line in task.follow_logs():
            assert_type(line, str)
        await client.cancel(task.task_id)
        volume = await client.create_volume(10, name="data")
        await client.delete_volume(volume.volume_id)


def sync_execution_and_tasks() -> None:
    with vi_flow.Client() as client:
        flow = client.flow("flow_abc123")
        assert_type(flow, vi_flow.Flow)
        for event in flow.events(message="hi"):
            assert event.execution_id
        task = client.submit("echo hi", wait=True)
        assert_type(client.logs(task.task_id, tail=10), str)
