"""The execute request and the jobs answer: the execution wire schema of both sides.

:class:`ExecuteRequest` is the body of ``POST /v1/flows/{flowId}/execute``, ``/events``
and ``/jobs``; :class:`ExecutionJob` is the ``202`` answer of ``/jobs``. The limits and
the checks live here once: the client builds the request with :meth:`ExecuteRequest.build`,
so a bad argument raises ``ValueError`` or ``TypeError`` before any request is made, and
the server reads it with :meth:`ExecuteRequest.from_wire`, answering the same sentence
as ``422 VALIDATION_ERROR`` under the camelCase field name.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

import attrs

from ._base import camel, converter
from .common import Condition
from .limits import MAX_INT, MAX_NESTING, depth

__all__ = [
    "HEARTBEAT_HEADER",
    "MAX_ATTACHMENTS",
    "MAX_NESTING",
    "MAX_TOOLS",
    "TOOL_CHOICES",
    "ExecuteRequest",
    "ExecuteRequestError",
    "ExecutionJob",
    "ToolChoice",
    "Version",
    "check_version",
]

HEARTBEAT_HEADER = "X-Heartbeat-Interval"
"""The header in which an event stream announces its heartbeat interval, in seconds.

A client takes twice that much silence as a dead connection and resumes the stream.
"""

MAX_ATTACHMENTS = 10
"""The most attachment URLs one execution may carry."""

MAX_TOOLS = 64
"""The most tool definitions one execution may carry."""

TOOL_CHOICES = ("auto", "none", "required")
"""The ``tool_choice`` modes; a ``{"type": "function", ...}`` dict names one tool instead."""

Version: TypeAlias = Literal["draft", "production"] | int
"""``"draft"``, ``"production"`` or a published version number (a positive int)."""

ToolChoice: TypeAlias = Literal["auto", "none", "required"] | Mapping[str, Any]
"""OpenAI ``tool_choice``: a mode, or ``{"type": "function", "function": {"name": ...}}``."""


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 80, 80
_shown = _repr.repr
"""``repr`` cut short: errors name the bad value without echoing a whole body."""


class ExecuteRequestError(Exception):
    """A bad field of an execute request; raised as a ``ValueError`` or a ``TypeError``.

    ``str(error)`` is ``"<field><where>: <problem>"``, naming the bad value, such as
    ``"attachments[2]: expected an https URL, got 'ftp://x'"``.

    Attributes:
        field: The attribute, as Python spells it (``tool_choice``).
        where: The path inside it (``[2]``, ``[0].function.name``), or ``""``.
        problem: What is wrong, naming the bad value.
    """

    def __init__(self, field: str, problem: str, where: str = "") -> None:
        super().__init__(f"{field}{where}: {problem}")
        self.field = field
        self.where = where
        self.problem = problem

    @property
    def wire_field(self) -> str:
        """The field's path as the JSON body spells it (``toolChoice``, ``tools[0].type``)."""
        return camel(self.field) + self.where


class _BadValue(ExecuteRequestError, ValueError):
    """A value outside what the field allows."""


class _BadType(ExecuteRequestError, TypeError):
    """A value of the wrong type."""


def check_version(version: object) -> str | int:
    """Return ``version`` when it is ``"draft"``, ``"production"`` or a positive int.

    Raises:
        ValueError: Anything else, such as ``"main"``, ``0``, ``True`` or ``2**63``.
    """
    if isinstance(version, str) and version in ("draft", "production"):
        return version
    if isinstance(version, int) and not isinstance(version, bool) and 0 < version <= MAX_INT:
        return version
    expected = "'draft', 'production' or a positive int (a published version)"
    raise _BadValue("version", f"expected {expected}, got {_shown(version)}")


def _check_nesting(field: str, value: object, where: str = "") -> None:
    if depth(value) > MAX_NESTING:
        problem = f"objects and lists nest deeper than {MAX_NESTING} levels"
        raise _BadValue(field, problem, where=where)


def _check_bool(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _BadType(field, f"expected a bool, got {_shown(value)}")
    return value


def _check_message(message: object) -> str | None:
    if message is not None and not isinstance(message, str):
        raise _BadType("message", f"expected a str, got {type(message).__name__}")
    return message


def _check_parameters(parameters: object) -> dict[str, Any]:
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping) or not all(isinstance(k, str) for k in parameters):
        problem = f"expected a dict with str keys, got {_shown(parameters)}"
        raise _BadType("parameters", problem)
    _check_nesting("parameters", parameters)
    return dict(parameters)


def _check_overrides(overrides: object) -> dict[str, dict[str, Any]]:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        problem = f"expected {{step_id: {{field: value}}}}, got {_shown(overrides)}"
        raise _BadType("block_overrides", problem)
    for step_id, fields in overrides.items():
        if not isinstance(step_id, str):
            raise _BadType("block_overrides", f"expected str step ids, got {_shown(step_id)}")
        if not isinstance(fields, Mapping):
            problem = f"expected a dict of settings, got {_shown(fields)}"
            raise _BadType("block_overrides", problem, where=f".{step_id}")
    _check_nesting("block_overrides", overrides)
    return {step_id: dict(fields) for step_id, fields in overrides.items()}


def _is_https(url: object) -> bool:
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
    except ValueError:  # an unbalanced "[" in the host, for one
        return False
    return parts is not None and parts.scheme == "https" and bool(parts.netloc)


def _check_attachments(attachments: object) -> list[str]:
    if attachments is None:
        return []
    if isinstance(attachments, (str, bytes)) or not isinstance(attachments, Sequence):
        problem = f"expected a list of https URLs, got {_shown(attachments)}"
        raise _BadType("attachments", problem)
    if len(attachments) > MAX_ATTACHMENTS:
        problem = f"at most {MAX_ATTACHMENTS} attachments are allowed, got {len(attachments)}"
        raise _BadValue("attachments", problem)
    for i, url in enumerate(attachments):
        if not _is_https(url):
            problem = f"expected an https URL, got {_shown(url)}"
            raise _BadValue("attachments", problem, where=f"[{i}]")
    return list(attachments)


def _check_tool(i: int, tool: object) -> dict[str, Any]:
    if not isinstance(tool, Mapping):
        problem = f"expected an OpenAI tool definition (a dict), got {_shown(tool)}"
        raise _BadValue("tools", problem, where=f"[{i}]")
    if tool.get("type", "function") != "function":
        problem = f"must be 'function', got {_shown(tool.get('type'))}"
        raise _BadValue("tools", problem, where=f"[{i}].type")
    function = tool.get("function")
    function = function if isinstance(function, Mapping) else {}
    name = function.get("name")
    if not isinstance(name, str) or not name:
        problem = f"required (a non-empty str), got {_shown(name)}"
        raise _BadValue("tools", problem, where=f"[{i}].function.name")
    schema = function.get("parameters")
    if schema is not None and not isinstance(schema, Mapping):
        problem = f"expected a JSON schema (a dict), got {_shown(schema)}"
        raise _BadValue("tools", problem, where=f"[{i}].function.parameters")
    _check_nesting("tools", tool, where=f"[{i}]")
    return {"type": "function", **tool}


def _check_tools(tools: object) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        problem = f"expected a list of OpenAI tool definitions, got {_shown(tools)}"
        raise _BadValue("tools", problem)
    if len(tools) > MAX_TOOLS:
        raise _BadValue("tools", f"at most {MAX_TOOLS} tools are allowed, got {len(tools)}")
    checked = [_check_tool(i, tool) for i, tool in enumerate(tools)]
    seen: dict[str, int] = {}
    for i, tool in enumerate(checked):
        name = tool["function"]["name"]
        if name in seen:  # which one a model's call would answer to: no one could say
            problem = f"{_shown(name)} names tools[{seen[name]}] already"
            raise _BadValue("tools", problem, where=f"[{i}].function.name")
        seen[name] = i
    return checked


def _check_tool_choice(choice: object) -> Any:
    if choice is None or (isinstance(choice, str) and choice in TOOL_CHOICES):
        return choice
    if isinstance(choice, Mapping):
        function = choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            _check_nesting("tool_choice", choice)
            return dict(choice)
    expected = "'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}"
    raise _BadValue("tool_choice", f"expected {expected}, got {_shown(choice)}")


def _check_choice_among(choice: Any, tools: list[dict[str, Any]]) -> Any:
    """``choice`` when ``tools`` can meet it: a model cannot call a tool it is not given
    (without tools an ``llm`` block sends no ``tool_choice`` at all)."""
    if choice == "required" and not tools:
        raise _BadValue("tool_choice", "'required' needs tools, and no tools were given")
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        if all(tool["function"]["name"] != name for tool in tools):
            problem = f"names the function {_shown(name)}, which is not one of the tools"
            raise _BadValue("tool_choice", problem, where=".function.name")
    return choice


@attrs.frozen
class ExecuteRequest:
    """One execution's inputs and options, checked; the body of execute, events and jobs.

    Build it with :meth:`build` (Python arguments) or :meth:`from_wire` (a JSON body):
    both check every field. The plain constructor trusts its arguments; the server uses
    it for requests it stored after checking them.

    Attributes:
        message: The user message, the flow's primary input.
        parameters: Flat flow inputs, ``{"name": value}``.
        block_overrides: Step id -> settings replacing the step's own.
        attachments: Up to :data:`MAX_ATTACHMENTS` https URLs handed to the blocks.
        tools: Up to :data:`MAX_TOOLS` OpenAI tool definitions passed to ``llm`` blocks.
        tool_choice: OpenAI ``tool_choice`` (see :data:`ToolChoice`).
        trace: Whether to record each step's input and output.
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
        cancel_on_disconnect: object = False,
    ) -> ExecuteRequest:
        """Check every argument and return the request.

        Raises:
            ValueError: A bad version, too many or malformed tools, too many or
                non-https attachments, or a bad ``tool_choice`` (also ``"required"``
                without tools, or a function that is not one of them).
            TypeError: An argument of the wrong type.
        """
        return cls(
            message=_check_message(message),
            parameters=_check_parameters(parameters),
            block_overrides=_check_overrides(block_overrides),
            attachments=_check_attachments(attachments),
            tools=(checked := _check_tools(tools)),
            tool_choice=_check_choice_among(_check_tool_choice(tool_choice), checked),
            trace=_check_bool("trace", trace),
            version=check_version(version),
            cancel_on_disconnect=_check_bool("cancel_on_disconnect", cancel_on_disconnect),
        )

    @classmethod
    def from_wire(cls, body: object) -> ExecuteRequest:
        """Check a camelCase JSON body and return the request.

        ``null`` means "not given" and unknown keys are ignored, as everywhere on the
        wire. A version sent as digits (``"3"``) is the number.

        Raises:
            ValueError: As for :meth:`build`.
            TypeError: As for :meth:`build`, or a body that is not a JSON object.
        """
        if not isinstance(body, Mapping):
            raise _BadType("body", f"expected a JSON object, got {type(body).__name__}")
        given = {name: body[key] for name, key in _WIRE_KEYS.items() if body.get(key) is not None}
        version = given.get("version")
        if (
            isinstance(version, str)
            and version.isascii()
            and version.isdigit()
            and len(version) < 20
        ):
            given["version"] = int(version)  # query strings and forms send numbers as text
        return cls.build(**given)

    def to_wire(self, **extra: Any) -> dict[str, Any]:
        """Return the camelCase JSON body; options left at their default are left out.

        Args:
            extra: Wire keys to add (``None`` values are dropped).
        """
        full: dict[str, Any] = _unstructure_all(self)
        # the server reads a missing option as its default, so a short body says the same
        body = {k: v for k, v in full.items() if k == "version" or v not in (None, False, {}, [])}
        body.update({k: v for k, v in extra.items() if v is not None})
        return body


_WIRE_KEYS = {a.name: camel(a.name) for a in attrs.fields(ExecuteRequest)}
_unstructure_all = converter.get_unstructure_hook(ExecuteRequest)
# ``to_wire(request)`` and ``from_wire(body, ExecuteRequest)`` go through the checks too.
converter.register_unstructure_hook(ExecuteRequest, ExecuteRequest.to_wire)
converter.register_structure_hook(ExecuteRequest, lambda data, _: ExecuteRequest.from_wire(data))


@attrs.frozen
class ExecutionJob:
    """The answer to ``POST /v1/flows/{flowId}/jobs``: a run started in the background.

    Attributes:
        execution_id: The run's id (``run_id``).
        status: The run's state when the server answered, usually ``Pending``.
    """

    execution_id: str
    status: Condition = Condition.PENDING
