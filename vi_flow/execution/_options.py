"""The keyword arguments every execution method takes, written once.

``AsyncFlow.execute``, ``events``, ``steps`` and ``execute_async`` (and their blocking
twins) take ``**options: Unpack[...]`` of these dictionaries, so type checkers and IDEs
still see every name and type, and the names are declared in one place.
:func:`request_of` checks the names (an unknown one is a ``TypeError``, as for any
function) and builds the :class:`~vi_flow.models.execution.ExecuteRequest`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from typing_extensions import TypedDict

from ..models.execution import ExecuteRequest, ToolChoice, Version
from ._loop import TimeoutArg
from ._tools import SyncToolHandler, ToolHandler

__all__ = [
    "ExecuteOptions",
    "RunInputs",
    "SyncExecuteOptions",
    "check_names",
    "request_of",
]


class RunInputs(TypedDict, total=False):
    """What a run is started with (``execute_async`` takes these).

    See :class:`~vi_flow.execution.AsyncFlow` for what each one means.
    """

    message: str | None
    parameters: Mapping[str, Any] | None
    block_overrides: Mapping[str, Mapping[str, Any]] | None
    tools: Sequence[Mapping[str, Any]] | None
    tool_choice: ToolChoice | None
    trace: bool
    version: Version
    timeout: TimeoutArg


class ExecuteOptions(RunInputs, total=False):
    """``execute``, ``events`` and ``steps``: the run's inputs, attachments, tool answers."""

    attachments: Sequence[str] | None
    tool_handler: ToolHandler | None
    max_tool_rounds: int


class SyncExecuteOptions(RunInputs, total=False):
    """The blocking ``Flow``'s: the same, with a plain (sync) ``tool_handler``."""

    attachments: Sequence[str] | None
    tool_handler: SyncToolHandler | None
    max_tool_rounds: int


def _keys(kind: type[Any]) -> frozenset[str]:
    keys: frozenset[str] = kind.__required_keys__ | kind.__optional_keys__
    return keys


def check_names(options: Mapping[str, object], kind: type[Any], method: str) -> None:
    """Refuse a name ``kind`` does not declare, as Python refuses an unknown keyword.

    Raises:
        TypeError: Names the method and the unexpected keyword.
    """
    for name in options:
        if name not in _keys(kind):
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")


def request_of(options: Mapping[str, Any], kind: type[Any], method: str) -> ExecuteRequest:
    """Check ``options`` against ``kind`` and build the execute request from them.

    Raises:
        TypeError: An unknown keyword, or a value of the wrong type (named).
        ValueError: A bad value (named); nothing is sent.
    """
    check_names(options, kind, method)
    return ExecuteRequest.build(
        message=options.get("message"),
        parameters=options.get("parameters"),
        block_overrides=options.get("block_overrides"),
        attachments=options.get("attachments"),
        tools=options.get("tools"),
        tool_choice=options.get("tool_choice"),
        trace=options.get("trace", False),
        version=options.get("version", "draft"),
    )
