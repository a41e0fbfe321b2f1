"""Client-side tool calls: calling the user's ``tool_handler`` and shaping what it returns.

A tool handler receives the list of :class:`~vi_flow.models.ToolCall` a paused run asks
for and returns their results, in one of two shapes:

* a list (or tuple) with one entry per call, in the order of the calls; each entry is a
  :class:`~vi_flow.models.ToolResult` (its own ``tool_call_id`` counts), a dict with a
  ``"tool_call_id"`` key (the fields of ``ToolResult``), or any other JSON-ready value,
  which becomes the ``output`` of the call at that position;
* a dict mapping every call id to its output (or to a ``ToolResult``).

Every call must be answered exactly once and every output must be JSON-ready and within
the server's limits (no string over 8 MiB characters). A handler that raises, or
returns something else, does not end the run: each call of that round is answered with
an error result (``is_error=True``, the output says what went wrong) and a
:class:`ToolHandlerWarning` is issued.

Sync handlers run in a worker thread (so a slow handler never blocks the event loop,
and a sync handler may even use the blocking ``vi_flow.Client``); async handlers are
awaited on the loop.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias

import anyio.to_thread
import orjson

from ..models._base import dumps_finite, to_wire
from ..models.events import ToolCall, ToolResult
from ..models.limits import MAX_NESTING, MAX_REQUEST_BODY, LimitError, check_json, depth

__all__ = [
    "AsyncToolHandler",
    "OwnThread",
    "SyncToolHandler",
    "ToolHandler",
    "ToolHandlerReturn",
    "ToolHandlerWarning",
    "call_tool_handler",
    "check_handler",
    "coerce_tool_results",
    "is_async_handler",
]

ToolHandlerReturn: TypeAlias = Sequence[Any] | Mapping[str, Any]
"""What a tool handler returns: one result per call, as a list or as ``{call_id: output}``."""

SyncToolHandler: TypeAlias = Callable[[list[ToolCall]], ToolHandlerReturn]
"""A blocking tool handler."""

AsyncToolHandler: TypeAlias = Callable[[list[ToolCall]], Awaitable[ToolHandlerReturn]]
"""An ``async def`` tool handler."""

ToolHandler: TypeAlias = SyncToolHandler | AsyncToolHandler
"""A sync or async tool handler."""


class ToolHandlerWarning(RuntimeWarning):
    """A ``tool_handler`` raised or returned something unusable.

    The run goes on: each call of that round was answered with an error result
    (``is_error=True``) that tells the flow what went wrong.
    """


def is_async_handler(handler: object) -> bool:
    """Whether ``handler`` is an ``async def`` function (or an object whose ``__call__`` is)."""
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - an async __call__ counts too
    return inspect.iscoroutinefunction(call)


def check_handler(handler: object, *, allow_async: bool = True) -> None:
    """Check a ``tool_handler`` argument before any request.

    Raises:
        TypeError: Not callable, or async where only sync handlers work.
    """
    if handler is None:
        return
    if not callable(handler):
        raise TypeError(f"tool_handler must be callable, got {handler!r}")
    if not allow_async and is_async_handler(handler):
        raise TypeError(
            "the sync Flow needs a sync tool_handler (a plain function); "
            "use vi_flow.AsyncClient to pass an async one"
        )


class OwnThread:
    """A sync client's tool handler, which gets a worker thread of its own, past anyio's
    40 (an :class:`~vi_flow.AsyncClient`'s sync handlers share those 40).

    Its caller is a thread of the program's, blocked in ``execute()``, so there are no
    more of them than the program's threads; and a handler may call ``execute()`` on the
    same client: with 40 handlers each waiting for an inner one that could get no
    thread, the client hung for good (QA M).
    """

    def __init__(self, handler: SyncToolHandler) -> None:
        self.handler = handler

    def __call__(self, calls: list[ToolCall]) -> ToolHandlerReturn:
        return self.handler(calls)


async def call_tool_handler(
    handler: ToolHandler, calls: list[ToolCall], *, allow_async: bool = True
) -> list[ToolResult]:
    """Run ``handler`` on one round of calls and return one result per call.

    Never raises for the handler's own failures: those become error results and a
    :class:`ToolHandlerWarning`.
    """
    try:
        returned = await _invoke(handler, list(calls), allow_async)
        return coerce_tool_results(returned, calls)
    except Exception as exc:
        return _failed(calls, exc)


async def _invoke(handler: ToolHandler, calls: list[ToolCall], allow_async: bool) -> Any:
    if is_async_handler(handler):
        return await handler(calls)  # type: ignore[misc]
    limiter = anyio.CapacityLimiter(math.inf) if isinstance(handler, OwnThread) else None
    returned = await anyio.to_thread.run_sync(handler, calls, limiter=limiter)
    if inspect.isawaitable(returned):
        if not allow_async:
            _discard(returned)
            raise TypeError("the sync Flow's tool_handler returned an awaitable")
        return await returned
    return returned


def _discard(awaitable: Awaitable[Any]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # no "coroutine was never awaited" warning


def _failed(calls: Sequence[ToolCall], exc: Exception) -> list[ToolResult]:
    ids = ", ".join(call.id for call in calls)
    message = f"tool handler failed: {type(exc).__name__}: {exc}"
    warnings.warn(
        ToolHandlerWarning(f"{message}; answered call(s) {ids} with an error result"),
        stacklevel=3,
    )
    return [ToolResult(tool_call_id=call.id, output=message, is_error=True) for call in calls]


def coerce_tool_results(returned: Any, calls: Sequence[ToolCall]) -> list[ToolResult]:
    """Turn what a handler (or ``resume``) got into one ``ToolResult`` per call.

    Raises:
        TypeError: Not one of the shapes in the module docstring, a call left
            unanswered or answered twice, or an output that is not JSON-ready.
    """
    ids = [call.id for call in calls]
    if isinstance(returned, Mapping) and set(returned) == set(ids) and ids:
        results = [_result(returned[i], i) for i in ids]
    elif isinstance(returned, Mapping):
        unknown = sorted(str(key) for key in set(returned) - set(ids))
        missing = [i for i in ids if i not in returned]
        raise TypeError(
            f"tool results given as a dict must answer exactly the calls {ids}:"
            + (f" unknown call id(s) {unknown}" if unknown else "")
            + (";" if unknown and missing else "")
            + (f" no answer for {missing}" if missing else "")
        )
    elif isinstance(returned, (list, tuple)):
        if len(returned) != len(ids):
            raise TypeError(
                f"expected {len(ids)} tool result(s), one per call, got {len(returned)}"
            )
        results = [_result(item, i) for item, i in zip(returned, ids, strict=True)]
    else:
        raise TypeError(
            "tool results must be a list with one entry per call or a dict"
            f" {{call_id: output}} for the calls {ids}, got {type(returned).__name__}"
        )
    _check_answers(results, ids)
    size = len(orjson.dumps({"toolResults": to_wire(results)}))
    if size > MAX_REQUEST_BODY:
        raise ValueError(
            f"the tool results are {size} bytes of JSON, over the server's limit of"
            f" {MAX_REQUEST_BODY} bytes for a request"
        )
    return results


def _result(item: Any, call_id: str) -> ToolResult:
    if isinstance(item, ToolResult):
        result = item
    elif isinstance(item, Mapping) and "tool_call_id" in item:
        unknown = set(item) - {"tool_call_id", "output", "is_error"}
        if unknown:
            raise TypeError(f"unknown ToolResult field(s): {', '.join(sorted(unknown))}")
        if "output" not in item:  # QA AK: the call was answered null, as if on purpose
            raise TypeError(f"the tool result for call {item['tool_call_id']!r} has no 'output'")
        result = ToolResult(**item)
    else:
        result = ToolResult(tool_call_id=call_id, output=item)
    try:
        encoded = dumps_finite(result.output)
    except (TypeError, ValueError) as exc:  # not JSON, or a number JSON cannot hold
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise kind(
            f"the output for call {result.tool_call_id!r} is not JSON-ready: {exc}"
        ) from None
    try:  # what the server would refuse (422), leaving the run waiting for an answer: its
        # check of the body as it reads it (a tuple is a list there), then of the output
        # as a field (which nests MAX_NESTING deep at most)
        parsed = orjson.loads(encoded)
        check_json({"toolResults": [{"output": parsed}]})
        if depth(parsed) > MAX_NESTING:
            nested = f"objects and lists nest deeper than {MAX_NESTING} levels"
            raise LimitError("toolResults[0].output", nested)
    except LimitError as exc:
        where = exc.field.removeprefix("toolResults[0].")
        raise ValueError(
            f"the output for call {result.tool_call_id!r} is past the server's limits:"
            f" {where}: {exc.problem}"
        ) from None
    return result


def explicit_tool_results(given: Any) -> list[ToolResult]:
    """Results that name their calls themselves: ``ToolResult`` objects or dicts with
    ``tool_call_id`` (a list of them), or a ``{call_id: output}`` dict.

    Raises:
        TypeError: An entry that names no call, or an output that is not JSON-ready.
        ValueError: An output past the server's limits.
    """
    if isinstance(given, Mapping):
        if "tool_call_id" in given:
            raise TypeError("give a list of tool results, not one result's dict")
        return [_result(output, str(call_id)) for call_id, output in given.items()]
    if not isinstance(given, (list, tuple)):
        raise TypeError(
            "tool results must be a list of ToolResult objects or dicts with 'tool_call_id',"
            f" or a dict {{call_id: output}}, got {type(given).__name__}"
        )
    results = []
    for item in given:
        if isinstance(item, ToolResult):
            results.append(_result(item, item.tool_call_id))
        elif isinstance(item, Mapping) and "tool_call_id" in item:
            results.append(_result(item, str(item["tool_call_id"])))
        else:
            raise TypeError(
                "without tool_calls, each tool result must be a ToolResult or a dict with"
                f" 'tool_call_id' (or give a dict {{call_id: output}}), got {item!r}"
            )
    return results


def _check_answers(results: list[ToolResult], ids: list[str]) -> None:
    answered = [r.tool_call_id for r in results]
    if sorted(answered) != sorted(ids):
        raise TypeError(f"tool results answer {answered}, but the calls are {ids}")
