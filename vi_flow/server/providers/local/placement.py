"""What a task may ask of this machine: placement and the instance catalog.

:func:`place` resolves a :class:`~vi_flow.models.tasks.TaskConfig` (an instance type, or
a ``gpu`` request, plus CPUs and memory) against the detected
:class:`~vi_flow.server.providers.local.machine.Machine`, and fails with
:class:`~vi_flow.server.providers.base.CapacityError` for what the machine can never
give. :func:`build_catalog` lists ``cpu`` plus, per GPU type, ``<type>``, ``2x<type>``,
... up to the number of GPUs found, each marked available when free now.
"""

from __future__ import annotations

import attrs

from ....models.limits import shown
from ....models.tasks import AvailableInstance, GPURequest, TaskConfig
from .._gpu_catalog import gpu_instances, gpu_request, instance_name
from ..base import CapacityError, InvalidRequest, Placement
from .machine import Machine

__all__ = ["build_catalog", "place"]


def place(machine: Machine, config: TaskConfig, catalog: list[AvailableInstance]) -> Placement:
    """Resolve the instance type, GPUs and CPUs of ``config`` against ``machine``.

    Raises:
        InvalidRequest: A malformed request.
        CapacityError: A request this machine can never meet.
    """
    if config.instance_type:
        entry = _find_type(machine, config.instance_type, catalog)
        placement = Placement(
            entry.instance_type, entry.gpu_type, entry.gpu_count, 1, entry.memory_gb
        )
    else:
        placement = _place_gpu(machine, config)
    cpus = config.cpus if config.cpus is not None else 1
    memory = config.memory_gb or 0
    _check_size(machine, cpus, memory)
    price_cap = config.max_price_per_hour
    if price_cap is not None and price_cap < 0:
        raise InvalidRequest(f"maxPricePerHour: must not be negative, got {price_cap}")
    return attrs.evolve(placement, cpus=cpus, memory_gb=memory)


def _check_size(machine: Machine, cpus: int, memory: int) -> None:
    if cpus < 1:
        raise InvalidRequest(f"cpus: must be at least 1, got {cpus}")
    if cpus > machine.cpus:
        raise CapacityError(f"cpus: asked for {cpus} CPUs; this machine has {machine.cpus}")
    if machine.memory_gb and memory > machine.memory_gb:
        raise CapacityError(
            f"memoryGb: asked for {memory} GB; this machine has {machine.memory_gb} GB"
        )


def _find_type(machine: Machine, name: str, catalog: list[AvailableInstance]) -> AvailableInstance:
    wanted = name.strip().lower()
    for entry in catalog:
        if entry.instance_type == wanted:
            return entry
    known = ", ".join(e.instance_type for e in catalog)
    raise CapacityError(
        f"instanceType: {shown(name)} is not available on this machine "
        f"({machine.describe_gpus()}); known instance types: {known}"
    )


def _place_gpu(machine: Machine, config: TaskConfig) -> Placement:
    request = gpu_request(config)
    if request is None:
        return Placement("cpu")
    gpu_type = _match_gpus(machine, request, config.gpu or f"gpu:{request.min_memory_gb}gb")
    count = request.gpu_count
    return Placement(instance_name(count, gpu_type), gpu_type, count)


def _match_gpus(machine: Machine, request: GPURequest, asked: str) -> str:
    for gpu_type, devices in machine.gpu_types().items():
        if request.gpu_type not in (None, gpu_type):
            continue
        if request.min_memory_gb and devices[0].memory_gb < request.min_memory_gb:
            continue
        if len(devices) >= request.gpu_count:
            return gpu_type
    what = f"{request.gpu_count} x {(request.gpu_type or 'any GPU')[:64]}"
    if request.min_memory_gb:
        what += f" with at least {request.min_memory_gb} GB"
    raise CapacityError(
        f"gpu: {shown(asked)} asked for {what}; this machine has {machine.describe_gpus()}"
    )


def build_catalog(
    machine: Machine, free_cpus: int, free_gpus: list[int]
) -> list[AvailableInstance]:
    """``cpu`` plus, per GPU type, ``<type>``, ``2x<type>``, ... up to the count found."""
    m = machine
    catalog = [
        AvailableInstance("cpu", cpus=m.cpus, memory_gb=m.memory_gb, available=free_cpus > 0)
    ]
    for gpu_type, devices in m.gpu_types().items():
        free = len([g for g in free_gpus if g in {d.index for d in devices}])
        catalog += gpu_instances(
            gpu_type,
            len(devices),
            gpu_memory_gb=devices[0].memory_gb,
            cpus=m.cpus,
            memory_gb=m.memory_gb,
            free_together=free if free_cpus > 0 else 0,
        )
    return catalog
