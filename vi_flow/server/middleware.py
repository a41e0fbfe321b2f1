"""Request ids, access lines, JSON errors and bearer-token authentication for every route.

- The outermost middleware assigns the request id and logs one ``info`` line per
  request on ``vi_flow.server.access``: id, organization, method, path (never the query
  string, which may carry a secret), status and duration. A client that leaves early
  (timeout, disconnect) is an ``info`` line too, never a traceback.
- Every response carries ``X-Request-Id`` (a client-sent one is echoed when sane,
  otherwise ``req_<hex>``); it is set in ``on_response_prepare`` so that streamed (SSE)
  and error responses get it too.
- :class:`~vi_flow.server.errors.APIProblem` and aiohttp's HTTP exceptions become the
  wire error body; anything else is logged and answered ``500 INTERNAL``.
- The bearer token maps to a :class:`~vi_flow.server.state.Principal`; without an
  ``Authorization`` header, the web console's session cookie does (with its CSRF check,
  :mod:`vi_flow.server.console.sessions`). Paths outside ``/v1/`` (the console's pages)
  authenticate themselves. An
  ``Organization-Id`` header naming another organization is answered 404, never 403,
  so one organization cannot probe for another.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import re
import secrets
import time
import weakref
from typing import Any

import attrs
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..models.limits import MAX_REQUEST_BODY, shown
from .background import spawn
from .bootstrap import DEFAULT_ORG, read_admin_token
from .console.sessions import KEY_PARAM, has_cookie, session_hash, session_principal
from .db import (
    DatabaseFileGone,
    DatabaseReadOnly,
    DatabaseUnavailable,
    UnstorableText,
    is_disk_full,
)
from .errors import APIProblem
from .helpers import PRINCIPAL, REQUEST_ID, Handler, end_of_stream, request_id_of
from .state import REPLICA_KEY, SETTINGS_KEY, STORE_KEY, Principal

__all__ = [
    "PUBLIC_PATHS",
    "SHUTDOWN_PATH",
    "Gone",
    "StillAuthorized",
    "access_middleware",
    "auth_middleware",
    "credentials_gone",
    "error_middleware",
    "setup_middleware",
]

log = logging.getLogger("vi_flow.server")
access_log = logging.getLogger("vi_flow.server.access")

PUBLIC_PATHS = frozenset({"/v1/openapi.json", "/v1/health"})
"""Paths answered without a bearer token."""
SHUTDOWN_PATH = "/v1/server/shutdown"
"""The stop route: taken while a stop is under way, and with the home's admin token
when the database cannot be read."""

_TOKENS_KEY = web.AppKey("vi_flow.token_cache", dict[str, tuple[Principal, float]])
_STREAMS_KEY: web.AppKey[weakref.WeakSet[StillAuthorized]] = web.AppKey("vi_flow.open_streams")
"""The streams open now that look at their credentials (:class:`StillAuthorized`)."""
_CHECKS_KEY = web.AppKey("vi_flow.stream_checks", set[asyncio.Task[None]])
TOKEN_CACHE_SECONDS = 1.0
"""How long a server process trusts a looked-up token: a token revoked through another
replica is refused within this time (at once by the process that revoked it)."""
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_GONE = "client disconnected after"

_HTTP_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    412: "ETAG_MISMATCH",
    413: "INVALID_REQUEST",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
}


def error_response(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """The wire error body ``{"error": {"code", "message", "requestId"}}``."""
    body = {"error": {"code": code, "message": message, "requestId": request_id_of(request)}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _from_http(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404 and _browsing(request):
        from .console.routes import not_found_page  # the console imports this module

        return not_found_page(request)
    code = _HTTP_CODES.get(exc.status, "INTERNAL" if exc.status >= 500 else "INVALID_REQUEST")
    if exc.status == 404:
        message = f"no route for {request.method} {request.path}"
    elif exc.status == 405:
        message = f"method {request.method} not allowed on {request.path}"
    else:
        message = exc.text or exc.reason
    response = error_response(request, exc.status, code, message)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def _browsing(request: web.Request) -> bool:
    """Whether a browser asks for a page outside the API (``/runs/``, ``/nothing``): it
    is answered the console's page, which says there is no such page, not JSON."""
    return (
        request.method == "GET"
        and not request.path.startswith("/v1/")
        and "text/html" in request.headers.get("Accept", "")
    )


# Request ids are unique, not secret: a random prefix per process, then a counter.
_ID_PREFIX, _ID_SEQ = secrets.token_hex(6), itertools.count(1)


def new_request_id() -> str:
    """A request id of this process's: unique, not secret."""
    return f"req_{_ID_PREFIX}{next(_ID_SEQ):012x}"


def _assign_request_id(request: web.Request) -> None:
    sent = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = sent if _SANE_ID.match(sent) else new_request_id()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _log_request(request: web.Request, started: float, outcome: str) -> None:
    principal: Principal | None = request.get(PRINCIPAL)
    access_log.info(
        "%s %s %s %s %s %.1f ms",
        request_id_of(request),
        principal.organization_id if principal is not None else "-",
        request.method,
        request.rel_url.raw_path,  # still percent-encoded: a path cannot break the line
        outcome,
        (time.perf_counter() - started) * 1000,
    )


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Assign the request id and log one line when the handler is done (or the client left)."""
    _assign_request_id(request)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a redirect; errors became responses further in
        _log_request(request, started, str(exc.status))
        raise
    except asyncio.CancelledError:
        # Cancelled with the client still there: the server is stopping.
        _log_request(request, started, _GONE if _client_gone(request) else "cancelled after")
        raise
    except ConnectionError:
        _log_request(request, started, _GONE)
        # Nobody is left to read an answer; this stand-in fails quietly to send, where a
        # raised error would make aiohttp log "Error handling request" with a traceback.
        return web.Response(status=499)
    _log_request(request, started, _GONE if _client_gone(request) else str(response.status))
    return response


def _internal_error(request: web.Request) -> web.Response:
    log.exception(
        "unhandled error in %s %s (%s)", request.method, request.path, request_id_of(request)
    )
    return error_response(
        request,
        500,
        "INTERNAL",
        f"internal server error; quote request id {request_id_of(request)}",
    )


def _check_declared_size(request: web.Request) -> None:
    """Refuse at once a body that says it is over the limit: never wait for its bytes."""
    declared = request.content_length
    if declared is not None and declared > MAX_REQUEST_BODY:
        raise APIProblem(
            413,
            "INVALID_REQUEST",
            f"the request body of {declared} bytes is over the limit of {MAX_REQUEST_BODY}",
        )


_ENCODINGS = ("", "identity", "gzip", "deflate")  # what aiohttp decodes without extras


def _encoding(request: web.Request) -> str:
    return request.headers.get("Content-Encoding", "").strip().lower()


def _check_encoding(request: web.Request) -> None:
    """Refuse a body in a ``Content-Encoding`` the server cannot decode (it would be read
    as it is and fail later, or worse, be taken for JSON)."""
    encoding = _encoding(request)
    if encoding not in _ENCODINGS and request.body_exists:
        raise APIProblem(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Encoding {shown(encoding)} is not supported; send the body as it is,"
            " or gzip or deflate it",
        )


def _unreadable(request: web.Request) -> str:
    encoding = _encoding(request)
    how = f" as Content-Encoding {shown(encoding)}" if encoding else ""
    return f"the request body could not be decoded{how}"


_REPEATABLE = frozenset({"status"})  # the query parameters that are lists (GET /v1/tasks)


def _check_query(request: web.Request) -> None:
    """A NUL character (``%00``) is in no id, file path or parameter value: refuse it
    before any database sees it (PostgreSQL cannot even compare text holding one). A
    parameter that is not a list is given once: which of two values would count is not
    the caller's guess to make (nor a proxy's that checked the other one)."""
    if "\x00" in request.path:
        raise APIProblem(400, "INVALID_REQUEST", "path: must not contain a NUL character (%00)")
    if not request.path.startswith("/v1/"):  # the console's pages: its sign-in link's code
        return  # is hashed before any database sees it, and a bad one has its own page
    seen: set[str] = set()
    for name, value in request.query.items():
        if "\x00" in name or "\x00" in value:
            field = shown(name) if "\x00" in name else name
            raise APIProblem.validation(field, "must not contain a NUL character")
        if name in seen and name not in _REPEATABLE:
            raise APIProblem.validation(_field(name), "given more than once; give it once")
        seen.add(name)
    if seen:
        _check_query_names(request, seen)


def _check_query_names(request: web.Request, given: set[str]) -> None:
    """Every query parameter given is one the API document lists for the route: a
    misspelt filter (``?stauts=running``) would otherwise answer everything."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else ""
    if not path.startswith("/v1/"):  # unrouted (404/405), or the console's pages
        return
    from .openapi import query_names  # loaded on the first request with a query

    known = query_names(request.method, path)
    if request.method in ("GET", "HEAD"):  # a console stream's or download's session key
        given = given - {KEY_PARAM}
    unknown = sorted(given - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise APIProblem.validation(
            _field(unknown[0]),
            f"not a query parameter of {request.method} {path} (it takes: {takes})",
        )


def _field(name: str) -> str:
    """A query parameter's name as an error message starts with it (quoted unless plain)."""
    return name if name.isidentifier() else shown(name)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the wire error body."""
    if REQUEST_ID not in request:  # installed without the access middleware
        _assign_request_id(request)
    try:
        _check_declared_size(request)
        _check_encoding(request)
        _check_query(request)
        return await handler(request)
    except (RequestPayloadError, HttpProcessingError):  # a body that does not decode
        response = error_response(request, 400, "INVALID_REQUEST", _unreadable(request))
        response.force_close()  # the rest of it cannot be read: no next request follows
        return response
    except APIProblem as exc:
        response = error_response(request, exc.status, exc.code, exc.message)
        if not exc.transient:
            response.headers["X-Should-Retry"] = "false"
        if exc.status in (408, 413):  # an unread body must not be read as the next request
            response.force_close()
        if exc.status == 408:  # a body that stopped coming: answer, then close at once
            await response.prepare(request)  # (aiohttp would wait for its bytes 10 s more)
            await response.write_eof()
            request.protocol.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http(request, exc)
    except asyncio.CancelledError:
        raise
    except UnstorableText as exc:  # QA AN: an id holding a NUL was a 500 on PostgreSQL only
        response = error_response(request, 422, "VALIDATION_ERROR", f"body: {exc}")
        response.headers["X-Should-Retry"] = "false"
        return response
    except DatabaseUnavailable as exc:  # a PostgreSQL restart: worth a retry in a moment
        why = (
            "takes no writes now (it is read-only)"
            if isinstance(exc, DatabaseReadOnly)
            else "cannot be reached now"
        )
        log.warning("%s %s: the database %s", request.method, request.path, why)
        response = error_response(
            request,
            503,
            "DATABASE_UNAVAILABLE",
            f"the server's database {why}; try again in a moment",
        )
        response.headers["Retry-After"] = "1"
        return response
    except DatabaseFileGone as exc:
        log.error("%s %s: %s; restart the server", request.method, request.path, exc)
        response = error_response(
            request,
            503,
            "DATABASE_GONE",
            "the server's database file was removed or replaced while it ran: it reads and "
            "saves nothing more until it is restarted (by whoever runs it)",
        )
        response.headers["X-Should-Retry"] = "false"
        return response
    except ConnectionError:
        if _client_gone(request):
            raise  # the access middleware notes it; there is no one to answer
        return _internal_error(request)  # e.g. an outgoing connection of the handler
    except Exception as exc:
        if is_disk_full(exc):
            return _disk_full_answer(request)
        return _internal_error(request)


def _disk_full_answer(request: web.Request) -> web.Response:
    """``507 INSUFFICIENT_STORAGE``, not retried: a full disk does not clear in seconds
    (and the log that a 500's request id would lead to cannot be written either)."""
    log.error("%s %s: the server's disk is full", request.method, request.path)
    response = error_response(
        request,
        507,
        "INSUFFICIENT_STORAGE",
        "the server's disk is full: what this request would have written could not be; "
        "free space on the server (its home, or its database's disk), then retry",
    )
    response.headers["X-Should-Retry"] = "false"
    return response


async def _principal(request: web.Request) -> Principal:
    given = request.headers.getall("Authorization", [])
    if len(given) > 1:  # a proxy picking the other one would act as someone else
        raise APIProblem(
            400, "INVALID_REQUEST", "the request has more than one Authorization header"
        )
    header = given[0] if given else ""
    if not header and has_cookie(request):
        return await session_principal(request)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIProblem(401, "UNAUTHENTICATED", "missing bearer token in the Authorization header")
    token = token.strip()
    if not token.isascii():  # tokens are ASCII; raw bytes arrive as surrogates
        raise APIProblem(401, "UNAUTHENTICATED", "the API key is not valid")
    cache = request.app[_TOKENS_KEY]
    now = time.monotonic()
    cached = cache.get(token)
    if cached is not None and cached[1] > now:
        return cached[0]
    try:
        found = await request.app[STORE_KEY].lookup_token(token)
    except (DatabaseFileGone, DatabaseUnavailable):
        if not await _stops_with_admin_token(request, token):
            raise
        return Principal(DEFAULT_ORG, "admin", admin=True)
    if found is None:
        cache.pop(token, None)
        raise APIProblem(401, "UNAUTHENTICATED", "the API key is not valid")
    principal = Principal(*found)
    cache[token] = (principal, now + TOKEN_CACHE_SECONDS)
    return principal


async def _stops_with_admin_token(request: web.Request, token: str) -> bool:
    """Whether ``request`` stops a server whose database is gone or away, with the admin
    token of its home: what its home's owner may ask for without the database (all a
    server whose file is gone can still do)."""
    if request.method != "POST" or request.path != SHUTDOWN_PATH:
        return False
    admin = await asyncio.to_thread(read_admin_token, request.app[SETTINGS_KEY].home)
    return admin is not None and hmac.compare_digest(admin.encode(), token.encode())


class StillAuthorized:
    """Whether a long stream's credentials still hold: a revoked API key or an ended
    console session stops the stream before its next write, a second at most after.

    :meth:`holds` looks again at most once a :data:`TOKEN_CACHE_SECONDS` (a bearer token
    through the same cache as requests, so many streams of one key cost one lookup).
    When keys are revoked or a session ends (:func:`credentials_gone`), the open streams
    of those keys or that session look at once (:meth:`recheck`): :meth:`holds` answers
    ``False`` from then on, and a stream given its ``response`` (one that calls
    :meth:`holds` before every write, and may wait long for its next one) is ended there
    and then, its connection closed.

    Args:
        request: The stream's request.
        response: Its prepared response, to end at once when its credentials go.
    """

    __slots__ = ("__weakref__", "_cut", "_next", "_request", "_response", "_session")

    def __init__(self, request: web.Request, response: web.StreamResponse | None = None) -> None:
        self._request, self._response = request, response
        self._next = time.monotonic() + TOKEN_CACHE_SECONDS
        self._cut = False
        by_cookie = not request.headers.get("Authorization") and has_cookie(request)
        self._session = session_hash(request) if by_cookie else None
        request.app[_STREAMS_KEY].add(self)

    @property
    def cut(self) -> bool:
        """Whether the stream's key or session was found gone: write nothing more."""
        return self._cut

    def of(self, gone: Gone) -> bool:
        """Whether this stream's credentials are among ``gone``."""
        if gone.session is not None:
            return self._session == gone.session
        principal = self._request.get(PRINCIPAL)
        return (
            principal is not None
            and principal.organization_id == gone.org_id
            and principal.token_name == gone.token_name
        )

    async def holds(self) -> bool:
        """``False`` once the request's key or session is gone (a database error is not
        taken for that: the stream goes on, and the next look decides)."""
        now = time.monotonic()
        if self._cut:
            return False
        if now < self._next or PRINCIPAL not in self._request:
            return True
        self._next = now + TOKEN_CACHE_SECONDS
        return await self._look() and not self._cut  # recheck may have cut it meanwhile

    async def _look(self) -> bool:
        try:
            await _principal(self._request)
        except APIProblem:
            self._cut = True
            return False
        except Exception:
            log.warning("could not check a stream's credentials", exc_info=True)
        return True

    def stop(self) -> None:
        """The server stops: the stream sends nothing more, and its handler ends it (its
        client resumes from the next server)."""
        self._cut = True

    async def recheck(self) -> None:
        """Look now; a stream whose key or session is gone is cut (and, given its
        response, ended now: the end of its body, then its connection closed)."""
        if self._cut or PRINCIPAL not in self._request or await self._look():
            return
        if self._response is not None:  # a slow client does not hold up the others
            spawn(self._request.app[_CHECKS_KEY], self._end(self._response))

    async def _end(self, response: web.StreamResponse) -> None:
        transport = self._request.transport
        if transport is None or transport.is_closing():
            return
        try:
            await asyncio.wait_for(response.write_eof(), _END_WITHIN)
        except Exception:  # a client gone, or not reading: no flush to wait for
            transport.abort()
        else:
            transport.close()  # after what was written: no next request waits on it


_END_WITHIN = 2.0
"""Seconds a cut stream's client has to take the end of its body before its connection
is dropped all the same."""

CREDENTIALS_GONE = "cg"
"""The replicas' message that keys were revoked or a console session ended:
``[kind, sender, org id, token name or None, session hash or None]``."""


@attrs.frozen
class Gone:
    """Credentials that went: the API keys of ``token_name`` in ``org_id`` (revoked), or
    the console session whose id hashes to ``session`` (signed out)."""

    org_id: str
    token_name: str | None = None
    session: str | None = None


def forget_tokens(app: web.Application) -> None:
    """Drop every cached token: the next request of each is looked up again."""
    app[_TOKENS_KEY].clear()


async def credentials_gone(app: web.Application, gone: Gone) -> None:
    """``gone`` went (committed): the open streams it authorized on this server are cut
    now (before the caller answers: nothing more is sent after the answer), and those on
    the other replicas as they hear of it."""
    message = (gone.org_id, gone.token_name, gone.session)
    await app[STORE_KEY].run(lambda c: app[REPLICA_KEY].send(c, CREDENTIALS_GONE, *message))
    await _recheck(app, gone)


def _heard_credentials_gone(app: web.Application, message: list[Any]) -> None:
    gone = Gone(str(message[2]), message[3], message[4])
    spawn(app[_CHECKS_KEY], _recheck(app, gone))


async def _recheck(app: web.Application, gone: Gone) -> None:
    """Forget cached tokens, and have the open streams of ``gone`` look at once."""
    forget_tokens(app)
    open_now: weakref.WeakSet[StillAuthorized] = app[_STREAMS_KEY]
    await asyncio.gather(*(stream.recheck() for stream in list(open_now) if stream.of(gone)))


async def _stop_streams(app: web.Application) -> None:
    """The server stops: end every open stream now (an open log follow held a SIGTERM
    up for 10 s: aiohttp waits for its handlers, and a follow never ends by itself)."""
    open_now: weakref.WeakSet[StillAuthorized] = app[_STREAMS_KEY]
    for stream in list(open_now):
        stream.stop()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the bearer token; enforce the ``Organization-Id`` header's isolation. Then
    read the request's body, whose bytes must keep coming (:func:`_read_body_in_time`)."""
    if request.path in PUBLIC_PATHS or not request.path.startswith("/v1/"):
        await _read_body_in_time(request, whole=True)  # from anyone: all of it in time
        return await handler(request)
    principal = await _principal(request)
    named = request.headers.getall("Organization-Id", [])
    if len(named) > 1:  # QA: the first was taken; a proxy taking the last acts elsewhere
        raise APIProblem(
            400, "INVALID_REQUEST", "the request has more than one Organization-Id header"
        )
    wanted = named[0] if named else None
    if wanted and wanted != principal.organization_id:
        raise APIProblem.not_found("NOT_FOUND", "organization", wanted)
    request[PRINCIPAL] = principal
    await _read_body_in_time(request)
    try:
        return await handler(request)
    finally:
        end_of_stream(request)  # a streamed answer's slot of the streams quota


async def _read_body_in_time(request: web.Request, *, whole: bool = False) -> None:
    """Read the request's body now (every handler reads it whole, from this copy), and
    refuse it when its bytes stop coming for the head deadline (408, the connection
    closed): a client that sent a head and a byte of body, then nothing, held its
    connection for good, and a few hundred such ones spent the open-file limit (every
    other user then got 503). A slow body that keeps coming is read to its end, from a
    caller whose key was checked; with ``whole`` (a request no key vouches for: the
    console's sign-in, health) all of it must come within the deadline, or one byte
    every few seconds held the connection as well."""
    if not request.body_exists:
        return
    content, length = request.content, request.content_length
    if length is not None and content.total_bytes >= length and not _encoding(request):
        return  # all of it came with the head (most bodies do): nothing left to stall
    stall = request.app[SETTINGS_KEY].head_deadline
    reading = asyncio.ensure_future(request.read())
    try:
        while True:
            before = content.total_bytes
            done, _ = await asyncio.wait({reading}, timeout=stall)
            if done:
                reading.result()  # a body that does not decode raises here
                return
            if content.total_bytes == before or whole:
                why = "did not all come within" if whole else "stopped coming: no byte of it for"
                raise APIProblem(
                    408, "REQUEST_TIMEOUT", f"the request body {why} {stall:g} s", transient=True
                )
    finally:
        reading.cancel()


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    if REQUEST_ID not in request:
        _assign_request_id(request)
    response.headers["X-Request-Id"] = request_id_of(request)


def setup_middleware(app: web.Application) -> None:
    """Install the access, error and auth middlewares and the ``X-Request-Id`` stamp."""
    app[_TOKENS_KEY] = {}
    app[_STREAMS_KEY] = weakref.WeakSet()
    app[_CHECKS_KEY] = set()
    app[REPLICA_KEY].handle(CREDENTIALS_GONE, lambda m: _heard_credentials_gone(app, m))
    app.on_shutdown.append(_stop_streams)
    # Outermost first: the access line sees the final status and the organization.
    app.middlewares.extend([access_middleware, error_middleware, auth_middleware])
    app.on_response_prepare.append(_stamp_request_id)
