"""What a Slurm cluster offers, from its node list: the instance catalog and placement.

Pure functions of the nodes ``slurmrestd`` reports, so the provider can check a task
against a cached node list and tests can check them without a cluster. A request the
cluster cannot meet raises :class:`~.base.CapacityError` naming what exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from ...models.tasks import AvailableInstance, GPURequest, TaskConfig
from ._slurm_jobs import SlurmNode
from .base import CapacityError, InvalidRequest, Placement

__all__ = ["GPU_MEMORY_GB", "catalog", "placement"]

#: Memory per GPU by model; Slurm's gres does not say, and ``gpu:40gb`` requests need it.
GPU_MEMORY_GB: Mapping[str, int] = {
    "a10": 24,
    "a100": 80,
    "h100": 80,
    "h200": 141,
    "l4": 24,
    "l40s": 48,
    "t4": 16,
    "v100": 32,
}


def _gpu_label(count: int, gpu_type: str) -> str:
    return gpu_type if count == 1 else f"{count}x{gpu_type}"


def _gpu_types(nodes: Sequence[SlurmNode]) -> dict[str, int]:
    """GPU type -> most GPUs of that type on one node."""
    most: dict[str, int] = {}
    for node in nodes:
        for kind, count in node.gpus.items():
            most[kind] = max(most.get(kind, 0), count)
    return most


def _describe_types(types: Mapping[str, int]) -> str:
    if not types:
        return "no GPUs"
    return ", ".join(f"{k} (up to {n} per node)" for k, n in sorted(types.items()))


def _free(node: SlurmNode, gpu_type: str | None) -> int:
    if gpu_type is None:
        return node.idle_cpus
    return node.gpus.get(gpu_type, 0) - node.gpus_used.get(gpu_type, 0)


def placement(config: TaskConfig, nodes: Sequence[SlurmNode]) -> Placement:
    """Resolve a config against the cluster's nodes.

    Raises:
        CapacityError: No node has the GPU type, count, CPUs or memory asked for; the
            message names what the cluster has.
        InvalidRequest: Bad GPU shorthand or unknown instance type.
    """
    gpu_type, gpu_count = _gpus_for(config, nodes)
    cpus = config.cpus or 1
    memory_gb = config.memory_gb or 0
    fitting = [n for n in nodes if gpu_type is None or n.gpus.get(gpu_type, 0) >= gpu_count]
    if not any(n.cpus >= cpus for n in fitting):
        most = max((n.cpus for n in fitting), default=0)
        raise CapacityError(f"cpus: asked for {cpus} CPUs; a node here has at most {most}")
    if memory_gb and not any(n.memory_mb >= memory_gb * 1024 for n in fitting):
        most = max((n.memory_mb for n in fitting), default=0) // 1024
        raise CapacityError(
            f"memoryGb: asked for {memory_gb} GB; a node here has at most {most} GB"
        )
    instance = _gpu_label(gpu_count, gpu_type) if gpu_type else "cpu"
    return Placement(instance, gpu_type, gpu_count, cpus, memory_gb, 0.0)


def _gpus_for(config: TaskConfig, nodes: Sequence[SlurmNode]) -> tuple[str | None, int]:
    if config.instance_type:
        return _instance_gpus(config.instance_type, nodes)
    try:
        request = config.gpu_request()
    except ValueError as exc:
        raise InvalidRequest(f"gpu: {exc}") from None
    if request is None:
        return None, 0
    return _resolve_gpu(request, _gpu_types(nodes)), request.gpu_count


def _instance_gpus(name: str, nodes: Sequence[SlurmNode]) -> tuple[str | None, int]:
    known = {i.instance_type: i for i in catalog(nodes)}
    entry = known.get(name.lower())
    if entry is None:
        names = ", ".join(sorted(known))
        raise CapacityError(
            f"instanceType: {name!r} is not on this Slurm cluster; known instance types: {names}"
        )
    return entry.gpu_type, entry.gpu_count


def _resolve_gpu(request: GPURequest, types: Mapping[str, int]) -> str:
    asked = request.gpu_type
    if asked is not None and asked not in types:
        raise CapacityError(
            f"gpu: GPU type {asked!r} is not on this Slurm cluster; it has {_describe_types(types)}"
        )
    candidates = [asked] if asked else sorted(types, key=lambda t: (GPU_MEMORY_GB.get(t, 0), t))
    for kind in candidates:
        memory = GPU_MEMORY_GB.get(kind, 0)
        if request.min_memory_gb and memory < request.min_memory_gb:
            continue
        if types[kind] >= request.gpu_count:
            return kind
    what = f"{request.gpu_count} x {asked or 'GPU'}"
    if request.min_memory_gb:
        what += f" with at least {request.min_memory_gb} GB"
    raise CapacityError(f"gpu: asked for {what}; this Slurm cluster has {_describe_types(types)}")


def catalog(nodes: Sequence[SlurmNode]) -> list[AvailableInstance]:
    """One entry for CPU-only jobs and one per GPU type and count (1, 2, 4, ... per node)."""
    usable = [n for n in nodes if n.available]
    cpus = max((n.cpus for n in nodes), default=0)
    memory = max((n.memory_mb for n in nodes), default=0) // 1024
    items = [
        AvailableInstance(
            "cpu", cpus=cpus, memory_gb=memory, available=any(n.idle_cpus for n in usable)
        )
    ]
    for kind, most in sorted(_gpu_types(nodes).items()):
        counts = sorted({c for c in (1, 2, 4, 8, 16, 32, 64) if c <= most} | {most})
        for count in counts:
            free = any(_free(n, kind) >= count and n.idle_cpus for n in usable)
            items.append(
                AvailableInstance(
                    _gpu_label(count, kind),
                    gpu_type=kind,
                    gpu_count=count,
                    gpu_memory_gb=GPU_MEMORY_GB.get(kind, 0),
                    cpus=cpus,
                    memory_gb=memory,
                    available=free,
                )
            )
    return [attrs.evolve(i, region="slurm") for i in items]
