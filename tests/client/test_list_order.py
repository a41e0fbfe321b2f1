"""Lists are newest first by default; ``order="oldest"`` reverses them, page tokens keep it.

Against the home's embedded server: flows, runs, volumes, tasks and reservations, async
and blocking, page by page.
"""

from __future__ import annotations

import pytest

import vi_flow
from vi_flow import PaginationParams

pytestmark = pytest.mark.anyio

SPEC = {"name": "n", "blocks": [{"block": "template", "id": "t", "settings": {"template": "x"}}]}


async def _ids(pages: vi_flow.AsyncClient, kind: str, **kw: object) -> list[str]:
    resource = getattr(pages, kind)
    key = {"flows": "flow_id", "runs": "run_id", "volumes": "volume_id", "tasks": "task_id"}[kind]
    return [getattr(item, key) async for item in resource.list(**kw).all_items()]


async def test_flows_runs_and_volumes_are_newest_first_page_by_page() -> None:
    async with vi_flow.AsyncClient() as client:
        flows = [(await client.flows.create(SPEC, flow_id=f"flow_{i}")).flow_id for i in range(5)]
        runs = [(await client.runs.create(flows[0])).run_id for _ in range(3)]
        volumes = [(await client.volumes.create(1, name=f"v{i}")).volume_id for i in range(3)]
        two = PaginationParams(page_size=2)
        assert await _ids(client, "flows", pagination=two) == flows[::-1]
        assert await _ids(client, "flows", pagination=two, order="oldest") == flows
        assert await _ids(client, "runs", pagination=two) == runs[::-1]
        assert await _ids(client, "runs", pagination=two, order="OLDEST") == runs
        assert await _ids(client, "volumes", pagination=two) == volumes[::-1]
        assert await _ids(client, "volumes", pagination=two, order="oldest") == volumes
        first = await client.flows.list(two)
        assert [f.flow_id for f in first.items] == ["flow_4", "flow_3"]


async def test_tasks_and_reservations_take_an_order() -> None:
    async with vi_flow.AsyncClient() as client:
        tasks = [(await client.tasks.create(vi_flow.models.TaskConfig(command="true"))).task_id]
        tasks.append((await client.tasks.create(vi_flow.models.TaskConfig(command="true"))).task_id)
        pages = {"pagination": {"page_size": 1}}
        assert await _ids(client, "tasks", **pages) == tasks[::-1]
        assert await _ids(client, "tasks", **pages, order="oldest") == tasks
        made = [(await client.reservations.create(cpus=1, duration_hours=1)) for _ in range(2)]
        ids = [r.reservation_id for r in made]
        assert [r.reservation_id for r in await client.reservations.list()] == ids[::-1]
        assert [r.reservation_id for r in await client.reservations.list(order="oldest")] == ids


async def test_a_bad_order_is_a_value_error_before_any_request() -> None:
    async with vi_flow.AsyncClient() as client:
        with pytest.raises(ValueError, match="'sideways'"):
            client.runs.list(order="sideways")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="'up'"):
            await client.reservations.list(order="up")  # type: ignore[arg-type]


async def test_the_server_checks_order_and_tokens_keep_theirs() -> None:
    async with vi_flow.AsyncClient() as client:
        for i in range(3):
            await client.flows.create(SPEC, flow_id=f"flow_{i}")
        http = client.flows._http
        with pytest.raises(vi_flow.UnprocessableEntityError, match="order"):
            await http.request("GET", "/flows", params={"order": "random"})
        first = await http.request("GET", "/flows", params={"pageSize": 1, "order": "oldest"})
        token = first["nextPage"]
        second = await http.request("GET", "/flows", params={"pageSize": 1, "pageToken": token})
        assert [f["flowId"] for f in second["items"]] == ["flow_1"]
        with pytest.raises(vi_flow.BadRequestError, match="ordered 'oldest', not 'newest'"):
            await http.request(
                "GET", "/flows", params={"pageSize": 1, "pageToken": token, "order": "newest"}
            )


def test_the_blocking_lists_take_order_too() -> None:
    with vi_flow.Client() as client:
        for i in range(3):
            client.flows.create(SPEC, flow_id=f"flow_{i}")
        newest = [f.flow_id for f in client.flows.list(PaginationParams(page_size=2)).all_items()]
        oldest = [f.flow_id for f in client.flows.list(order="oldest").all_items()]
        assert newest == ["flow_2", "flow_1", "flow_0"]
        assert oldest == newest[::-1]
        run = client.runs.create("flow_0")
        assert [r.run_id for r in client.runs.list(order="oldest").items] == [run.run_id]
        assert client.reservations.list(order="oldest") == []
        assert client.volumes.list(order="oldest").items == []
        assert client.tasks.list(order="oldest").items == []
