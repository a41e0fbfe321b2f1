"""Seed 002 (GPU tasks): every example of the seed, run against the embedded local server.

The seed's examples name GPU instance types (``"a100"``, ``"4xa100"``); this machine may
have no GPU, so where an example needs a GPU it either runs on the cheapest instance the
server lists (``find_instances``), or checks that the server refuses it at submit with a
message naming what was asked — the seed's behaviour on a provider without that GPU.
The ``flow`` fixture is ``vi_flow.Client()`` (blocking); ``aflow`` is ``vi_flow.AsyncClient()``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import vi_flow
from vi_flow.models.tasks import TaskConfig, TaskStatus, VolumeSpec

PY = sys.executable


@pytest.fixture
def flow() -> Iterator[vi_flow.Client]:
    client = vi_flow.Client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def aflow() -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as client:
        yield client


def _cheapest(flow: vi_flow.Client) -> str:
    instances = flow.find_instances({}, limit=1)
    assert instances, "the local server lists at least the cpu instance"
    return str(instances[0].instance_type)


def test_create_volumes_and_run_with_them(flow: vi_flow.Client) -> None:
    data = flow.create_volume(500, name="datasets")
    ckpt = flow.create_volume(100, name="checkpoints")
    cfg = TaskConfig(
        name="train",
        instance_type=_cheapest(flow),
        command="ls -d $VI_FLOW_VOLUME_DATASETS $VI_FLOW_VOLUME_CHECKPOINTS >/dev/null && echo ok",
        volumes=[
            {"volume_id": data.volume_id, "mount_path": "/data"},
            {"volume_id": ckpt.volume_id, "mount_path": "/ckpts"},
        ],
    )
    task = flow.run(cfg)
    assert task.wait(timeout=30) == TaskStatus.COMPLETED
    assert flow.logs(task.task_id) == "ok"
    flow.delete_volume(ckpt.volume_id)
    assert [v.name for v in flow.list_volumes()] == ["datasets"]
    for v in flow.list_volumes():
        print(v.name, v.size_gb)


def test_find_instances(flow: vi_flow.Client) -> None:
    gpus = flow.find_instances({"gpu_type": "a100", "max_price": 8.0}, limit=5)
    assert all(i.gpu_type == "a100" and i.price_per_hour <= 8.0 for i in gpus)
    assert len(gpus) <= 5


def test_bad_arguments_are_refused_before_any_request(flow: vi_flow.Client) -> None:
    # Found by QA: these went to the server and came back as 422s (or, for a time that
    # is not one, a bare "invalid literal for int()"); a task that does not exist shows
    # no request was made (it would be TaskNotFoundError).
    missing = "task_0000000000000000"
    with pytest.raises(ValueError, match=r"^tail: must be between 0 and 100000, got -1"):
        flow.logs(missing, tail=-1)
    with pytest.raises(ValueError, match=r"^tail: expected an integer, got '5'"):
        flow.logs(missing, tail="5")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"^limit: must be between 1 and 1000, got 0"):
        flow.find_instances({}, limit=0)
    with pytest.raises(ValueError, match=r"^size_gb: expected an integer, got '5'"):
        flow.create_volume("5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^earliest_start_time must be ms since the epoch"):
        flow.reservation_availability({"instance_type": "cpu", "earliest_start_time": "x"})
    assert flow.list_volumes() == []


def test_get_task_list_tasks_and_status(flow: vi_flow.Client) -> None:
    task = flow.run("sleep 30", wait=True)
    t = flow.get_task(task.task_id)
    print(t.status)
    assert t.status == "running"
    for running in flow.list_tasks(status=TaskStatus.RUNNING):
        print(running.name)
    assert task.task_id in [x.task_id for x in flow.list_tasks(status=TaskStatus.RUNNING)]
    assert flow.status(task.task_id) == "running"
    assert task.task_id in [x.task_id for x in flow.status()]
    assert flow.cancel(task.task_id) is True
    assert flow.status(task.task_id) == "cancelled"
    assert [t.task_id for t in flow.list_tasks(limit=1)] == [task.task_id]
    for list_call in (flow.list_tasks, flow.list_volumes):  # the error names limit
        with pytest.raises(ValueError, match=r"^limit must be >= 1, got 0"):
            list_call(limit=0)
        with pytest.raises(TypeError, match=r"^limit must be a whole number"):
            list_call(limit="3")  # type: ignore[arg-type]


def test_logs_tail_and_follow_with_break(flow: vi_flow.Client) -> None:
    script = "for i in range(100): print('step', i)\nprint('ERROR: diverged')\nimport time; time.sleep(30)"
    task = flow.run([PY, "-c", script])
    for line in flow.logs(task.task_id, follow=True):
        if "ERROR" in line:
            break
    last = flow.logs(task.task_id, tail=50)
    print(last)
    assert last.splitlines()[-1] == "ERROR: diverged"
    assert len(last.splitlines()) == 50
    flow.cancel(task.task_id)


def test_mount_volume_by_name_and_id(flow: vi_flow.Client) -> None:
    inputs = flow.create_volume(10, name="inputs", interface="file")
    flow.create_volume(10, name="datasets", interface="file")
    task = flow.run("sleep 30", wait=True)
    assert flow.mount_volume("datasets", task.task_id)
    assert flow.mount_volume(inputs.volume_id, task.task_id, mount_point="/volumes/inputs")
    shown = flow.shell(task.task_id, command="ls -d volumes/datasets volumes/inputs", echo=False)
    assert shown.exit_status == 0, shown.stderr
    flow.cancel(task.task_id)


def test_run_examples(flow: vi_flow.Client) -> None:
    task = flow.run("echo training --epochs 10", instance_type=_cheapest(flow), wait=True)
    assert task.status in ("running", "completed")
    cfg = TaskConfig(
        name="train",
        instance_type=_cheapest(flow),
        command=[PY, "-c", "import os; print(os.environ['VI_FLOW_VOLUME_TRAIN_DATA'] != '')"],
        volumes=[VolumeSpec(size_gb=200, mount_path="/data", name="train-data")],
        max_price_per_hour=12.0,
    )
    task = flow.run(cfg)
    assert task.wait(timeout=30) == TaskStatus.COMPLETED
    assert flow.logs(task.task_id) == "True"


def test_gpu_examples_fail_clearly_without_gpus(flow: vi_flow.Client) -> None:
    if any(i.gpu_type for i in flow.find_instances({}, limit=100)):
        pytest.skip("this machine has GPUs")
    with pytest.raises(vi_flow.UnprocessableEntityError, match="gpu"):
        flow.run(TaskConfig(name="infer", min_gpu_memory_gb=40, command="python serve.py"))
    with pytest.raises(vi_flow.UnprocessableEntityError, match="a100"):
        flow.submit("python train.py", gpu="a100")
    with pytest.raises(vi_flow.UnprocessableEntityError, match="a100"):
        flow.submit(
            "torchrun --nproc_per_node=4 train.py",
            gpu="a100:4",
            mounts={"/data": "volume://datasets"},
            wait=True,
        )
    with pytest.raises(vi_flow.UnprocessableEntityError):
        flow.reserve("a100", duration_hours=2)


def test_submit_and_shell(flow: vi_flow.Client, capfd: pytest.CaptureFixture[str]) -> None:
    done = flow.submit("echo quick", wait=True)
    assert done.status == "completed"
    task = flow.submit("sleep 30")
    result = flow.shell(task.task_id, command="echo from-the-task")
    assert capfd.readouterr().out == "from-the-task\n"  # the seed's shell prints the output
    assert result.exit_status == 0
    assert flow.ssh(task.task_id).startswith("ssh -i ")
    assert flow.wait_for_ssh(task.task_id, timeout=30).status == "running"
    flow.cancel(task.task_id, force=True)


def test_upload_code(flow: vi_flow.Client, tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('trained')\n")
    task = flow.run("sleep 30", wait=True)
    flow.upload_code_to_task(task.task_id, source_dir=tmp_path, target_dir="/workspace")
    out = flow.shell(task.task_id, command=f"{PY} train.py", echo=False)
    assert out.stdout == "trained\n"
    flow.cancel(task.task_id)


def test_ssh_keys_reservations_and_normalize(flow: vi_flow.Client) -> None:
    key_id = flow.ensure_default_ssh_key()
    assert key_id in [k["id"] for k in flow.list_ssh_keys()]  # the seed's dict[str, str]
    public = flow.ssh_keys.ensure_default()[0].public_key
    other = flow.create_platform_ssh_key("laptop", public)
    assert other["id"] == key_id  # the same key registered twice is one entry
    assert all(isinstance(v, str) for v in other.values())
    assert set(other) >= {"id", "name", "public_key", "fingerprint", "created_at"}
    assert [k["id"] for k in flow.list_platform_ssh_keys()] == [key_id]
    assert flow.delete_platform_ssh_key(key_id) is True
    assert flow.list_platform_ssh_keys() == []
    reservation = flow.reservations.create(instance_type=_cheapest(flow), duration_hours=1)
    assert flow.get_reservation(reservation.reservation_id) == reservation
    assert reservation.reservation_id in [r.reservation_id for r in flow.list_reservations()]
    slots = flow.reservation_availability({"instance_type": _cheapest(flow)})
    assert slots and all(isinstance(s, dict) for s in slots)  # the seed's list[dict]
    assert slots[0]["instance_type"] == _cheapest(flow) and slots[0]["end_time"] > 0
    assert flow.normalize_instance_request(8, "a100") == ("8xa100", 1, None)


def test_task_yaml(flow: vi_flow.Client, tmp_path: Path) -> None:
    spec = tmp_path / "task.yaml"
    spec.write_text("name: yaml-task\ncommand: echo from yaml\n")
    task = flow.run(str(spec))
    assert task.wait(timeout=30) == TaskStatus.COMPLETED
    assert task.logs() == "from yaml"
    assert list(task.follow_logs()) == ["from yaml"]
    assert flow.run(spec).name == "yaml-task"


@pytest.mark.anyio
async def test_async_seed_flow(aflow: vi_flow.AsyncClient) -> None:
    task = await aflow.run("echo hi; echo there", wait=True)
    lines = [line async for line in task.follow_logs()]
    assert lines == ["hi", "there"]
    assert task.exit_code == 0
    assert await aflow.status(task.task_id) == "completed"
    snapshot = await aflow.logs(task.task_id, tail=1)
    assert snapshot == "there"
    running = await aflow.submit("sleep 30")
    await running.wait(until="running", timeout=30)
    print(await running.shell(command="echo async-shell"))
    assert (await running.shell(command="echo async-shell")).stdout == "async-shell\n"
    assert await aflow.cancel(running.task_id)


@pytest.fixture
def gpu_flow() -> Iterator[vi_flow.Client]:
    """``vi_flow.Client()`` on a local server that sees four (fake) 80 GB A100s and 8 CPUs."""
    import os

    from vi_flow.server import embedded

    fake = {"local_gpus": [{"type": "a100", "memory_gb": 80}] * 4, "local_cpus": 8}
    server = embedded.acquire(os.environ["VI_FLOW_HOME"], extra=fake)
    try:
        with vi_flow.Client() as client:  # shares the server started above (same home)
            yield client
    finally:
        embedded.release(server)


def test_gpu_examples_on_a_gpu_machine(gpu_flow: vi_flow.Client) -> None:
    flow = gpu_flow
    found = flow.find_instances({"gpu_type": "a100", "max_price": 8.0}, limit=5)
    assert found and all(i.gpu_type == "a100" for i in found)
    task = flow.submit("echo $CUDA_VISIBLE_DEVICES", gpu="a100", wait=True)
    assert task.status == "completed" and task.gpu_count == 1
    assert flow.logs(task.task_id) in ("0", "1", "2", "3")
    flow.create_volume(100, name="datasets", interface="file")
    four = flow.submit(
        "echo $CUDA_VISIBLE_DEVICES",
        gpu="a100:4",
        mounts={"/data": "volume://datasets"},
        wait=True,
    )
    assert four.gpu_count == 4 and sorted(flow.logs(four.task_id).split(",")) == list("0123")
    big = flow.run(TaskConfig(name="infer", min_gpu_memory_gb=40, command="echo serving"))
    assert big.wait(timeout=30) == TaskStatus.COMPLETED and big.gpu_type == "a100"
    with pytest.raises(vi_flow.UnprocessableEntityError, match="a100") as refused:
        flow.run("nvidia-smi", gpu="h100:9")
    assert "h100" in str(refused.value)
    reservation_id = flow.reserve("a100", duration_hours=2)
    reservation = flow.get_reservation(reservation_id)
    assert reservation is not None and reservation.gpu_type == "a100"
    assert flow.normalize_instance_request(4, "a100") == ("4xa100", 1, None)
