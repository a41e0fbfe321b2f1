"""One event's SSE frame, encoded once, the way the models write it.

:func:`encoder` gives, per event class, a function from the event's fields to its
whole SSE frame (``id:``, ``event:``, ``data:``). For the classes whose fields are all
plain values it is generated (one dict literal straight to orjson); the others go
through the model and the shared converter. ``tests/engine/test_eventlog.py`` checks
both write exactly what :func:`~vi_flow.models.events.event_to_wire` writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import orjson

from ...models._base import camel
from ...models.events import StreamEvent, event_to_wire

__all__ = ["Encode", "encoder", "frame", "log_frames", "log_layout"]


def frame(event_id: int, event_type: str, data: bytes) -> bytes:
    """Return the SSE frame of one event (``id:``, ``event:``, ``data:``)."""
    return _layout(event_type) % (event_id, data)


def _layout(event_type: str) -> bytes:
    return b"id: %%d\nevent: %s\ndata: %%s\n\n" % event_type.encode()


Encode = Callable[..., bytes]
"""``encode(execution_id, event_id, time, **fields)``: one event's whole SSE frame."""

# Field types whose values orjson writes exactly as the models' converter would.
_PLAIN: tuple[Any, ...] = (str, int, bool, Any, str | None, int | None)
_ENCODERS: dict[type[Any], Encode] = {}


def encoder(cls: type[StreamEvent]) -> Encode:
    """The frame encoder of one event class, built once.

    For a class whose fields are all plain values (``log``, ``step_started``...) it is
    generated: one dict literal with the wire names in the models' field order, straight
    to orjson, with the class's defaults and ``TypeError`` for an unknown field, as its
    constructor. Other classes (nested models, enums) go through the model and the shared
    converter. ``tests/engine/test_eventlog.py`` checks both give the same bytes.
    """
    found = _ENCODERS.get(cls)
    if found is None:
        found = _ENCODERS[cls] = _generate(cls) or _through_model(cls)
    return found


def _through_model(cls: type[StreamEvent]) -> Encode:
    def encode(execution_id: str, event_id: int, time: int, **fields: Any) -> bytes:
        event = cls(execution_id=execution_id, event_id=event_id, time=time, **fields)
        name, data = event_to_wire(event)
        return frame(event_id, name, data)

    return encode


def _generate(cls: type[StreamEvent]) -> Encode | None:
    attrs.resolve_types(cls)
    fields = attrs.fields(cls)
    if not hasattr(cls, "TYPE") or any(a.type not in _PLAIN or a.converter for a in fields):
        return None
    name: str = getattr(cls, "TYPE", "")
    env: dict[str, Any] = {"_dumps": orjson.dumps, "_fmt": _layout(name)}
    params: list[str] = []
    items: list[str] = []
    for i, a in enumerate(fields):
        if a.name in ("execution_id", "event_id", "time"):
            params.insert(len(items), a.name)
        else:
            env[f"_d{i}"] = a.default
            params.append(f"{a.name}=_d{i}")
        items.append(f"{camel(a.name)!r}: {a.name}")
    head = ", ".join(params[:3]) + (", *, " + ", ".join(params[3:]) if params[3:] else "")
    data = f"_dumps({{{', '.join(items)}}})"
    code = f"def encode({head}):\n    return _fmt % (event_id, {data})"
    exec(code, env)  # generated from the model's own field names only
    encode: Encode = env["encode"]
    return encode


def log_layout(run_id: str, step_id: str, stream: str) -> bytes:
    """The frame of a ``log`` event with its per-run parts filled in.

    ``log_layout(...) % (event_id, event_id, time, orjson.dumps(line))`` is the frame
    :func:`encoder` writes for ``LogLine`` (same field order, same compact JSON).
    """
    run, step, out = (_escaped(v).replace(b"%", b"%%") for v in (run_id, step_id, stream))
    head = b'{"executionId":%s,"eventId":%%d,"time":%%d,"stepId":%s,"stream":%s,"line":%%s}' % (
        run,
        step,
        out,
    )
    return b"id: %%d\nevent: log\ndata: %s\n\n" % head


def log_frames(
    run_id: str, step_id: str, stream: str, first: int, time: int, lines: Sequence[str]
) -> bytes:
    """The frames of one ``log`` event per line, ids from ``first``, joined.

    Byte for byte the frames of :func:`log_layout` (and so of :func:`encoder`). When no
    line needs a JSON escape (printable, no quote or backslash: orjson writes such a
    string as its UTF-8 between quotes) the whole batch is one join of its pieces,
    encoded once, instead of a JSON call and a bytes format per line.
    """
    if not lines:
        return b""
    text = "".join(lines)
    if not (text.isprintable() and '"' not in text and "\\" not in text):
        layout, dumps = log_layout(run_id, step_id, stream), orjson.dumps
        return b"".join([layout % (i, i, time, dumps(line)) for i, line in enumerate(lines, first)])
    run, step, out = (_escaped(v).decode() for v in (run_id, step_id, stream))
    count = len(lines)
    high, low = _id_digits(first, count)
    # 'id: ' ID MID ID REST LINE END, an id in two pieces: eight pieces per line, placed
    # by slice: no per-line string is built, only the one join (a quarter faster than an
    # f-string per line)
    pieces = [f'\nevent: log\ndata: {{"executionId":{run},"eventId":'] * (8 * count)
    pieces[0::8] = high
    pieces[1::8] = low
    pieces[3::8] = high
    pieces[4::8] = low
    pieces[5::8] = [f',"time":{time},"stepId":{step},"stream":{out},"line":"'] * count
    pieces[6::8] = lines
    pieces[7::8] = ['"}\n\nid: '] * count
    pieces[0], pieces[-1] = "id: " + high[0], '"}\n\n'
    return "".join(pieces).encode()


_DIGITS = [str(i) for i in range(1000)]
_DIGITS_PADDED = [f"{i:03d}" for i in range(1000)]


def _id_digits(first: int, count: int) -> tuple[list[str], list[str]]:
    """The decimal ids ``first`` .. ``first + count - 1``, each split in two strings: all
    but the last three digits (``""`` below 1000), and those three digits.

    Both come from tables and repeats, not a ``str()`` per id, which took 40 % of
    :func:`log_frames` (a replay makes the frames of stored lines again).
    """
    high: list[str] = []
    low: list[str] = []
    at, end = first, first + count
    while at < end:
        thousands, rest = divmod(at, 1000)
        n = min(end - at, 1000 - rest)
        high += [str(thousands) if thousands else ""] * n
        low += (_DIGITS_PADDED if thousands else _DIGITS)[rest : rest + n]
        at += n
    return high, low


def _escaped(value: str) -> bytes:
    return orjson.dumps(value)
