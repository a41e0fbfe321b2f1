"""The console behind a real nginx that serves the server under a path prefix (``/vf/``).

The proxy strips the prefix, so the server never sees it: the page must find its files,
the API and its own pages from where the browser is. nginx is Debian's (``nox -s
tests_browser`` installs it when missing); without it the test skips saying so, and with
``VI_FLOW_REQUIRE_BROWSER=1`` it fails instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.providers_kit import unavailable
from tests.server.test_proxy_nginx import NGINX_MAIN, _free_port, _wait_listening

from .conftest import VI_FLOW, ConsoleServer, _serve, stop_process

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

# The configuration QA reported the console stuck on "Loading…" behind.
PREFIXED = """    server {{
        listen 127.0.0.1:{port};
        location /vf/ {{
            proxy_pass http://127.0.0.1:{upstream}/;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_buffering off;
        }}
    }}"""


def _nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        how = (
            "run 'nox -s tests_browser' (installs Debian's nginx as root) or apt-get install nginx"
        )
        unavailable("VI_FLOW_REQUIRE_BROWSER", "nginx is not installed", how)
    return str(found)


@contextlib.contextmanager
def _nginx(port: int, upstream: int, tmp: Path) -> Iterator[None]:
    """nginx on ``port`` serving ``upstream`` under ``/vf/``."""
    binary = shutil.which("nginx") or next(iter(glob.glob("/usr/sbin/nginx")), None)
    if binary is None:
        how = (
            "run 'nox -s tests_browser' (installs Debian's nginx as root) or apt-get install nginx"
        )
        unavailable("VI_FLOW_REQUIRE_BROWSER", "nginx is not installed", how)
    server = PREFIXED.format(port=port, upstream=upstream)
    (tmp / "nginx.conf").write_text(NGINX_MAIN.format(tmp=tmp, conf=server))
    with (tmp / "stderr.log").open("wb") as err:
        argv = [binary, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)]
        proc = subprocess.Popen(argv, stdout=err, stderr=err)
    try:
        _wait_listening(port, proc, tmp)
        yield
    finally:
        stop_process(proc, signal.SIGQUIT, 10)


@pytest.fixture(scope="module")
def prefixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ConsoleServer, str]]:
    """A server behind nginx under ``/vf/``, started with the proxy's ``--public-url`` as
    docs/production.md says: the server, and the console's root (``http://.../vf``)."""
    tmp = tmp_path_factory.mktemp("prefixed")
    home = Path(tempfile.mkdtemp(prefix="vi-flow-prefixed-"))  # short: the sandbox mounts it
    port = _free_port()
    root = f"http://127.0.0.1:{port}/vf"
    argv = [VI_FLOW, "serve", "--port", "0", "--home", str(home), "--public-url", root]
    env = {k: v for k, v in os.environ.items() if k != "VI_FLOW_API_KEY"}
    try:
        with _serve(argv, env, tmp / "server.log") as direct:
            server = ConsoleServer(home, direct, (home / "admin-token").read_text().strip())
            with _nginx(port, int(direct.rsplit(":", 1)[1]), tmp):
                yield server, root
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _sign_in_url(server: ConsoleServer, base_url: str) -> str:
    """``vi-flow console --print-url`` with the proxy's API URL, as a user behind it runs it."""
    env = {**server.env(), "VI_FLOW_BASE_URL": base_url}
    done = subprocess.run(
        [VI_FLOW, "console", "--print-url"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_console_works_behind_a_proxy_under_a_path_prefix(
    visit: Any, prefixed: tuple[ConsoleServer, str]
) -> None:
    server, root = prefixed
    flow = server.flow("prefixed", {"block": "emit", "settings": {"count": 3}})
    run = server.call("POST", f"/flows/{flow}/jobs", {"message": "hi"})["executionId"]
    task = server.call("POST", "/tasks", {"command": "echo through-the-prefix"})["taskId"]
    url = _sign_in_url(server, root + "/v1")
    assert url.startswith(root + "/console/signin?code=")
    one = visit()
    one.root = root  # the visit fails on any request outside the prefix
    failed: list[str] = []
    one.page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))

    one.page.goto(url)
    one.page.wait_for_selector("#signout:not([hidden])")
    assert one.page.url == root + "/"
    assert one.page.inner_text("#who") == "org_default"
    one.page.wait_for_selector(f"#runs tr[data-run='{run}']")

    one.page.goto(f"{root}/runs/{run}")  # a page's own address, two folders deep
    one.page.wait_for_selector(".ev-type:text-is('flow_completed')")
    one.page.click("nav a:text-is('Tasks')")
    one.page.wait_for_selector(f"#tasks tr[data-task='{task}']")
    assert one.page.url == root + "/tasks"
    assert one.page.inner_text("nav a[aria-current=page]") == "Tasks"
    one.page.click(f"#tasks a:text-is('{task}')")
    one.page.wait_for_selector(".log-line:text-is('through-the-prefix')")
    assert one.page.url == f"{root}/tasks/{task}"

    one.page.go_back()
    one.page.wait_for_selector(f"#tasks tr[data-task='{task}']")
    one.page.go_back()
    one.page.wait_for_selector(".ev-type:text-is('flow_completed')")
    assert one.page.url == f"{root}/runs/{run}"
    one.page.click("a.brand")
    one.page.wait_for_selector(f"#runs tr[data-run='{run}']")
    assert one.page.url == root + "/"
    assert failed == []

    answer = one.page.goto(f"{root}/no/such/page")  # the 404 page finds its script too
    assert answer is not None and answer.status == 404
    path = urlsplit(root).path
    one.page.wait_for_selector(f"text=There is no page at {path}/no/such/page.")
    one.page.click("#signout")  # a change: from the proxy's origin, which --public-url names
    one.page.wait_for_selector("text=You signed out.")
