"""Checks on flow specs and run parameters beyond what the wire types enforce.

Every failure is ``422 VALIDATION_ERROR`` whose message starts with the field path, for
example ``blocks[1].id: duplicate block id 'fetch'``.
"""

from __future__ import annotations

import re
from typing import Any

from ..models.flows import FlowSpec
from .errors import APIProblem

__all__ = ["check_chosen_id", "resolve_parameters", "validate_flow_spec"]

_CHOSEN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_chosen_id(value: object, prefix: str, field: str) -> str | None:
    """A client-chosen id (``<prefix>_`` + up to 64 letters, digits, ``-``, ``_``) or ``None``.

    Raises:
        APIProblem: 422 naming ``field`` when the id does not have that shape.
    """
    if value is None or value == "":
        return None
    head = f"{prefix}_"
    if isinstance(value, str) and value.startswith(head) and _CHOSEN_ID.match(value[len(head) :]):
        return value
    raise APIProblem.validation(
        field, f"expected '{prefix}_' followed by letters, digits, '-' or '_', got {value!r}"
    )


def validate_flow_spec(spec: FlowSpec, prefix: str = "") -> FlowSpec:
    """Check the name, block types and block ids of ``spec``; return it unchanged.

    Raises:
        APIProblem: 422 naming the first bad field.
    """
    if not spec.name.strip():
        raise APIProblem.validation(f"{prefix}name", "must not be empty")
    seen: set[str] = set()
    for i, block in enumerate(spec.blocks):
        if not block.block.strip():
            raise APIProblem.validation(f"{prefix}blocks[{i}].block", "required (the block type)")
        if block.id is None:
            continue
        if not block.id.strip():
            raise APIProblem.validation(f"{prefix}blocks[{i}].id", "must not be empty")
        if block.id in seen:
            raise APIProblem.validation(
                f"{prefix}blocks[{i}].id", f"duplicate block id {block.id!r}"
            )
        seen.add(block.id)
    _check_inputs(spec, prefix)
    return spec


def _check_inputs(spec: FlowSpec, prefix: str) -> None:
    names: set[str] = set()
    for i, item in enumerate(spec.inputs):
        if not item.name.strip():
            raise APIProblem.validation(f"{prefix}inputs[{i}].name", "must not be empty")
        if item.name in names:
            raise APIProblem.validation(
                f"{prefix}inputs[{i}].name", f"duplicate input {item.name!r}"
            )
        names.add(item.name)


def resolve_parameters(spec: FlowSpec, given: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters: ``given`` plus defaults of optional inputs.

    Raises:
        APIProblem: 422 ``parameters.<name>: required`` for a missing required input.
    """
    resolved = dict(given)
    for item in spec.inputs:
        if item.name in resolved:
            continue
        if item.required:
            raise APIProblem.validation(f"parameters.{item.name}", "required input not given")
        resolved[item.name] = item.default
    return resolved
