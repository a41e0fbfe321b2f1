"""The parts of the OpenAPI document beyond bodies and answers: parameters, headers, links.

:mod:`vi_flow.server.openapi` builds each operation; this module holds what it adds
around the bodies: the query parameters each route reads (beyond paging), the request
headers (``Idempotency-Key``, ``Last-Event-ID``, ``If-Match``, ``X-Request-Id``), the
answer headers (``X-Request-Id``, ``ETag``, ``X-Heartbeat-Interval``,
``Idempotent-Replayed``), the event types of each event stream, and the links that
chain a created resource to the operations on it (create -> get -> delete).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..models.common import MAX_PAGE_SIZE, Condition
from ..models.events import EVENT_TYPES
from ..models.limits import (
    MAX_DURATION_HOURS,
    MAX_ID_LENGTH,
    MAX_INT,
    MAX_NAME_LENGTH,
    MAX_TIME_MS,
    MAX_VOLUME_GB,
)
from ..models.tasks import ReservationStatus, TaskStatus

__all__ = [
    "ANSWER_HEADERS",
    "ANY_INTEGER",
    "ANY_NUMBER",
    "IDEMPOTENCY_KEY",
    "ID_NAME",
    "JSON_VALUE",
    "LOG_EVENTS",
    "NAME",
    "PAGE_PARAMS",
    "PATH_TEXT",
    "QUERY",
    "REQUEST_HEADERS",
    "REQUEST_ID",
    "RUN_EVENTS",
    "VERSION",
    "add_links",
    "bound_numbers",
    "chosen_id",
    "operation_id",
    "sse_schema",
    "tighten",
]

_NON_WORD = re.compile(r"[^A-Za-z0-9]+")
_STR: dict[str, Any] = {"type": "string", "pattern": "^[^\\u0000]*$"}  # no NUL in a URL
PATH_TEXT: dict[str, Any] = _STR
"""A path parameter: any text but NUL (a path holding ``%00`` is a 400)."""
_BOOL_TEXT: dict[str, Any] = {"type": "string", "enum": ["true", "false", "1", "0"]}


def _query(name: str, schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": dict(schema),
        "description": description,
    }


def _header(name: str, schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": dict(schema),
        "description": description,
    }


def _int(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


def _number(low: float, high: float) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high}


_TWO_63 = MAX_INT + 1
ANY_NUMBER: dict[str, Any] = {
    "type": "number",
    "exclusiveMinimum": -_TWO_63,
    "exclusiveMaximum": _TWO_63,
}
"""Any number the server takes: every number of a body is within (-2**63, 2**63)."""
ANY_INTEGER: dict[str, Any] = {"type": "integer", "minimum": -_TWO_63, "maximum": MAX_INT}
"""Any integer the server takes: 64-bit."""
NOT_NEGATIVE: dict[str, Any] = {"type": "number", "minimum": 0, "exclusiveMaximum": _TWO_63}
"""A number that cannot be below 0 (a price, an amount of memory, a count)."""
JSON_VALUE: dict[str, Any] = {
    "description": "Any JSON value whose numbers fit the server's 64-bit limits.",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "string"},
        ANY_INTEGER,
        ANY_NUMBER,
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
    ],
}
"""The ``JsonValue`` component: what a free-form value (``parameters``, extras) may hold."""
_JSON_REF = {"$ref": "#/components/schemas/JsonValue"}


def chosen_id(prefix: str) -> dict[str, Any]:
    """The schema of an id a client may choose: ``<prefix>_`` and up to 64 more characters."""
    return {"type": "string", "pattern": f"^({prefix}_[A-Za-z0-9_-]{{1,64}})?$"}  # "": none


VERSION: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_INT},
        {"type": "string", "enum": ["draft", "production"]},
        {"type": "null"},
    ]
}
"""A flow version: a published number, ``draft`` or ``production``."""


_ORDER = _query("order", {"type": "string", "enum": ["newest", "oldest"]}, "List order.")
PAGE_PARAMS = [
    _query("pageSize", _int(1, MAX_PAGE_SIZE), "Items per page."),
    _query(
        "pageToken",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]*$"},
        "The `nextPage` token of the previous page (opaque base64url: any other is a 400).",
    ),
    _ORDER,
]
"""Every paged list reads these."""


def _statuses(kind: type[TaskStatus | ReservationStatus], what: str) -> dict[str, Any]:
    one = f" *({'|'.join(s.value for s in kind)}) *"
    pattern = f"^({one})?(,({one})?)*$"
    return _query(
        "status",
        {"type": "string", "pattern": pattern},
        f"Only {what} in these statuses (comma-separated).",
    )


_LIMIT = _query("limit", _int(1, 1000), "At most this many items.")
_EVENT_ID = {"type": "string", "pattern": "^ *[0-9]{0,18} *$"}
_LAST_EVENT_ID = "Resume after this event id (what the stream's last `id:` said)."

QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/v1/health"): [
        _query(
            "challenge",
            {"type": "string", "minLength": 1, "maxLength": 128},
            "A nonce: the answer's `proof` shows which server answered.",
        ),
        _query(
            "ready",
            _BOOL_TEXT,
            "Also check the database: 503 when it does not answer (a load balancer's check).",
        ),
    ],
    ("POST", "/v1/flows"): [_query("flowId", chosen_id("flow"), "Choose the flow's id.")],
    ("GET", "/v1/runs"): [
        _query("flowId", _STR, "Only runs of this flow."),
        _query(
            "condition",
            {"type": "string", "enum": ["", *(c.value for c in Condition)]},
            "Only runs in this current condition (`Running`, ...).",
        ),
    ],
    ("GET", "/v1/runs/{runId}/events"): [_query("after", _EVENT_ID, _LAST_EVENT_ID)],
    ("POST", "/v1/runs/{runId}/tool-results"): [
        _query("wait", _BOOL_TEXT, "Answer the run's next outcome instead of `accepted`.")
    ],
    ("GET", "/v1/tasks"): [_statuses(TaskStatus, "tasks"), _LIMIT],
    ("GET", "/v1/volumes"): [_LIMIT],
    ("GET", "/v1/instances"): [
        _query("gpuType", _STR, "Only this GPU type."),
        _query("maxPrice", NOT_NEGATIVE, "At most this price per hour."),
        _query("minGpuMemoryGb", NOT_NEGATIVE, "At least this GPU memory."),
        _query("gpuCount", NOT_NEGATIVE, "At least this many GPUs."),
        _LIMIT,
    ],
    ("GET", "/v1/reservations"): [_statuses(ReservationStatus, "reservations")],
    ("GET", "/v1/reservations/availability"): [
        _query("earliestStartTime", _number(0, MAX_TIME_MS), "Start of the search (ms)."),
        _query("latestEndTime", _number(0, MAX_TIME_MS), "End of the search (ms)."),
        _query("durationHours", _number(0, MAX_DURATION_HOURS), "Window length."),
        _query("instanceType", _STR, "The instance type to reserve."),
        _query("gpu", _STR, "A GPU type (or `<type>:<count>`)."),
    ],
}
"""Query parameters beyond paging, per route."""

IDEMPOTENCY_KEY = _header(
    "Idempotency-Key",
    {"type": "string", "maxLength": 255},
    "Retries with the same key and body get the first answer again (empty: no key;"
    " printable ASCII).",
)
REQUEST_ID = _header(
    "X-Request-Id",
    _STR,
    "Your id for this request; echoed when sane (else the server makes one, never refusing).",
)

REQUEST_HEADERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("PUT", "/v1/flows/{flowId}"): [
        _header("If-Match", _STR, "The flow's `ETag`: refused with 412 if it changed since.")
    ],
    ("DELETE", "/v1/flows/{flowId}"): [
        _header("If-Match", _STR, "The flow's `ETag`: refused with 412 if it changed since.")
    ],
    ("GET", "/v1/runs/{runId}/events"): [_header("Last-Event-ID", _EVENT_ID, _LAST_EVENT_ID)],
}
"""Request headers beyond ``Authorization``, ``Idempotency-Key`` and ``X-Request-Id``."""


def _answer_header(description: str, schema: Mapping[str, Any] = _STR) -> dict[str, Any]:
    return {"description": description, "schema": dict(schema)}


ANSWER_HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-Id": _answer_header("The request's id; quote it when reporting a problem."),
    "ETag": _answer_header("The flow's version tag, for `If-Match`."),
    "X-Heartbeat-Interval": _answer_header(
        "Seconds between heartbeats: twice that without a byte means the stream is gone.",
        {"type": "string", "pattern": "^[0-9.]+$"},
    ),
    "Idempotent-Replayed": _answer_header(
        "`true` when this is the stored first answer to the `Idempotency-Key`.",
        {"type": "string", "enum": ["true"]},
    ),
}
"""Answer headers by name (which answers carry which is decided in ``openapi``)."""


def _event(name: str, data: Mapping[str, Any], *, numbered: bool = True) -> dict[str, Any]:
    id_schema = {"type": "string", "pattern": "^[0-9]+$"} if numbered else _STR
    return {
        "type": "object",
        "properties": {
            "id": id_schema,
            "event": {"const": name},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": dict(data),
            },
        },
        "required": ["event", "data"],
    }


def sse_schema(events: Mapping[str, Mapping[str, Any]], *, numbered: bool = True) -> dict[str, Any]:
    """The schema of one event of a stream: ``event:`` one of ``events``, ``data:`` JSON."""
    return {"oneOf": [_event(name, data, numbered=numbered) for name, data in events.items()]}


RUN_EVENTS: dict[str, type[Any]] = dict(EVENT_TYPES)
"""A run's event types and the model of each one's ``data``."""

LOG_EVENTS: dict[str, Any] = {
    "log": {
        "type": "object",
        "properties": {
            "stream": {"type": "string"},
            "offset": {"type": "integer"},
            "text": {"type": "string"},
        },
    },
    "end": {"type": "object"},
}
"""A task log stream's event types and the schema of each one's ``data``."""

_LINKED: dict[str, tuple[str, str]] = {
    "/v1/flows": ("flowId", "Flow"),
    "/v1/runs": ("runId", "Run"),
    "/v1/tasks": ("taskId", "Task"),
    "/v1/volumes": ("volumeId", "Volume"),
    "/v1/reservations": ("reservationId", "Reservation"),
    "/v1/ssh-keys": ("keyId", "SSHKey"),
}
"""Collections whose ``POST`` creates an item: the item's id parameter and model name."""


def operation_id(method: str, path: str) -> str:
    """The ``operationId`` of a route: ``get_v1_flows_flowId``."""
    return f"{method.lower()}_{_NON_WORD.sub('_', path).strip('_')}"


def add_links(paths: dict[str, dict[str, Any]]) -> None:
    """Link each created resource to every operation on it (create -> get -> delete).

    The answer of ``POST /v1/flows`` gets a link to each operation under
    ``/v1/flows/{flowId}`` that needs no other parameter, its id taken from the answer;
    an execution job links to its run.
    """
    for collection, (param, _name) in _LINKED.items():
        _link(paths, ("post", collection), f"{collection}/{{{param}}}", param, param)
    _link(paths, ("post", "/v1/flows/{flowId}/jobs"), "/v1/runs/{runId}", "runId", "executionId")


def _link_name(operation: str) -> str:
    """``get_v1_flows_flowId`` -> ``GetFlowsFlowId``."""
    return "".join(w[:1].upper() + w[1:] for w in operation.split("_") if w != "v1")


def _link(
    paths: dict[str, dict[str, Any]], source: tuple[str, str], item: str, param: str, field: str
) -> None:
    method, path = source
    operation = paths.get(path, {}).get(method)
    if operation is None:
        return
    answer = next(v for k, v in operation["responses"].items() if k.startswith("2"))
    links = answer.setdefault("links", {})
    for target, ops in paths.items():
        if target != item and not target.startswith(item + "/"):
            continue
        if target.count("{") != 1:
            continue  # another parameter (a step, a file) the answer cannot give
        for op in ops.values():
            links[_link_name(op["operationId"])] = {
                "operationId": op["operationId"],
                "parameters": {param: f"$response.body#/{field}"},
            }


# no control character (C0, DEL, C1), line separator or text-direction control
# (models.limits.check_name)
_NOT_CONTROL = (
    "[^\\u0000-\\u001f\\u007f-\\u009f\\u061c\\u200e\\u200f\\u2028\\u2029"
    "\\u202a-\\u202e\\u2066-\\u2069]"
)
_NOT_BLANK = (  # and what Python's str.strip keeps: no Unicode space either
    "[^\\u0000-\\u0020\\u007f-\\u00a0\\u061c\\u1680\\u2000-\\u200a\\u200e\\u200f"
    "\\u2028\\u2029\\u202a-\\u202f\\u205f\\u2066-\\u2069\\u3000]"
)
NAME: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME_LENGTH,
    "pattern": f"^{_NOT_CONTROL}*{_NOT_BLANK}{_NOT_CONTROL}*$",
}
"""A name the server keeps: not blank, at most 256 characters, no control characters."""

ID_NAME: dict[str, Any] = {**NAME, "maxLength": MAX_ID_LENGTH}

ENV: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "pattern": "^[^\\u0000]*$"},
            {"type": "number"},
            {"type": "boolean"},
        ]
    },
}
"""A task's environment: names a shell can set, values without NUL (a number or a
boolean is given as JSON writes it: ``3``, ``true``; a value of more than 128 KiB is
refused too: Linux passes no longer variable)."""
"""A step or input name: as :data:`NAME`, at most 128 characters."""

# What the server checks beyond the models' types: (component, property) -> schema, and
# the properties each component requires. The document says what is refused.
_NARROWER: dict[tuple[str, str], dict[str, Any]] = {
    ("FlowSpec", "name"): NAME,
    ("FlowInput", "name"): ID_NAME,
    ("ExecuteRequest", "version"): VERSION,
    ("TaskConfig", "name"): {
        "type": "string",
        "maxLength": MAX_NAME_LENGTH,
        "pattern": f"^{_NOT_CONTROL}*$",
    },
    ("TaskConfig", "maxRunTime"): {
        "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]
    },
    **{
        ("TaskConfig", amount): {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_INT}, {"type": "null"}]
        }
        for amount in ("cpus", "memoryGb", "minGpuMemoryGb")
    },
    ("TaskConfig", "maxPricePerHour"): {
        "anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_INT}, {"type": "null"}]
    },
    ("TaskConfig", "env"): ENV,
    ("SSHKeyRequest", "name"): NAME,
    ("VolumeRequest", "sizeGb"): {"type": "integer", "minimum": 1, "maximum": MAX_VOLUME_GB},
    ("VolumeSpec", "sizeGb"): {"type": "integer", "minimum": 1, "maximum": MAX_VOLUME_GB},
    ("ReservationRequest", "durationHours"): {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": MAX_DURATION_HOURS,
    },
    ("ReservationRequest", "startTime"): {
        "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_TIME_MS}, {"type": "null"}]
    },
}
_NARROWER.update(
    {
        ("TaskConfig", "command"): {
            "anyOf": [
                {"type": "string", "pattern": f"^[^\\u0000]*{_NOT_BLANK}[^\\u0000]*$"},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string", "pattern": "^[^\\u0000]*$"},
                },
            ]
        },
        ("VolumeRequest", "interface"): {"type": "string", "enum": ["file", "block"]},
        ("VolumeSpec", "interface"): {"type": "string", "enum": ["file", "block"]},
        ("ExecuteRequest", "attachments"): {
            "type": "array",
            "maxItems": 10,
            "items": {"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]://[^/?#]+"},
        },
        ("ExecuteRequest", "tools"): {
            "type": "array",
            "maxItems": 64,
            "items": {
                "type": "object",
                "properties": {
                    "type": {"const": "function"},
                    "function": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "parameters": {"anyOf": [{"type": "null"}, {"type": "object"}]},
                        },
                        "required": ["name"],
                    },
                },
                "required": ["function"],
            },
        },
        ("ExecuteRequest", "toolChoice"): {
            "anyOf": [
                {"type": "null"},
                {"type": "string", "enum": ["auto", "none", "required"]},
                {
                    "type": "object",
                    "properties": {
                        "function": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}},
                            "required": ["name"],
                        }
                    },
                    "required": ["function"],
                },
            ]
        },
    }
)
_REQUIRED: dict[str, list[str]] = {
    "TaskConfig": ["command"],
    "MountRequest": ["volumeId"],
}


def tighten(components: dict[str, Any]) -> None:
    """Narrow the model schemas to what the server accepts (names, ranges, required)."""
    for (name, prop), schema in _NARROWER.items():
        properties = components.get(name, {}).get("properties", {})
        if prop in properties:
            properties[prop] = schema
    for name, required in _REQUIRED.items():
        if name in components:
            components[name]["required"] = sorted(
                {*components[name].get("required", []), *required}
            )


def bound_numbers(schema: Any) -> None:
    """Say the server's 64-bit limits on the numbers of free-form values.

    Every body is checked (:func:`vi_flow.models.limits.check_json`): an integer is
    64-bit, any other number within (-2**63, 2**63), wherever it is. So a free-form
    value (an empty schema, an object's other properties, an array's items) is a
    :data:`JSON_VALUE`.
    """
    if isinstance(schema, list):
        for item in schema:
            bound_numbers(item)
        return
    if not isinstance(schema, dict):
        return
    for key, value in list(schema.items()):
        if key in ("additionalProperties", "items") and value in ({}, True):
            schema[key] = dict(_JSON_REF)
        elif key == "properties" and isinstance(value, dict):
            for name, prop in value.items():
                value[name] = dict(_JSON_REF) if prop == {} else prop
                bound_numbers(value[name])
        else:
            bound_numbers(value)
    if schema.get("type") == "object" and "additionalProperties" not in schema:
        schema["additionalProperties"] = dict(_JSON_REF)
