"""GPU sizing every provider shares: instance names, sizes offered, and picking a GPU type.

An instance type is ``cpu``, ``<type>`` or ``<count>x<type>``; each GPU type is offered
in powers of two up to the most one node has, plus that most. A GPU request
(``"a100:2"``, ``"gpu:40gb"``) is parsed with :meth:`TaskConfig.gpu_request` and resolved
against the GPU types a cluster has; what cannot be met raises
:class:`~.base.CapacityError` naming what exists, in the words of the caller (``this Slurm
cluster``, ``this Ray cluster``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...models.tasks import AvailableInstance, GPURequest, TaskConfig
from .base import CapacityError, InvalidRequest

__all__ = [
    "GPU_MEMORY_GB",
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
            f"gpu: GPU type {asked!r} is not on {where}; it has {describe_gpu_types(types)}"
        )
    candidates = [asked] if asked else sorted(types, key=lambda t: (memory.get(t, 0), t))
    for kind in candidates:
        if request.min_memory_gb and memory.get(kind, 0) < request.min_memory_gb:
            continue
        if types[kind] >= request.gpu_count:
            return kind
    what = f"{request.gpu_count} x {asked or 'GPU'}"
    if request.min_memory_gb:
        what += f" with at least {request.min_memory_gb} GB"
    raise CapacityError(f"gpu: asked for {what}; {where} has {describe_gpu_types(types)}")
