"""Seed 002's examples, unchanged, against a local server whose compute provider is Ray.

Every seed test is re-collected here with the ``ray_server`` fixture, so the SDK's
default client talks to a server that runs tasks as Ray jobs. Some are replaced by
their Ray reading: Ray has no reservations (creating one answers ``501 NOT_SUPPORTED``
naming the provider; the list is empty); this head has four fake H100s, so the GPU
examples run on them and the refusals name them; and Ray cannot run a command inside a
job, so the examples that check their work through a shell see it refused, naming Ray
(issue 11: never a shell on the server's host).
"""

from __future__ import annotations

from typing import Any

import pytest

import vi_flow
from vi_flow.models.tasks import TaskConfig, TaskStatus

from ..seeds import test_seed_002 as seed

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_server")]

REPLACED = {
    "test_ssh_keys_reservations_and_normalize",
    "test_gpu_examples_fail_clearly_without_gpus",
    "test_gpu_examples_on_a_gpu_machine",  # a local server with fake A100s, not Ray
    # they check their work through a shell, which Ray refuses (see below)
    "test_submit_and_shell",
    "test_upload_code",
    "test_mount_volume_by_name_and_id",
    "test_async_seed_flow",
}


def _is_fixture(obj: object) -> bool:
    return hasattr(obj, "_fixture_function_marker") or hasattr(obj, "_pytestfixturefunction")


# the seed's tests and the fixtures they use, collected from this module too
for _name, _obj in vars(seed).items():
    if (_name.startswith("test_") and _name not in REPLACED) or _is_fixture(_obj):
        globals()[_name] = _obj


def test_ssh_keys_reservations_and_normalize_on_ray(flow: Any) -> None:
    key_id = flow.ensure_default_ssh_key()
    assert key_id in [k["id"] for k in flow.list_ssh_keys()]
    assert flow.delete_platform_ssh_key(key_id) is True
    with pytest.raises(vi_flow.NotImplementedByProviderError, match="ray"):
        flow.reservations.create(instance_type="h100", duration_hours=1)
    assert flow.list_reservations() == []
    assert flow.normalize_instance_request(8, "a100") == ("8xa100", 1, None)


def test_gpu_examples_on_the_ray_h100s(flow: Any) -> None:
    with pytest.raises(vi_flow.UnprocessableEntityError, match=r"a100.*h100"):
        flow.submit("python train.py", gpu="a100")
    with pytest.raises(vi_flow.UnprocessableEntityError, match="h100"):
        flow.run(TaskConfig(name="infer", min_gpu_memory_gb=100, command="python serve.py"))
    flow.create_volume(100, name="datasets", interface="file")
    four = flow.submit(
        "echo $CUDA_VISIBLE_DEVICES", gpu="h100:4", mounts={"/data": "volume://datasets"}
    )
    assert four.wait(timeout=30) == TaskStatus.COMPLETED
    assert four.gpu_count == 4 and sorted(flow.logs(four.task_id).split(",")) == list("0123")
    cfg = TaskConfig(name="infer", min_gpu_memory_gb=40, command="echo $CUDA_VISIBLE_DEVICES")
    task = flow.run(cfg)
    assert task.wait(timeout=30) == TaskStatus.COMPLETED and task.gpu_type == "h100"
    assert flow.logs(task.task_id) in ("0", "1", "2", "3")


def test_shells_are_refused_on_ray_naming_the_reason(flow: Any) -> None:
    task = flow.submit("sleep 30")
    assert flow.wait_for_ssh(task.task_id, timeout=30).status == "running"
    with pytest.raises(vi_flow.ShellUnavailableError, match="'ray' provider") as err:
        flow.shell(task.task_id, command="echo from-the-task")
    assert "Ray cannot run them there" in err.value.reason
    assert flow.ssh(task.task_id).startswith("ssh -i ")  # the command line is still given
    flow.cancel(task.task_id, force=True)
