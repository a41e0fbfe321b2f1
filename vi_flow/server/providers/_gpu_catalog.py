"""GPU sizing every provider shares, and placement on a cluster's nodes.

An instance type is ``cpu``, ``<type>`` or ``<count>x<type>``; each GPU type is offered
in powers of two up to the most one node has, plus that most. A GPU request
(``"a100:2"``, ``"gpu:40gb"``) is parsed with :meth:`TaskConfig.gpu_request` and resolved
against the GPU types a cluster has; what cannot be met raises
:class:`~.base.CapacityError` naming what exists, in the words of the caller (``this Slurm
cluster``, ``this Ray cluster``).

The cluster providers (Slurm, Ray) describe each node as a :class:`ClusterNode` and get
their instance catalog (:func:`cluster_catalog`) and a task's placement
(:func:`cluster_placement`) from the same pure functions here, so a cached node list is
enough to check a task before anything is submitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from ...models.limits import shown
from ...models.tasks import AvailableInstance, GPURequest, TaskConfig
from .base import CapacityError, InvalidRequest, Placement

__all__ = [
    "GPU_MEMORY_GB",
    "Cluster",
    "ClusterNode",
    "cluster_catalog",
    "cluster_placement",
    "describe_gpu_types",
    "find_instance",
    "gpu_counts",
    "gpu_instances",
    "gpu_request",
    "instance_name",
    "resolve_gpu_type",
]

#: Memory per GPU by model, where the scheduler does not report it (Slurm's gres, Ray's
#: resources) and ``gpu:40gb`` requests need it.
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


def instance_name(count: int, gpu_type: str) -> str:
    """``h100`` for one GPU, ``2xh100`` for two."""
    return gpu_type if count == 1 else f"{count}x{gpu_type}"


def gpu_counts(total: int) -> list[int]:
    """The instance sizes offered for ``total`` GPUs of one type: powers of two, then all."""
    counts = [c for c in (1, 2, 4, 8, 16, 32, 64) if c <= total]
    if total not in counts:
        counts.append(total)
    return counts


def gpu_instances(
    gpu_type: str,
    most: int,
    *,
    gpu_memory_gb: int,
    cpus: int,
    memory_gb: int,
    free_together: float,
) -> list[AvailableInstance]:
    """One catalog entry per size of ``gpu_type``.

    ``free_together`` is the most GPUs of the type free now on one node that also has a
    CPU free: a size is ``available`` when it is at most that.
    """
    return [
        AvailableInstance(
            instance_name(count, gpu_type),
            gpu_type=gpu_type,
            gpu_count=count,
            gpu_memory_gb=gpu_memory_gb,
            cpus=cpus,
            memory_gb=memory_gb,
            available=count <= free_together,
        )
        for count in gpu_counts(most)
    ]


def gpu_request(config: TaskConfig) -> GPURequest | None:
    """The config's GPU request, ``None`` for none.

    Raises:
        InvalidRequest: Bad GPU shorthand (the message starts with ``gpu:``).
    """
    try:
        return config.gpu_request()
    except ValueError as exc:
        raise InvalidRequest(f"gpu: {exc}") from None


def describe_gpu_types(types: Mapping[str, int]) -> str:
    """``a100 (up to 4 per node), h100 (up to 8 per node)``, or ``no GPUs``."""
    if not types:
        return "no GPUs"
    return ", ".join(f"{k} (up to {n} per node)" for k, n in sorted(types.items()))


def find_instance(name: str, catalog: Sequence[AvailableInstance], where: str) -> AvailableInstance:
    """The catalog entry named ``name`` (any case).

    Raises:
        CapacityError: No such instance type ``where``; the message lists the known ones.
    """
    known = {i.instance_type: i for i in catalog}
    entry = known.get(name.lower())
    if entry is None:
        names = ", ".join(sorted(known))
        raise CapacityError(
            f"instanceType: {name!r} is not on {where}; known instance types: {names}"
        )
    return entry


def resolve_gpu_type(
    request: GPURequest, types: Mapping[str, int], memory: Mapping[str, int], where: str
) -> str:
    """The GPU type to give ``request``: the one asked for, else the smallest that fits.

    Args:
        request: The parsed request.
        types: GPU type -> most GPUs of that type on one node.
        memory: GPU type -> memory per GPU (GB); unknown types count as 0.
        where: How messages name the cluster (``"this Slurm cluster"``).

    Raises:
        CapacityError: The type is absent, or no type has the count or memory asked for.
    """
    asked = request.gpu_type
    if asked is not None and asked not in types:
        raise CapacityError(
            f"gpu: GPU type {shown(asked)} is not on {where}; it has {describe_gpu_types(types)}"
        )
    candidates = [asked] if asked else sorted(types, key=lambda t: (memory.get(t, 0), t))
    for kind in candidates:
        if request.min_memory_gb and memory.get(kind, 0) < request.min_memory_gb:
            continue
        if types[kind] >= request.gpu_count:
            return kind
    what = f"{request.gpu_count} x {(asked or 'GPU')[:64]}"
    if request.min_memory_gb:
        what += f" with at least {request.min_memory_gb} GB"
    raise CapacityError(f"gpu: asked for {what}; {where} has {describe_gpu_types(types)}")


@attrs.frozen
class ClusterNode:
    """One node of a cluster, as placement sees it.

    Attributes:
        cpus: CPUs on the node.
        memory_gb: Memory on the node, whole GB.
        gpus: GPU type -> how many the node has.
        free_cpus: CPUs free now (0 on a node that takes no jobs now).
        free_gpus: GPU type -> how many are free now (empty on a node that takes no jobs).
    """

    cpus: int
    memory_gb: int
    gpus: Mapping[str, int]
    free_cpus: float
    free_gpus: Mapping[str, float]


@attrs.frozen
class Cluster:
    """How a cluster provider's catalog and messages name things.

    Attributes:
        where: The cluster in messages (``"this Slurm cluster"``).
        node: One of its nodes in messages (``"a node"``, ``"a Ray node"``).
        region: The catalog entries' region (``"slurm"``).
        gpu_memory_gb: Memory per GPU by type (the scheduler does not report it).
    """

    where: str
    node: str
    region: str
    gpu_memory_gb: Mapping[str, int] = GPU_MEMORY_GB


def _gpu_types(nodes: Sequence[ClusterNode]) -> dict[str, int]:
    """GPU type -> most GPUs of that type on one node."""
    most: dict[str, int] = {}
    for node in nodes:
        for kind, count in node.gpus.items():
            most[kind] = max(most.get(kind, 0), count)
    return most


def _free_together(nodes: Sequence[ClusterNode], gpu_type: str) -> float:
    """Most GPUs of ``gpu_type`` free now on one node with a CPU free."""
    return max((n.free_gpus.get(gpu_type, 0) for n in nodes if n.free_cpus >= 1), default=0)


def cluster_catalog(nodes: Sequence[ClusterNode], cluster: Cluster) -> list[AvailableInstance]:
    """One entry for CPU-only jobs and one per GPU type and count (1, 2, 4, ... per node).

    ``available`` says whether a node has that many GPUs and a CPU free now.
    """
    cpus = max((n.cpus for n in nodes), default=0)
    memory = max((n.memory_gb for n in nodes), default=0)
    items = [
        AvailableInstance(
            "cpu", cpus=cpus, memory_gb=memory, available=any(n.free_cpus >= 1 for n in nodes)
        )
    ]
    for kind, most in sorted(_gpu_types(nodes).items()):
        items += gpu_instances(
            kind,
            most,
            gpu_memory_gb=cluster.gpu_memory_gb.get(kind, 0),
            cpus=cpus,
            memory_gb=memory,
            free_together=_free_together(nodes, kind),
        )
    return [attrs.evolve(i, region=cluster.region) for i in items]


def cluster_placement(
    config: TaskConfig, nodes: Sequence[ClusterNode], cluster: Cluster
) -> Placement:
    """Resolve a config against a cluster's nodes.

    Raises:
        CapacityError: No node has the GPU type, count, CPUs or memory asked for; the
            message names what the cluster has.
        InvalidRequest: Bad GPU shorthand.
    """
    gpu_type, gpu_count = _gpus_for(config, nodes, cluster)
    cpus = config.cpus or 1
    memory_gb = config.memory_gb or 0
    fitting = [n for n in nodes if gpu_type is None or n.gpus.get(gpu_type, 0) >= gpu_count]
    if not any(n.cpus >= cpus for n in fitting):
        most = max((n.cpus for n in fitting), default=0)
        raise CapacityError(f"cpus: asked for {cpus} CPUs; {cluster.node} here has at most {most}")
    if memory_gb and not any(n.memory_gb >= memory_gb for n in fitting):
        most = max((n.memory_gb for n in fitting), default=0)
        raise CapacityError(
            f"memoryGb: asked for {memory_gb} GB; {cluster.node} here has at most {most} GB"
        )
    instance = instance_name(gpu_count, gpu_type) if gpu_type else "cpu"
    return Placement(instance, gpu_type, gpu_count, cpus, memory_gb, 0.0)


def _gpus_for(
    config: TaskConfig, nodes: Sequence[ClusterNode], cluster: Cluster
) -> tuple[str | None, int]:
    if config.instance_type:
        entry = find_instance(config.instance_type, cluster_catalog(nodes, cluster), cluster.where)
        return entry.gpu_type, entry.gpu_count
    request = gpu_request(config)
    if request is None:
        return None, 0
    kind = resolve_gpu_type(request, _gpu_types(nodes), cluster.gpu_memory_gb, cluster.where)
    return kind, request.gpu_count
