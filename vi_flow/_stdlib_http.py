"""The ``stdlib`` transport: one plain call over :mod:`http.client`, on a worker thread.

A short-lived process (the CLI's ``vi-flow flows list``) spends more time importing aiohttp
than talking to the server. With ``http_transport = "stdlib"`` the request loop in
:mod:`vi_flow._http` sends calls that are not streams through here instead: one connection
per call, the answer read whole. Retries, timeouts and errors stay the request loop's.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import time
from collections.abc import Mapping
from urllib.parse import unquote, urlencode, urlsplit

import anyio.to_thread

from ._config import Timeout, shown_url
from ._errors import APIConnectionError, APIResponseValidationError, APITimeoutError
from ._http import MAX_ANSWER, MAX_ERROR_BODY, Answer

__all__ = ["Answer", "send"]


async def send(
    method: str,
    url: str,
    *,
    body: bytes | None,
    params: Mapping[str, str] | None,
    headers: Mapping[str, str],
    budget: Timeout,
    tls: ssl.SSLContext | None = None,
) -> Answer:
    """Send one request and read its answer whole, off the event loop.

    ``tls`` verifies an https server (the system's CAs when ``None``).

    Raises:
        APITimeoutError: No connection or no answer within ``budget``.
        APIConnectionError: The server could not be reached or broke the answer.
    """
    target = f"{url}?{urlencode(params)}" if params else url
    begun: list[str] = []  # the answer's X-Execution-Id, once its headers came
    try:
        with anyio.fail_after(budget.total):
            return await anyio.to_thread.run_sync(
                _blocking_send,
                method,
                target,
                body,
                dict(headers),
                budget,
                tls,
                begun,
                abandon_on_cancel=True,
            )
    except TimeoutError as exc:  # the whole call's budget; the socket's own are below
        waited = f"{budget.total:.1f}"
        raise APITimeoutError(
            f"{method} {shown_url(url)} gave no answer within {waited} s",
            execution_id=begun[0] if begun else None,
        ) from exc


def _blocking_send(
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    timeout: Timeout,
    tls: ssl.SSLContext | None,
    begun: list[str],
) -> Answer:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    started = time.monotonic()
    conn = (
        http.client.HTTPSConnection(host, parts.port, timeout=timeout.connect, context=tls)
        if parts.scheme == "https"
        else http.client.HTTPConnection(host, parts.port, timeout=timeout.connect)
    )
    try:
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(timeout.read)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.username is not None and "Authorization" not in headers:
            headers["Authorization"] = _basic(parts.username, parts.password or "")
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        if execution_id := resp.getheader("X-Execution-Id"):
            begun.append(execution_id)
        try:
            body = _body(resp)
        finally:
            resp.close()  # an answer not read to its end keeps the socket open otherwise
        return Answer(resp.status, resp.msg, body)  # type: ignore[arg-type]  # case-insensitive
    except TimeoutError as exc:
        waited = time.monotonic() - started
        raise APITimeoutError(
            f"{method} {shown_url(url)} timed out after {waited:.1f} s",
            execution_id=begun[0] if begun else None,
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise APIConnectionError(f"could not reach {shown_url(url)}: {exc}") from exc
    finally:
        conn.close()


def _body(resp: http.client.HTTPResponse) -> bytes:
    """The answer's body: at most :data:`MAX_ANSWER` bytes (an error's is cut to
    :data:`MAX_ERROR_BODY`), all that its length announced."""
    most = MAX_ERROR_BODY if resp.status >= 400 else MAX_ANSWER
    body = resp.read(most + 1)  # a broken server or proxy could send without end
    if len(body) <= most and resp.length:  # it ended before the length it announced
        raise http.client.IncompleteRead(body, resp.length)
    if len(body) > most:
        if resp.status < 400:
            raise APIResponseValidationError(
                f"the server's answer ({resp.status}) is over {most} bytes; a vi_flow"
                " server never sends one: is a proxy in the way?",
                request_id=resp.getheader("X-Request-Id"),
            )
        body = body[:most]
    return body


def _basic(user: str, password: str) -> str:
    """The ``Authorization`` value of a URL's user info, as aiohttp sends it."""
    pair = f"{unquote(user)}:{unquote(password)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")
