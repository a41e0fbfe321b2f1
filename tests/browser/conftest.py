"""Fixtures for the console's browser tests: the home's real server and real Chromium.

The server is the one a user gets: ``vi-flow server start`` in a fresh home, stopped
with ``vi-flow server stop --force`` afterwards. Chromium is Debian's (``apt-get install
chromium``), driven by Playwright from PyPI with ``executable_path`` (``playwright
install`` cannot download here). Every page runs in a context that intercepts every
request: one to any host other than the server's fails the test. Without Playwright or
Chromium the tests skip with a note; ``VI_FLOW_REQUIRE_BROWSER=1`` (``nox -s
tests_browser``) makes that a failure instead.

Screenshots go to ``tmp_path``, or to ``docs/img/console-*.png`` with
``VI_FLOW_DOCS_SCREENSHOTS=1`` (how the docs' pictures are refreshed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.providers_kit import unavailable

CHROMIUM = os.environ.get("VI_FLOW_CHROMIUM", "/usr/bin/chromium")
HOW_TO = "run 'nox -s tests_browser' (installs Playwright and Debian's chromium)"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
VI_FLOW = str(Path(sys.executable).with_name("vi-flow"))


@attrs.define
class ConsoleServer:
    """The home's running server, its admin token and a second organization's token."""

    home: Path
    root: str
    token: str
    other_token: str = ""

    def env(self, token: str | None = None) -> dict[str, str]:
        """The environment of a CLI call as the owner of ``token`` (default: admin)."""
        return {
            **os.environ,
            "VI_FLOW_HOME": str(self.home),
            "VI_FLOW_API_KEY": token or self.token,
        }

    def cli(self, *args: str, token: str | None = None) -> str:
        """Run ``vi-flow ARGS`` against this home; its stdout."""
        done = subprocess.run(
            [VI_FLOW, *args], env=self.env(token), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def sign_in_url(self, token: str | None = None) -> str:
        """A fresh one-time sign-in URL, exactly as ``vi-flow console --print-url`` prints it."""
        return self.cli("console", "--print-url", token=token).strip()

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """A JSON API call (``/v1<path>``) with a bearer token (default: admin)."""
        request = urllib.request.Request(
            f"{self.root}/v1{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {token or self.token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=120) as resp:
            return json.load(resp)

    def event_count(self, run_id: str) -> int:
        """How many events the server holds for a finished run (read as any client would)."""
        request = urllib.request.Request(
            f"{self.root}/v1/runs/{run_id}/events",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            return sum(1 for line in resp.read().splitlines() if line.startswith(b"id: "))

    def flow(self, name: str, *blocks: dict[str, Any], inputs: list[Any] | None = None) -> str:
        """Create a flow; its id."""
        spec = {"name": name, "blocks": list(blocks), "inputs": inputs or []}
        return str(self.call("POST", "/flows", {"spec": spec})["flowId"])


def _start(home: Path) -> ConsoleServer:
    env = {**os.environ, "VI_FLOW_HOME": str(home)}
    env.pop("VI_FLOW_API_KEY", None)
    subprocess.run(
        [VI_FLOW, "server", "start", "--idle-timeout", "0"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    status = subprocess.run(
        [VI_FLOW, "server", "status", "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    root = json.loads(status.stdout)["url"].removesuffix("/v1")
    return ConsoleServer(home, root, (home / "admin-token").read_text().strip())


@pytest.fixture(scope="module")
def console_server() -> Iterator[ConsoleServer]:
    """The home's background server in a fresh home, with a second organization."""
    home = Path(tempfile.mkdtemp(prefix="vi-flow-console-"))
    server = _start(home)
    try:
        org = server.call("POST", "/organizations", {"name": "other team"})["organizationId"]
        server.other_token = server.call("POST", f"/organizations/{org}/tokens", {"name": "them"})[
            "token"
        ]
        yield server
    finally:
        env = {**os.environ, "VI_FLOW_HOME": str(home)}
        subprocess.run(
            [VI_FLOW, "server", "stop", "--force"], env=env, capture_output=True, timeout=90
        )
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (skipped without them, unless required)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("VI_FLOW_REQUIRE_BROWSER", "Playwright is not installed", HOW_TO)
    if not Path(CHROMIUM).exists():
        unavailable("VI_FLOW_REQUIRE_BROWSER", f"no Chromium at {CHROMIUM}", HOW_TO)
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium's own sandbox cannot start as root in a container
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@attrs.define
class Visit:
    """One browser context on the console: its page, and any request that left the origin
    or script error (``problems``: the test fails unless it is empty)."""

    page: Any
    context: Any
    root: str
    problems: list[str] = attrs.Factory(list)
    shots: Path = Path()

    def shot(self, name: str, *, full_page: bool = True) -> None:
        """Save a screenshot (into docs/img/ when VI_FLOW_DOCS_SCREENSHOTS=1)."""
        self.shots.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.shots / f"console-{name}.png"), full_page=full_page)


@pytest.fixture
def visit(browser: Any, console_server: ConsoleServer, tmp_path: Path) -> Iterator[Any]:
    """Open browser contexts on the console; fail if any request leaves the server's origin."""
    opened: list[Visit] = []
    shots = DOCS_IMG if os.environ.get("VI_FLOW_DOCS_SCREENSHOTS") == "1" else tmp_path

    def open_one(width: int = 1280, height: int = 860) -> Visit:
        context = browser.new_context(viewport={"width": width, "height": height})
        one = Visit(context.new_page(), context, console_server.root, shots=shots)

        def guard(route: Any) -> None:
            url = route.request.url
            if url == one.root or url.startswith(one.root + "/"):
                route.continue_()
            else:
                one.problems.append(url)
                route.abort()

        context.route("**/*", guard)
        one.page.on("pageerror", lambda exc: one.problems.append(f"page error: {exc}"))
        opened.append(one)
        return one

    yield open_one
    for one in opened:
        one.context.close()
    assert [u for one in opened for u in one.problems] == []


def http_status(url: str, cookie: str = "") -> int:
    """The status of a plain GET (no redirects followed)."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with opener.open(request, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
