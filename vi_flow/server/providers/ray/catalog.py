"""What a Ray cluster offers, from its node list: the instance catalog and placement.

Pure functions of the nodes the dashboard reports, so the provider can check a task
against a cached node list. A GPU's type is Ray's ``accelerator_type`` resource in lower
case (``H100`` -> ``h100``). A request the cluster cannot meet raises
:class:`~..base.CapacityError` naming what exists, before anything is submitted (Ray
would keep such a job PENDING until its start timeout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from ....models.tasks import AvailableInstance, TaskConfig
from .._gpu_catalog import GPU_MEMORY_GB as _KNOWN_GPU_MEMORY_GB
from .._gpu_catalog import (
    find_instance,
    gpu_instances,
    gpu_request,
    instance_name,
    resolve_gpu_type,
)
from ..base import CapacityError, Placement
from .api import RayNode

__all__ = ["GPU_MEMORY_GB", "catalog", "placement"]

_WHERE = "this Ray cluster"

#: Memory per GPU by model (Ray does not report it; ``gpu:40gb`` requests need it).
GPU_MEMORY_GB: Mapping[str, int] = {
    **_KNOWN_GPU_MEMORY_GB,
    "a10g": 24,
    "a100-40g": 40,
    "a100-80g": 80,
}


def _gpu_types(nodes: Sequence[RayNode]) -> dict[str, int]:
    """GPU type -> most GPUs of that type on one live node."""
    most: dict[str, int] = {}
    for node in nodes:
        if node.alive and node.gpu_type:
            most[node.gpu_type] = max(most.get(node.gpu_type, 0), node.gpus)
    return most


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
    instance = instance_name(gpu_count, gpu_type) if gpu_type else "cpu"
    return Placement(instance, gpu_type, gpu_count, cpus, memory_gb, 0.0)


def _gpus_for(config: TaskConfig, nodes: Sequence[RayNode]) -> tuple[str | None, int]:
    if config.instance_type:
        entry = find_instance(config.instance_type, catalog(nodes), _WHERE)
        return entry.gpu_type, entry.gpu_count
    request = gpu_request(config)
    if request is None:
        return None, 0
    return resolve_gpu_type(request, _gpu_types(nodes), GPU_MEMORY_GB, _WHERE), request.gpu_count


def _free_together(live: Sequence[RayNode], gpu_type: str) -> float:
    """Most GPUs of ``gpu_type`` free now on one live node with a CPU free."""
    nodes = [n for n in live if n.gpu_type == gpu_type and n.free_cpus >= 1]
    return max((n.free_gpus for n in nodes), default=0)


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
        items += gpu_instances(
            kind,
            most,
            gpu_memory_gb=GPU_MEMORY_GB.get(kind, 0),
            cpus=cpus,
            memory_gb=memory,
            free_together=_free_together(live, kind),
        )
    return [attrs.evolve(i, region="ray") for i in items]
