"""The one request loop: session, timeouts, retries, idempotency keys and error mapping.

Every call the SDK makes goes through :class:`HTTPCore`. It owns nothing but the request
policy; the aiohttp session and the endpoint live in a :class:`Connection` that clients made
by ``with_options`` share, so they share the connection pool.

Retries: connection errors, timeouts, 408, 409, 429 and 5xx, with exponential backoff and
jitter (0.5 s doubling, 8 s cap) or the server's ``Retry-After`` (capped). A total timeout
(``timeout=0.5`` on a call sets one) bounds the whole call, retries and waits included. A POST,
PUT or DELETE carries an ``Idempotency-Key``, made once per logical call and reused on
every attempt (a POST is retried only with one); the server replays its first answer. A
server may veto a retry with ``X-Should-Retry: false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import io
import logging
import os
import random
import socket
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import quote

import orjson

from . import __version__, local
from ._config import NOT_GIVEN, NotGiven, Settings, Timeout, check_secret_header, shown_url
from ._errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    ClientStateError,
    error_for_status,
)
from .models._base import dumps_finite, from_wire
from .models.limits import is_unicode

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Connection", "Endpoint", "HTTPCore", "Sleep", "path"]

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

log = logging.getLogger("vi_flow")

#: The organization of the local server's admin token.
DEFAULT_ORGANIZATION = "org_default"
RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Methods whose every call carries an Idempotency-Key (made once, kept across retries):
#: a retry of a POST whose answer was lost must not make a second resource, nor one of a
#: PUT or DELETE answer 412 or 404 about the change its first attempt made.
_CHANGES = frozenset({"POST", "PUT", "DELETE"})
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 8.0
MAX_RETRY_AFTER = 60.0
USER_AGENT = f"vi-flow-python/{__version__}"
#: Sessions a forked child inherited from its parent: kept, never closed nor finalized
#: there (see ``_let_go``).
_INHERITED: list[object] = []


def _connection_errors() -> tuple[type[BaseException], ...]:
    import aiohttp  # imported on first use: the stdlib transport never needs it

    return (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)


#: The longest path segment (an id, URL-quoted) sent: far above any id a server makes,
#: far below the 8 KiB request line a server reads (aiohttp's limit).
MAX_SEGMENT = 2048


def path(template: str, *segments: str) -> str:
    """Fill ``{}`` placeholders with URL-quoted, non-empty path segments.

    Raises:
        ValueError: A segment is not a non-empty string, is ``.`` or ``..`` (which a URL
            reads as "here" and "the parent": ``/tasks/../volumes`` is ``/volumes``), or is
            too long to be an id.
    """
    quoted = []
    for segment in segments:
        if not isinstance(segment, str) or not segment:
            raise ValueError(f"an id must be a non-empty string, got {segment!r}")
        if segment in (".", ".."):  # a URL's dot segment: the request would go elsewhere
            raise ValueError(f"no id is {segment!r}")
        if not is_unicode(segment):
            raise ValueError(
                f"no id holds a lone surrogate (text that is not valid Unicode): {segment[:40]!r}"
            )
        quoted.append(quote(segment, safe=""))
        if len(quoted[-1]) > MAX_SEGMENT:
            raise ValueError(
                f"no id is {len(segment)} characters long (at most {MAX_SEGMENT} URL-quoted):"
                f" {segment[:40]!r}..."
            )
    return template.format(*quoted)


class Endpoint:
    """Where requests go and who they are from."""

    __slots__ = ("api_key", "base_url", "organization_id")

    def __init__(self, base_url: str, api_key: str | None, organization_id: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.organization_id = organization_id

    def __repr__(self) -> str:
        url = shown_url(self.base_url)
        return f"Endpoint(base_url={url!r}, organization_id={self.organization_id!r})"


class Connection:
    """The shared part of a client: the endpoint, the aiohttp session and the local server.

    The session is created on first use, on the loop that uses it. With the ``local`` base
    URL the endpoint is the home's server (:mod:`vi_flow.local`), found again when it
    stops answering: a restarted server gets a new port.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.closed = False
        self._endpoint: Endpoint | None = None
        self._attached: local.Attached | None = None
        # A session per event loop using the client (and the pid that made it)
        self._sessions: dict[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, int]] = {}
        # One lock per event loop (an asyncio.Lock belongs to the loop that first waits
        # on it: shared by two loops, one raised and the other waited for ever); the
        # home's server is attached under a thread lock, once for every loop.
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._thread_lock = threading.Lock()
        # the waits between attempts under way, and their loops: aclose ends them
        self._naps: dict[Any, asyncio.AbstractEventLoop] = {}  # anyio.CancelScope
        # the bodies of the streams being read, and their loops: aclose ends them too
        self._bodies: dict[aiohttp.StreamReader, asyncio.AbstractEventLoop] = {}

    async def endpoint(self) -> Endpoint:
        """Return the endpoint, finding (or starting) the home's server on first use, and
        again when the server found before no longer holds the home (see
        :meth:`local.Attached.still_serving`: nothing is sent to its old port)."""
        endpoint = self._endpoint
        if endpoint is None or not self._still_attached():
            async with self._loop_lock():
                if self._endpoint is endpoint:  # no other call found it again meanwhile
                    if endpoint is not None:
                        self._check_not_stopped()
                    self._endpoint = await self._resolve(again=endpoint is not None)
        assert self._endpoint is not None
        return self._endpoint

    def _still_attached(self) -> bool:
        attached = self._attached
        if attached is None or attached.release is not None:  # a URL, or our own server
            return True
        return attached.still_serving(self.settings.home)

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._thread_lock:
            lock = self._locks.get(loop)
            if lock is None:
                lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def reconnect(self, stale: Endpoint) -> Endpoint:
        """After ``stale`` stopped answering: the home's server as it is now (local only)."""
        if not self.settings.is_local or (self._attached and self._attached.release):
            return stale  # a remote URL stays as given; our own in-process server is ours
        async with self._loop_lock():
            if self._endpoint is stale:
                self._check_not_stopped()
                self._endpoint = await self._resolve(again=True)
            return self._endpoint or stale

    def _check_not_stopped(self) -> None:
        """Raise when the server this client used was stopped on request: starting
        another would undo ``vi-flow server stop`` (a new client starts one)."""
        attached, home = self._attached, self.settings.home
        if attached is not None and local.stopped_on_request(home, attached.info.pid):
            raise ClientStateError(
                f"the home's server (pid {attached.info.pid}) was stopped on request"
                " (vi-flow server stop); this client does not start another: a new client"
                " or command does"
            )

    async def _resolve(self, again: bool) -> Endpoint:
        """The endpoint; with the ``local`` URL, the home's server attached (``again``:
        afresh, the one attached before stopped answering)."""
        s = self.settings
        if not s.is_local:
            return Endpoint(s.base_url, s.api_key, s.organization_id)
        import anyio.to_thread

        attached = await anyio.to_thread.run_sync(self._attach, again)
        if self.closed:  # closed while the server was starting
            if attached.release is not None:
                await anyio.to_thread.run_sync(attached.release)
            raise ClientStateError("the client was closed")
        return Endpoint(
            attached.info.url,
            s.api_key or local.admin_token(s.home),
            # the admin token's organization; a key the user gave names its own
            s.organization_id or (None if s.api_key else DEFAULT_ORGANIZATION),
        )

    async def serves_in_process(self) -> bool:
        """Whether this client alone holds the home's server, inside this process
        (``local_server = "in-process"``, the home found free): the server, and its tasks,
        end when the client closes."""
        if not self.settings.is_local or self.settings.local_server != "in-process":
            return False
        await self.endpoint()
        held_alone = self._attached.held_alone if self._attached is not None else None
        return held_alone is not None and held_alone()

    def _attach(self, again: bool) -> local.Attached:
        """Attach the home's server once, whichever loop asks first (blocking)."""
        with self._thread_lock:
            if self._attached is None or again:
                self._attached = local.attach(self.settings)
            return self._attached

    def ensure_open(self) -> None:
        """Raise ``ClientStateError`` once the client is closed."""
        if self.closed:
            raise ClientStateError("this client is closed; create a new one")

    async def nap(self, sleep: Sleep, delay: float) -> None:
        """Wait ``delay`` s between attempts (with ``sleep``); closing the client ends the
        wait at once, with ``ClientStateError`` (a server's ``Retry-After`` may ask a minute).
        """
        import anyio  # here: imported at the top, ruff would hold this module to ASYNC109

        self.ensure_open()
        with anyio.CancelScope() as scope:
            self._naps[scope] = asyncio.get_running_loop()
            try:
                await sleep(delay)
            finally:
                del self._naps[scope]
        self.ensure_open()

    @contextlib.contextmanager
    def reading(self, body: aiohttp.StreamReader) -> Iterator[None]:
        """Mark a stream's ``body`` as being read: :meth:`aclose` ends a read of it with
        ``ClientStateError`` (closing the session does not: aiohttp lets go of the body of
        a connection it closes, and its reader waited for the stream's silence bound)."""
        self._bodies[body] = asyncio.get_running_loop()
        try:
            yield
        finally:
            self._bodies.pop(body, None)

    def session(self) -> aiohttp.ClientSession:
        """Return the session for the running loop, creating it on first use (each loop
        that uses the client has its own; those of loops since closed are let go)."""
        self.ensure_open()
        import aiohttp

        loop = asyncio.get_running_loop()
        with self._thread_lock:
            held = self._sessions.get(loop)
            if held is not None and held[1] == os.getpid() and not held[0].closed:
                return held[0]
            for other, dead in self._let_go(lambda other: other is loop or other.is_closed()):
                if other.is_closed():
                    _discard(dead)
            session = aiohttp.ClientSession(
                # No pool limit: a stream holds its connection for the run's life, and
                # with 100 open (aiohttp's default bound) every other call of the client
                # waited, the tool results those streams were waiting for included.
                connector=aiohttp.TCPConnector(
                    limit=0, limit_per_host=0, ssl=_tls(self.settings.ca_file)
                ),
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                headers={"User-Agent": USER_AGENT},
                auto_decompress=True,
            )
            self._sessions[loop] = (session, os.getpid())
        return session

    def _let_go(
        self, which: Callable[[asyncio.AbstractEventLoop], bool]
    ) -> list[tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession]]:
        """Drop the sessions of the loops ``which`` picks (under the thread lock); those
        made in this process, to close; one made before ``os.fork()`` is kept for good.

        Its sockets are the parent's, registered with the parent's epoll instance,
        which a forked child shares: finalizing the session here would unregister them
        there too, and the parent's next call would wait for its whole read timeout.
        """
        ours = []
        for loop in [loop for loop in self._sessions if which(loop)]:
            session, pid = self._sessions.pop(loop)
            if pid != os.getpid():
                _INHERITED.append(session)
            else:
                ours.append((loop, session))
        return ours

    async def aclose(self) -> None:
        """Close the session and let an in-process server go; idempotent."""
        if self.closed:
            return
        self.closed = True
        here = asyncio.get_running_loop()
        for scope, loop in list(self._naps.items()):
            if loop is here:
                scope.cancel()
            else:
                with contextlib.suppress(RuntimeError):  # that loop closed meanwhile
                    loop.call_soon_threadsafe(scope.cancel)
        for body, loop in list(self._bodies.items()):
            if loop is here:
                _closed_under(body)
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_closed_under, body)
        with self._thread_lock:
            ours = self._let_go(lambda _: True)
        elsewhere = []
        for loop, session in ours:
            if loop is here:
                await session.close()
            elif loop.is_running():  # another thread's loop: it closes its own
                with contextlib.suppress(RuntimeError):
                    elsewhere.append(asyncio.run_coroutine_threadsafe(session.close(), loop))
            elif loop.is_closed():
                _discard(session)
        if elsewhere:
            await asyncio.wait([asyncio.wrap_future(done) for done in elsewhere], timeout=5)
        attached, self._attached = self._attached, None
        if attached is not None and attached.release is not None:
            import anyio.to_thread

            await anyio.to_thread.run_sync(attached.release)


def _payload(body: bytes | None) -> bytes | io.BytesIO | None:
    """A request body as aiohttp sends it: over 1 MiB as a file (aiohttp writes it in
    pieces; raw bytes that large warn ``ResourceWarning``), made anew for each attempt."""
    return io.BytesIO(body) if body is not None and len(body) > 1 << 20 else body


def _closed_under(body: aiohttp.StreamReader) -> None:
    """End a read of a stream's ``body``: its client was closed."""
    body.set_exception(ClientStateError("this client was closed while a stream was read"))


def _discard(session: aiohttp.ClientSession) -> None:
    """Let go of a session whose loop has closed (an ``asyncio.run()`` before): nothing
    can await its close there, so it and its connector are marked closed, and neither
    warns "Unclosed client session" when it is collected; its sockets are closed now."""
    connector = session.connector
    session.detach()
    if connector is not None:
        sockets = _transports_of(connector)
        connector._close()  # close() would schedule its work on the closed loop
        for transport in sockets:
            _close_on_closed_loop(transport)


def _transports_of(connector: aiohttp.BaseConnector) -> list[asyncio.BaseTransport]:
    """The transports of ``connector``'s connections, idle and in use (aiohttp drops
    them unclosed when its loop has closed: they would warn ``ResourceWarning`` when
    collected, and hold their sockets until then)."""
    idle = getattr(connector, "_conns", {})
    protocols = [proto for held in idle.values() for proto, _ in held]
    protocols += list(getattr(connector, "_acquired", ()))
    return [proto.transport for proto in protocols if proto.transport is not None]


def _close_on_closed_loop(transport: asyncio.BaseTransport) -> None:
    """Close the socket under ``transport``, whose loop has closed (``close()`` would
    schedule the rest of its work on that loop); a TLS transport's socket is its
    wrapped transport's. Marked closed, neither warns when it is collected."""
    wrapped = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    for layer in (transport, wrapped):
        sock = getattr(layer, "_sock", None)
        if isinstance(sock, socket.socket):
            sock.close()
            layer._sock = None  # type: ignore[union-attr]
    if wrapped is not None and hasattr(transport, "_closed"):
        transport._closed = True


def _tls(ca_file: Path | None) -> ssl.SSLContext | bool:
    """Verify servers against the ``ca_file`` setting's CAs, or the system's (``True``)."""
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))


def _within(budget: Timeout, deadline: float | None) -> Timeout:
    """``budget`` for one attempt, its total cut to what is left of the call's deadline."""
    if deadline is None:
        return budget
    left = max(deadline - time.monotonic(), 0.001)
    return Timeout(
        connect=None if budget.connect is None else min(budget.connect, left),
        read=None if budget.read is None else min(budget.read, left),
        total=left,
    )


def _past(deadline: float | None, delay: float) -> bool:
    """Whether waiting ``delay`` before another attempt would run past the deadline."""
    return deadline is not None and time.monotonic() + delay >= deadline


def _client_timeout(timeout: Timeout) -> aiohttp.ClientTimeout:
    import aiohttp

    return aiohttp.ClientTimeout(
        total=timeout.total, connect=timeout.connect, sock_read=timeout.read
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (ValueError, TypeError, IndexError, OverflowError):  # not a date: no wait asked
            return None
        seconds = parsed.timestamp() - time.time()
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


def _error_from_body(status: int, body: bytes, headers: Mapping[str, str]) -> APIStatusError:
    request_id = headers.get("X-Request-Id")
    code: str | None = None
    decoded: Any = body.decode("utf-8", "replace")
    message = decoded[:500] or f"HTTP {status}"
    try:
        decoded = orjson.loads(body)
        error = decoded.get("error") if isinstance(decoded, dict) else None
        if isinstance(error, dict):
            code = error.get("code")
            message = str(error.get("message") or message)
            request_id = error.get("requestId") or request_id
    except orjson.JSONDecodeError:
        web_page = "html" in headers.get("Content-Type", "").lower()
        if web_page and status >= 500:
            # a proxy's page for a server it cannot reach now (QA: a 502 behind nginx was
            # reported as a wrong base_url, and the CLI exited 2)
            message = (
                f"HTTP {status} with a web page: a proxy or gateway in front of the server"
                " answered for it (the server is restarting, down or overloaded); try again"
                " in a moment"
            )
        elif web_page:  # a web page, not the API
            code = "NOT_THE_API"
            message = (
                f"HTTP {status} with a web page, not an answer of the vi-flow API: base_url"
                " must be a vi-flow server's API, such as http://127.0.0.1:8000/v1 (its /v1"
                " included), and this address serves something else"
            )
    return error_for_status(
        status,
        code=code,
        message=message,
        request_id=request_id,
        body=decoded,
        retry_after=_retry_after(headers),
    )


class HTTPCore:
    """Sends requests with one policy for timeouts, retries and errors.

    Args:
        connection: The shared endpoint and session.
        timeout: The default timeout of every call.
        max_retries: Retries after the first attempt.
        sleep: How to wait between attempts (tests pass a fake).
    """

    def __init__(
        self, connection: Connection, *, timeout: Timeout, max_retries: int, sleep: Sleep
    ) -> None:
        self.connection = connection
        self.timeout = timeout
        self.max_retries = max_retries
        self.sleep = sleep

    def with_options(
        self, *, timeout: Timeout | None = None, max_retries: int | None = None
    ) -> HTTPCore:
        """Return a core with other defaults that shares this one's connection."""
        return HTTPCore(
            self.connection,
            timeout=timeout or self.timeout,
            max_retries=self.max_retries if max_retries is None else max_retries,
            sleep=self.sleep,
        )

    async def pause(self, delay: float) -> None:
        """Wait ``delay`` s before trying again; ``ClientStateError`` once the client is
        closed, at once if it is closed during the wait."""
        await self.connection.nap(self.sleep, delay)

    @overload
    async def request(
        self,
        method: str,
        url: str,
        *,
        cast: type[T],
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout | float | NotGiven | None = NOT_GIVEN,
        max_retries: int | None = None,
    ) -> T: ...

    @overload
    async def request(
        self,
        method: str,
        url: str,
        *,
        cast: None = None,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout | float | NotGiven | None = NOT_GIVEN,
        max_retries: int | None = None,
    ) -> Any: ...

    async def request(
        self,
        method: str,
        url: str,
        *,
        cast: type[T] | None = None,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout | float | NotGiven | None = NOT_GIVEN,
        max_retries: int | None = None,
    ) -> Any:
        """Send one logical request (with retries) and decode its JSON answer.

        Args:
            method: HTTP method.
            url: Path under the base URL, such as ``/flows/flow_1``.
            cast: Model class to structure the answer into; ``None`` gives the decoded JSON.
            json: Body; models are converted to camelCase wire data.
            params: Query parameters; ``None`` values are dropped.
            headers: Extra headers.
            timeout: This call's timeout instead of the client's.
            max_retries: This call's retries instead of the client's.

        Raises:
            APIStatusError: A non-2xx answer, as its typed subclass.
            APIConnectionError: No answer, after the retries.
            APIResponseValidationError: An answer that is not the expected JSON.
        """
        lean = self.connection.settings.http_transport == "stdlib"
        async with self._send(
            method, url, json, params, headers, timeout, max_retries, lean=lean, whole=True
        ) as resp:
            body = await resp.read()
            request_id = resp.headers.get("X-Request-Id")
        return self._decode(body, cast, request_id, resp.status)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout | float | NotGiven | None = NOT_GIVEN,
        max_retries: int | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a streaming answer (2xx guaranteed) and release it on exit.

        Read the body with ``resp.content.iter_any()``; the read timeout is the idle gap
        allowed between two chunks.
        """
        async with self._send(method, url, json, params, headers, timeout, max_retries) as resp:
            with self.connection.reading(resp.content):
                yield resp

    @asynccontextmanager
    async def _send(
        self,
        method: str,
        url: str,
        json: Any,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        timeout: Timeout | float | NotGiven | None,
        max_retries: int | None,
        *,
        lean: bool = False,
        whole: bool = False,
    ) -> AsyncIterator[Any]:
        """Yield the first 2xx answer: an aiohttp response, or a whole ``Answer`` when lean
        or ``whole`` (its body read within the attempt: a body cut off is retried)."""
        endpoint = await self.connection.endpoint()
        self.connection.ensure_open()
        session = None if lean else self.connection.session()
        request = _Request(method, endpoint, url, json, params, headers)
        budget = self.timeout if isinstance(timeout, NotGiven) else Timeout.coerce(timeout)
        retries = self.max_retries if max_retries is None else max_retries
        # A total timeout bounds the whole call, retries and waits included.
        deadline = None if budget.total is None else time.monotonic() + budget.total
        attempt = 0
        while True:
            self.connection.ensure_open()  # closed while this call waited: ClientStateError
            try:
                resp = await self._attempt(session, request, _within(budget, deadline), whole)
            except APIConnectionError as exc:
                if attempt >= retries or not request.retryable:
                    raise
                delay = self._backoff(attempt, None)
                if _past(deadline, delay):
                    raise APITimeoutError(
                        f"{method} {shown_url(request.full_url)} gave no answer within the call's "
                        f"timeout of {budget.total:g} s ({exc})",
                        execution_id=getattr(exc, "execution_id", None),
                    ) from exc
                log.info("%s %s failed (%s); retrying in %.2fs", method, url, exc, delay)
                if not isinstance(exc, APITimeoutError):
                    endpoint = await self.connection.reconnect(endpoint)
                    request.retarget(endpoint, url)
            else:
                if 300 <= resp.status < 400:
                    resp.release()
                    raise _redirected(request, resp)
                if resp.status < 400:
                    try:
                        yield resp
                    finally:
                        resp.release()
                    return
                error = await self._read_error(resp, endpoint.api_key)
                if attempt >= retries or not self._should_retry(request, resp, error):
                    raise error
                delay = self._backoff(
                    attempt, getattr(error, "retry_after", None) or _retry_after(resp.headers)
                )
                if _past(deadline, delay):
                    raise error
                log.info("%s %s answered %s; retrying in %.2fs", method, url, resp.status, delay)
            attempt += 1
            await self.pause(delay)

    async def _attempt(
        self,
        session: aiohttp.ClientSession | None,
        request: _Request,
        timeout: Timeout,
        whole: bool = False,
    ) -> aiohttp.ClientResponse | Answer:
        started = time.perf_counter()
        resp = await (
            self._lean_attempt(request, timeout, self.connection.settings.ca_file)
            if session is None
            else self._aiohttp_attempt(session, request, timeout, whole)
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %s in %.1f ms (request id %s)",
                request.method,
                shown_url(request.full_url),
                resp.status,
                (time.perf_counter() - started) * 1000,
                resp.headers.get("X-Request-Id"),
            )
        return resp

    @staticmethod
    async def _lean_attempt(request: _Request, timeout: Timeout, ca_file: Path | None) -> Answer:
        from . import _stdlib_http

        tls = _tls(ca_file)
        return await _stdlib_http.send(
            request.method,
            request.full_url,
            tls=tls if isinstance(tls, ssl.SSLContext) else None,
            body=request.body,
            params=request.params,
            headers={"User-Agent": USER_AGENT, **request.headers},
            budget=timeout,
        )

    @staticmethod
    async def _aiohttp_attempt(
        session: aiohttp.ClientSession, request: _Request, timeout: Timeout, whole: bool = False
    ) -> aiohttp.ClientResponse | Answer:
        import aiohttp

        resp = None
        try:
            resp = await session.request(
                request.method,
                request.full_url,
                data=_payload(request.body),
                params=request.params,
                headers=request.headers,
                timeout=_client_timeout(timeout),
                allow_redirects=False,  # as the stdlib transport: a redirect is named, not taken
            )
            if not whole or resp.status >= 300:
                return resp
            try:
                return Answer(resp.status, resp.headers, await _body_of(resp, MAX_ANSWER))
            finally:
                resp.release()
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise APITimeoutError(
                f"{request.method} {shown_url(request.full_url)} timed out ({str(exc) or 'no answer'})",
                execution_id=None if resp is None else resp.headers.get("X-Execution-Id"),
            ) from exc
        except aiohttp.ClientResponseError as exc:  # aiohttp's parser: a malformed answer
            malformed = exc.message  # raised below: its request_info holds the request's
            # headers (the key with them), so it must be neither cause nor context
        except _connection_errors() as exc:
            raise APIConnectionError(
                f"could not reach {shown_url(request.full_url)}: {exc}"
            ) from exc
        except RuntimeError as exc:  # "Session is closed": the client closed meanwhile
            if session.closed:
                raise ClientStateError("the client was closed while the call was running") from exc
            raise
        raise APIConnectionError(
            f"{shown_url(request.full_url)} sent a malformed HTTP answer: {malformed}"
        )

    @staticmethod
    async def _read_error(
        resp: aiohttp.ClientResponse | Answer, api_key: str | None = None
    ) -> APIStatusError:
        """The typed error of a 4xx/5xx answer. The client's own key is taken out of its
        body first: a server or gateway that quotes the ``Authorization`` header it was
        sent would put the key in the error's text, its tracebacks and logs (QA AK)."""
        broken: tuple[type[BaseException], ...] = (*_connection_errors(), asyncio.TimeoutError)
        try:
            body = await _body_of(resp, MAX_ERROR_BODY, cut=True)
        except broken:
            body = b""
        finally:
            resp.release()
        if api_key:
            body = body.replace(api_key.encode("utf-8", "surrogateescape"), b"***")
        return _error_from_body(resp.status, body, resp.headers)

    @staticmethod
    def _should_retry(
        request: _Request, resp: aiohttp.ClientResponse | Answer, error: APIStatusError
    ) -> bool:
        if resp.headers.get("X-Should-Retry", "").lower() == "false":
            return False
        return request.retryable and resp.status in RETRY_STATUSES

    @staticmethod
    def _backoff(attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base = min(INITIAL_BACKOFF * 2.0**attempt, MAX_BACKOFF)
        return base * (0.75 + random.random() / 4)  # jitter: spread retries of many clients

    @staticmethod
    def _decode(body: bytes, cast: type[T] | None, request_id: str | None, status: int) -> Any:
        if not body and status == 204:
            return None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise APIResponseValidationError(
                f"the server answered {status} with a body that is not JSON ({exc})",
                request_id=request_id,
            ) from None
        if cast is None:
            return data
        try:
            return from_wire(data, cast)
        except Exception as exc:  # cattrs raises many shapes; all mean "not the expected JSON"
            raise APIResponseValidationError(
                f"the server's answer is not a valid {cast.__name__}: {exc}", request_id=request_id
            ) from exc


class Answer:
    """A whole answer, shaped like the parts of ``aiohttp.ClientResponse`` the loop reads."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # case-insensitive (an email Message, aiohttp's multidict)
        self.body = body

    async def read(self) -> bytes:
        """The body, already read."""
        return self.body

    def release(self) -> None:
        """Nothing to give back: the body is read."""


MAX_ANSWER = 256 * 1024 * 1024
"""The largest answer body read (decompressed): a vi_flow server's largest is a page of
runs; a broken server, a proxy or a gzip bomb must not take all of the client's memory."""

MAX_ERROR_BODY = 1024 * 1024
"""The most of an error answer's body read (its message is the first 500 characters)."""


async def _body_of(resp: aiohttp.ClientResponse | Answer, most: int, *, cut: bool = False) -> bytes:
    """The body, at most ``most`` bytes of it (decompressed); past that, the first
    ``most`` when ``cut``, else ``APIResponseValidationError``."""
    if isinstance(resp, Answer):
        return resp.body[:most]
    declared = resp.content_length
    if declared is not None and declared <= most and "Content-Encoding" not in resp.headers:
        return await resp.read()  # what the server said it sends, and no more
    data = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > most:
            if cut:
                return bytes(data[:most])
            raise APIResponseValidationError(
                f"the server's answer ({resp.status}) is over {most} bytes"
                f"{' once decompressed' if 'Content-Encoding' in resp.headers else ''};"
                " a vi_flow server never sends one: is a proxy in the way?",
                request_id=resp.headers.get("X-Request-Id"),
            )
    return bytes(data)


def _redirected(
    request: _Request, resp: aiohttp.ClientResponse | Answer
) -> APIResponseValidationError:
    """The error of a 3xx answer: followed, it could send the request (the spec of a
    flow, a tool result) to another host; a vi_flow server never redirects."""
    where = resp.headers.get("Location", "")
    return APIResponseValidationError(
        f"{request.method} {shown_url(request.full_url)} was answered {resp.status}, a redirect"
        f" to {shown_url(where)[:300]!r}; vi_flow does not follow redirects: set base_url to"
        " the server's own address",
        request_id=resp.headers.get("X-Request-Id"),
    )


class _Request:
    """One logical request: fixed across attempts, including its idempotency key."""

    __slots__ = ("body", "full_url", "headers", "method", "params", "retryable")

    def __init__(
        self,
        method: str,
        endpoint: Endpoint,
        url: str,
        json: Any,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
    ) -> None:
        self.method = method = method.upper()
        self.full_url = endpoint.base_url + url
        self.body = None if json is None else dumps_finite(json)
        self.params = {k: _query(v) for k, v in params.items() if v is not None} if params else None
        hdrs: dict[str, str] = {"Accept": "application/json"}
        if self.body is not None:
            hdrs["Content-Type"] = "application/json"
        if endpoint.api_key:
            check_secret_header("api_key", endpoint.api_key)
            hdrs["Authorization"] = f"Bearer {endpoint.api_key}"
        if endpoint.organization_id:
            check_secret_header("organization_id", endpoint.organization_id)
            hdrs["Organization-Id"] = endpoint.organization_id
        if headers:  # the caller's win, whatever their case ("idempotency-key")
            given = {name.lower() for name in headers}
            hdrs = {name: value for name, value in hdrs.items() if name.lower() not in given}
            hdrs.update(headers)
        keyed = any(name.lower() == "idempotency-key" for name in hdrs)
        if method in _CHANGES and not keyed:
            hdrs["Idempotency-Key"] = f"vi-{uuid.uuid4().hex}"
            keyed = True
        self.headers = hdrs
        self.retryable = method in IDEMPOTENT_METHODS or keyed

    def retarget(self, endpoint: Endpoint, url: str) -> None:
        """Send the next attempt to ``endpoint`` (the same server, found again)."""
        self.full_url = endpoint.base_url + url


def _query(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
