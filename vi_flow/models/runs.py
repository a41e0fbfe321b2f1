"""Runs: one execution of a flow, with its condition history."""

from __future__ import annotations

from typing import Any

import attrs

from .common import Condition, ResourceCondition, ResourceMetadata
from .flows import FlowSpec

__all__ = ["DeletedRun", "Run", "RunSpec", "RunStatus"]


@attrs.frozen
class RunSpec:
    """What a run executes.

    Attributes:
        flow: The flow specification frozen at the run's start.
        killed_at: When the run was cancelled, in ms since the epoch.
        training_project: Training project or dataset id.
        flow_id: The flow the run came from.
        flow_version: ``"draft"`` or the published version number executed.
        message: The user message the run started with.
        parameters: The flow inputs given.
    """

    flow: FlowSpec
    killed_at: int | None = None
    training_project: str | None = None
    flow_id: str = ""
    flow_version: str = "draft"
    message: str | None = None
    parameters: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class RunStatus:
    """Where a run stands.

    Attributes:
        log: Path of the run's event log on the server.
        observed_generation: The spec generation the status describes.
        conditions: The condition history, oldest first; the last is current.
    """

    log: str = ""
    observed_generation: int = 1
    conditions: list[ResourceCondition] = attrs.Factory(list)

    @property
    def condition(self) -> Condition | None:
        """The current condition, or ``None`` before the first one."""
        return self.conditions[-1].condition if self.conditions else None


@attrs.frozen
class Run:
    """A run as stored by the server.

    Attributes:
        organization_id: The owning organization.
        run_id: Unique identifier; the ``execution_id`` of an execution.
        spec: What the run executes.
        status: Condition history.
        metadata: Creation and update times.
        self_link: API link of this run.
        etag: Entity tag.
    """

    organization_id: str
    run_id: str
    spec: RunSpec
    status: RunStatus
    metadata: ResourceMetadata
    self_link: str = ""
    etag: str = ""

    def info(self) -> None:
        """Print a formatted summary of the run, with its latest condition."""
        from ._display import print_run

        print_run(self)


@attrs.frozen
class DeletedRun:
    """The answer to ``runs.delete``."""

    run_id: str
    deleted: bool = True
