"""Console sign-in codes and browser sessions, kept in the server's SQLite store.

A sign-in code is made for a caller's bearer token (``POST /v1/console/sign-in``) and is
good once, for :data:`CODE_TTL_MS`. Exchanging it (``GET /console/signin?code=``) makes a
session: a random id that lives only in an HttpOnly, SameSite=Strict cookie. Codes and
session ids are stored as sha256 digests, never as given. A session belongs to the
token that asked for the code: revoking the token ends its sessions too. Requests that
change state carry the session's CSRF token in :data:`CSRF_HEADER` and come from the
server's own origin (:func:`check_csrf`).
"""

from __future__ import annotations

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

__all__ = [
    "CODE_TTL_MS",
    "COOKIE",
    "CSRF_HEADER",
    "SCHEMA",
    "SESSION_TTL_MS",
    "ConsoleSession",
    "check_csrf",
    "create_code",
    "delete_session",
    "exchange_code",
    "find_session",
    "public_origin",
    "session_principal",
]

COOKIE = "vi_flow_console"
"""The session cookie's name."""
CSRF_HEADER = "X-CSRF-Token"
"""The header a state-changing console request carries its session's CSRF token in."""
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
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@attrs.frozen
class ConsoleSession:
    """A signed-in browser.

    Attributes:
        principal: Who it acts as (the organization of the token that signed it in).
        csrf: The token its state-changing requests must send in :data:`CSRF_HEADER`.
    """

    principal: Principal
    csrf: str = attrs.field(repr=False)


def _create_code(conn: Connection, token: str) -> str:
    now = now_ms()
    conn.execute("DELETE FROM console_codes WHERE expires_at <= ?", (now,))
    code = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO console_codes (code_hash, token_hash, expires_at) VALUES (?, ?, ?)",
        (hash_token(code), hash_token(token), now + CODE_TTL_MS),
    )
    return code


async def create_code(request: web.Request, token: str) -> str:
    """A new one-time sign-in code for the bearer ``token`` (already authenticated)."""
    return await request.app[STORE_KEY].run(lambda c: _create_code(c, token))


def _exchange(conn: Connection, code: str) -> str | None:
    row = conn.execute(
        "DELETE FROM console_codes WHERE code_hash = ? RETURNING token_hash, expires_at",
        (hash_token(code),),
    ).fetchone()
    now = now_ms()
    if row is None or row["expires_at"] <= now:
        return None
    alive = conn.execute("SELECT 1 FROM tokens WHERE token_hash = ?", (row["token_hash"],))
    if alive.fetchone() is None:  # its token was revoked after the link was made
        return None
    conn.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
    session_id = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO console_sessions (session_hash, token_hash, csrf, expires_at)"
        " VALUES (?, ?, ?, ?)",
        (
            hash_token(session_id),
            row["token_hash"],
            secrets.token_urlsafe(24),
            now + SESSION_TTL_MS,
        ),
    )
    return session_id


async def exchange_code(request: web.Request, code: str) -> str | None:
    """Use up ``code``; the new session's id, or ``None`` for a used, expired or unknown code."""
    if not 0 < len(code) <= 128:
        return None
    return await request.app[STORE_KEY].run(lambda c: _exchange(c, code))


def _find(conn: Connection, session_id: str) -> ConsoleSession | None:
    row = conn.execute(
        "SELECT t.org_id, t.name, t.admin, s.csrf FROM console_sessions s"
        " JOIN tokens t ON t.token_hash = s.token_hash"
        " WHERE s.session_hash = ? AND s.expires_at > ?",
        (hash_token(session_id), now_ms()),
    ).fetchone()
    if row is None:
        return None
    return ConsoleSession(Principal(row["org_id"], row["name"], bool(row["admin"])), row["csrf"])


async def find_session(request: web.Request) -> ConsoleSession | None:
    """The live session named by the request's cookie, or ``None``."""
    session_id = request.cookies.get(COOKIE, "")
    if not 0 < len(session_id) <= 128:
        return None
    return await request.app[STORE_KEY].run(lambda c: _find(c, session_id))


def session_hash(request: web.Request) -> str:
    """The stored hash of the session id in the request's cookie."""
    return hash_token(request.cookies.get(COOKIE, ""))


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


def _same_origin(request: web.Request) -> bool:
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    # Behind a TLS proxy the browser's origin is the proxy's: https, the public host.
    return origin is None or origin in (
        f"{request.scheme}://{request.host}",
        public_origin(request),
    )


def check_csrf(request: web.Request, session: ConsoleSession) -> None:
    """Refuse a state-changing request without the session's CSRF token or from elsewhere.

    Raises:
        APIProblem: 403 ``PERMISSION_DENIED``.
    """
    if request.method in _SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise APIProblem(403, "PERMISSION_DENIED", f"missing or wrong {CSRF_HEADER} header")
    if not _same_origin(request):
        raise APIProblem(403, "PERMISSION_DENIED", "cross-origin console request refused")


async def session_principal(request: web.Request) -> Principal:
    """The principal of a request signed in by the console cookie (CSRF-checked).

    Raises:
        APIProblem: 401 without a live session; 403 for a failed CSRF check.
    """
    session = await find_session(request)
    if session is None:
        raise APIProblem(401, "UNAUTHENTICATED", "the console session has ended; sign in again")
    check_csrf(request, session)
    return session.principal
