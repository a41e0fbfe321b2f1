"""The blocking task API: the ``Task`` handle, resource namespaces, iterators over the portal."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

import vi_flow
from vi_flow import TaskNotFoundError
from vi_flow.models.tasks import TaskConfig, TaskStatus
from vi_flow.sync.compute import Task

PY = sys.executable


@pytest.fixture
def client() -> Iterator[vi_flow.Client]:
    c = vi_flow.Client()
    try:
        yield c
    finally:
        c.close()


def test_task_handle_status_is_cached_and_callable(client: vi_flow.Client) -> None:
    task = client.run("sleep 30", wait=True)
    assert isinstance(task, Task)
    assert task.status == "running" and task.status == TaskStatus.RUNNING
    task.cancel()
    assert task.status == "cancelled"
    again = client.get_task(task.task_id)
    assert again.status() == TaskStatus.CANCELLED
    assert again.reason == "Cancelled"
    assert repr(again) == f"Task(task_id={task.task_id!r}, status='cancelled')"


def test_follow_iterators_and_early_break(client: vi_flow.Client) -> None:
    script = "import time\nfor i in range(50): print(i, flush=True)\ntime.sleep(30)"
    task = client.run([PY, "-c", script])
    seen = []
    for line in client.logs(task.task_id, follow=True):
        seen.append(line)
        if line == "9":
            break
    assert seen == [str(i) for i in range(10)]
    # the task prints its 50 lines at once, but a loaded machine may pause it after any
    # of them (the CI did, once, after "9"): cancel it once they are all written
    deadline = time.monotonic() + 30
    while len(client.logs(task.task_id).splitlines()) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    task.cancel(force=True)
    assert list(task.follow_logs()) == [str(i) for i in range(50)]
    # ended by the cancel's signal: no exit code of its own, the signal and the reason say how
    assert (task.exit_code, task.signal, task.reason) == (None, 9, "Cancelled")


def test_resources_namespaces(client: vi_flow.Client) -> None:
    created = client.tasks.create(TaskConfig(name="via-resource", command="echo r"))
    assert client.tasks.get(created.task_id).name == "via-resource"
    assert created.task_id in [t.task_id for t in client.tasks.list().all_items()]
    with pytest.raises(TaskNotFoundError):
        client.tasks.get("task_missing")
    volume = client.volumes.create(2, name="ns-vol")
    assert client.volumes.get("ns-vol").volume_id == volume.volume_id
    assert [v.name for v in client.volumes.list().items] == ["ns-vol"]
    client.volumes.delete("ns-vol")
    assert client.instances.list(limit=1)
    assert client.reservations.list() == []
    assert client.ssh_keys.list() == []
    endpoint = client.tasks.ssh_endpoint(created.task_id)
    assert endpoint.host == "127.0.0.1" and endpoint.host_key.startswith("ssh-ed25519 ")


def test_volumes_namespace_is_callable_like_the_seed(client: vi_flow.Client) -> None:
    client.create_volume(1, name="one", interface="file")
    client.create_volume(1, name="two", interface="file")
    assert sorted(v.name for v in client.volumes()) == ["one", "two"]


def test_run_takes_flow_computes_positional_wait_and_mounts(client: vi_flow.Client) -> None:
    # Found by QA: flow-compute's Flow.run(task, wait, mounts) by position sent the bool
    # as the GPU (422 about gpu); the compute client's run(command, gpu, ...) keeps its order.
    client.create_volume(1, name="posdata", interface="file")
    task = client.run("ls -d data; sleep 30", True, {"/data": "volume://posdata"})
    try:
        assert task.status == "running"  # waited, as wait=True does
        assert task.config.volumes[0].mount_path == "/data"
    finally:
        task.cancel()
    assert client.run(TaskConfig(name="t", command="true"), False).task_id
    with pytest.raises(TypeError, match="gpu must be a string"):
        client.run("true", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wait must be True or False"):
        client.run("true", wait="yes")  # type: ignore[arg-type]
