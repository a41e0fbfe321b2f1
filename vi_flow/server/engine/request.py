"""The execution request on the server: reading the JSON body, then checking it against the flow.

The request itself (fields, limits, checks) is :class:`vi_flow.models.ExecuteRequest`,
shared with the client. Every problem is ``422 VALIDATION_ERROR`` naming the wire field
(``attachments[2]: expected an https URL, got 'ftp://x'``). Checks that need the flow
(required inputs, override step ids) are in :func:`check_against_flow`.
"""

from __future__ import annotations

from typing import Any

import attrs

from ...models.execution import ExecuteRequest, ExecuteRequestError
from ...models.flows import FlowSpec
from ..errors import APIProblem
from ..validation import (
    BlockCatalog,
    check_block_values,
    check_settings,
    resolve_parameters,
    step_id_of,
)

__all__ = [
    "ExecuteRequest",
    "check_against_flow",
    "parse_request",
    "step_id_of",
]


def parse_request(body: Any) -> ExecuteRequest:
    """Check an execution request body (camelCase wire JSON) and return it typed.

    Raises:
        APIProblem: 422 naming the first bad field.
    """
    try:
        return ExecuteRequest.from_wire(body)
    except ExecuteRequestError as exc:
        raise APIProblem.validation(exc.wire_field, exc.problem) from None


def check_against_flow(
    request: ExecuteRequest, spec: FlowSpec, catalog: BlockCatalog | None = None
) -> ExecuteRequest:
    """Apply input defaults and check overrides against the flow version.

    Raises:
        APIProblem: 422 ``parameters.<name>`` for a missing required input,
            ``blockOverrides.<id>`` for a step the flow does not have, or
            ``blockOverrides.<id>.settings.<name>`` for a setting its block does not read
            or a value out of its range (as a flow's own settings are checked: a
            misspelt one would be ignored, a larger one would lift the flow's limits).
    """
    parameters = resolve_parameters(spec, request.parameters)
    steps = {step_id_of(spec, i): block for i, block in enumerate(spec.blocks)}
    for step_id, settings in request.block_overrides.items():
        if step_id not in steps:
            raise APIProblem.validation(
                f"blockOverrides.{step_id}",
                f"the flow has no step {step_id!r} (steps: {sorted(steps)})",
            )
        kind = steps[step_id].block
        if catalog is not None:
            check_settings(f"blockOverrides.{step_id}", kind, settings, catalog.settings_of(kind))
        check_block_values(f"blockOverrides.{step_id}", kind, settings)
    return attrs.evolve(request, parameters=parameters)
