"""Seed 002's dictionary shapes, as ``TypedDict``: ``TaskDict``, ``CatalogEntry``...

``flow-compute`` hands some results back as plain dicts; vi_flow's own methods return
typed models (``Task``, ``AvailableInstance``, ``SSHKey``, ``AvailabilitySlot``). The
seed's methods that return dicts (``list_platform_ssh_keys``, ``create_platform_ssh_key``,
``list_ssh_keys``, ``reservation_availability``, the ``Client`` facade's ``list``) return
these shapes, made from the models by the functions here; the typed alternative is the
resource method (``client.ssh_keys.list()``, ``client.reservations.availability()``...).
Times are milliseconds since the epoch, as everywhere in vi_flow.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, TypedDict

import attrs

from ..models.tasks import AvailabilitySlot, AvailableInstance, SSHKey, Task

__all__ = [
    "CatalogEntry",
    "GPUInstanceDict",
    "InstanceRequirements",
    "TaskDict",
    "catalog_entry",
    "gpu_instance_dict",
    "slot_dict",
    "ssh_key_dict",
    "task_dict",
]


class InstanceRequirements(TypedDict, total=False):
    """Instance requirements dictionary for ``find_instances()``; every key is optional.

    Attributes:
        gpu_type: GPU model (``"a100"``).
        max_price: Most to pay per hour.
        min_gpu_memory_gb: Least memory per GPU.
        gpu_count: GPUs wanted.
    """

    gpu_type: str
    max_price: float
    min_gpu_memory_gb: int
    gpu_count: int


class CatalogEntry(TypedDict):
    """Instance catalog entry dictionary: one instance type and its price.

    Attributes:
        instance_type: The type's name (``"cpu"``, ``"a100"``...).
        gpu_type: GPU model, ``None`` for CPU-only types.
        gpu_count: GPUs per instance.
        gpu_memory_gb: Memory per GPU.
        cpus: CPU cores.
        memory_gb: Memory.
        price_per_hour: Price per hour.
        available: Whether one is free now.
        region: Where.
    """

    instance_type: str
    gpu_type: str | None
    gpu_count: int
    gpu_memory_gb: int
    cpus: int
    memory_gb: int
    price_per_hour: float
    available: bool
    region: str


class GPUInstanceDict(TypedDict):
    """GPU instance dictionary (the seed's ``_find_gpus_by_memory()`` shape).

    Attributes:
        name: The instance type.
        gpu_type: GPU model.
        gpu_count: GPUs per instance.
        gpu_memory_gb: Memory per GPU.
        price_per_hour: Price per hour.
    """

    name: str
    gpu_type: str | None
    gpu_count: int
    gpu_memory_gb: int
    price_per_hour: float


class TaskDict(TypedDict):
    """Task dictionary returned by the ``Client`` facade's ``list()`` method.

    Attributes:
        task_id: The task.
        name: Display name.
        status: ``pending``, ``running``, ``completed``, ``failed`` or ``cancelled``.
        instance_type: The instance type it runs on.
        created_at: Submission time.
        started_at: Start time, ``None`` until it runs.
        ended_at: End time, ``None`` until it ends.
        exit_code: The exit code once ended.
    """

    task_id: str
    name: str
    status: str
    instance_type: str
    created_at: int
    started_at: int | None
    ended_at: int | None
    exit_code: int | None


def catalog_entry(instance: AvailableInstance) -> CatalogEntry:
    """An ``AvailableInstance`` as a ``CatalogEntry`` dict."""
    i = instance
    return CatalogEntry(
        instance_type=i.instance_type,
        gpu_type=i.gpu_type,
        gpu_count=i.gpu_count,
        gpu_memory_gb=i.gpu_memory_gb,
        cpus=i.cpus,
        memory_gb=i.memory_gb,
        price_per_hour=i.price_per_hour,
        available=i.available,
        region=i.region,
    )


def gpu_instance_dict(instance: AvailableInstance) -> GPUInstanceDict:
    """An ``AvailableInstance`` as a ``GPUInstanceDict``."""
    return GPUInstanceDict(
        name=instance.instance_type,
        gpu_type=instance.gpu_type,
        gpu_count=instance.gpu_count,
        gpu_memory_gb=instance.gpu_memory_gb,
        price_per_hour=instance.price_per_hour,
    )


def task_dict(task: Task) -> TaskDict:
    """A ``Task`` as a ``TaskDict``."""
    return TaskDict(
        task_id=task.task_id,
        name=task.name,
        status=task.status.value,
        instance_type=task.instance_type,
        created_at=task.created_at,
        started_at=task.started_at,
        ended_at=task.ended_at,
        exit_code=task.exit_code,
    )


def ssh_key_dict(key: SSHKey) -> dict[str, str]:
    """An ``SSHKey`` as the seed's ``dict[str, str]``.

    Keys: ``id`` (also as ``key_id``), ``name``, ``public_key``, ``fingerprint`` and
    ``created_at`` (ISO 8601, UTC).
    """
    created = datetime.fromtimestamp(key.created_at / 1000, tz=timezone.utc).isoformat()
    return {
        "id": key.key_id,
        "key_id": key.key_id,
        "name": key.name,
        "public_key": key.public_key,
        "fingerprint": key.fingerprint,
        "created_at": created,
    }


def slot_dict(slot: AvailabilitySlot) -> dict[str, Any]:
    """An ``AvailabilitySlot`` as a dict: ``instance_type``, ``start_time``, ``end_time``..."""
    return attrs.asdict(slot)
