"""The web console's sign-in, session cookie, CSRF check and organization isolation, over HTTP."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import logging
import os
import re
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.another_user import as_another_user
from tests.live_server import Starter
from vi_flow.server.console import routes as console_routes
from vi_flow.server.state import SETTINGS_KEY, STORE_KEY, ServerSettings

from .conftest import Server, spec

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def _sign_in_path(server: Server, token: str | None = None) -> str:
    answer = await server.call("POST", "/console/sign-in", token=token)
    assert answer.status == 201, answer.body
    assert answer.body["expiresInSeconds"] == 60
    return str(answer.body["signInPath"])


# what a browser sends loading a link the user opened (from `vi-flow console`)
OPENED = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}


async def _open(server: Server, path: str) -> Any:
    async with server.session.get(
        server.root + path, allow_redirects=False, headers=OPENED
    ) as resp:
        resp.page = await resp.text()  # type: ignore[attr-defined]
        return resp


def _key_of(resp: Any) -> str:
    """The session key a sign-in answer hands its page."""
    found = re.search(r'<meta name="vi-flow-console-key" content="([^"]+)">', resp.page)
    assert found, resp.page[:300]
    return found.group(1)


def _cookie(resp: Any) -> Any:
    """The console session cookie a response set (its name is the origin's own)."""
    (morsel,) = [m for name, m in resp.cookies.items() if name.startswith("vi_flow_console_")]
    return morsel


def _cookie_name(server: Server) -> str:
    """The session cookie's name on ``server``'s origin (the server's own rule)."""
    return "vi_flow_console_" + hashlib.sha256(server.root.encode()).hexdigest()[:12]


def _set_cookie(resp: Any) -> bool:
    return any(name.startswith("vi_flow_console") for name in resp.cookies)


async def _sign_in(server: Server, token: str | None = None) -> dict[str, str]:
    """Sign in; the headers a signed-in browser sends (cookie, session key, origin)."""
    resp = await _open(server, await _sign_in_path(server, token))
    assert resp.status == 200, resp.status
    cookie = _cookie(resp)
    return {
        "Cookie": f"{cookie.key}={cookie.value}",
        "Origin": server.root,
        "X-CSRF-Token": _key_of(resp),  # for the page, in no address
    }


async def _org_token(server: Server, name: str) -> str:
    org = (await server.call("POST", "/organizations", json={"name": name})).body["organizationId"]
    made = await server.call("POST", f"/organizations/{org}/tokens", json={"name": "ci"})
    return str(made.body["token"])


async def test_a_sign_in_url_works_once_and_sets_a_strict_http_only_cookie(server: Server) -> None:
    path = await _sign_in_path(server)
    first = await _open(server, path)
    assert first.status == 200 and "Location" not in first.headers and _key_of(first)
    cookie = _cookie(first)
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert not cookie["secure"]  # plain http on loopback; https would make it Secure
    again = await _open(server, path)
    assert again.status == 403 and not _set_cookie(again)
    assert (await _open(server, "/console/signin?code=made-up")).status == 403


async def test_a_sign_in_link_opened_by_another_page_is_refused(server: Server) -> None:
    # Login CSRF: a page on another port (the same site) navigated the browser to the
    # attacker's own link, switching the victim's console to the attacker's organization.
    path = await _sign_in_path(server)
    for fetched_from in ("same-site", "cross-site"):
        async with server.session.get(
            server.root + path, allow_redirects=False, headers={"Sec-Fetch-Site": fetched_from}
        ) as resp:
            assert resp.status == 403 and not _set_cookie(resp)
            assert "opened by another page" in await resp.text()
    async with server.session.get(
        server.root + path, allow_redirects=False, headers={"Sec-Fetch-Site": "none"}
    ) as resp:  # the user's own navigation: the code was left unused for it
        assert resp.status == 200 and _set_cookie(resp)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
async def test_a_link_read_off_the_browsers_command_line_is_refused_to_another_user(
    server: Server,
) -> None:
    # QA AJ: `vi-flow console` opens the link with the browser, whose command line every
    # local user can read; another user traded the code first and ran tasks as alice.
    path = await _sign_in_path(server)

    def trade() -> bool:
        request = urllib.request.Request(server.root + path, headers=OPENED)
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as exc:
            return exc.code == 403
        return False

    assert await anyio.to_thread.run_sync(as_another_user, trade)
    mine = await _open(server, path)  # the code was left for the user who asked
    assert mine.status == 200 and _set_cookie(mine)


_TRADE = """import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1], headers={"Sec-Fetch-Site": "none",
    "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"})
try:
    print("traded", urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as exc:
    print("refused", exc.code)
"""


async def test_a_link_a_task_read_is_refused_to_the_task(server: Server) -> None:
    # QA AM: a5eb445 bound a code to the local user, and a task runs as the server's user
    # on the host's network: a task holding the link traded the owner's admin code
    path = await _sign_in_path(server)
    command = [sys.executable, "-c", _TRADE, server.root + path]
    task = await server.call("POST", "/tasks", json={"command": command})
    assert task.status == 201, task.body
    await server.task_ended(task.body["taskId"])
    logs = str((await server.call("GET", f"/tasks/{task.body['taskId']}/logs")).body)
    assert "refused 403" in logs and "traded" not in logs, logs
    mine = await _open(server, path)  # the code was left for the user who asked
    assert mine.status == 200 and _set_cookie(mine)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
def test_a_socket_of_a_task_that_hides_its_descriptors_is_not_taken_for_the_users() -> None:
    # A task that makes itself undumpable hides its descriptors from a server that is not
    # root: its connection must not pass for the user's browser. Here the forked child
    # (as nobody) is the server, and its own child, undumpable, holds the connection.
    from vi_flow.server.console import peers

    def serve() -> bool:
        listener = socket.create_server(("127.0.0.1", 0))
        task = os.fork()
        if task == 0:  # the task: undumpable, then it connects and waits to be killed
            ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE
            held = socket.create_connection(listener.getsockname())
            time.sleep(30)
            held.close()
            os._exit(0)
        try:
            conn, peer = listener.accept()
            wanted = (peers._entry(*peer[:2]), peers._entry(*listener.getsockname()[:2]))
            with open("/proc/net/tcp") as table:
                rows = [line.split() for line in table]
            inode = next(row[9] for row in rows if (row[1], row[2]) == wanted)
            hidden = peers._task_namespace(inode, os.getuid())
            conn.close()
            return hidden == "hidden"
        finally:
            os.kill(task, signal.SIGKILL)
            os.waitpid(task, 0)

    assert as_another_user(serve)


async def test_an_expired_code_is_refused(server: Server) -> None:
    path = await _sign_in_path(server)
    await server.app[STORE_KEY].run(lambda c: c.execute("UPDATE console_codes SET expires_at = 0"))
    assert (await _open(server, path)).status == 403


async def test_the_cookie_reads_the_api_and_writes_only_with_the_csrf_token(server: Server) -> None:
    headers = await _sign_in(server)
    flow = await server.call("POST", "/flows", json={"spec": spec()}, token="", headers=headers)
    assert flow.status == 201
    listed = await server.call("GET", "/flows", token="", headers=headers)
    assert listed.status == 200 and len(listed.body["items"]) == 1
    no_csrf = {k: v for k, v in headers.items() if k != "X-CSRF-Token"}
    refused = await server.call("POST", "/flows", json={"spec": spec()}, token="", headers=no_csrf)
    assert refused.status == 401 and "X-CSRF-Token" in refused.body["error"]["message"]
    wrong = {**headers, "X-CSRF-Token": "x" * 32}
    refused = await server.call("POST", "/flows", json={"spec": spec()}, token="", headers=wrong)
    assert refused.status == 401 and "X-CSRF-Token" in refused.body["error"]["message"]
    elsewhere = {**headers, "Origin": "http://evil.example"}
    refused = await server.call(
        "POST", "/flows", json={"spec": spec()}, token="", headers=elsewhere
    )
    assert refused.status == 403 and "cross-origin" in refused.body["error"]["message"]
    minted = await server.call("POST", "/console/sign-in", token="", headers=headers)
    assert minted.status == 403  # a session cannot make itself new sign-in links


async def test_another_organizations_objects_answer_404(server: Server) -> None:
    flow = (await server.call("POST", "/flows", json={"spec": spec()})).body["flowId"]
    run = (await server.call("POST", "/runs", json={"flowId": flow})).body["runId"]
    other = await _sign_in(server, await _org_token(server, "other"))
    cookie = {"Cookie": other["Cookie"]}  # what a page's navigation sends
    assert (await server.call("GET", f"/runs/{run}", token="", headers=other)).status == 404
    assert (await server.call("GET", f"/flows/{flow}", token="", headers=other)).status == 404
    tail = await server.call(
        "GET", f"/../console/api/runs/{run}/last-event", token="", headers=other
    )
    assert tail.status == 404
    for page in (f"/runs/{run}", f"/flows/{flow}", "/tasks/task_nope"):
        async with server.session.get(server.root + page, headers=cookie) as resp:
            assert resp.status == 404, page
    mine = await _sign_in(server)
    async with server.session.get(f"{server.root}/runs/{run}", headers=mine) as resp:
        assert resp.status == 200
    async with server.session.get(f"{server.root}/runs/{run}") as resp:
        assert resp.status == 401  # no session: the page says how to sign in


async def test_sign_out_and_a_revoked_token_end_the_session(server: Server) -> None:
    headers = await _sign_in(server)
    answer = await server.call("POST", "/../console/api/signout", token="", headers=headers)
    assert answer.status == 204
    assert (await server.call("GET", "/runs", token="", headers=headers)).status == 401
    token = await _org_token(server, "team")
    headers = await _sign_in(server, token)
    assert (await server.call("GET", "/runs", token="", headers=headers)).status == 200
    org = (await server.call("GET", "/whoami", token=token)).body["organizationId"]
    unused = await _sign_in_path(server, token)  # a link made before the revocation
    await server.call("DELETE", f"/organizations/{org}/tokens/ci")
    assert (await server.call("GET", "/runs", token="", headers=headers)).status == 401
    late = await _open(server, unused)
    assert late.status == 403 and not _set_cookie(late)


async def _events_until_end(server: Server, path: str, headers: dict[str, str]) -> list[bytes]:
    """The frames of an event stream as they come, until it ends (bounded in time)."""
    async with server.session.get(server.root + path, headers=headers) as resp:
        assert resp.status == 200
        with anyio.fail_after(20):
            return [line async for line in resp.content if line.startswith(b"data:")]


async def test_a_revoked_key_or_a_signed_out_session_ends_open_streams(server: Server) -> None:
    # Streams were authorized once, at their start: they went on delivering a run's
    # events after the key was revoked or the session signed out (found by QA).
    slow = {"block": "emit", "id": "slow", "settings": {"count": 400, "interval": 0.05}}
    token = await _org_token(server, "team")
    cookie = await _sign_in(server, token)
    org = (await server.call("GET", "/whoami", token=token)).body["organizationId"]
    flow = (
        await server.call("POST", "/flows", json={"name": "slow", "blocks": [slow]}, token=token)
    ).body
    run = (await server.call("POST", f"/flows/{flow['flowId']}/jobs", json={}, token=token)).body[
        "executionId"
    ]
    path = f"/v1/runs/{run}/events"
    by_key = asyncio.ensure_future(
        _events_until_end(server, path, {"Authorization": f"Bearer {token}"})
    )
    by_cookie = asyncio.ensure_future(_events_until_end(server, path, cookie))
    await asyncio.sleep(1.0)
    await server.call("DELETE", f"/organizations/{org}/tokens/ci")
    with anyio.fail_after(5):  # both end within about a second, 20 s before the run would
        key_frames, cookie_frames = await by_key, await by_cookie
    for frames in (key_frames, cookie_frames):
        assert 5 < len(frames) < 200, len(frames)
        assert b"flow_completed" not in b"".join(frames)
    assert (await server.call("GET", path, token=token)).status == 401


async def test_streams_waiting_for_an_event_end_at_once_when_their_key_or_session_goes(
    server: Server,
) -> None:
    # A stream looked at its key only when it had something to send: one waiting for
    # a run's next event went on for up to a heartbeat (15 s) after the revocation (QA).
    quiet = {"block": "emit", "id": "quiet", "settings": {"count": 3, "interval": 30}}
    token = await _org_token(server, "team")
    by_key_cookie, signed_out = await _sign_in(server, token), await _sign_in(server, token)
    org = (await server.call("GET", "/whoami", token=token)).body["organizationId"]
    blocks = {"name": "quiet", "blocks": [quiet]}
    flow = (await server.call("POST", "/flows", json=blocks, token=token)).body["flowId"]
    run = (await server.call("POST", f"/flows/{flow}/jobs", json={}, token=token)).body
    path = f"/v1/runs/{run['executionId']}/events"

    def stream(headers: dict[str, str]) -> asyncio.Future[list[bytes]]:
        return asyncio.ensure_future(_events_until_end(server, path, headers))

    by_key = stream({"Authorization": f"Bearer {token}"})
    by_cookie = stream(by_key_cookie)
    staying = await server.call("POST", f"/organizations/{org}/tokens", json={"name": "stays"})
    by_other_key = stream({"Authorization": f"Bearer {staying.body['token']}"})
    by_signed_out = stream(signed_out)
    await asyncio.sleep(1.5)  # each has the first event and waits 30 s for the next
    ended = await server.call("POST", "/../console/api/signout", token="", headers=signed_out)
    assert ended.status == 204
    with anyio.fail_after(3):
        assert b'"line":"event 2"' not in b"".join(await by_signed_out)
    assert not by_key.done() and not by_cookie.done()  # another session's stream goes on
    await server.call("DELETE", f"/organizations/{org}/tokens/ci")
    with anyio.fail_after(3):
        for frames in (await by_key, await by_cookie):
            sent = b"".join(frames)
            assert b'"line":"event 1"' in sent and b'"line":"event 2"' not in sent, sent
    await asyncio.sleep(0.5)
    assert not by_other_key.done()  # the organization's other key was not revoked
    by_other_key.cancel()


async def test_pages_forbid_other_hosts_and_the_code_is_never_logged(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vi_flow.server.access")
    path = await _sign_in_path(server)
    await _open(server, path)
    code = path.partition("code=")[2]
    assert code not in caplog.text and "/console/signin" in caplog.text
    async with server.session.get(server.root + "/") as resp:
        html = await resp.text()
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert 'src="console/static/app.js"' in html and "http" not in html
    async with server.session.get(server.root + "/console/static/app.js") as resp:
        assert resp.status == 200 and resp.content_type == "text/javascript"
    async with server.session.get(server.root + "/console/static/..%2fsessions.py") as resp:
        assert resp.status == 404


async def test_behind_a_tls_proxy_the_cookie_is_secure_and_its_origin_trusted(
    start_server: Any,
) -> None:
    def behind_proxy(app: Any) -> None:
        app[SETTINGS_KEY].public_url = "https://flows.example.com/v1"

    server = await start_server(prepare=behind_proxy)
    resp = await _open(server, await _sign_in_path(server))
    cookie = _cookie(resp)
    assert cookie["secure"]
    headers = {
        "Cookie": f"{cookie.key}={cookie.value}",
        "Origin": "https://flows.example.com",
        "X-CSRF-Token": _key_of(resp),
    }
    made = await server.call("POST", "/flows", json={"spec": spec()}, token="", headers=headers)
    assert made.status == 201


def test_every_static_file_of_the_package_is_served() -> None:
    shipped = {
        p.name for p in resources.files("vi_flow.server.console").joinpath("static").iterdir()
    }
    assert shipped - {"index.html"} == set(console_routes.STATIC_TYPES)


async def test_a_sign_in_link_fetched_by_a_script_is_refused(server: Server) -> None:
    # A console page led into fetching /console/signin?code=... (an id with '..%2F' in
    # its address, found by QA) sends Sec-Fetch-Site: same-origin, but it is no page
    # the user opened: mode cors/same-origin and destination empty, not a document.
    path = await _sign_in_path(server)
    for mode, dest in (("cors", "empty"), ("same-origin", "empty"), ("no-cors", "image")):
        headers = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": dest}
        async with server.session.get(
            server.root + path, allow_redirects=False, headers=headers
        ) as resp:
            assert resp.status == 403 and not _set_cookie(resp), (mode, dest)
    opened = {
        "Sec-Fetch-Site": "same-origin",
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-Dest": "document",
    }
    async with server.session.get(
        server.root + path, allow_redirects=False, headers=opened
    ) as resp:
        assert resp.status == 200 and _set_cookie(resp)  # the code was kept


async def test_a_session_cookie_that_left_the_console_reads_and_does_nothing(
    server: Server,
) -> None:
    # Found by QA: a browser sends a host's cookies to every port of it. An org's task
    # listening on a loopback port that the user opened ("my TensorBoard") read the
    # console cookie of another organization's user and, replaying it alone, listed
    # that organization's runs, got its CSRF token and cancelled a run.
    flow = (await server.call("POST", "/flows", json={"spec": spec()})).body["flowId"]
    run = (await server.call("POST", "/runs", json={"flowId": flow})).body["runId"]
    task = (await server.call("POST", "/tasks", json={"command": "echo secret"})).body["taskId"]
    victim = await _sign_in(server)
    stolen = {"Cookie": victim["Cookie"], "Origin": server.root}  # no key: it never left
    for path in (
        "/runs", f"/runs/{run}", f"/runs/{run}/events", f"/tasks/{task}/logs",
        "/../console/api/session", f"/../console/api/runs/{run}/last-event",
    ):  # fmt: skip
        answer = await server.call("GET", path, token="", headers=stolen)
        assert answer.status == 401, (path, answer.body)
        assert "key is missing" in answer.body["error"]["message"]
    cancel = await server.call("POST", f"/runs/{run}/cancel", token="", headers=stolen)
    assert cancel.status == 401
    guessed = {**stolen, "X-CSRF-Token": "x" * 32}
    cancel = await server.call("POST", f"/runs/{run}/cancel", token="", headers=guessed)
    assert cancel.status == 401
    assert (await server.call("GET", f"/runs/{run}")).body["status"]["conditions"][-1][
        "condition"
    ] != "Cancelled"
    # the page's own requests: the key in a header, or (an EventSource, a download) a GET's
    # query parameter, never a POST's
    assert (await server.call("GET", f"/runs/{run}", token="", headers=victim)).status == 200
    key = victim["X-CSRF-Token"]
    keyed = await server.call("GET", f"/runs/{run}?consoleKey={key}", token="", headers=stolen)
    assert keyed.status == 200
    posted = await server.call(
        "POST", f"/runs/{run}/cancel?consoleKey={key}", token="", headers=stolen
    )
    assert posted.status in (401, 422)


async def test_a_cookie_planted_by_another_port_signs_the_page_in_as_no_one(
    server: Server,
) -> None:
    # Found by QA: a page on another port answered Set-Cookie with the attacker's own
    # session; the victim's console then showed, and sent what was typed to, the
    # attacker's organization. The victim's page keeps its own key: it matches no
    # session but its own.
    victim = await _sign_in(server)
    attacker = await _sign_in(server, await _org_token(server, "attacker"))
    planted = {**victim, "Cookie": attacker["Cookie"]}
    answer = await server.call("GET", "/../console/api/session", token="", headers=planted)
    assert answer.status == 401 and "not this session's" in answer.body["error"]["message"]
    made = await server.call("POST", "/flows", json={"spec": spec()}, token="", headers=planted)
    assert made.status == 401  # the page says its session ended, and signs in again
    assert (await server.call("GET", "/flows", token="", headers=attacker)).body["items"] == []
    # Found by the review of the first version: the page took a key from its address
    # (/#consoleKey=...), which another port could send the browser to, after planting
    # its session: the victim's tabs switched to the attacker's organization. Only the
    # sign-in answer carries a key; no page served for an address does.
    async with server.session.get(
        server.root + "/", headers={"Cookie": attacker["Cookie"]}
    ) as resp:
        assert resp.status == 200 and "vi-flow-console-key" not in await resp.text()


async def test_two_servers_on_one_host_name_their_cookies_apart(tmp_path: Path) -> None:
    # Found by QA: a browser keeps one cookie of a name per host, whatever the port; the
    # second server's sign-in replaced the first's session (and sent it to the second).
    async with Starter(Server) as starter:
        # (named apart: on PostgreSQL the two are replicas of one database)
        one, two = [
            await starter.start(ServerSettings(home=tmp_path / name, replica_name=name))
            for name in ("one", "two")
        ]
        first = _cookie(await _open(one, await _sign_in_path(one)))
        second = _cookie(await _open(two, await _sign_in_path(two)))
    assert first.key != second.key


async def test_a_browser_at_an_address_no_route_has_gets_the_consoles_page(server: Server) -> None:
    # Found by QA: /runs/, /console, /nothing showed a browser raw JSON, and a sign-in
    # link whose code held %00 (or came twice) a JSON 422, not the page saying why.
    html = {"Accept": "text/html,application/xhtml+xml"}
    # Its references lead back from where it is answered (a proxy's prefix kept): see
    # tests/browser/test_console_proxy.py.
    found = {"/runs/": "../", "/flows/": "../", "/console": "", "/nothing": ""}
    for path, up in {**found, "/runs/run_abc/extra": "../../"}.items():
        async with server.session.get(server.root + path, headers=html) as resp:
            assert resp.status == 404 and resp.content_type == "text/html", path
            assert f'src="{up}console/static/app.js"' in await resp.text()
        async with server.session.get(server.root + path) as resp:  # not a browser: JSON
            assert resp.status == 404 and resp.content_type == "application/json", path
    for query in ("code=%00", "code=a&code=b"):
        async with server.session.get(f"{server.root}/console/signin?{query}") as resp:
            assert resp.status == 403 and "cannot be used" in await resp.text(), query
    api = await server.call("GET", "/runs?x=%00")
    assert api.status == 422  # the API's own checks stay


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=x",
        "multipart/form-data",
        "application/x-www-form-urlencoded; charset=bogus",
    ],
)
async def test_a_sign_in_form_that_cannot_be_read_is_400_not_500(
    server: Server, content_type: str
) -> None:
    # QA: an unauthenticated POST /console/signin whose body aiohttp could not parse (a
    # bad boundary, none, an unknown charset) answered 500 with a traceback in the log
    headers = {"Origin": server.root, "Content-Type": content_type}
    async with server.session.post(
        server.root + "/console/signin", data=b"code=x", headers=headers
    ) as resp:
        assert resp.status == 400 and not _set_cookie(resp)


async def test_without_fetch_metadata_a_sign_in_link_asks_before_it_signs_in(
    server: Server,
) -> None:
    # Found by a review: a browser sends no Sec-Fetch-* headers to an origin that is not
    # secure (plain http by a name other than localhost: a server across a network), and
    # the link signed in at once: any site sending the browser to its own link switched
    # the victim's console to its organization. There it now asks, naming it.
    token = await _org_token(server, "theirs")
    org = (await server.call("GET", "/whoami", token=token)).body["organizationId"]
    path = await _sign_in_path(server, token)
    code = path.partition("code=")[2]
    for _ in range(2):  # asking uses nothing up
        async with server.session.get(server.root + path, allow_redirects=False) as resp:
            page = await resp.text()
            assert resp.status == 200 and not _set_cookie(resp)
            assert f"organization <code>{org}</code>" in page and "vi-flow-console-key" not in page
            assert "form method=post action=signin" in page  # /console/signin, under a prefix too
    form = {"code": code}
    for origin in ({"Origin": "http://elsewhere.example"}, {}):  # another site; no Origin
        async with server.session.post(
            server.root + "/console/signin", data=form, headers=origin
        ) as resp:
            assert resp.status == 403 and not _set_cookie(resp), origin
    async with server.session.post(
        server.root + "/console/signin", data=form, headers={"Origin": server.root}
    ) as resp:  # the page's own button
        resp.page = await resp.text()  # type: ignore[attr-defined]
        assert resp.status == 200 and _set_cookie(resp)
        key = _key_of(resp)
    async with server.session.post(
        server.root + "/console/signin", data=form, headers={"Origin": server.root}
    ) as resp:
        assert resp.status == 403  # used once
    assert key


async def test_a_session_holds_only_on_the_port_it_was_signed_in_on(
    start_server: Any, tmp_path: Path
) -> None:
    # QA Z: the home's background server came back on another port; the page still open
    # on the old one kept calling it with the session's cookie and key, another local
    # user listening there got both, and the new server took them (a task as root)
    first = await start_server()
    signed_in = await _sign_in(first)
    assert (
        await first.call("GET", "/../console/api/session", token="", headers=signed_in)
    ).status == 200
    await first.stop()
    again = await start_server(home=tmp_path / "home")  # the same home, another port
    assert again.root != first.root
    # as the other user replays them: the cookie renamed for the new origin
    value = signed_in["Cookie"].split("=", 1)[1]
    replayed = {
        **signed_in,
        "Cookie": f"{_cookie_name(again)}={value}",
        "Origin": again.root,
    }
    for method, path in (("GET", "/../console/api/session"), ("POST", "/tasks")):
        answer = await again.call(method, path, token="", headers=replayed, json={"command": "id"})
        assert answer.status == 401, (path, answer.status, answer.body)
    assert (await again.call("GET", "/tasks")).body["items"] == []
    # a browser signed in on the new port is at home there
    fresh = await _sign_in(again)
    assert (
        await again.call("GET", "/../console/api/session", token="", headers=fresh)
    ).status == 200
