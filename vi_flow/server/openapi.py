"""The OpenAPI 3.1 document, generated from the routes registered on the application.

Every feature module's routes appear without extra work: paths come from
``app.router``, summaries from the first line of each handler's docstring, tags from
the first path segment after ``/v1``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from aiohttp import web

__all__ = ["build_openapi"]

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")

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
}


def _operation(method: str, path: str, handler: Any) -> dict[str, Any]:
    doc = inspect.getdoc(handler) or ""
    segments = [s for s in path.split("/") if s and s != "v1"]
    op: dict[str, Any] = {
        "operationId": f"{method.lower()}_{_NON_WORD.sub('_', path).strip('_')}",
        "summary": doc.splitlines()[0] if doc else f"{method} {path}",
        "tags": [segments[0] if segments else "server"],
        "responses": {
            "200": {"description": "Success", "content": {"application/json": {}}},
            "default": {
                "description": "Error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
    }
    params = _PARAM.findall(path)
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
    return op


def build_openapi(app: web.Application, title: str = "vi_flow local server") -> dict[str, Any]:
    """The OpenAPI 3.1 document describing every route of ``app``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        if not path or route.method in ("HEAD", "OPTIONS", "*"):
            continue
        path = _PARAM.sub(r"{\1}", path)
        paths.setdefault(path, {})[route.method.lower()] = _operation(
            route.method, path, route.handler
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
