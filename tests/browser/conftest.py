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

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.docs.fake_model import fake_model
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


def stop_process(proc: subprocess.Popen[bytes], sig: signal.Signals, within: float) -> None:
    """Send ``sig`` to ``proc`` (by its pid); kill it if it has not ended ``within`` seconds."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _serve(argv: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """Run ``vi-flow serve`` aside; yield its base URL; SIGTERM it (by pid) afterwards.

    Its log goes to a file, never a pipe: a busy console writes an access line per request,
    and a pipe nobody reads would fill up and stop the server mid-test.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"listening on (http://\S+)/v1", log.read_text())):
            assert proc.poll() is None, f"vi-flow serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"vi-flow serve did not start: {log.read_text()}"
            time.sleep(0.1)
        yield found[1]
    finally:
        stop_process(proc, signal.SIGTERM, 30)
    assert proc.returncode == 0, f"vi-flow serve did not stop cleanly: {log.read_text()[-2000:]}"


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    """``vi-flow serve`` on a fresh home (a scripted model behind its ``llm`` blocks), with
    a second organization."""
    log = tmp_path_factory.mktemp("console") / "server.log"
    home = Path(tempfile.mkdtemp(prefix="vi-flow-console-"))  # short: the sandbox mounts it
    env = {k: v for k, v in os.environ.items() if k != "VI_FLOW_API_KEY"}
    try:
        with fake_model() as model:
            argv = [
                VI_FLOW,
                "--debug",
                "serve",
                "--port",
                "0",
                "--home",
                str(home),
                "--llm-base-url",
                model,
            ]
            with _serve(argv, env, log) as root:
                server = ConsoleServer(home, root, (home / "admin-token").read_text().strip())
                org = server.call("POST", "/organizations", {"name": "other team"})[
                    "organizationId"
                ]
                made = server.call("POST", f"/organizations/{org}/tokens", {"name": "them"})
                server.other_token = made["token"]
                yield server
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (skipped without them, unless required).

    Per module: Playwright's sync API runs an event loop of its own, which must be gone
    before any async test of the same pytest run starts its loop.
    """
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item, so fixtures know whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def visit(
    browser: Any, console_server: ConsoleServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """Open browser contexts on the console; fail if any request leaves the server's origin.

    When the test fails, each page's screenshot is left in ``tmp_path`` (``failed-N.png``).
    """
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
    failed = getattr(request.node, "report_call", None)
    for n, one in enumerate(opened):
        if failed is not None and failed.failed:
            one.page.screenshot(path=str(tmp_path / f"failed-{n}.png"), full_page=True)
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
