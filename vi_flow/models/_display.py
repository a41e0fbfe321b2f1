"""Rich summaries behind ``Flow.info()`` and ``Run.info()``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .flows import Flow
    from .runs import Run


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def print_flow(flow: Flow) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Flow {flow.flow_id}", show_header=False, title_justify="left")
    table.add_row("Name", flow.spec.name)
    table.add_row("Organization", flow.organization_id)
    table.add_row("Schema", flow.spec.schema)
    table.add_row("Created", _when(flow.metadata.time_created))
    table.add_row("Updated", _when(flow.metadata.last_updated))
    table.add_row("Production version", str(flow.production_version or "-"))
    if flow.spec.training_project:
        table.add_row("Training project", flow.spec.training_project)
    for i, block in enumerate(flow.spec.blocks, 1):
        table.add_row(f"Block {i}", f"{block.block}" + (f" ({block.id})" if block.id else ""))
    Console().print(table)


def print_run(run: Run) -> None:
    from rich.console import Console
    from rich.table import Table

    status = run.status.conditions[-1] if run.status.conditions else None
    table = Table(title=f"Run {run.run_id}", show_header=False, title_justify="left")
    table.add_row("Flow", f"{run.spec.flow.name} ({run.spec.flow_id or '-'})")
    table.add_row("Version", run.spec.flow_version)
    table.add_row("Status", status.condition.value if status else "Unknown")
    if status and status.message:
        table.add_row("Message", status.message)
    table.add_row("Created", _when(run.metadata.time_created))
    table.add_row("Updated", _when(run.metadata.last_updated))
    table.add_row("Blocks", str(len(run.spec.flow.blocks)))
    if run.spec.training_project:
        table.add_row("Training project", run.spec.training_project)
    Console().print(table)
