"""Seed 002's shapes under its names: the ``Client`` facade, the dict returns, the TypedDicts.

``from flow.sdk.client import Client`` is ``from vi_flow.sync.compute import Client``: its
``status()`` returns ``list[Task]`` (for one id too) and ``volumes()`` is a method, while
``vi_flow.Client`` is the seed's ``Flow`` (``status(task_id)`` is a string).
"""

from __future__ import annotations

import re
import typing

import pytest

import vi_flow
from vi_flow.compute import (
    AsyncClientFacade,
    CatalogEntry,
    GPUInstanceDict,
    InstanceRequirements,
    TaskDict,
    catalog_entry,
    gpu_instance_dict,
)
from vi_flow.models.tasks import TaskStatus
from vi_flow.sync.compute import Client, Task


def test_the_client_facade_has_the_seed_shapes() -> None:
    with Client() as client:
        task = client.run("echo hi", wait=True)  # the seed: "wait for task completion"
        assert task.status == TaskStatus.COMPLETED
        one = client.status(task.task_id)
        assert isinstance(one, list) and [t.task_id for t in one] == [task.task_id]
        assert isinstance(one[0], Task) and one[0].status == "completed"
        assert [t.task_id for t in client.status()] == [task.task_id]
        listed = client.list()
        assert listed == [
            {
                "task_id": task.task_id,
                "name": task.name,
                "status": "completed",
                "instance_type": task.data.instance_type,
                "created_at": task.data.created_at,
                "started_at": task.data.started_at,
                "ended_at": task.data.ended_at,
                "exit_code": 0,
            }
        ]
        assert set(listed[0]) == set(TaskDict.__annotations__)
        assert client.volumes() == []
        assert client.provider_port().status(task.task_id) == "completed"  # Flow's shape
        assert client.ssh(task.task_id).startswith("ssh ")
        running = client.run("sleep 30")
        assert client.cancel(running.task_id, force=True) in (True, False)
        try:  # a GPU reservation: refused by name on a machine without GPUs
            assert client.reserve("a100", duration_hours=1).startswith("res_")
        except vi_flow.UnprocessableEntityError as exc:
            assert "a100" in str(exc)
        # not "no GPU": each of these held a CPU for an hour, unasked
        with pytest.raises(ValueError, match="invalid GPU request ''"):
            client.reserve("")
        with pytest.raises(TypeError, match="got None"):
            client.reserve(None)  # type: ignore[arg-type]
        for endless in (float("inf"), float("nan")):  # orjson would send them as null
            with pytest.raises(ValueError, match="durationHours: expected a finite number"):
                client.reserve("a100", duration_hours=endless)  # type: ignore[arg-type]
        assert client.provider_port().list_reservations() == []


def test_the_facade_wraps_a_given_client_and_leaves_it_open() -> None:
    with vi_flow.Client() as full:
        Client(full).close()
        assert full.list_tasks() == []  # still usable


@pytest.mark.anyio
async def test_the_async_facade() -> None:
    async with AsyncClientFacade() as client:
        task = await client.run(["echo", "x"], wait=True)
        assert [t.task_id for t in await client.status(task.task_id)] == [task.task_id]
        assert (await client.list())[0]["status"] == "completed"
        assert await client.volumes() == []


def test_the_facade_lists_every_volume() -> None:
    # QA: Client.volumes() ("List available volumes") gave the first 100, silently
    with Client() as client:
        port = client.provider_port()
        made = {port.create_volume(1, name=f"v{i:03d}").volume_id for i in range(101)}
        assert {v.volume_id for v in client.volumes()} == made
        assert len(port.list_volumes()) == 100  # the seed's limit=100 default


def test_typed_dicts_and_converters() -> None:
    assert typing.get_type_hints(InstanceRequirements).keys() == {
        "gpu_type",
        "max_price",
        "min_gpu_memory_gb",
        "gpu_count",
    }
    with vi_flow.Client() as flow:
        wanted: InstanceRequirements = {"max_price": 100.0}
        instance = flow.find_instances(wanted, limit=1)[0]
        entry: CatalogEntry = catalog_entry(instance)
        assert entry["instance_type"] == instance.instance_type
        assert set(entry) == set(CatalogEntry.__annotations__)
        gpu: GPUInstanceDict = gpu_instance_dict(instance)
        assert gpu["name"] == instance.instance_type
        with pytest.raises(ValueError, match="max_prize"):
            flow.find_instances({"max_prize": 1.0})  # type: ignore[typeddict-unknown-key]


def test_wrong_shaped_arguments_are_typed_errors_naming_them() -> None:
    # QA: these leaked internals ("'NoneType' object has no attribute 'get'", filters
    # named 'a', 'c', 'e'..., "'int' object is not iterable") or took nonsense
    with vi_flow.Client() as client:
        refused: list[tuple[type[Exception], str, typing.Callable[[], object]]] = [
            (TypeError, "params must be a dict", lambda: client.list_reservations("active")),
            (TypeError, "requirements must be a dict", lambda: client.find_instances("a100")),
            (TypeError, "mounts must be a dict", lambda: client.submit("true", mounts=5)),
            (TypeError, "params must be a dict", lambda: client.reservation_availability(7)),
            (ValueError, "'2xa100'", lambda: client.normalize_instance_request(2, "2xa100")),
            (TypeError, "follow must be True or False, got 'no'", lambda: client.logs("t", "no")),
            (TypeError, "stderr must be True or False", lambda: client.logs("t", stderr="no")),
            (TypeError, "wait must be True or False", lambda: client.submit("true", wait="no")),
            (TypeError, "force must be True or False", lambda: client.cancel("t", force="no")),
            (TypeError, "status must be a status", lambda: client.list_tasks(status=5)),
            (TypeError, "status must be a status",
             lambda: client.list_reservations({"status": 5})),
            (TypeError, "timeout must be a number", lambda: client.wait_for_ssh("t", "x")),
            (TypeError, "gpu_type must be", lambda: client.find_instances({"gpu_type": 5})),
            (vi_flow.UnprocessableEntityError, "gpuCount",
             lambda: client.find_instances({"gpu_count": -1})),
        ]  # fmt: skip
        for kind, said, call in refused:
            with pytest.raises(kind, match=re.escape(said)):
                call()
        assert client.list_tasks() == []  # the submit made nothing
    with Client() as facade:  # the seed's smaller Client: its run's wait too
        with pytest.raises(TypeError, match="wait must be True or False"):
            facade.run("true", wait="no")  # type: ignore[arg-type]
        assert facade.list() == []
