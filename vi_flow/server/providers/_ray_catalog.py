"""What a Ray cluster offers, from its node list: the instance catalog and placement.

Pure functions of the nodes the dashboard reports, so the provider can check a task
against a cached node list. A GPU's type is Ray's ``accelerator_type`` resource in lower
case (``H100`` -> ``h100``). A request the cluster cannot meet raises
:class:`~.base.CapacityError` naming what exists, before anything is submitted (Ray
would keep such a job PENDING until its start timeout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from ...models.tasks import AvailableInstance, GPURequest, TaskConfig
from ._ray_api import RayNode
from ._slurm_catalog import GPU_MEMORY_GB as _KNOWN_GPU_MEMORY_GB
from .base import CapacityError, InvalidRequest, Placement

__all__ = ["GPU_MEMORY_GB", "catalog", "placement"]

#: Memory per GPU by model (Ray does not report it; ``gpu:40gb`` requests need it).
GPU_MEMORY_GB: Mapping[str, int] = {
    **_KNOWN_GPU_MEMORY_GB,
    "a10g": 24,
    "a100-40g": 40,
    "a100-80g": 80,
}


def _label(count: int, gpu_type: str) -> str:
    return gpu_type if count == 1 else f"{count}x{gpu_type}"


def _gpu_types(nodes: Sequence[RayNode]) -> dict[str, int]:
    """GPU type -> most GPUs of that type on one live node."""
    most: dict[str, int] = {}
    for node in nodes:
        if node.alive and node.gpu_type:
            most[node.gpu_type] = max(most.get(node.gpu_type, 0), node.gpus)
    return most


def _describe(types: Mapping[str, int]) -> str:
    if not types:
        return "no GPUs"
    return ", ".join(f"{k} (up to {n} per node)" for k, n in sorted(types.items()))


def placement(config: TaskConfig, nodes: Sequence[RayNode]) -> Placement:
    """Resolve a config against the cluster's live nodes.

    Raises:
        CapacityError: No node has the GPU type, count, CPUs or memory asked for; the
            message names what the cluster has.
        InvalidRequest: Bad GPU shorthand.
    """
    live = [n for n in nodes if n.alive]
    gpu_type, gpu_count = _gpus_for(config, live)
    cpus = config.cpus or 1
    memory_gb = config.memory_gb or 0
    fitting = [
        n for n in live if gpu_type is None or (n.gpu_type == gpu_type and n.gpus >= gpu_count)
    ]
    if not any(n.cpus >= cpus for n in fitting):
        most = max((n.cpus for n in fitting), default=0)
        raise CapacityError(f"cpus: asked for {cpus} CPUs; a Ray node here has at most {most}")
    if memory_gb and not any(n.memory_gb >= memory_gb for n in fitting):
        most = max((n.memory_gb for n in fitting), default=0)
        raise CapacityError(
            f"memoryGb: asked for {memory_gb} GB; a Ray node here has at most {most} GB"
        )
    instance = _label(gpu_count, gpu_type) if gpu_type else "cpu"
    return Placement(instance, gpu_type, gpu_count, cpus, memory_gb, 0.0)


def _gpus_for(config: TaskConfig, nodes: Sequence[RayNode]) -> tuple[str | None, int]:
    if config.instance_type:
        known = {i.instance_type: i for i in catalog(nodes)}
        entry = known.get(config.instance_type.lower())
        if entry is None:
            names = ", ".join(sorted(known))
            raise CapacityError(
                f"instanceType: {config.instance_type!r} is not on this Ray cluster; "
                f"known instance types: {names}"
            )
        return entry.gpu_type, entry.gpu_count
    try:
        request = config.gpu_request()
    except ValueError as exc:
        raise InvalidRequest(f"gpu: {exc}") from None
    if request is None:
        return None, 0
    return _resolve_gpu(request, _gpu_types(nodes)), request.gpu_count


def _resolve_gpu(request: GPURequest, types: Mapping[str, int]) -> str:
    asked = request.gpu_type
    if asked is not None and asked not in types:
        raise CapacityError(
            f"gpu: GPU type {asked!r} is not on this Ray cluster; it has {_describe(types)}"
        )
    candidates = [asked] if asked else sorted(types, key=lambda t: (GPU_MEMORY_GB.get(t, 0), t))
    for kind in candidates:
        if request.min_memory_gb and GPU_MEMORY_GB.get(kind, 0) < request.min_memory_gb:
            continue
        if types[kind] >= request.gpu_count:
            return kind
    what = f"{request.gpu_count} x {asked or 'GPU'}"
    if request.min_memory_gb:
        what += f" with at least {request.min_memory_gb} GB"
    raise CapacityError(f"gpu: asked for {what}; this Ray cluster has {_describe(types)}")


def catalog(nodes: Sequence[RayNode]) -> list[AvailableInstance]:
    """One entry for CPU-only jobs and one per GPU type and count (1, 2, 4, ... per node).

    ``available`` says whether a live node has that many GPUs and a CPU free now.
    """
    live = [n for n in nodes if n.alive]
    cpus = max((n.cpus for n in live), default=0)
    memory = max((n.memory_gb for n in live), default=0)
    items = [
        AvailableInstance(
            "cpu", cpus=cpus, memory_gb=memory, available=any(n.free_cpus >= 1 for n in live)
        )
    ]
    for kind, most in sorted(_gpu_types(live).items()):
        for count in sorted({c for c in (1, 2, 4, 8, 16, 32, 64) if c <= most} | {most}):
            free = any(
                n.gpu_type == kind and n.free_gpus >= count and n.free_cpus >= 1 for n in live
            )
            items.append(
                AvailableInstance(
                    _label(count, kind),
                    gpu_type=kind,
                    gpu_count=count,
                    gpu_memory_gb=GPU_MEMORY_GB.get(kind, 0),
                    cpus=cpus,
                    memory_gb=memory,
                    available=free,
                )
            )
    return [attrs.evolve(i, region="ray") for i in items]
