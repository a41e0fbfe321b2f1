"""The one wire converter and the building blocks every model shares.

Models are frozen attrs classes with slots, snake_case in Python and camelCase on the
wire. One cattrs converter (orjson flavoured) turns them to and from JSON-ready data;
it ignores unknown fields, so a newer server never breaks an older client. Enums that a
server may extend are :class:`OpenEnum`: an unknown value is kept, not rejected.
"""

from __future__ import annotations

import enum
import math
import re
import typing
from typing import Any, TypeVar

import attrs
import orjson
from cattrs.cols import list_structure_factory
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.orjson import make_converter

from .limits import shown

__all__ = [
    "CLOSED_MODELS",
    "OpenEnum",
    "camel",
    "converter",
    "dumps",
    "from_wire",
    "loads",
    "strict_converter",
    "to_wire",
    "wire_keys",
]

T = TypeVar("T")

_CAMEL_BOUNDARY = re.compile(r"_([a-z0-9])")


def camel(name: str) -> str:
    """Return the camelCase wire name of a snake_case attribute (``flow_id`` -> ``flowId``)."""
    return _CAMEL_BOUNDARY.sub(lambda m: m.group(1).upper(), name)


class OpenEnum(str, enum.Enum):
    """A string enum that keeps values it does not know.

    ``Condition("Paused")`` on a client that predates ``Paused`` gives a member whose
    ``.value`` is ``"Paused"`` and whose ``.known`` is false, instead of an error.
    """

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = "UNKNOWN"
        member._value_ = value
        return member

    @property
    def known(self) -> bool:
        """Whether this value is one the client knows by name."""
        return self._name_ != "UNKNOWN"

    def __str__(self) -> str:
        return str(self.value)


def _strict_hook(kind: type[Any], accepts: tuple[type[Any], ...]) -> Any:
    """A structure hook that takes only ``accepts`` (never a bool for a number)."""

    def hook(value: Any, _cls: Any) -> Any:
        if not isinstance(value, accepts) or (isinstance(value, bool) and kind is not bool):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r:.40}")
        return kind(value)

    return hook


def _is_list(kind: Any) -> bool:
    return kind is list or typing.get_origin(kind) is list


def _strict_list_hook(structure: Any) -> Any:
    """``structure`` (cattrs' hook for a list type) for a JSON array only."""

    def hook(value: Any, cls: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__} {value!r:.40}")
        return structure(value, cls)

    return hook


CLOSED_MODELS: set[type[Any]] = set()
"""Models whose request bodies refuse a key no field has (422), where dropping it would
do something else than asked: elsewhere unknown keys are ignored (a newer client's
fields reach an older server)."""


def _build_converter(*, strict: bool = False) -> Any:
    conv = make_converter(omit_if_default=False, forbid_extra_keys=False)
    if strict:  # what the server reads: `{}` is not a string, "3" not a number
        for kind, accepts in ((str, (str,)), (int, (int,)), (float, (int, float)), (bool, (bool,))):
            conv.register_structure_hook(kind, _strict_hook(kind, accepts))
        # nor a string or an object a list (cattrs would take each character or key)
        conv.register_structure_hook_factory(
            _is_list, lambda t: _strict_list_hook(list_structure_factory(t, conv))
        )

    def unstructure_factory(cls: type[Any]) -> Any:
        overrides: dict[str, Any] = {
            a.name: override(rename=camel(a.name)) for a in attrs.fields(cls)
        }
        return make_dict_unstructure_fn(cls, conv, **overrides)

    def structure_factory(cls: type[Any]) -> Any:
        overrides: dict[str, Any] = {
            a.name: override(rename=camel(a.name), struct_hook=_id_hook(conv))
            if strict and a.name.endswith("_id")
            else override(rename=camel(a.name))
            for a in attrs.fields(cls)
        }
        closed = strict and cls in CLOSED_MODELS
        return make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=closed, **overrides)

    conv.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    conv.register_structure_hook_factory(attrs.has, structure_factory)
    conv.register_structure_hook(OpenEnum, lambda v, cls: cls(v))
    conv.register_unstructure_hook(OpenEnum, lambda e: e.value)
    # cattrs' orjson converter writes bytes as base85 text: a value the caller never
    # wrote would reach the server (and a tool's answer) as if it were theirs
    conv.register_unstructure_hook(bytes, _no_bytes)
    return conv


def _id_hook(conv: Any) -> Any:
    """A hook for an id a request names (``flowId``, ``volumeId``...): no id holds a NUL
    character, and PostgreSQL cannot even look one up (QA AN: a 500 there, a 404 on
    SQLite), so one is refused alike on both."""

    def hook(value: Any, cls: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError(f"expected an id without a NUL character, got {value!r:.40}")
        return conv.structure(value, cls)

    return hook


def _no_bytes(value: bytes) -> Any:
    raise TypeError(
        f"bytes are not JSON ({value[:20]!r}...): decode them to str, or encode them"
        " (base64) yourself"
    )


converter = _build_converter()
"""The cattrs converter shared by the client and the local server."""

strict_converter = _build_converter(strict=True)
"""As :data:`converter`, but a scalar must have its field's JSON type (request bodies)."""


def to_wire(obj: Any) -> Any:
    """Unstructure a model (or a list/dict of models) into camelCase JSON-ready data."""
    return converter.unstructure(obj)


def from_wire(data: Any, cls: type[T]) -> T:
    """Structure camelCase JSON data into ``cls``; unknown fields are ignored."""
    result: T = converter.structure(data, cls)
    return result


def dumps(obj: Any) -> bytes:
    """Serialize a model or plain data to JSON bytes with orjson."""
    return orjson.dumps(to_wire(obj))


def dumps_finite(obj: Any) -> bytes:
    """Serialize like :func:`dumps`, refusing values JSON cannot hold with the field's name.

    orjson writes ``nan`` and infinities as ``null``, which would send "no value" where
    the caller gave one (``duration_hours=float("inf")`` became a missing duration); an
    integer past 64 bits or text with a lone surrogate it refuses in words that name no
    field ("Integer exceeds 64-bit range").

    Raises:
        ValueError: Naming the wire path of the first such value.
        TypeError: Naming the wire path of a value of a type JSON has none for (bytes).
    """
    wire = to_wire(obj)
    try:
        body = orjson.dumps(wire)
    except orjson.JSONEncodeError:
        _refuse_unencodable(wire, encoded=False)
        raise  # something the walk does not know: orjson's own words
    if b"null" in body:  # only then can a number have been written as null
        _refuse_unencodable(wire, encoded=True)
    return body


def _refuse_unencodable(wire: Any, *, encoded: bool) -> None:
    """Name the first value of ``wire`` JSON cannot hold; ``encoded``: orjson wrote it,
    so only a number it wrote as ``null`` can be one."""
    stack: list[tuple[Any, str]] = [(wire, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key in item:
                if not encoded and (problem := _unencodable(key)):
                    raise ValueError(f"{where or 'body'}: a key is {problem}")
            # pushed last first, so that the first bad value is the one named
            named = [(v, f"{where}.{k}" if where else str(k)) for k, v in item.items()]
            stack.extend(reversed(named))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(v, f"{where}[{i}]") for i, v in enumerate(item)]))
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{where or 'body'}: expected a finite number, got {item!r}")
        elif not encoded and not isinstance(item, (str, int, float, type(None))):
            try:
                orjson.dumps(item)
            except orjson.JSONEncodeError:
                raise TypeError(
                    f"{where or 'body'}: expected a JSON value, got {type(item).__name__}"
                ) from None
        elif not encoded and (problem := _unencodable(item)):
            raise ValueError(f"{where or 'body'}: {problem}")


def _unencodable(item: Any) -> str | None:
    """Why orjson refuses a scalar (a key), in words naming it, or ``None``."""
    if not isinstance(item, (int, str)):
        return None  # a type JSON has no word for: orjson's TypeError says so
    try:
        orjson.dumps(item)
    except orjson.JSONEncodeError:
        if isinstance(item, str):  # the value may be a secret (env): not shown
            return "text that is not valid Unicode (it holds a lone surrogate)"
        return f"integer out of the 64-bit range: {shown(item)}"
    return None


def loads(data: bytes | str) -> Any:
    """Parse JSON bytes with orjson."""
    return orjson.loads(data)


_FIELD_TYPES: dict[type[Any], dict[str, Any]] = {}


def _field_types(cls: type[Any]) -> dict[str, Any]:
    if cls not in _FIELD_TYPES:
        _FIELD_TYPES[cls] = typing.get_type_hints(cls)
    return _FIELD_TYPES[cls]


def _nested_class(tp: Any) -> tuple[type[Any] | None, bool]:
    """Return (attrs class, is_list) for ``C``, ``C | None`` and ``list[C]`` annotations."""
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return (inner if attrs.has(inner) else None), True
    if attrs.has(tp):
        return tp, False
    for arg in typing.get_args(tp):
        if attrs.has(arg):
            return arg, False
    return None, False


def wire_keys(data: Any, cls: type[Any]) -> Any:
    """Rename the snake_case keys of a user's dict for ``cls`` to their camelCase wire names.

    Only keys that are fields of ``cls`` (and of the models nested in it) are renamed, so
    free-form dicts such as block ``settings`` reach the server exactly as written.
    """
    if not isinstance(data, dict):
        return data
    hints = _field_types(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in hints:
            out[key] = value
            continue
        nested, is_list = _nested_class(hints[key])
        if nested is not None and is_list and isinstance(value, list):
            value = [wire_keys(v, nested) for v in value]
        elif nested is not None:
            value = wire_keys(value, nested)
        out[camel(key)] = value
    return out
