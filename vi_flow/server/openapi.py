"""The OpenAPI 3.1 document, generated from the routes and the shared wire models.

Every feature module's routes appear without extra work: paths come from
``app.router``, summaries from the first line of each handler's docstring, tags from
the first path segment after ``/v1``. What a route reads and answers is written once in
:data:`_ROUTES`, as the attrs models of :mod:`vi_flow.models` that the server
structures bodies into and serializes answers from; their JSON Schemas are derived from
the same type hints (camelCase names, required = no default), so the document says
what the wire carries. Event streams are ``text/event-stream`` with the schema of each
event type, downloads ``application/octet-stream``, and ``/health`` and ``/openapi.json``
need no token. Query parameters, headers and links come from
:mod:`vi_flow.server._openapi_parts`. Only the API (``/v1/...``) is described: the
console's browser pages are not part of it.
"""

from __future__ import annotations

import copy
import enum
import functools
import inspect
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs
from aiohttp import web

from ..models._base import camel
from ..models.common import ResourceCondition, ResourceMetadata
from ..models.events import ExecutionOutcome, RunTrace, StepTrace, ToolResult
from ..models.execution import ExecuteRequest, ExecutionJob
from ..models.flows import DeletedFlow, Flow, FlowSpec
from ..models.limits import MAX_INT
from ..models.retention import MAX_AGE, PruneResult, RetentionPolicy
from ..models.runs import DeletedRun, Run
from ..models.server import ServerStatus
from ..models.tasks import (
    AvailabilitySlot,
    AvailableInstance,
    MountRequest,
    Reservation,
    ReservationRequest,
    SSHEndpoint,
    SSHKey,
    SSHKeyRequest,
    Task,
    TaskConfig,
    TaskLogs,
    TaskOutputFile,
    Volume,
    VolumeRequest,
)
from . import _openapi_parts as parts
from .helpers import idempotent
from .validation import SETTING_LIMITS, TEMPLATE_TEXT

__all__ = ["build_openapi", "json_schema", "query_names"]

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "requestId": {"type": "string"},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}

# -- JSON Schema from attrs models -----------------------------------------------------

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    Any: {},
    object: {},
}


def json_schema(tp: Any, components: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a type hint; attrs classes go to ``components`` as ``$ref``\\ s."""
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    if attrs.has(tp):
        _add_component(tp, components)
        return {"$ref": f"#/components/schemas/{tp.__name__}"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "examples": [m.value for m in tp]}  # open: others are kept
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [json_schema(a, components) for a in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set, frozenset) or origin is typing.Sequence:
        item = json_schema(args[0], components) if args else {}
        return {"type": "array", "items": item}
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        value = json_schema(args[1], components) if len(args) == 2 else {}
        return {"type": "object", "additionalProperties": value}
    return {}


def _add_component(cls: type[Any], components: dict[str, Any]) -> None:
    name = cls.__name__
    if name in components:
        return
    components[name] = {}  # a placeholder first, so a model that nests itself ends
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        properties[camel(field.name)] = json_schema(hints.get(field.name, Any), components)
        if field.default is attrs.NOTHING:
            required.append(camel(field.name))
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    doc = inspect.getdoc(cls)
    if doc:
        schema["description"] = doc.split("\n\n")[0]
    components[name] = schema


# -- what each route reads and answers -------------------------------------------------


@attrs.frozen
class _Route:
    body: Any = None
    answer: Any = None
    status: int = 200
    media: str = "application/json"
    paged: bool = False
    checks_paging: bool = False  # answered whole, yet reads (and checks) the paging ones
    also_sse: bool = False  # the same path answers an event stream when asked for one
    params: tuple[dict[str, Any], ...] = ()
    events: Any = None  # an event stream's types: name -> model or schema of its data


_SSE = "text/event-stream"
_FILE = "application/octet-stream"


def _obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def _items(model: Any) -> Any:
    return ("items", model)


_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_DELETED = _obj(deleted=_BOOL)
_NAMED = {**_obj(name=parts.NAME), "required": ["name"]}
_CREDITS = _obj(
    organizationId=_STR,
    credits={"anyOf": [{**_INT, "minimum": 0, "maximum": MAX_INT}, {"type": "null"}]},
)


def _query(name: str, schema: dict[str, Any], description: str, where: str = "query") -> Any:
    return {
        "name": name,
        "in": where,
        "required": False,
        "schema": schema,
        "description": description,
    }


_OFFSETS = {"type": "string", "pattern": "^( *[0-9]{1,18}:[0-9]{1,18} *)?$"}  # "": none
_AGE_TEXT = "^\\s*[0-9]{1,3}(\\.[0-9]{1,3})?\\s*[smhdw]?\\s*$"  # at most 999 weeks
_SINCE = {**_INT, "minimum": 0, "maximum": MAX_INT}
_LOG_PARAMS = (
    _query("follow", _BOOL, "Answer a `text/event-stream` of `log` events, then `end`"),
    _query("stream", {"enum": ["stdout", "stderr", "all", "both"]}, "Which log (stream: all)"),
    _query("tail", {**_INT, "minimum": 0, "maximum": 100_000}, "Trailing lines of the snapshot"),
    _query("since", _SINCE, "Only lines written since this time (milliseconds since the epoch)"),
    _query("lastEventId", _OFFSETS, "Resume the stream after `<stdout offset>:<stderr offset>`"),
    _query("Last-Event-ID", _OFFSETS, "Resume the stream (as lastEventId)", "header"),
)

_ROUTES: dict[tuple[str, str], _Route] = {
    ("GET", "/v1/health"): _Route(answer=_obj(status=_STR, proof=_STR)),
    ("GET", "/v1/openapi.json"): _Route(answer={"type": "object"}),
    ("POST", "/v1/organizations"): _Route(
        body=_NAMED, answer=_obj(organizationId=_STR), status=201
    ),
    ("POST", "/v1/organizations/{organizationId}/tokens"): _Route(
        body=_NAMED, answer=_obj(token=_STR, name=_STR), status=201
    ),
    ("GET", "/v1/organizations/{organizationId}/tokens"): _Route(
        answer=_obj(
            items={"type": "array", "items": _obj(name=_STR, admin=_BOOL, createdAt=_INT)},
            nextPage={"type": "null"},
        ),
        checks_paging=True,
    ),
    ("DELETE", "/v1/organizations/{organizationId}/tokens/{name}"): _Route(
        answer=_obj(name=_STR, revoked=_INT)
    ),
    ("POST", "/v1/console/sign-in"): _Route(
        body=_obj(),
        answer=_obj(signInPath=_STR, organizationId=_STR, expiresInSeconds=_INT),
        status=201,
    ),
    ("GET", "/v1/flows"): _Route(answer=Flow, paged=True),
    ("POST", "/v1/flows"): _Route(body=FlowSpec, answer=Flow, status=201),
    ("GET", "/v1/flows/{flowId}"): _Route(answer=Flow),
    ("PUT", "/v1/flows/{flowId}"): _Route(body=FlowSpec, answer=Flow),
    ("DELETE", "/v1/flows/{flowId}"): _Route(answer=DeletedFlow),
    ("POST", "/v1/flows/{flowId}/publish"): _Route(answer=_obj(version=_INT)),
    ("POST", "/v1/flows/{flowId}/promote"): _Route(
        body={**_obj(version=parts.VERSION["anyOf"][0]), "required": ["version"]}, answer=Flow
    ),
    ("POST", "/v1/flows/{flowId}/execute"): _Route(body=ExecuteRequest, answer=ExecutionOutcome),
    ("POST", "/v1/flows/{flowId}/events"): _Route(
        body=ExecuteRequest, media=_SSE, events=parts.RUN_EVENTS
    ),
    ("POST", "/v1/flows/{flowId}/jobs"): _Route(
        body=ExecuteRequest, answer=ExecutionJob, status=202
    ),
    ("GET", "/v1/runs"): _Route(answer=Run, paged=True),
    ("POST", "/v1/runs"): _Route(
        body={
            **_obj(
                flowId=_STR,
                runId=parts.chosen_id("run"),
                version=parts.VERSION,
                message=_STR,
                parameters={"type": "object"},
            ),
            "required": ["flowId"],
        },
        answer=Run,
        status=201,
    ),
    ("GET", "/v1/runs/{runId}"): _Route(answer=Run),
    ("DELETE", "/v1/runs/{runId}"): _Route(answer=DeletedRun),
    ("POST", "/v1/runs/{runId}/cancel"): _Route(answer=Run),
    ("GET", "/v1/runs/{runId}/events"): _Route(media=_SSE, events=parts.RUN_EVENTS),
    ("POST", "/v1/runs/{runId}/tool-results"): _Route(
        body={
            **_obj(toolResults={"type": "array", "items": ToolResult, "minItems": 1}),
            "required": ["toolResults"],
        },
        answer=[ExecutionOutcome, _obj(accepted=_INT)],  # ?wait=true: the next outcome
    ),
    ("GET", "/v1/organizations/{organizationId}/credits"): _Route(answer=_CREDITS),
    ("PUT", "/v1/organizations/{organizationId}/credits"): _Route(
        body={**_obj(credits=_CREDITS["properties"]["credits"]), "required": ["credits"]},
        answer=_CREDITS,
    ),
    ("POST", "/v1/retention/prune"): _Route(
        body={
            **_obj(
                olderThan={
                    "anyOf": [
                        {"type": "number", "minimum": 0, "maximum": MAX_AGE},
                        {"type": "string", "pattern": _AGE_TEXT},
                    ]
                },
                dryRun=_BOOL,
                organizationId={"anyOf": [{**_STR, "minLength": 1}, {"type": "null"}]},
            ),
            "required": ["olderThan"],
            "additionalProperties": False,  # a prune refuses what it does not know
        },
        answer=PruneResult,
    ),
    ("GET", "/v1/organizations/{organizationId}/retention"): _Route(answer=RetentionPolicy),
    ("PUT", "/v1/organizations/{organizationId}/retention"): _Route(
        body={
            **_obj(
                days={
                    "anyOf": [{"type": "number", "minimum": 0, "maximum": 36_500}, {"type": "null"}]
                }
            ),
            "required": ["days"],
        },
        answer=RetentionPolicy,
    ),
    ("GET", "/v1/server"): _Route(answer=ServerStatus),
    ("POST", "/v1/server/shutdown"): _Route(
        body=_obj(force=_BOOL), answer=ServerStatus, status=202
    ),
    ("GET", "/v1/runs/{runId}/trace"): _Route(answer=RunTrace),
    ("GET", "/v1/runs/{runId}/steps/{stepId}/trace"): _Route(answer=StepTrace),
    ("GET", "/v1/runs/{runId}/artifacts"): _Route(answer=_items(TaskOutputFile)),
    ("GET", "/v1/runs/{runId}/artifacts/{path}"): _Route(media=_FILE),
    ("POST", "/v1/tasks"): _Route(body=TaskConfig, answer=Task, status=201),
    ("GET", "/v1/tasks"): _Route(answer=Task, paged=True),
    ("GET", "/v1/tasks/{taskId}"): _Route(answer=Task),
    ("POST", "/v1/tasks/{taskId}/cancel"): _Route(
        body=_obj(gracePeriod={"type": "number", "minimum": 0, "maximum": 300}, force=_BOOL),
        answer=Task,
    ),
    ("GET", "/v1/tasks/{taskId}/logs"): _Route(
        answer=TaskLogs, also_sse=True, params=_LOG_PARAMS, events=parts.LOG_EVENTS
    ),
    ("GET", "/v1/tasks/{taskId}/logs/offsets"): _Route(
        answer={**_obj(stdout=_INT, stderr=_INT), "required": ["stdout", "stderr"]},
        params=(
            {**_query("since", _SINCE, "A time in milliseconds since the epoch"), "required": True},
        ),
    ),
    ("GET", "/v1/tasks/{taskId}/ssh"): _Route(answer=SSHEndpoint),
    ("POST", "/v1/tasks/{taskId}/volumes"): _Route(body=MountRequest, answer=Task),
    ("GET", "/v1/tasks/{taskId}/outputs"): _Route(answer=_items(TaskOutputFile)),
    ("GET", "/v1/tasks/{taskId}/outputs/{path}"): _Route(media=_FILE),
    ("POST", "/v1/volumes"): _Route(body=VolumeRequest, answer=Volume, status=201),
    ("GET", "/v1/volumes"): _Route(answer=Volume, paged=True),
    ("GET", "/v1/volumes/{volumeId}"): _Route(answer=Volume),
    ("DELETE", "/v1/volumes/{volumeId}"): _Route(answer=_DELETED),
    ("GET", "/v1/instances"): _Route(answer=_items(AvailableInstance)),
    ("POST", "/v1/reservations"): _Route(body=ReservationRequest, answer=Reservation, status=201),
    ("GET", "/v1/reservations"): _Route(answer=_items(Reservation), checks_paging=True),
    ("GET", "/v1/reservations/availability"): _Route(answer=_items(AvailabilitySlot)),
    ("GET", "/v1/reservations/{reservationId}"): _Route(answer=Reservation),
    ("DELETE", "/v1/reservations/{reservationId}"): _Route(answer=Reservation),
    ("POST", "/v1/ssh-keys"): _Route(body=SSHKeyRequest, answer=SSHKey, status=201),
    ("GET", "/v1/ssh-keys"): _Route(answer=_items(SSHKey), checks_paging=True),
    ("GET", "/v1/ssh-keys/{keyId}"): _Route(answer=SSHKey),
    ("DELETE", "/v1/ssh-keys/{keyId}"): _Route(answer=_DELETED),
}

_PUBLIC = {("GET", "/v1/health"), ("GET", "/v1/openapi.json")}
"""Routes that answer without a bearer token."""

# Referenced by the run and event models through their nested fields.
_ALWAYS = (ResourceCondition, ResourceMetadata)


def _answer_schema(route: _Route, components: dict[str, Any]) -> dict[str, Any]:
    answer = route.answer
    if route.paged:
        item = json_schema(answer, components)
        return {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": item},
                "nextPage": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["items", "nextPage"],
        }
    if isinstance(answer, tuple):
        item = json_schema(answer[1], components)
        return _obj(items={"type": "array", "items": item})
    if isinstance(answer, list):  # one of several shapes
        return {"anyOf": [_schema_of(a, components) for a in answer]}
    return _schema_of(answer, components) if answer is not None else {}


def _schema_of(value: Any, components: dict[str, Any]) -> dict[str, Any]:
    """A ready schema (a dict) as it is, else the schema of a model or type hint."""
    return value if isinstance(value, dict) else json_schema(value, components)


def _body_schema(body: Any, components: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(body, dict):
        return json_schema(body, components)
    # An inline object may name a model for a property's items (tool results).
    properties = {
        name: {**value, "items": json_schema(value["items"], components)}
        if isinstance(value, dict)
        and isinstance(value.get("items"), type)
        and attrs.has(value["items"])
        else value
        for name, value in body.get("properties", {}).items()
    }
    return {**body, "properties": properties}


def _events(route: _Route, components: dict[str, Any]) -> dict[str, Any]:
    """The ``text/event-stream`` content: each event's type and the schema of its data."""
    events = {name: _schema_of(data, components) for name, data in (route.events or {}).items()}
    numbered = route.media == _SSE  # run events count up; log events carry two offsets
    return {"schema": parts.sse_schema(events, numbered=numbered) if events else _STR}


def _headers(method: str, path: str, handler: Any, route: _Route) -> dict[str, Any]:
    names = ["X-Request-Id"]
    if path.startswith("/v1/flows") and route.answer is Flow:
        names.append("ETag")
    if route.events is not None:
        names.append("X-Heartbeat-Interval")
    if _is_idempotent(handler):
        names.append("Idempotent-Replayed")
    return {name: parts.ANSWER_HEADERS[name] for name in names}


def _success(route: _Route, components: dict[str, Any]) -> dict[str, Any]:
    if route.media == _SSE:
        description = "An event stream: `id:` event id, `event:` type, `data:` JSON"
        return {"description": description, "content": {_SSE: _events(route, components)}}
    if route.media == _FILE:
        binary = {"type": "string", "contentMediaType": _FILE}
        return {"description": "The file's bytes", "content": {_FILE: {"schema": binary}}}
    content = {"application/json": {"schema": _answer_schema(route, components)}}
    if route.also_sse:
        content[_SSE] = _events(route, components)
    return {"description": "Success", "content": content}


async def _any_handler(request: web.Request) -> web.StreamResponse:
    raise NotImplementedError  # never called: only its wrapper's code is looked at


_IDEMPOTENT_CODE = idempotent(_any_handler).__code__
"""Every handler :func:`~vi_flow.server.helpers.idempotent` wraps runs this code."""


def _is_idempotent(handler: Any) -> bool:
    return getattr(handler, "__code__", None) is _IDEMPOTENT_CODE


def _parameters(method: str, path: str, handler: Any, route: _Route) -> list[dict[str, Any]]:
    params = [
        {"name": p, "in": "path", "required": True, "schema": parts.PATH_TEXT}
        for p in _PARAM.findall(path)
    ]
    if route.paged or route.checks_paging:
        params.extend(parts.PAGE_PARAMS)
    params.extend(parts.QUERY.get((method, path), ()))
    params.extend(route.params)
    params.extend(parts.REQUEST_HEADERS.get((method, path), ()))
    if _is_idempotent(handler):
        params.append(parts.IDEMPOTENCY_KEY)
    params.append(parts.REQUEST_ID)
    return params


@functools.cache
def query_names(method: str, path: str) -> frozenset[str]:
    """The query parameters the document gives the route ``method path`` (its router path,
    ``/v1/tasks/{taskId}``): the server refuses any other (a typo filters nothing)."""
    method, path = "GET" if method == "HEAD" else method, _PARAM.sub(r"{\1}", path)
    found = _parameters(method, path, None, _ROUTES.get((method, path), _Route()))
    return frozenset(p["name"] for p in found if p["in"] == "query")


def _responses(
    method: str, path: str, handler: Any, route: _Route, components: dict[str, Any]
) -> dict[str, Any]:
    success = _success(route, components)
    success["headers"] = _headers(method, path, handler, route)
    error = {
        "description": "Error",
        "headers": {"X-Request-Id": parts.ANSWER_HEADERS["X-Request-Id"]},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    return {str(route.status): success, "default": error}


def _needs_body(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    """Whether a body is required: its schema (or the model it names) requires a field."""
    ref = schema.get("$ref", "")
    named = components.get(ref.rsplit("/", 1)[-1], {}) if ref else schema
    return bool(named.get("required"))


def _operation(method: str, path: str, handler: Any, components: dict[str, Any]) -> dict[str, Any]:
    doc = inspect.getdoc(handler) or ""
    segments = [s for s in path.split("/") if s and s != "v1"]
    route = _ROUTES.get((method, path), _Route())
    op: dict[str, Any] = {
        "operationId": parts.operation_id(method, path),
        "summary": doc.splitlines()[0] if doc else f"{method} {path}",
        "tags": [segments[0] if segments else "server"],
        "parameters": _parameters(method, path, handler, route),
        "responses": _responses(method, path, handler, route, components),
    }
    if route.body is not None:
        schema = _body_schema(route.body, components)
        content = {"application/json": {"schema": schema}}
        op["requestBody"] = {"required": _needs_body(schema, components), "content": content}
    if (method, path) in _PUBLIC:
        op["security"] = []
    return op


_CHECKED_SETTINGS: dict[tuple[str, str], dict[str, Any]] = {
    # a task block's env and name are checked when the flow is stored (validation)
    ("task", "env"): parts.ENV,
    ("task", "name"): parts.NAME,
}


def _setting(block: str, name: str) -> dict[str, Any]:
    """The schema of one setting: a range where the server checks one, else any value."""
    if (block, name) in _CHECKED_SETTINGS:
        return _CHECKED_SETTINGS[block, name]
    limits = SETTING_LIMITS.get((block, name))
    if limits is None:
        return {}
    number, low, high = limits
    ranged = {"type": number, "minimum": low, "maximum": high}
    return {"anyOf": [ranged, {"type": "string", "pattern": TEMPLATE_TEXT}]}  # or a template


def _block_types(app: web.Application, components: dict[str, Any]) -> None:
    """``FlowBlock`` as one of the block types the server runs, with the settings each reads.

    A flow spec with an unknown block type or setting is refused (422), so the document
    says which are known: a client (or a fuzzer) can tell a valid spec from the schema.
    """
    from .routes.executions import EXECUTION_ENGINE_KEY  # the engine feature owns the key

    engine = app.get(EXECUTION_ENGINE_KEY)
    if engine is None or "FlowBlock" not in components:
        return
    generic = components["FlowBlock"]
    variants = []
    for name in engine.registry.names():
        settings = engine.registry.settings_of(name)
        variant = copy.deepcopy(generic)
        variant.pop("description", None)
        variant["properties"]["block"] = {"const": name}
        variant["properties"]["id"] = {"anyOf": [parts.ID_NAME, {"type": "null"}]}
        if settings is not None:
            variant["properties"]["settings"] = {
                "type": "object",
                "properties": {key: _setting(name, key) for key in sorted(settings)},
                "additionalProperties": False,
            }
        variants.append(variant)
    components["FlowBlock"] = {"description": generic.get("description", ""), "oneOf": variants}


def build_openapi(app: web.Application, title: str = "vi_flow local server") -> dict[str, Any]:
    """The OpenAPI 3.1 document describing every route of ``app``."""
    components: dict[str, Any] = {"Error": _ERROR_SCHEMA}
    for model in _ALWAYS:
        json_schema(model, components)
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        # The web console's pages (outside /v1) are not part of the API.
        if not path or not path.startswith("/v1/") or route.method in ("HEAD", "OPTIONS", "*"):
            continue
        path = _PARAM.sub(r"{\1}", path)
        paths.setdefault(path, {})[route.method.lower()] = _operation(
            route.method, path, route.handler, components
        )
    parts.add_links(paths)
    parts.tighten(components)
    _block_types(app, components)
    parts.bound_numbers([paths, components])
    components["JsonValue"] = parts.JSON_VALUE
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
