"""Flows: a named list of blocks that executing turns into a run."""

from __future__ import annotations

from typing import Any

import attrs

from .common import ResourceMetadata

__all__ = ["DeletedFlow", "Flow", "FlowBlock", "FlowInput", "FlowSpec"]

SCHEMA = "vi_flow/v1"


@attrs.frozen
class FlowBlock:
    """One step of a flow.

    Attributes:
        block: The block type: ``template``, ``tool``, ``llm``, ``task`` or a plugin's.
        id: The step id, unique in the flow; used by ``block_overrides`` and traces.
        settings: Block-specific settings.
        style: UI/display styling, kept as given.
    """

    block: str
    id: str | None = None
    settings: dict[str, Any] = attrs.Factory(dict)
    style: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class FlowInput:
    """An input the flow accepts through ``parameters``.

    Attributes:
        name: The parameter name.
        required: Whether executing without it is an error (422).
        default: The value used when not required and not given.
        description: What the input means.
    """

    name: str
    required: bool = True
    default: Any = None
    description: str | None = None


@attrs.frozen
class FlowSpec:
    """What a flow does.

    Attributes:
        name: Display name.
        schema: Schema version identifier.
        tolerations: Toleration rules, as in the Vi SDK.
        settings: Global settings.
        blocks: The steps, run in order.
        training_project: Training project or dataset id.
        inputs: Declared inputs; required ones must be given at execution.
    """

    name: str
    schema: str = SCHEMA
    tolerations: dict[str, list[str]] = attrs.Factory(dict)
    settings: dict[str, Any] = attrs.Factory(dict)
    blocks: list[FlowBlock] = attrs.Factory(list)
    training_project: str | None = None
    inputs: list[FlowInput] = attrs.Factory(list)


@attrs.frozen
class Flow:
    """A flow as stored by the server.

    Attributes:
        organization_id: The owning organization.
        flow_id: Unique identifier.
        spec: The draft specification.
        metadata: Creation and update times.
        self_link: API link of this flow.
        etag: Entity tag; pass it to ``flows.update`` to avoid lost updates.
        production_version: The promoted published version, if any.
        latest_version: The highest published version, if any.
    """

    organization_id: str
    flow_id: str
    spec: FlowSpec
    metadata: ResourceMetadata
    self_link: str = ""
    etag: str = ""
    production_version: int | None = None
    latest_version: int | None = None

    def info(self) -> None:
        """Print a formatted summary of the flow."""
        from ._display import print_flow

        print_flow(self)


@attrs.frozen
class DeletedFlow:
    """The answer to ``flows.delete``.

    Attributes:
        flow_id: The deleted flow.
        deleted: Always true when the call returns.
    """

    flow_id: str
    deleted: bool = True
