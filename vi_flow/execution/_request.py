"""The execution request: every argument checked before a request is made, then put on the wire.

The server checks the same rules (422 naming the field); checking here too means a bad
argument raises ``ValueError`` or ``TypeError`` at the call, naming the value, and
nothing is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

import attrs

__all__ = [
    "MAX_ATTACHMENTS",
    "MAX_TOOLS",
    "ExecuteRequest",
    "ToolChoice",
    "Version",
    "check_version",
]

MAX_ATTACHMENTS = 10
MAX_TOOLS = 64
_CHOICES = ("auto", "none", "required")

Version: TypeAlias = Literal["draft", "production"] | int
"""``"draft"``, ``"production"`` or a published version number (a positive int)."""

ToolChoice: TypeAlias = Literal["auto", "none", "required"] | Mapping[str, Any]
"""OpenAI ``tool_choice``: a mode, or ``{"type": "function", "function": {"name": ...}}``."""


def check_version(version: object) -> str | int:
    """Return ``version`` when it is ``"draft"``, ``"production"`` or a positive int.

    Raises:
        ValueError: Anything else, such as ``"main"``, ``0`` or ``True``.
    """
    if version in ("draft", "production") and isinstance(version, str):
        return version
    if isinstance(version, int) and not isinstance(version, bool) and version > 0:
        return version
    raise ValueError(
        f"version must be 'draft', 'production' or a positive int (a published version),"
        f" got {version!r}"
    )


def _check_message(message: object) -> str | None:
    if message is not None and not isinstance(message, str):
        raise TypeError(f"message must be a str, got {type(message).__name__}")
    return message


def _check_parameters(parameters: object) -> dict[str, Any]:
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping) or not all(isinstance(k, str) for k in parameters):
        raise TypeError(f"parameters must be a flat dict with str keys, got {parameters!r}")
    return dict(parameters)


def _check_overrides(overrides: object) -> dict[str, dict[str, Any]]:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"block_overrides must be {{step_id: {{field: value}}}}, got {overrides!r}")
    for step_id, fields in overrides.items():
        if not isinstance(step_id, str) or not isinstance(fields, Mapping):
            raise TypeError(
                f"block_overrides[{step_id!r}] must be a dict of settings, got {fields!r}"
            )
    return {step_id: dict(fields) for step_id, fields in overrides.items()}


def _check_attachments(attachments: object) -> list[str]:
    if attachments is None:
        return []
    if isinstance(attachments, (str, bytes)) or not isinstance(attachments, Sequence):
        raise TypeError(f"attachments must be a list of https URLs, got {attachments!r}")
    if len(attachments) > MAX_ATTACHMENTS:
        raise ValueError(
            f"at most {MAX_ATTACHMENTS} attachments are allowed, got {len(attachments)}"
        )
    for i, url in enumerate(attachments):
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme != "https" or not parts.netloc:
            raise ValueError(f"attachments[{i}] must be an https URL, got {url!r}")
    return list(attachments)


def _check_tool(i: int, tool: object) -> dict[str, Any]:
    if not isinstance(tool, Mapping):
        raise ValueError(f"tools[{i}] must be an OpenAI tool definition (a dict), got {tool!r}")
    if tool.get("type", "function") != "function":
        raise ValueError(f"tools[{i}].type must be 'function', got {tool.get('type')!r}")
    function = tool.get("function")
    if not isinstance(function, Mapping):
        raise ValueError(f"tools[{i}].function is required (a dict with 'name')")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"tools[{i}].function.name is required (a non-empty str), got {name!r}")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise ValueError(f"tools[{i}].function.parameters must be a JSON schema dict")
    return {"type": "function", **tool}


def _check_tools(tools: object) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise ValueError(f"tools must be a list of OpenAI tool definitions, got {tools!r}")
    if len(tools) > MAX_TOOLS:
        raise ValueError(f"at most {MAX_TOOLS} tools are allowed, got {len(tools)}")
    return [_check_tool(i, tool) for i, tool in enumerate(tools)]


def _check_tool_choice(choice: object) -> Any:
    if choice is None or choice in _CHOICES:
        return choice
    function = choice.get("function") if isinstance(choice, Mapping) else None
    if isinstance(function, Mapping) and isinstance(function.get("name"), str):
        return dict(choice)  # type: ignore[call-overload]
    raise ValueError(
        f"tool_choice must be 'auto', 'none', 'required' or"
        f" {{'type': 'function', 'function': {{'name': ...}}}}, got {choice!r}"
    )


@attrs.frozen
class ExecuteRequest:
    """One execution's arguments, checked; ``to_wire()`` gives the JSON body.

    Use :meth:`build`, which checks every argument.
    """

    message: str | None = None
    parameters: dict[str, Any] = attrs.Factory(dict)
    block_overrides: dict[str, dict[str, Any]] = attrs.Factory(dict)
    attachments: list[str] = attrs.Factory(list)
    tools: list[dict[str, Any]] = attrs.Factory(list)
    tool_choice: Any = None
    trace: bool = False
    version: str | int = "draft"

    @classmethod
    def build(
        cls,
        *,
        message: object = None,
        parameters: object = None,
        block_overrides: object = None,
        attachments: object = None,
        tools: object = None,
        tool_choice: object = None,
        trace: object = False,
        version: object = "draft",
    ) -> ExecuteRequest:
        """Check every argument and return the request.

        Raises:
            ValueError: A bad version, too many or malformed tools, too many or
                non-https attachments, or a bad ``tool_choice``.
            TypeError: An argument of the wrong type.
        """
        if not isinstance(trace, bool):
            raise TypeError(f"trace must be a bool, got {trace!r}")
        return cls(
            message=_check_message(message),
            parameters=_check_parameters(parameters),
            block_overrides=_check_overrides(block_overrides),
            attachments=_check_attachments(attachments),
            tools=_check_tools(tools),
            tool_choice=_check_tool_choice(tool_choice),
            trace=trace,
            version=check_version(version),
        )

    def to_wire(self, **extra: Any) -> dict[str, Any]:
        """Return the camelCase JSON body; empty options are left out."""
        body: dict[str, Any] = {"version": self.version}
        if self.message is not None:
            body["message"] = self.message
        if self.parameters:
            body["parameters"] = self.parameters
        if self.block_overrides:
            body["blockOverrides"] = self.block_overrides
        if self.attachments:
            body["attachments"] = self.attachments
        if self.tools:
            body["tools"] = self.tools
        if self.tool_choice is not None:
            body["toolChoice"] = self.tool_choice
        if self.trace:
            body["trace"] = True
        body.update({k: v for k, v in extra.items() if v is not None})
        return body
