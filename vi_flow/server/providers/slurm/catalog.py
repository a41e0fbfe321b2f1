"""What a Slurm cluster offers, from its node list: the instance catalog and placement.

Pure functions of the nodes ``slurmrestd`` reports, so the provider can check a task
against a cached node list and tests can check them without a cluster. Each node is
described as a :class:`~.._gpu_catalog.ClusterNode` (a drained or down node counts for
sizes, never as free) and :mod:`.._gpu_catalog` does the rest, as for Ray. A request the
cluster cannot meet raises :class:`~..base.CapacityError` naming what exists.
"""

from __future__ import annotations

from collections.abc import Sequence

from ....models.tasks import AvailableInstance, TaskConfig
from .._gpu_catalog import (
    GPU_MEMORY_GB,
    Cluster,
    ClusterNode,
    cluster_catalog,
    cluster_placement,
)
from ..base import Placement
from .jobs import SlurmNode

__all__ = ["GPU_MEMORY_GB", "SLURM", "catalog", "placement"]

SLURM = Cluster(where="this Slurm cluster", node="a node", region="slurm")


def _node(node: SlurmNode) -> ClusterNode:
    usable = node.available
    return ClusterNode(
        cpus=node.cpus,
        memory_gb=node.memory_mb // 1024,
        gpus=node.gpus,
        free_cpus=node.idle_cpus if usable else 0,
        free_gpus={k: n - node.gpus_used.get(k, 0) for k, n in node.gpus.items()} if usable else {},
    )


def placement(config: TaskConfig, nodes: Sequence[SlurmNode]) -> Placement:
    """Resolve a config against the cluster's nodes (see :func:`.._gpu_catalog.cluster_placement`).

    Raises:
        CapacityError: No node has the GPU type, count, CPUs or memory asked for.
        InvalidRequest: Bad GPU shorthand.
    """
    return cluster_placement(config, [_node(n) for n in nodes], SLURM)


def catalog(nodes: Sequence[SlurmNode]) -> list[AvailableInstance]:
    """One entry for CPU-only jobs and one per GPU type and count (1, 2, 4, ... per node)."""
    return cluster_catalog([_node(n) for n in nodes], SLURM)
