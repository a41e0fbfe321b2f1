"""Console sign-in codes and browser sessions, kept in the server's SQLite store.

A sign-in code is made for a caller's bearer token (``POST /v1/console/sign-in``) and is
good once, for :data:`CODE_TTL_MS`. Exchanging it (``GET /console/signin?code=``) makes a
session: a random id that lives only in an HttpOnly, SameSite=Strict cookie, and a key
(the session's CSRF token) that the page keeps in its origin's own storage. Codes and
session ids are stored as sha256 digests, never as given. A session belongs to the
token that asked for the code: revoking the token ends its sessions too.

Every request a session makes carries its key, in :data:`CSRF_HEADER` (or, for an
``EventSource`` or a download link, which cannot send headers, a GET's :data:`KEY_PARAM`),
and one that changes state comes from the server's own origin too (:func:`check_csrf`).
A cookie alone is not enough: a browser sends a host's cookies to *every* port of the
host, so any other service on 127.0.0.1 that the user opens (another organization's task
listening on a port) receives it, and any of them can set one; the key never leaves the
console's origin. The cookie's name is the origin's own (:func:`cookie_name`): two
servers on one host keep their sessions apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

import attrs
from aiohttp import web

from .._records import hash_token
from ..clock import now_ms
from ..db import Connection
from ..errors import APIProblem
from ..state import SETTINGS_KEY, STORE_KEY, Principal
from .peers import loopback_peer

__all__ = [
    "CODE_TTL_MS",
    "COOKIE",
    "CSRF_HEADER",
    "KEY_PARAM",
    "SCHEMA",
    "SESSION_TTL_MS",
    "ConsoleSession",
    "check_csrf",
    "code_organization",
    "cookie_name",
    "create_code",
    "delete_session",
    "exchange_code",
    "find_session",
    "has_cookie",
    "public_origin",
    "same_origin",
    "session_principal",
]

COOKIE = "vi_flow_console"
"""The start of the session cookie's name (:func:`cookie_name`)."""
CSRF_HEADER = "X-CSRF-Token"
"""The header every console request carries its session's key (CSRF token) in."""
KEY_PARAM = "consoleKey"
"""The query parameter a console GET that cannot send headers carries the key in."""
CODE_TTL_MS = 60_000
"""How long a sign-in code is good for: long enough to open a browser, no longer."""
SESSION_TTL_MS = 12 * 3600 * 1000
"""How long a console session lasts after sign-in."""

MIGRATION = "console-1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS console_codes (
    code_hash TEXT PRIMARY KEY, token_hash TEXT NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS console_sessions (
    session_hash TEXT PRIMARY KEY, token_hash TEXT NOT NULL, csrf TEXT NOT NULL,
    expires_at INTEGER NOT NULL);
"""
PLACE_MIGRATION = "console-session-place-1"
PLACE_SCHEMA = """
ALTER TABLE console_sessions ADD COLUMN place TEXT NOT NULL DEFAULT '';
"""
"""Where each session holds (:func:`session_place`); those made before have none: their
browsers sign in again once."""
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@attrs.frozen
class ConsoleSession:
    """A signed-in browser.

    Attributes:
        principal: Who it acts as (the organization of the token that signed it in).
        csrf: Its key: every request it makes sends it (:data:`CSRF_HEADER`).
    """

    principal: Principal
    csrf: str = attrs.field(repr=False)


def _create_code(conn: Connection, token: str, owner: str) -> str:
    now = now_ms()
    conn.execute("DELETE FROM console_codes WHERE expires_at <= ?", (now,))
    code = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO console_codes (code_hash, token_hash, expires_at) VALUES (?, ?, ?)",
        (_code_hash(code, owner), hash_token(token), now + CODE_TTL_MS),
    )
    return code


async def _owner(request: web.Request) -> str:
    """Who may trade a code made or traded on ``request``'s connection: over loopback its
    local user (``uid=N``), and which task's sandbox when it is one; anyone (``""``)
    otherwise (:mod:`.peers`)."""
    return await asyncio.to_thread(loopback_peer, request) or ""  # it reads /proc


def _code_hash(code: str, owner: str) -> str:
    """The stored form of ``code``: bound to its ``owner``, so that the code another
    local user read off the browser's command line finds no row."""
    return hash_token(f"{code}\n{owner}" if owner else code)


async def create_code(request: web.Request, token: str) -> str:
    """A new one-time sign-in code for the bearer ``token`` (already authenticated),
    good only for the local user whose connection asked, when it came over loopback."""
    owner = await _owner(request)
    return await request.app[STORE_KEY].run(lambda c: _create_code(c, token, owner))


def _exchange(conn: Connection, code: str, owner: str, place: str) -> tuple[str, str] | None:
    row = conn.execute(
        "DELETE FROM console_codes WHERE code_hash = ? RETURNING token_hash, expires_at",
        (_code_hash(code, owner),),
    ).fetchone()
    now = now_ms()
    if row is None or row["expires_at"] <= now:
        return None
    alive = conn.execute("SELECT 1 FROM tokens WHERE token_hash = ?", (row["token_hash"],))
    if alive.fetchone() is None:  # its token was revoked after the link was made
        return None
    conn.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
    session_id, key = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    conn.execute(
        "INSERT INTO console_sessions (session_hash, token_hash, csrf, expires_at, place)"
        " VALUES (?, ?, ?, ?, ?)",
        (hash_token(session_id), row["token_hash"], key, now + SESSION_TTL_MS, place),
    )
    return session_id, key


def _code_org(conn: Connection, code: str, owner: str) -> str | None:
    row = conn.execute(
        "SELECT t.org_id FROM console_codes c JOIN tokens t ON t.token_hash = c.token_hash"
        " WHERE c.code_hash = ? AND c.expires_at > ?",
        (_code_hash(code, owner), now_ms()),
    ).fetchone()
    return None if row is None else str(row["org_id"])


async def code_organization(request: web.Request, code: str) -> str | None:
    """The organization an unused, unexpired ``code`` signs in to (it stays unused)."""
    if not 0 < len(code) <= 128:
        return None
    owner = await _owner(request)
    return await request.app[STORE_KEY].run(lambda c: _code_org(c, code, owner))


async def exchange_code(request: web.Request, code: str) -> tuple[str, str] | None:
    """Use up ``code``; the new session's id and key, or ``None`` for a used, expired or
    unknown code."""
    if not 0 < len(code) <= 128:
        return None
    place, owner = session_place(request), await _owner(request)
    return await request.app[STORE_KEY].run(lambda c: _exchange(c, code, owner, place))


def _find(conn: Connection, session_id: str, place: str) -> ConsoleSession | None:
    row = conn.execute(
        "SELECT t.org_id, t.name, t.admin, s.csrf FROM console_sessions s"
        " JOIN tokens t ON t.token_hash = s.token_hash"
        " WHERE s.session_hash = ? AND s.expires_at > ? AND s.place = ?",
        (hash_token(session_id), now_ms(), place),
    ).fetchone()
    if row is None:
        return None
    return ConsoleSession(Principal(row["org_id"], row["name"], bool(row["admin"])), row["csrf"])


def cookie_name(request: web.Request) -> str:
    """The session cookie's name on the origin the browser sees (its ``public_url``'s
    behind a proxy): a browser keeps one cookie of a name per host, whatever the port."""
    origin = public_origin(request) or f"{request.scheme}://{request.host}"
    return f"{COOKIE}_{hashlib.sha256(origin.encode()).hexdigest()[:12]}"


def has_cookie(request: web.Request) -> bool:
    """Whether the request carries this origin's session cookie."""
    return cookie_name(request) in request.cookies


async def find_session(request: web.Request) -> ConsoleSession | None:
    """The live session named by the request's cookie, or ``None`` (its key unchecked:
    the page routes, which a navigation loads, show no data)."""
    session_id = request.cookies.get(cookie_name(request), "")
    if not 0 < len(session_id) <= 128:
        return None
    place = session_place(request)
    return await request.app[STORE_KEY].run(lambda c: _find(c, session_id, place))


def session_place(request: web.Request) -> str:
    """Where a console session holds: the origin of the server's ``public_url`` behind a
    proxy (every replica serves it), else the port the server listens on, as the
    connection's own socket says (no header a client sends).

    QA: a background server that restarts comes back on another port; the page still
    open on the old one kept calling it, with the session's cookie and key, and another
    local user listening there got both, and used them on the new port. A session made
    on one port is of no use on another; a server restarted on its port keeps its
    sessions.
    """
    public = public_origin(request)
    if public:
        return public
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return f"port {sockname[1]}"
    return f"socket {sockname}" if sockname else ""


def session_hash(request: web.Request) -> str:
    """The stored hash of the session id in the request's cookie."""
    return hash_token(request.cookies.get(cookie_name(request), ""))


async def delete_session(request: web.Request) -> None:
    """Sign the request's session out (nothing happens without one)."""
    digest = session_hash(request)
    await request.app[STORE_KEY].run(
        lambda c: c.execute("DELETE FROM console_sessions WHERE session_hash = ?", (digest,))
    )


def public_origin(request: web.Request) -> str | None:
    """The origin of the server's ``public_url`` (its reverse proxy), when one is set."""
    public = request.app[SETTINGS_KEY].public_url
    if not public:
        return None
    parts = urlsplit(public)
    return f"{parts.scheme}://{parts.netloc}"


def same_origin(request: web.Request) -> bool:
    """Whether a request comes from the server's own origin (its ``Origin`` header, and
    its fetch metadata where the browser sends it)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    # Behind a TLS proxy the browser's origin is the proxy's: https, the public host.
    return origin is None or origin in (
        f"{request.scheme}://{request.host}",
        public_origin(request),
    )


def check_csrf(request: web.Request, session: ConsoleSession) -> None:
    """Refuse a request without the session's key, or one that changes state from
    another origin.

    Raises:
        APIProblem: 401 without the key or with another session's (a cookie that left the
            console's origin, one another port set in its place, a page that lost its
            key: the page signs in again); 403 from another origin.
    """
    safe = request.method in _SAFE_METHODS
    sent = request.headers.get(CSRF_HEADER) or (request.query.get(KEY_PARAM, "") if safe else "")
    if not sent:
        raise APIProblem(
            401, "UNAUTHENTICATED", f"the console session's key is missing ({CSRF_HEADER})"
        )
    if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise APIProblem(
            401, "UNAUTHENTICATED", f"wrong {CSRF_HEADER}: not this session's; sign in again"
        )
    if not safe and not same_origin(request):
        raise APIProblem(403, "PERMISSION_DENIED", "cross-origin console request refused")


async def session_principal(request: web.Request) -> Principal:
    """The principal of a request signed in by the console cookie (its key checked).

    Raises:
        APIProblem: 401 without a live session or its key; 403 for a wrong key or origin.
    """
    session = await find_session(request)
    if session is None:
        raise APIProblem(401, "UNAUTHENTICATED", "the console session has ended; sign in again")
    check_csrf(request, session)
    return session.principal
