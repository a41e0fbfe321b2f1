"""``vi-flow console``: a one-time sign-in URL, printed or handed to the user's browser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .conftest import Invoker


def _status(url: str) -> int:
    """The status a browser gets opening ``url`` as a link the user opened."""

    class _Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object) -> None:
            return None

    opened = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    try:
        request = urllib.request.Request(url, headers=opened)
        with urllib.request.build_opener(_Stay).open(request, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_print_url_gives_a_link_that_works_once(vf: Invoker) -> None:
    printed = vf("console", "--print-url")
    assert printed.exit_code == 0, printed.stderr
    url = printed.stdout.strip()
    assert "/console/signin?code=" in url
    token = Path(os.environ["VI_FLOW_HOME"], "admin-token").read_text().strip()
    assert token not in url
    assert _status(url) == 200  # the page, with the session cookie
    assert _status(url) == 403  # a used link is refused
    as_json = json.loads(vf("console", "--json").stdout)
    assert as_json["url"].startswith(url.partition("?")[0])


def test_console_opens_the_browser_with_the_link(vf: Invoker, tmp_path: Path) -> None:
    seen = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {seen}\n')
    browser.chmod(0o755)
    env = {**os.environ, "BROWSER": str(browser)}
    done = subprocess.run(
        [sys.executable, "-m", "vi_flow.cli", "console"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Opened the console" in done.stderr
    assert _status(seen.read_text().strip()) == 200


def test_a_key_the_server_refuses_exits_3(vf: Invoker) -> None:
    refused = vf("--api-key", "vf_not-a-key", "console", "--print-url")
    assert refused.exit_code == 3, refused.stderr
