"""The console while its server is away: a banner says so, and goes once it is back.

A server of this module's own (its home, a fixed port) is stopped and started again
under an open page, as ``vi-flow serve`` under systemd would be.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import VI_FLOW, ConsoleServer, _serve

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

BANNER = "#unreachable"


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vi-flow-outage-"))  # short: the sandbox mounts it
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_banner_says_the_server_is_away_until_it_is_back(
    browser: Any, home: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    argv = [VI_FLOW, "serve", "--port", str(_free_port()), "--home", str(home)]
    env = {k: v for k, v in os.environ.items() if k != "VI_FLOW_API_KEY"}
    context = browser.new_context()
    problems: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        with _serve(argv, env, tmp_path / "first.log") as root:
            server = ConsoleServer(home, root, (home / "admin-token").read_text().strip())
            flow = server.flow("still-here", {"block": "emit", "settings": {"count": 1}})

            def guard(route: Any) -> None:  # nothing but the server's own origin
                if route.request.url.startswith(root + "/"):
                    route.continue_()
                else:
                    problems.append(route.request.url)
                    route.abort()

            context.route("**/*", guard)
            page.goto(server.sign_in_url())
            page.wait_for_selector("#signout:not([hidden])")
            page.click("nav a:text-is('Flows')")
            expect(page.locator("main")).to_contain_text("still-here")
            expect(page.locator(BANNER)).to_be_hidden()

        # Stopped: every page checks its session every 3 s, the lists poll every 2 s.
        expect(page.locator(BANNER)).to_be_visible(timeout=15_000)
        expect(page.locator(BANNER)).to_contain_text("cannot be reached")
        page.click("nav a:text-is('Tasks')")  # a page that cannot be drawn meanwhile
        expect(page.locator("main")).to_contain_text("cannot be reached")

        with _serve(argv, env, tmp_path / "second.log"):
            expect(page.locator(BANNER)).to_be_hidden(timeout=15_000)
            # the page that failed is drawn again, in the same session (kept in the home)
            expect(page.locator("main h1")).to_have_text("Tasks", timeout=10_000)
            expect(page.locator("#who")).to_have_text("org_default")
            page.click("nav a:text-is('Flows')")
            expect(page.locator(f"main a[href='/flows/{flow}']")).to_be_visible()
    finally:
        context.close()
    assert problems == []
