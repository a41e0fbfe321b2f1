"""Execution events and the tool-call, trace and outcome models of the execution wire.

A run streams Server-Sent Events: the SSE ``event:`` name picks the class, ``data:`` is
the camelCase JSON of that class. Every event carries ``execution_id``, ``event_id``
(the server's monotonic per-run sequence, starting at 1) and ``time`` (ms since the
epoch). :func:`parse_event` and :func:`event_to_wire` are the one place where both the
client and the local server convert events; an event type this client does not know
becomes :class:`UnknownEvent`, never an error. Parsing is hot (a run may stream hundreds
of thousands of events), so each class gets one pre-built cattrs structure function
without detailed validation, and JSON goes through orjson.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Mapping
from itertools import repeat
from types import MemberDescriptorType
from typing import Any, ClassVar, TypeAlias

import attrs
import orjson
from cattrs.errors import BaseValidationError

from ._base import camel, converter
from .common import Condition

__all__ = [
    "EVENT_TYPES",
    "BaseEvent",
    "ExecutionOutcome",
    "FlowCompleted",
    "LogLine",
    "RunStarted",
    "RunTrace",
    "StepCompleted",
    "StepFailed",
    "StepInput",
    "StepOutput",
    "StepPaused",
    "StepStarted",
    "StepTrace",
    "StreamEvent",
    "TokenUsage",
    "ToolCall",
    "ToolCallsRequired",
    "ToolFunction",
    "ToolResult",
    "UnknownEvent",
    "event_name",
    "event_to_wire",
    "parse_event",
]

log = logging.getLogger("vi_flow")


def _condition(value: Any) -> Condition:
    return value if isinstance(value, Condition) else Condition(value)


def _optional_condition(value: Any) -> Condition | None:
    return None if value is None else _condition(value)


# --------------------------------------------------------------------------- tools, usage


@attrs.frozen
class TokenUsage:
    """Tokens an ``llm`` step (or a whole run) used.

    Attributes:
        prompt_tokens: Tokens sent to the model.
        completion_tokens: Tokens the model produced.
        total_tokens: Their sum.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@attrs.frozen
class ToolFunction:
    """The function a tool call names, OpenAI style.

    Attributes:
        name: The tool's name as given in ``tools``.
        arguments: The arguments as JSON text (decode with ``json.loads``).
    """

    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        """Return ``arguments`` decoded from JSON (``{}`` when empty)."""
        return orjson.loads(self.arguments) if self.arguments else {}


@attrs.frozen
class ToolCall:
    """One call the flow asks the client to run.

    Attributes:
        id: The call id; a :class:`ToolResult` answers it by ``tool_call_id``.
        function: The function name and its JSON arguments.
        type: Always ``"function"`` today.
    """

    id: str
    function: ToolFunction
    type: str = "function"


@attrs.frozen
class ToolResult:
    """The client's answer to one :class:`ToolCall`.

    Attributes:
        tool_call_id: The id of the call answered.
        output: Any JSON-ready value; the flow sees it as the tool's output.
        is_error: Whether the tool failed; ``output`` then describes the failure.
    """

    tool_call_id: str
    output: Any = None
    is_error: bool = False


# --------------------------------------------------------------------------- events


class _Deferred:
    """Lets an event parsed from the wire read its fields from its JSON on use.

    :func:`parse_event` gives events whose fields are plain JSON values (``log``,
    ``step_started``...) or nested values it checked (``usage``, ``tool_calls``) only
    their id and decoded data in ``_wire``; a run's event stream gives them the ``data:``
    bytes themselves, decoded (and the nested value checked) when any field but the id is
    first read (see :func:`deferred_event`). Each field of these classes is then a
    property that reads its own key of that data (:func:`_read_from_wire`), exactly what
    an eager parse would have set (such fields cannot fail to structure, and the one
    required key is checked up front); a nested value is structured on its first read and
    kept. A reader that only counts events, or looks at their type and id, never decodes
    them; one that reads a field pays for the JSON and that field alone.

    An event made by its constructor (or copied, or unpickled) keeps its fields in its
    slots, as any attrs class; ``_wire`` is then ``None`` (or unset).
    """

    __slots__ = ("_wire",)

    def __attrs_pre_init__(self) -> None:
        _set_wire(self, None)


@attrs.frozen(kw_only=True)
class BaseEvent(_Deferred):
    """Fields every event carries.

    Attributes:
        execution_id: The run the event belongs to.
        event_id: The SSE ``id``: the run's monotonic event sequence, from 1.
        time: When it happened, in ms since the epoch.
    """

    execution_id: str
    event_id: int = 0
    time: int = 0


@attrs.frozen(kw_only=True)
class RunStarted(BaseEvent):
    """``run_started``: the run began.

    Attributes:
        flow_id: The flow executed.
        flow_version: ``"draft"`` or the published version number, as text.
    """

    TYPE: ClassVar[str] = "run_started"
    flow_id: str = ""
    flow_version: str = "draft"


@attrs.frozen(kw_only=True)
class StepStarted(BaseEvent):
    """``step_started``: a step began.

    Attributes:
        step_id: The step.
        block: Its block type.
        index: Its position in the flow, from 0.
    """

    TYPE: ClassVar[str] = "step_started"
    step_id: str = ""
    block: str = ""
    index: int = 0


@attrs.frozen(kw_only=True)
class StepInput(BaseEvent):
    """``step_input``: the input a step received (sent when tracing).

    Attributes:
        step_id: The step.
        input: The rendered input.
    """

    TYPE: ClassVar[str] = "step_input"
    step_id: str = ""
    input: Any = None


@attrs.frozen(kw_only=True)
class StepOutput(BaseEvent):
    """``step_output``: an output a step produced.

    Attributes:
        step_id: The step.
        output: The output value.
    """

    TYPE: ClassVar[str] = "step_output"
    step_id: str = ""
    output: Any = None


@attrs.frozen(kw_only=True)
class StepCompleted(BaseEvent):
    """``step_completed``: a step finished successfully.

    Attributes:
        step_id: The step.
        block: Its block type.
        output: Its output.
        duration_ms: How long it ran.
        usage: Tokens it used, for ``llm`` steps.
    """

    TYPE: ClassVar[str] = "step_completed"
    step_id: str = ""
    block: str = ""
    output: Any = None
    duration_ms: int = 0
    usage: TokenUsage | None = None


@attrs.frozen(kw_only=True)
class StepFailed(BaseEvent):
    """``step_failed``: a step failed.

    Attributes:
        step_id: The step.
        block: Its block type.
        error: The server's message.
        code: A short machine-readable code, when there is one.
    """

    TYPE: ClassVar[str] = "step_failed"
    step_id: str = ""
    block: str = ""
    error: str = ""
    code: str | None = None


@attrs.frozen(kw_only=True)
class StepPaused(BaseEvent):
    """``step_paused``: a step waits for something, such as tool results.

    Attributes:
        step_id: The step.
        reason: Why, e.g. ``"tool_calls"``.
    """

    TYPE: ClassVar[str] = "step_paused"
    step_id: str = ""
    reason: str = "tool_calls"


@attrs.frozen(kw_only=True)
class ToolCallsRequired(BaseEvent):
    """``tool_calls_required``: the run needs the client to run these tools.

    Attributes:
        step_id: The paused step.
        tool_calls: The calls to answer with ``ToolResult`` objects.
    """

    TYPE: ClassVar[str] = "tool_calls_required"
    step_id: str = ""
    tool_calls: list[ToolCall] = attrs.Factory(list)


@attrs.frozen(kw_only=True)
class FlowCompleted(BaseEvent):
    """``flow_completed``: the run ended; always the last event of a run.

    Attributes:
        status: ``Succeeded``, ``Failed``, ``Error`` or ``Cancelled``.
        output: The last step's output on success.
        error: The server's message when the run did not succeed.
        failed_step: The step that failed, when one did.
        duration_ms: How long the run took.
        usage: Tokens the whole run used.
        error_code: The failure's code (a failed step's: ``LLM_ERROR``,
            ``TEMPLATE_ERROR``...; ``TOOL_RESULTS_TIMEOUT``), when it has one.
    """

    TYPE: ClassVar[str] = "flow_completed"
    status: Condition = attrs.field(default=Condition.SUCCEEDED, converter=_condition)
    output: Any = None
    error: str | None = None
    failed_step: str | None = None
    duration_ms: int = 0
    usage: TokenUsage | None = None
    error_code: str | None = None


@attrs.frozen(kw_only=True)
class LogLine(BaseEvent):
    """``log``: one line a ``task`` step printed.

    Attributes:
        step_id: The step.
        stream: ``"stdout"`` or ``"stderr"``.
        line: The text, without its line end.
    """

    TYPE: ClassVar[str] = "log"
    step_id: str = ""
    stream: str = "stdout"
    line: str = ""


@attrs.frozen(kw_only=True)
class UnknownEvent(BaseEvent):
    """An event type this client does not know (or one whose data did not parse).

    Attributes:
        type: The SSE ``event:`` name.
        data: The decoded JSON data (``{"raw": text}`` when it was not a JSON object).
    """

    type: str = ""
    data: dict[str, Any] = attrs.Factory(dict)


StreamEvent: TypeAlias = (
    RunStarted
    | StepStarted
    | StepInput
    | StepOutput
    | StepCompleted
    | StepFailed
    | StepPaused
    | ToolCallsRequired
    | FlowCompleted
    | LogLine
    | UnknownEvent
)
"""Any event a run streams: the SSE ``event:`` name decides which class."""

_KNOWN: tuple[type[Any], ...] = (
    RunStarted,
    StepStarted,
    StepInput,
    StepOutput,
    StepCompleted,
    StepFailed,
    StepPaused,
    ToolCallsRequired,
    FlowCompleted,
    LogLine,
)

EVENT_TYPES: Mapping[str, type[Any]] = {cls.TYPE: cls for cls in _KNOWN}
"""SSE ``event:`` name -> event class, for every known event type."""


# --------------------------------------------------------------------------- traces, outcome


@attrs.frozen
class StepTrace:
    """What one step of a run did.

    Attributes:
        step_id: The step.
        block: Its block type.
        status: Its state (``Succeeded``, ``Failed``, ``Running``...).
        started_at: Start time in ms since the epoch.
        ended_at: End time in ms since the epoch.
        duration_ms: How long it ran.
        input: Its input (recorded when the run was executed with ``trace=True``).
        output: Its output (recorded when tracing).
        error: Its error message, when it failed.
        usage: Tokens it used, for ``llm`` steps.
    """

    step_id: str
    block: str = ""
    status: Condition = attrs.field(default=Condition.PENDING, converter=_condition)
    started_at: int | None = None
    ended_at: int | None = None
    duration_ms: int | None = None
    input: Any = None
    output: Any = None
    error: str | None = None
    usage: TokenUsage | None = None


@attrs.frozen
class RunTrace:
    """Timing, tokens and (when traced) snapshots of a whole run.

    Attributes:
        execution_id: The run.
        status: Its current state.
        steps: One trace per step that started, in order.
        usage: Tokens the run used.
        duration_ms: How long it ran (so far).
    """

    execution_id: str
    status: Condition = attrs.field(default=Condition.PENDING, converter=_condition)
    steps: list[StepTrace] = attrs.Factory(list)
    usage: TokenUsage | None = None
    duration_ms: int | None = None


@attrs.frozen
class ExecutionOutcome:
    """The answer of ``POST .../execute`` and of ``tool-results?wait=true``.

    Attributes:
        execution_id: The run.
        state: ``"completed"``, ``"paused"`` or ``"failed"``.
        output: The final output when completed.
        error: The server's message when failed.
        failed_step: The failing step when failed.
        error_code: The failure's code when failed, if it has one (as
            :attr:`FlowCompleted.error_code`).
        step_id: The paused step when paused.
        tool_calls: The calls to answer when paused.
        usage: Tokens used so far.
        steps: Traces of the steps run so far.
        status: The run's condition, when the server sent it.
    """

    execution_id: str
    state: str
    output: Any = None
    error: str | None = None
    failed_step: str | None = None
    step_id: str | None = None
    tool_calls: list[ToolCall] = attrs.Factory(list)
    usage: TokenUsage | None = None
    steps: list[StepTrace] = attrs.Factory(list)
    status: Condition | None = attrs.field(default=None, converter=_optional_condition)
    error_code: str | None = None


# --------------------------------------------------------------------------- conversion

_Structure = Callable[[dict[str, Any]], Any]

# Values of these types are taken from the JSON as they are; anything else (nested
# models, enums) goes through the shared cattrs converter's hook for its type.
_PASS_THROUGH: tuple[Any, ...] = (str, int, bool, Any, str | None, int | None, dict[str, Any])


def _build_structure(cls: type[Any]) -> _Structure:
    """Generate a fast structure function for one event class.

    The class is frozen, so instead of going through ``__init__`` (one frozen setattr
    per field) the function fills the slots directly; it is the hot path of every
    stream. Nested values use the cattrs converter, a missing ``executionId`` raises
    ``KeyError``.
    """
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = ["def fill(obj, o):"]
    for i, a in enumerate(attrs.fields(cls)):
        wire = camel(a.name)
        env[f"_set{i}"] = _slot_setter(cls, a.name)
        if a.default is attrs.NOTHING:
            value = f"o[{wire!r}]"
        elif isinstance(a.default, attrs.Factory):  # type: ignore[arg-type]
            env[f"_factory{i}"] = a.default.factory
            value = f"(o[{wire!r}] if {wire!r} in o else _factory{i}())"
        else:
            env[f"_default{i}"] = a.default
            value = f"o.get({wire!r}, _default{i})"
        value = _wrap(env, i, a, value)
        lines.append(f"    _set{i}(obj, {value})")
    lines += ["def structure(o):", "    obj = _new(_cls)", "    fill(obj, o)", "    return obj"]
    exec("\n".join(lines), env)  # generated from our own field names only
    fn: _Structure = env["structure"]
    return fn


def _wrap(env: dict[str, Any], i: int, a: attrs.Attribute[Any], value: str) -> str:
    if a.converter is not None:
        env[f"_conv{i}"] = a.converter
        return f"_conv{i}({value})"
    if a.type in _PASS_THROUGH:
        return value
    hook = converter.get_structure_hook(a.type)
    env[f"_hook{i}"], env[f"_type{i}"] = hook, a.type
    return f"(None if (_v{i} := {value}) is None else _hook{i}(_v{i}, _type{i}))"


def _slot_setter(cls: type[Any], name: str) -> Callable[[Any, Any], None]:
    setter: Callable[[Any, Any], None] = _slot(cls, name).__set__
    return setter


def _slot(cls: type[Any], name: str) -> Any:
    """The slot (member descriptor) that holds field ``name`` of ``cls``'s instances."""
    for klass in cls.__mro__:
        descriptor = klass.__dict__.get(name)
        if isinstance(descriptor, MemberDescriptorType):
            return descriptor
    raise AttributeError(f"{cls.__name__} has no slot {name!r}")  # pragma: no cover


def _resolved(cls: type[Any]) -> type[Any]:
    attrs.resolve_types(cls, globals())
    return cls


_STRUCTURE: dict[str, _Structure] = {
    name: _build_structure(_resolved(cls)) for name, cls in EVENT_TYPES.items()
}
_Check = Callable[[dict[str, Any]], bool]


def _plain_usage(value: Any) -> bool:
    """Whether a wire ``usage`` is absent, ``None`` or a dict of ints: then it cannot fail."""
    if type(value) is dict:
        return all(map(operator.is_, map(type, value.values()), repeat(int)))
    return value is None or value is _ABSENT


def _plain_calls(value: Any) -> bool:
    """Whether wire ``toolCalls`` are absent or dicts of the right types: then they cannot fail."""
    return value is _ABSENT or (type(value) is list and all(map(_plain_call, value)))


def _plain_call(call: Any) -> bool:
    if type(call) is not dict or type(call.get("id")) is not str:
        return False
    function = call.get("function")
    return (
        type(call.get("type", "")) is str
        and type(function) is dict
        and type(function.get("name")) is str
        and type(function.get("arguments", "")) is str
    )


_ABSENT: Any = object()  # what a check is given for a key the data does not have

# Nested fields whose wire value, when it passes the check, cannot fail to structure.
_CHECKED: dict[Any, Callable[[Any], bool]] = {
    TokenUsage | None: _plain_usage,
    list[ToolCall]: _plain_calls,
}


def _deferral(cls: type[Any]) -> tuple[bool, tuple[str, Callable[[Any], bool]] | None]:
    """Whether ``cls`` may be deferred, and the wire key and check of its nested value
    (if it has one).

    A class may when every field is a plain JSON value or a nested value with a check:
    then nothing but a missing ``executionId`` or a failed check can make it fail to
    structure. A class with a converter (``flow_completed``'s status) never is.
    """
    checks: dict[str, Callable[[Any], bool]] = {}
    for a in attrs.fields(cls):
        if a.converter is not None:
            return False, None
        if a.type not in _PASS_THROUGH:
            if a.type not in _CHECKED:
                return False, None
            checks[camel(a.name)] = _CHECKED[a.type]
    if not checks:
        return True, None
    if len(checks) > 1:  # pragma: no cover - no event class has two today
        raise TypeError(f"{cls.__name__}: one checked field at most")
    ((key, plain),) = checks.items()
    return True, (key, plain)


def _whole_check(key: str, plain: Callable[[Any], bool]) -> _Check:
    def check(o: dict[str, Any]) -> bool:
        return plain(o.get(key, _ABSENT))

    return check


def _deferred_classes() -> dict[str, tuple[type[Any], _Check | None]]:
    deferred: dict[str, tuple[type[Any], _Check | None]] = {}
    for name, cls in EVENT_TYPES.items():
        may, nested = _deferral(cls)
        if may:
            deferred[name] = (cls, None if nested is None else _whole_check(*nested))
    return deferred


# event name -> the class parse_event defers and the check of its whole data
_DEFERRED = _deferred_classes()
_new_event = object.__new__
DEFERRED_WIRE: Mapping[bytes, type[Any]] = {
    name.encode(): cls for name, (cls, _) in _DEFERRED.items()
}
"""The wire names (bytes) of the classes :func:`parse_event` defers -> the class. A run's
event stream defers them all as bytes, their nested values checked on first use (see
:func:`deferred_event`)."""
_set_event_id = BaseEvent.__dict__["event_id"].__set__
_set_wire = _Deferred.__dict__["_wire"].__set__
_loads = orjson.loads


def _unknown(event_type: str, data: Any, event_id: int | None) -> UnknownEvent:
    if not isinstance(data, dict):
        data = {"raw": data}
    eid = event_id if event_id is not None else data.get("eventId", 0)
    return UnknownEvent(
        execution_id=str(data.get("executionId", "")),
        event_id=eid if isinstance(eid, int) else 0,
        time=data["time"] if isinstance(data.get("time"), int) else 0,
        type=event_type,
        data=data,
    )


_NOT_DEFERRED: tuple[None, None] = (None, None)


def parse_event(event_type: str, data: bytes | str, event_id: int | None = None) -> StreamEvent:
    """Turn one SSE event into its event class.

    Args:
        event_type: The SSE ``event:`` name.
        data: The SSE ``data:`` payload (JSON).
        event_id: The SSE ``id:``; when given it wins over ``eventId`` in the data.

    Returns:
        The event; :class:`UnknownEvent` for an unknown type or data that does not fit.
    """
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return _unknown(event_type, text, event_id)
    structure = _STRUCTURE.get(event_type)
    if structure is None or not isinstance(payload, dict):
        return _unknown(event_type, payload, event_id)
    deferred, check = _DEFERRED.get(event_type, _NOT_DEFERRED)
    if deferred is not None and "executionId" in payload and (check is None or check(payload)):
        given = event_id if event_id is not None else payload.get("eventId", 0)
        event: StreamEvent = deferred_event(deferred, given, payload)
        return event
    if event_id is not None:
        payload["eventId"] = event_id
    try:
        event = structure(payload)
    except (KeyError, TypeError, ValueError, AttributeError, BaseValidationError):
        return _unknown(event_type, payload, event_id)
    return event


def deferred_event(cls: type[Any], event_id: int, wire: dict[str, Any] | bytes) -> Any:
    """A :data:`DEFERRED_WIRE` event that reads its fields from ``wire`` when they are used.

    ``wire`` is the decoded data, which must hold ``executionId`` and pass the class's
    check (what :func:`parse_event` makes), or the raw ``data:`` bytes (what a run's
    event stream makes of a frame whose data looks like the server's: it starts with
    :data:`LAZY_PREFIX` and ends with ``}``). Type and ``event_id`` are known at once;
    the bytes are decoded when any other field is read. What :func:`parse_event` would
    have made an :class:`UnknownEvent` then keeps its class and logs a warning: data
    that does not decode to an object with ``executionId`` (a corrupted frame) leaves
    every field at its default; a nested value of the wrong shape (``usage``,
    ``tool_calls``) leaves that field at its default. A stream's hot loop inlines this
    (see :func:`deferred_steps`).
    """
    event = _new_event(cls)
    _set_event_id(event, event_id)
    _set_wire(event, wire)
    return event


LAZY_PREFIX = b'{"executionId":'
"""How the data of every event a vi_flow server sends begins (compact orjson)."""


def _decoded(event: Any, data: bytes) -> dict[str, Any]:
    """Decode a deferred event's ``data:`` bytes and keep the result as its wire.

    Data that is not an object with ``executionId`` (a corrupted frame) leaves every
    field at its default, with a warning; a nested value is checked when it is read.
    """
    try:
        payload = _loads(data)
    except orjson.JSONDecodeError as exc:
        payload = exc
    if type(payload) is not dict or "executionId" not in payload:
        log.warning(
            "event %s (%s): its data is not an event object (%s); its fields keep their defaults",
            event.event_id, event_name(event), payload if isinstance(payload, Exception) else "no executionId",
        )  # fmt: skip
        payload = {"executionId": ""}
    _set_wire(event, payload)
    return payload


def _misshapen(event: Any, key: str) -> bool:
    log.warning(
        "event %s (%s): its %s is not of its type's shape; that field keeps its default",
        event.event_id, event_name(event), key,
    )  # fmt: skip
    return False


def _read_from_wire(cls: type[Any], a: attrs.Attribute[Any]) -> property:
    """Field ``a`` of the deferred class ``cls``: read from the event's wire, else its slot.

    A plain value is looked up in the decoded data on every read (a dict lookup; an event
    keeps its data, not a copy in its slots); a nested value (``usage``, ``tool_calls``)
    or one whose default is a factory is made on its first read and kept in the slot, so
    it is the same object every time. Setting (the constructor, ``copy``, ``pickle``)
    goes straight to the slot.
    """
    slot, key = _slot(cls, a.name), camel(a.name)
    from_slot = slot.__get__
    default: Any = a.default
    factory = default.factory if isinstance(default, attrs.Factory) else None  # type: ignore[arg-type]
    if a.type in _PASS_THROUGH and factory is None:

        def read(event: Any) -> Any:
            try:
                wire = event._wire
            except AttributeError:  # copied or unpickled: the slots hold the fields
                return from_slot(event)
            if type(wire) is dict:
                return wire.get(key, default)
            if wire is None:  # made by the constructor
                return from_slot(event)
            return _decoded(event, wire).get(key, default)

    else:
        keep = slot.__set__
        hook = None if a.type in _PASS_THROUGH else converter.get_structure_hook(a.type)
        plain = _CHECKED.get(a.type)

        def read(event: Any) -> Any:
            try:
                return from_slot(event)  # made by the constructor, or read before
            except AttributeError:
                wire = event._wire
            if type(wire) is bytes:
                wire = _decoded(event, wire)
            if key in wire and (plain is None or plain(wire[key]) or _misshapen(event, key)):
                value = wire[key]
                if hook is not None and value is not None:
                    value = hook(value, a.type)
            else:
                value = default if factory is None else factory()
            keep(event, value)
            return value

    return property(read, slot.__set__, doc=f"``{a.name}``, read from the event's data on use.")


for _cls, _ in _DEFERRED.values():
    for _a in attrs.fields(_cls):
        if _a.name != "event_id":  # set from the SSE id when the event is made
            setattr(_cls, _a.name, _read_from_wire(_cls, _a))


_Setter = Callable[[Any, Any], None]


def deferred_steps() -> tuple[Callable[[type[Any]], Any], _Setter, _Setter]:
    """:func:`deferred_event`'s three steps (new, set the id, set the data), for a hot
    loop to hold as locals instead of paying a call per event."""
    return _new_event, _set_event_id, _set_wire


def event_name(event: StreamEvent) -> str:
    """Return the SSE ``event:`` name of an event."""
    if isinstance(event, UnknownEvent):
        return event.type
    name: str = type(event).TYPE
    return name


def event_to_wire(event: StreamEvent) -> tuple[str, bytes]:
    """Return ``(event name, JSON data bytes)`` for one event, as the SSE frame carries it."""
    if isinstance(event, UnknownEvent):
        return event.type, orjson.dumps(event.data)
    return event_name(event), orjson.dumps(converter.unstructure(event, unstructure_as=type(event)))
