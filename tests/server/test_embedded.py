"""The in-process server: shared per home, reference-counted, durable across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fresh_schema
from vi_flow.server import embedded


def _call(server: embedded.EmbeddedServer, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        server.base_url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def _running(server: embedded.EmbeddedServer) -> bool:
    return server.running


def test_acquire_is_shared_and_refcounted(tmp_path: Path) -> None:
    first = embedded.acquire(tmp_path / "home")
    second = embedded.acquire(str(tmp_path / "home" / ".." / "home"))
    try:
        assert first is second
        assert first.base_url == f"http://127.0.0.1:{first.port}/v1"
        assert first.url_root == f"http://127.0.0.1:{first.port}"
        assert first.organization_id == "org_default"
        assert _call(first, "GET", "/whoami")["organizationId"] == "org_default"
        embedded.release(second)
        assert _running(first)
        assert _call(first, "GET", "/health") == {"status": "ok"}
    finally:
        embedded.release(first)
    assert not _running(first)
    with pytest.raises(urllib.error.URLError):
        _call(first, "GET", "/health")


def test_restart_on_the_same_home_keeps_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = embedded.acquire(home)
    try:
        flow = _call(server, "POST", "/flows", {"name": "kept", "blocks": [{"block": "template"}]})
        key = server.api_key
    finally:
        embedded.release(server)
    again = embedded.acquire(home)
    try:
        assert again is not server
        assert again.api_key == key
        assert _call(again, "GET", f"/flows/{flow['flowId']}")["spec"]["name"] == "kept"
        assert stat.S_IMODE(os.stat(home / "admin-token").st_mode) == 0o600
    finally:
        embedded.release(again)


def test_threads_acquire_one_server(tmp_path: Path) -> None:
    got: list[embedded.EmbeddedServer] = []
    lock = threading.Lock()

    def grab() -> None:
        server = embedded.acquire(tmp_path / "home")
        with lock:
            got.append(server)

    threads = [threading.Thread(target=grab) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(s) for s in got}) == 1
    for server in got:
        assert server.running
        embedded.release(server)
    assert not got[0].running


def test_two_homes_get_two_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    one = embedded.acquire(tmp_path / "a")
    try:
        with contextlib.ExitStack() as schemas:
            if os.environ.get("VI_FLOW_DATABASE", "").startswith("postgresql"):
                # one server per database and schema: the second home gets a schema of its own
                url = request.getfixturevalue("postgres_url")
                monkeypatch.setenv("VI_FLOW_DATABASE", schemas.enter_context(fresh_schema(url)))
            two = embedded.acquire(tmp_path / "b")
            try:
                assert one.port != two.port and one.api_key != two.api_key
            finally:
                embedded.release(two)
    finally:
        embedded.release(one)


def test_a_stuck_shutdown_step_does_not_hang_or_fail_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A cleanup step that never ends is cancelled after the stop timeout, and logged."""
    from vi_flow.server import serve

    real_create_app = serve.create_app

    async def stuck(app: Any) -> None:
        await asyncio.Event().wait()

    def create_app_with_a_stuck_cleanup(settings: Any) -> Any:
        app = real_create_app(settings)
        app.on_cleanup.insert(0, stuck)
        return app

    monkeypatch.setattr(serve, "create_app", create_app_with_a_stuck_cleanup)
    monkeypatch.setattr(embedded, "_STOP_TIMEOUT", 0.5)
    server = embedded.acquire(tmp_path / "home")
    assert _call(server, "GET", "/health") == {"status": "ok"}
    embedded.release(server)  # returns, does not raise
    assert not _running(server)
    assert "did not stop within" in caplog.text and "stuck" in caplog.text
