"""Seed 002's examples, unchanged, against a local server whose compute provider is Slurm.

Every seed test is re-collected here with the ``slurm_server`` fixture, so the SDK's
default client talks to a server that runs tasks as Slurm jobs. Two are replaced by
their Slurm reading: reservations are an administrator's job on Slurm (creating one
answers ``501 NOT_SUPPORTED`` naming the provider; listing works), and this cluster has
H100s, so the GPU refusals are checked against them.
"""

from __future__ import annotations

from typing import Any

import pytest

import vi_flow
from vi_flow.models.tasks import TaskConfig

from ..seeds import test_seed_002 as seed

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_server")]

REPLACED = {
    "test_ssh_keys_reservations_and_normalize",
    "test_gpu_examples_fail_clearly_without_gpus",
    "test_gpu_examples_on_a_gpu_machine",  # a local server with fake A100s, not Slurm
}


def _is_fixture(obj: object) -> bool:
    return hasattr(obj, "_fixture_function_marker") or hasattr(obj, "_pytestfixturefunction")


# the seed's tests and the fixtures they use, collected from this module too
for _name, _obj in vars(seed).items():
    if (_name.startswith("test_") and _name not in REPLACED) or _is_fixture(_obj):
        globals()[_name] = _obj


def test_ssh_keys_reservations_and_normalize_on_slurm(flow: Any) -> None:
    key_id = flow.ensure_default_ssh_key()
    assert key_id in [k["id"] for k in flow.list_ssh_keys()]
    assert flow.delete_platform_ssh_key(key_id) is True
    with pytest.raises(vi_flow.NotImplementedByProviderError, match="slurm"):
        flow.reservations.create(instance_type="h100", duration_hours=1)
    assert flow.list_reservations() == []
    assert flow.normalize_instance_request(8, "a100") == ("8xa100", 1, None)


def test_gpu_examples_name_the_gpus_slurm_has(flow: Any) -> None:
    with pytest.raises(vi_flow.UnprocessableEntityError, match=r"a100.*h100"):
        flow.submit("python train.py", gpu="a100")
    with pytest.raises(vi_flow.UnprocessableEntityError, match="h100"):
        flow.run(TaskConfig(name="infer", min_gpu_memory_gb=100, command="python serve.py"))
    task = flow.run(TaskConfig(name="infer", min_gpu_memory_gb=40, command="echo served"))
    assert task.gpu_type == "h100"
    flow.cancel(task.task_id)
