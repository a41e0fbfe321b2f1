"""Console routes: the pages, their static files, sign-in by one-time code, sign-out.

- ``POST /v1/console/sign-in`` (bearer token only) answers a one-time sign-in path.
- ``GET /console/signin?code=`` trades the code for a session cookie and answers the
  console's page carrying the session's key (see :mod:`.sessions`), which shows ``/`` in
  the address; a used or expired code is refused (403).
- ``GET /console/api/session`` says who is signed in (the key sent);
  ``POST /console/api/signout`` ends the session.
- ``GET /console/api/runs/{runId}/last-event`` is the newest event id of a run, so the
  page can show the tail of a long run without replaying all of it, and the ids of its
  tool calls answered so far.
- Page paths (``/``, ``/runs/{id}``...) answer the page; an object of another
  organization (or none) answers it with 404, and no session with 401.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from ..errors import APIProblem
from ..helpers import PRINCIPAL, json_response, principal_of, read_body
from ..middleware import Gone, credentials_gone
from ..routes.executions import EXECUTION_ENGINE_KEY
from ..state import STORE_KEY
from ..tasks import TASKS_KEY
from . import sessions
from .sessions import CSRF_HEADER, ConsoleSession

__all__ = ["SECURITY_HEADERS", "STATIC_TYPES", "not_found_page", "setup"]

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none';"
    " base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
"""Headers on every console answer: nothing from other hosts, no framing, no referrer."""

_JS = "text/javascript"
STATIC_TYPES = {
    **dict.fromkeys(("app.js", "lib.js", "runs.js", "events.js", "flows.js", "tasks.js"), _JS),
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
"""The static files the console serves, by name, with their media types (no path is joined)."""
_Finder = Callable[[web.Request, str, str], Awaitable[Any]]


@functools.cache  # a few KB from the package, read once: no file I/O per request
def _static(name: str) -> bytes:
    from importlib import resources  # on the console's first request, not at start

    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()


_KEY_META = b'<meta name="vi-flow-console-key" content="%s">\n'


def _to_root(request: web.Request) -> bytes:
    """The relative way from the request's address back to the console's root: one
    ``../`` per folder of its raw path, as the browser resolves a relative reference.

    Behind a reverse proxy that serves the server under a prefix (``/vf/``) and strips it,
    the browser's address is ``<prefix><raw path>``: an absolute ``/console/...`` would
    miss the prefix, which the server never sees, while a relative one lands under it.
    """
    path = request.raw_path.partition("?")[0]
    return b"../" * max(0, path.count("/") - 1)


def _page(request: web.Request, status: int = 200, key: str | None = None) -> web.Response:
    body = _static("index.html").replace(
        b'"/console/static/', b'"' + _to_root(request) + b"console/static/"
    )
    if key is not None:  # url-safe base64: nothing to escape in an attribute
        body = body.replace(b"<title>", _KEY_META % key.encode() + b"<title>", 1)
    return _html(body, status)


def not_found_page(request: web.Request) -> web.Response:
    """The console's page with status 404, for a browser at an address no route has (the
    page says there is no page there, or how to sign in)."""
    return _page(request, 404)


async def static_file(request: web.Request) -> web.Response:
    """One of the console's static files (a fixed list: no path is ever joined)."""
    name = request.match_info["name"]
    if name not in STATIC_TYPES:
        raise web.HTTPNotFound()
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    return web.Response(body=_static(name), content_type=STATIC_TYPES[name], headers=headers)


# -- sign in and out ---------------------------------------------------------------------


async def create_sign_in(request: web.Request) -> web.Response:
    """A one-time sign-in path for the caller's bearer token (not for a console session)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIProblem(403, "PERMISSION_DENIED", "sign-in codes are made for API keys only")
    await read_body(request)  # empty or a JSON object, as the document says
    code = await sessions.create_code(request, token.strip())
    return json_response(
        {
            "signInPath": f"/console/signin?code={code}",
            "organizationId": principal_of(request).organization_id,
            "expiresInSeconds": sessions.CODE_TTL_MS // 1000,
        },
        201,
        headers={"Cache-Control": "no-store"},
    )


# The sign-in pages are answered at /console/signin only: their references are relative
# to it, so that they hold under a reverse proxy's path prefix too (see _to_root).
_REFUSED = (
    b"<!doctype html><meta charset=utf-8><title>Sign-in refused</title>"
    b"<link rel=stylesheet href=static/app.css><main class=signin>"
    b"<h1>This sign-in link cannot be used</h1><p>A sign-in link works once, for one minute."
    b" Run <code>vi-flow console</code> for a new one.</p></main>"
)


_ELSEWHERE = (
    b"<!doctype html><meta charset=utf-8><title>Sign-in refused</title>"
    b"<link rel=stylesheet href=static/app.css><main class=signin>"
    b"<h1>This sign-in link was opened by another page</h1><p>A sign-in link works only"
    b" when you open it yourself (from <code>vi-flow console</code>, or pasted into the"
    b" address bar): another page could otherwise sign your browser in as someone else."
    b" Run <code>vi-flow console</code> for a new one.</p></main>"
)


_CONFIRM = (
    "<!doctype html><meta charset=utf-8><title>Sign in</title>"
    "<link rel=stylesheet href=static/app.css><main class=signin>"
    "<h1>Sign in to the vi-flow console?</h1><p>This link signs this browser in to"
    " organization <code>{org}</code>. Go on only if you opened it yourself (from"
    " <code>vi-flow console</code>): another page may have sent you here to sign you in"
    " as someone else.</p><form method=post action=signin>"
    "<input type=hidden name=code value={code}><button type=submit>Sign in to {org}"
    "</button></form></main>"
)


def _opened_by_the_user(headers: Mapping[str, str]) -> bool | None:
    """Whether the fetch metadata says a page was loaded from the address bar, a link
    the user opened, or the console itself; ``None`` where the browser sent none."""
    if "Sec-Fetch-Site" not in headers:
        return None
    return (
        headers.get("Sec-Fetch-Site") in ("none", "same-origin")
        and headers.get("Sec-Fetch-Mode", "navigate") == "navigate"
        and headers.get("Sec-Fetch-Dest", "document") == "document"
    )


def _html(body: bytes, status: int) -> web.Response:
    return web.Response(
        body=body, status=status, content_type="text/html", headers=SECURITY_HEADERS
    )


async def sign_in(request: web.Request) -> web.Response:
    """Trade a one-time code for a session cookie and the page, carrying the session's key.

    Only a navigation the user made (``Sec-Fetch-Site: none``, or from the console
    itself) signs in: a page of another origin (another port of the same host is the
    same *site*, so SameSite cookies do not help) could otherwise sign the browser in to
    the page's own organization. The code is left unused then. A request that is not
    the loading of a page (``Sec-Fetch-Mode``/``Sec-Fetch-Dest``) is refused too: a
    ``fetch`` the console's own script was led into making (a link whose id climbed out
    with ``..%2F``) came from the console's origin, but no user opened it.

    A browser sends no fetch metadata to an origin that is not secure (plain http to a
    name other than localhost: a server reached across a network), and older ones none
    at all; there (a review: any site could then sign the browser in as its own
    organization) the link answers a page that names the organization and asks: its
    button posts the code back, from the console's own origin (:func:`confirm_sign_in`).
    """
    code = request.query.get("code", "")
    opened = _opened_by_the_user(request.headers)
    if opened is False:
        return _html(_ELSEWHERE, 403)
    if opened is None:
        org = await sessions.code_organization(request, code)
        if org is None:
            return _html(_REFUSED, 403)
        page = _CONFIRM.format(org=html.escape(org), code=html.escape(code, quote=True))
        asking = _html(page.encode(), 200)
        # under "no-referrer" a browser posts the form with "Origin: null": the answer
        # could not tell the page's own button from another site's form
        asking.headers["Referrer-Policy"] = "same-origin"
        return asking
    return await _signed_in_page(request, code)


async def confirm_sign_in(request: web.Request) -> web.Response:
    """The confirmation of a sign-in page (a form posting ``code``): from the console's
    own origin only (a browser sends ``Origin`` with every form it posts)."""
    if "Origin" not in request.headers or not sessions.same_origin(request):
        return _html(_ELSEWHERE, 403)
    try:
        form = await request.post()
    except (ValueError, LookupError, UnicodeDecodeError):  # a bad boundary, charset=bogus
        return _html(_REFUSED, 400)  # the console's form never sends such a body
    code = form.get("code", "")
    return await _signed_in_page(request, code if isinstance(code, str) else "")


async def _signed_in_page(request: web.Request, code: str) -> web.Response:
    made = await sessions.exchange_code(request, code)
    if made is None:
        return _html(_REFUSED, 403)
    session_id, key = made
    # The page itself, carrying the key: it keeps it in its origin's storage and shows
    # "/" in the address. Only this answer hands a key to a page, and only to a page the
    # user opened with an unused code: an address (a fragment another page could send
    # the browser to, with a session it planted) is never read for one, nor kept in the
    # browser's history.
    response = _page(request, key=key)
    response.set_cookie(
        sessions.cookie_name(request),
        session_id,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure or (sessions.public_origin(request) or "").startswith("https:"),
        max_age=sessions.SESSION_TTL_MS // 1000,
    )
    return response


async def _signed_in(request: web.Request) -> ConsoleSession:
    session = await sessions.find_session(request)
    if session is None:
        raise APIProblem(401, "UNAUTHENTICATED", "not signed in; run 'vi-flow console'")
    sessions.check_csrf(request, session)  # the key, on every call
    request[PRINCIPAL] = session.principal
    return session


async def get_session(request: web.Request) -> web.Response:
    """Who is signed in, and the CSRF token for this session's state-changing calls."""
    session = await _signed_in(request)
    body = {
        "organizationId": session.principal.organization_id,
        "tokenName": session.principal.token_name,
        "csrfToken": session.csrf,
        "csrfHeader": CSRF_HEADER,
    }
    return json_response(body, headers=SECURITY_HEADERS)


async def sign_out(request: web.Request) -> web.Response:
    """End the session (CSRF-checked) and drop its cookie."""
    session = await _signed_in(request)
    await sessions.delete_session(request)
    ended = Gone(session.principal.organization_id, session=sessions.session_hash(request))
    await credentials_gone(request.app, ended)  # its open streams end now, on every replica
    response = web.Response(status=204, headers=SECURITY_HEADERS)
    response.del_cookie(sessions.cookie_name(request), path="/")
    return response


# -- run tail and pages ------------------------------------------------------------------


async def last_event(request: web.Request) -> web.Response:
    """The newest stored event id of a run of the session's organization (0: none yet),
    and the ids of its tool calls answered so far (``answeredCalls``: a page opened on a
    pause offers forms for the others only)."""
    session = await _signed_in(request)
    key = (session.principal.organization_id, request.match_info["runId"])
    await request.app[STORE_KEY].get_run(key[1], key[0])
    engine = request.app[EXECUTION_ENGINE_KEY]
    last, answered = 0, []
    if await engine.has_run(key):
        last, answered = (await engine.log.channel(key)).committed, await engine.answered_calls(key)
    body = {"lastEventId": last, "answeredCalls": answered}
    return json_response(body, headers=SECURITY_HEADERS)


async def _find_run(request: web.Request, org: str, run_id: str) -> Any:
    return await request.app[STORE_KEY].get_run(run_id, org)


async def _find_flow(request: web.Request, org: str, flow_id: str) -> Any:
    return await request.app[STORE_KEY].get_flow(org, flow_id)


async def _find_task(request: web.Request, org: str, task_id: str) -> Any:
    return await request.app[TASKS_KEY].get(task_id, org)


_FINDERS: dict[str, _Finder] = {"runs": _find_run, "flows": _find_flow, "tasks": _find_task}


async def page(request: web.Request) -> web.Response:
    """The console page: 401 without a session, 404 for an object the session cannot see."""
    session = await sessions.find_session(request)
    if session is None:
        return _page(request, 401)
    request[PRINCIPAL] = session.principal
    kind, ident = request.match_info.get("kind"), request.match_info.get("id")
    if kind is not None and ident is not None:
        try:
            await _FINDERS[kind](request, session.principal.organization_id, ident)
        except APIProblem as exc:
            return _page(request, exc.status if exc.status == 404 else 400)
    return _page(request)


def setup(app: web.Application) -> None:
    """Add the console's pages, static files, sign-in and session routes."""
    app.router.add_post("/v1/console/sign-in", create_sign_in)
    app.router.add_get("/console/signin", sign_in)
    app.router.add_post("/console/signin", confirm_sign_in)
    app.router.add_get("/console/static/{name}", static_file)
    app.router.add_get("/console/api/session", get_session)
    app.router.add_post("/console/api/signout", sign_out)
    app.router.add_get("/console/api/runs/{runId}/last-event", last_event)
    for path in ("/", "/runs", "/flows", "/tasks", "/volumes", "/reservations"):
        app.router.add_get(path, page)
    app.router.add_get("/{kind:runs|flows|tasks}/{id}", page)
    app.on_startup.append(_migrate)


async def _migrate(app: web.Application) -> None:
    await app[STORE_KEY].migrate(sessions.MIGRATION, sessions.SCHEMA)
    await app[STORE_KEY].migrate(sessions.PLACE_MIGRATION, sessions.PLACE_SCHEMA)
