"""``vi-flow instances find``: instance types that match a request, cheapest first."""

from __future__ import annotations

import click

from ._lazy import LazyGroup
from ._output import emit_json, json_option, table, wants_json
from ._params import FiniteFloat, int_range

__all__ = ["instances"]


@click.group(cls=LazyGroup)
def instances() -> None:
    """Find instance types and their prices."""


@instances.command("find")
@click.option("--gpu", "gpu_type", help="GPU type (a100, h100...).")
@click.option("--max-price", type=FiniteFloat(), help="Most to pay per hour.")
@click.option(
    "--min-gpu-memory",
    "min_gpu_memory_gb",
    type=int_range(1),
    help="Least memory per GPU, in GB.",
)
@click.option("--gpu-count", type=int_range(1), help="GPUs per instance.")
@click.option("--limit", default=20, show_default=True, type=int_range(1))
@json_option
def find(
    gpu_type: str | None,
    max_price: float | None,
    min_gpu_memory_gb: int | None,
    gpu_count: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """List instance types meeting every constraint given, cheapest first."""
    from ._state import state

    items = (
        state()
        .client()
        .instances.list(
            gpu_type=gpu_type,
            max_price=max_price,
            min_gpu_memory_gb=min_gpu_memory_gb,
            gpu_count=gpu_count,
            limit=limit,
        )
    )
    if wants_json(as_json):
        emit_json(items)
        return
    rows = [
        (
            i.instance_type,
            f"{i.gpu_count} x {i.gpu_type}" if i.gpu_count else "-",
            f"{i.gpu_memory_gb} GB" if i.gpu_count else "-",
            i.cpus,
            f"{i.memory_gb} GB",
            f"${i.price_per_hour:.2f}",
            "yes" if i.available else "no",
            i.region,
        )
        for i in items
    ]
    table(
        ["INSTANCE", "GPUS", "GPU MEMORY", "CPUS", "MEMORY", "PRICE/H", "AVAILABLE", "REGION"], rows
    )
