"""The execution request: parsing and checking the JSON body of execute/events/jobs.

Every problem is ``422 VALIDATION_ERROR`` naming the field (``attachments[2]: must be
an https URL``); a version that is not ``"draft"``, ``"production"`` or a positive int
is 422 too. Checks that need the flow (required inputs, override step ids) are in
:func:`check_against_flow`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs

from ...models.flows import FlowSpec
from ..errors import APIProblem
from ..validation import resolve_parameters

__all__ = [
    "MAX_ATTACHMENTS",
    "MAX_TOOLS",
    "ExecuteRequest",
    "check_against_flow",
    "parse_request",
    "step_id_of",
]

MAX_ATTACHMENTS = 10
MAX_TOOLS = 64
_CHOICES = ("auto", "none", "required")


@attrs.frozen
class ExecuteRequest:
    """One execution's inputs and options (see the "Execution wire" contract).

    Attributes:
        message: The user message.
        parameters: Flat flow inputs (defaults applied after :func:`check_against_flow`).
        block_overrides: Step id -> settings replacing the step's own.
        attachments: HTTPS URLs handed to the blocks.
        tools: OpenAI tool definitions passed to ``llm`` blocks.
        tool_choice: OpenAI ``tool_choice``.
        trace: Whether to record input/output snapshots.
        version: ``"draft"``, ``"production"`` or a published version number.
        cancel_on_disconnect: Whether a streamed run stops when its client goes away.
    """

    message: str | None = None
    parameters: dict[str, Any] = attrs.Factory(dict)
    block_overrides: dict[str, dict[str, Any]] = attrs.Factory(dict)
    attachments: list[str] = attrs.Factory(list)
    tools: list[dict[str, Any]] = attrs.Factory(list)
    tool_choice: Any = None
    trace: bool = False
    version: str | int = "draft"
    cancel_on_disconnect: bool = False


def _typed(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise APIProblem.validation(name, f"expected {expected}, got {type(value).__name__}")
    return value


def _version(value: Any) -> str | int:
    if value is None:
        return "draft"
    if value in ("draft", "production"):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    raise APIProblem.validation(
        "version", f"expected 'draft', 'production' or a positive int, got {value!r}"
    )


def _attachments(value: Any) -> list[str]:
    items = value or []
    if not isinstance(items, list):
        raise APIProblem.validation("attachments", "expected a list of https URLs")
    if len(items) > MAX_ATTACHMENTS:
        raise APIProblem.validation(
            "attachments", f"at most {MAX_ATTACHMENTS} attachments, got {len(items)}"
        )
    for i, url in enumerate(items):
        if not isinstance(url, str) or urlsplit(url).scheme != "https" or not urlsplit(url).netloc:
            raise APIProblem.validation(f"attachments[{i}]", f"must be an https URL, got {url!r}")
    return list(items)


def _tools(value: Any) -> list[dict[str, Any]]:
    items = value or []
    if not isinstance(items, list):
        raise APIProblem.validation("tools", "expected a list of OpenAI tool definitions")
    if len(items) > MAX_TOOLS:
        raise APIProblem.validation("tools", f"at most {MAX_TOOLS} tools, got {len(items)}")
    for i, tool in enumerate(items):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise APIProblem.validation(f"tools[{i}].type", "must be 'function'")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise APIProblem.validation(f"tools[{i}].function.name", "required (a string)")
    return list(items)


def _tool_choice(value: Any) -> Any:
    if value is None or value in _CHOICES:
        return value
    function = value.get("function") if isinstance(value, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return value
    raise APIProblem.validation(
        "toolChoice",
        f"expected one of {_CHOICES} or {{'type': 'function', 'function': {{'name'}}}}",
    )


def _overrides(value: Any) -> dict[str, dict[str, Any]]:
    overrides = value or {}
    if not isinstance(overrides, dict):
        raise APIProblem.validation("blockOverrides", "expected {stepId: {field: value}}")
    for step_id, fields in overrides.items():
        if not isinstance(fields, dict):
            raise APIProblem.validation(
                f"blockOverrides.{step_id}", "expected an object of settings"
            )
    return dict(overrides)


def parse_request(body: dict[str, Any]) -> ExecuteRequest:
    """Check an execution request body (camelCase wire JSON) and return it typed.

    Raises:
        APIProblem: 422 naming the first bad field.
    """
    return ExecuteRequest(
        message=_typed(body, "message", str, None),
        parameters=dict(_typed(body, "parameters", dict, {})),
        block_overrides=_overrides(body.get("blockOverrides")),
        attachments=_attachments(body.get("attachments")),
        tools=_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("toolChoice")),
        trace=_typed(body, "trace", bool, False),
        version=_version(body.get("version")),
        cancel_on_disconnect=_typed(body, "cancelOnDisconnect", bool, False),
    )


def step_id_of(spec: FlowSpec, index: int) -> str:
    """The step id of block ``index``: its ``id``, else ``step<index + 1>``."""
    return spec.blocks[index].id or f"step{index + 1}"


def check_against_flow(request: ExecuteRequest, spec: FlowSpec) -> ExecuteRequest:
    """Apply input defaults and check overrides against the flow version.

    Raises:
        APIProblem: 422 ``parameters.<name>`` for a missing required input, or
            ``blockOverrides.<id>`` for a step the flow does not have.
    """
    parameters = resolve_parameters(spec, request.parameters)
    steps = {step_id_of(spec, i) for i in range(len(spec.blocks))}
    for step_id in request.block_overrides:
        if step_id not in steps:
            raise APIProblem.validation(
                f"blockOverrides.{step_id}",
                f"the flow has no step {step_id!r} (steps: {sorted(steps)})",
            )
    return attrs.evolve(request, parameters=parameters)
