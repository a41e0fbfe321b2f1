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
from email.message import Message
from urllib.parse import unquote, urlencode, urlsplit

import anyio.to_thread

from ._config import Timeout, shown_url
from ._errors import APIConnectionError, APITimeoutError

__all__ = ["Answer", "send"]


class Answer:
    """A whole answer, shaped like the parts of ``aiohttp.ClientResponse`` the loop reads."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Message, body: bytes) -> None:
        self.status = status
        self.headers: Mapping[str, str] = headers  # type: ignore[assignment]  # case-insensitive
        self.body = body

    async def read(self) -> bytes:
        """The body, already read."""
        return self.body

    def release(self) -> None:
        """Nothing to give back: the connection closed with the answer."""


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
                abandon_on_cancel=True,
            )
    except TimeoutError as exc:  # the whole call's budget; the socket's own are below
        raise APITimeoutError(f"{method} {url} gave no answer within {budget.total} s") from exc


def _blocking_send(
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    timeout: Timeout,
    tls: ssl.SSLContext | None,
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
        return Answer(resp.status, resp.msg, resp.read())
    except TimeoutError as exc:
        waited = time.monotonic() - started
        raise APITimeoutError(f"{method} {shown_url(url)} timed out after {waited:.1f} s") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise APIConnectionError(f"could not reach {shown_url(url)}: {exc}") from exc
    finally:
        conn.close()


def _basic(user: str, password: str) -> str:
    """The ``Authorization`` value of a URL's user info, as aiohttp sends it."""
    pair = f"{unquote(user)}:{unquote(password)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")
