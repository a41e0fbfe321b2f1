"""What a Slurm cluster offers, from its node list: the instance catalog and placement.

Pure functions of the nodes ``slurmrestd`` reports, so the provider can check a task
against a cached node list and tests can check them without a cluster. A request the
cluster cannot meet raises :class:`~..base.CapacityError` naming what exists.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ....models.tasks import AvailableInstance, TaskConfig
from .._gpu_catalog import (
    GPU_MEMORY_GB,
    find_instance,
    gpu_instances,
    gpu_request,
    instance_name,
    resolve_gpu_type,
)
from ..base import CapacityError, Placement
from .jobs import SlurmNode

__all__ = ["GPU_MEMORY_GB", "catalog", "placement"]

_WHERE = "this Slurm cluster"


def _gpu_types(nodes: Sequence[SlurmNode]) -> dict[str, int]:
    """GPU type -> most GPUs of that type on one node."""
    most: dict[str, int] = {}
    for node in nodes:
        for kind, count in node.gpus.items():
            most[kind] = max(most.get(kind, 0), count)
    return most


def _free(node: SlurmNode, gpu_type: str | None) -> int:
    if gpu_type is None:
        return node.idle_cpus
    return node.gpus.get(gpu_type, 0) - node.gpus_used.get(gpu_type, 0)


def _free_together(usable: Sequence[SlurmNode], gpu_type: str) -> int:
    """Most GPUs of ``gpu_type`` free now on one usable node with an idle CPU."""
    return max((_free(n, gpu_type) for n in usable if n.idle_cpus), default=0)


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
    instance = instance_name(gpu_count, gpu_type) if gpu_type else "cpu"
    return Placement(instance, gpu_type, gpu_count, cpus, memory_gb, 0.0)


def _gpus_for(config: TaskConfig, nodes: Sequence[SlurmNode]) -> tuple[str | None, int]:
    if config.instance_type:
        entry = find_instance(config.instance_type, catalog(nodes), _WHERE)
        return entry.gpu_type, entry.gpu_count
    request = gpu_request(config)
    if request is None:
        return None, 0
    return resolve_gpu_type(request, _gpu_types(nodes), GPU_MEMORY_GB, _WHERE), request.gpu_count


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
        items += gpu_instances(
            kind,
            most,
            gpu_memory_gb=GPU_MEMORY_GB.get(kind, 0),
            cpus=cpus,
            memory_gb=memory,
            free_together=_free_together(usable, kind),
        )
    return [attrs.evolve(i, region="slurm") for i in items]
