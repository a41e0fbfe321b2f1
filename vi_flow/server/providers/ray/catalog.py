"""What a Ray cluster offers, from its node list: the instance catalog and placement.

Pure functions of the nodes the dashboard reports, so the provider can check a task
against a cached node list. Only live nodes count; each is described as a
:class:`~.._gpu_catalog.ClusterNode` and :mod:`.._gpu_catalog` does the rest, as for
Slurm. A GPU's type is Ray's ``accelerator_type`` resource in lower case (``H100`` ->
``h100``). A request the cluster cannot meet raises :class:`~..base.CapacityError`
naming what exists, before anything is submitted (Ray would keep such a job PENDING
until its start timeout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ....models.tasks import AvailableInstance, TaskConfig
from .._gpu_catalog import GPU_MEMORY_GB as _KNOWN_GPU_MEMORY_GB
from .._gpu_catalog import Cluster, ClusterNode, cluster_catalog, cluster_placement
from ..base import Placement
from .api import RayNode

__all__ = ["GPU_MEMORY_GB", "RAY", "catalog", "placement"]

#: Memory per GPU by model, with Ray's own accelerator names (``A10G``, ``A100-40G``).
GPU_MEMORY_GB: Mapping[str, int] = {
    **_KNOWN_GPU_MEMORY_GB,
    "a10g": 24,
    "a100-40g": 40,
    "a100-80g": 80,
}

RAY = Cluster(
    where="this Ray cluster", node="a Ray node", region="ray", gpu_memory_gb=GPU_MEMORY_GB
)


def _live(nodes: Sequence[RayNode]) -> list[ClusterNode]:
    return [
        ClusterNode(
            cpus=n.cpus,
            memory_gb=n.memory_gb,
            gpus={n.gpu_type: n.gpus} if n.gpu_type else {},
            free_cpus=n.free_cpus,
            free_gpus={n.gpu_type: n.free_gpus} if n.gpu_type else {},
        )
        for n in nodes
        if n.alive
    ]


def placement(config: TaskConfig, nodes: Sequence[RayNode]) -> Placement:
    """Resolve a config against the live nodes (see :func:`.._gpu_catalog.cluster_placement`).

    Raises:
        CapacityError: No node has the GPU type, count, CPUs or memory asked for.
        InvalidRequest: Bad GPU shorthand.
    """
    return cluster_placement(config, _live(nodes), RAY)


def catalog(nodes: Sequence[RayNode]) -> list[AvailableInstance]:
    """One entry for CPU-only jobs and one per GPU type and count (1, 2, 4, ... per node).

    ``available`` says whether a live node has that many GPUs and a CPU free now.
    """
    return cluster_catalog(_live(nodes), RAY)
