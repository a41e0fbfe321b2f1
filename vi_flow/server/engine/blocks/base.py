"""The small Block protocol every flow block implements, built-in or plugin.

A block is an async callable taking a :class:`BlockContext` and returning the step's
output (any JSON-ready value), a :class:`StepDone` (output plus token usage) or a
:class:`Pause` (tool calls for the client, plus state to continue with). When the
client's results arrive, the engine calls the block again with ``ctx.resume`` set.
A block reports a failure by raising :class:`StepError`; any other exception fails
the step too, with the exception's text. Plugins register block types in the entry
point group ``vi_flow.blocks`` (name = block type; the object is a Block or a class
whose no-argument instance is one)::

    [project.entry-points."vi_flow.blocks"]
    shout = "my_pkg.blocks:shout"

    async def shout(ctx: BlockContext) -> str:
        return str(ctx.settings.get("text", ctx.message)).upper()
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import attrs

from ....models.events import TokenUsage, ToolCall, ToolResult
from ....models.limits import MAX_INT, LimitError
from ...state import ServerSettings

if TYPE_CHECKING:
    from ...tasks import TaskService

__all__ = [
    "Block",
    "BlockContext",
    "Pause",
    "Resume",
    "StepDone",
    "StepError",
    "add_usage",
    "checked_setting",
]


def add_usage(total: TokenUsage | None, more: TokenUsage | None) -> TokenUsage | None:
    """The sum of two optional token counts, each at most ``MAX_INT`` (what the events
    carry: a sum past it failed the run's every later event)."""
    if more is None:
        return total
    if total is None:
        return more
    return TokenUsage(
        prompt_tokens=min(total.prompt_tokens + more.prompt_tokens, MAX_INT),
        completion_tokens=min(total.completion_tokens + more.completion_tokens, MAX_INT),
        total_tokens=min(total.total_tokens + more.total_tokens, MAX_INT),
    )


class StepError(Exception):
    """Raised by a block to fail its step with a message the user sees.

    Args:
        message: What went wrong, naming the bad value.
        code: A short machine-readable code (``TEMPLATE_ERROR``, ``ITERATION_LIMIT``...).
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@attrs.frozen
class StepDone:
    """A step's output together with the tokens it used.

    Attributes:
        output: The output, any JSON-ready value.
        usage: Tokens used, for model calls.
    """

    output: Any
    usage: TokenUsage | None = None


@attrs.frozen
class Pause:
    """Ask the client to run tools; the run pauses durably until results arrive.

    Attributes:
        tool_calls: The calls for the client.
        state: JSON-ready state the block needs to continue (kept in SQLite).
        usage: Tokens used so far in this step.
        timeout: Seconds to wait for results; None uses the server's setting.
    """

    tool_calls: list[ToolCall]
    state: Any = None
    usage: TokenUsage | None = None
    timeout: float | None = None


@attrs.frozen
class Resume:
    """What a block gets back after a pause.

    Attributes:
        state: The ``Pause.state`` it saved.
        results: The client's results, in the order of the calls.
        usage: The tokens the step had used before pausing.
    """

    state: Any
    results: list[ToolResult]
    usage: TokenUsage | None = None


@attrs.define
class BlockContext:
    """Everything a block may use for one step.

    Attributes:
        run_id: The run (execution id).
        step_id: The step.
        block: The block type.
        index: The step's position in the flow.
        settings: The step's settings after ``block_overrides`` and template rendering.
        raw_settings: The settings after overrides, before rendering.
        namespace: Template names: ``message``, ``parameters``, ``attachments``,
            ``steps.<id>.output``, ``input`` (previous output) and each parameter.
        message: The execution's message, if any.
        parameters: The flow inputs (defaults applied).
        attachments: HTTPS URLs given with the execution.
        previous: The previous step's output (None for the first step).
        tools: OpenAI tool definitions from the execution request.
        tool_choice: The request's ``tool_choice``, if any.
        resume: Set when the block is called again after a pause.
        server: The server's settings.
        http: A shared aiohttp session for outgoing calls.
        emit_log: Appends a ``log`` event for this step: ``await emit_log(stream, line)``.
        emit_logs: Appends one ``log`` event per line, in order, in one go:
            ``await emit_logs(stream, lines)`` (``None``: :meth:`logs` calls ``emit_log``).
        organization_id: The run's organization.
        tasks: The server's task service (``None`` when it has no compute provider).
    """

    run_id: str
    step_id: str
    block: str
    index: int
    settings: dict[str, Any]
    raw_settings: dict[str, Any]
    namespace: Mapping[str, Any]
    message: str | None
    parameters: dict[str, Any]
    attachments: list[str]
    previous: Any
    tools: list[dict[str, Any]]
    tool_choice: Any
    resume: Resume | None
    server: ServerSettings
    http: aiohttp.ClientSession
    emit_log: Callable[[str, str], Awaitable[None]]
    organization_id: str = ""
    tasks: TaskService | None = None
    emit_logs: Callable[[str, Sequence[str]], Awaitable[None]] | None = None

    def setting(self, name: str, default: Any = None) -> Any:
        """A rendered setting by snake_case name, also accepting its camelCase spelling."""
        if name in self.settings:
            return self.settings[name]
        head, *rest = name.split("_")
        camel = head + "".join(part.title() for part in rest)
        return self.settings.get(camel, default)

    async def log(self, line: str, stream: str = "stdout") -> None:
        """Stream one line as a ``log`` event of this step."""
        await self.emit_log(stream, line)

    async def logs(self, lines: Sequence[str], stream: str = "stdout") -> None:
        """Stream several lines as ``log`` events of this step, in order."""
        if self.emit_logs is not None:
            await self.emit_logs(stream, lines)
            return
        for line in lines:
            await self.emit_log(stream, line)

    @staticmethod
    def new_call_id() -> str:
        """A fresh tool call id (``call_<hex>``)."""
        return f"call_{secrets.token_hex(12)}"


def checked_setting(
    ctx: BlockContext, name: str, default: Any, check: Callable[..., Any], low: float, high: float
) -> Any:
    """Setting ``name`` (or ``default``) passed through a check of :mod:`vi_flow.models.limits`.

    Flows are checked when stored; this is for one stored before a check existed.

    Raises:
        StepError: ``INVALID_SETTINGS`` naming the setting and its range.
    """
    try:
        return check(f"settings.{name}", ctx.setting(name, default), low, high)
    except LimitError as exc:
        raise StepError(f"{ctx.block} step {ctx.step_id!r}: {exc}", "INVALID_SETTINGS") from None


class Block(Protocol):
    """A flow block: ``async (ctx) -> output | StepDone | Pause``; raise StepError to fail."""

    def __call__(self, ctx: BlockContext, /) -> Awaitable[Any]:
        """Run one step."""
