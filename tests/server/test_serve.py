"""``run_server`` as a real daemon process: it serves, then exits 0 on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import vi_flow

_SCRIPT = (
    "import sys; from pathlib import Path;"
    "from vi_flow.server import ServerSettings, run_server;"
    "run_server(ServerSettings(home=Path(sys.argv[1]), port=0))"
)
_REPO = Path(__file__).resolve().parents[2]


def _start(home: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(home)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"listening on (http://127\.0\.0\.1:\d+/v1) \(home: (.+)\)", line)
    assert match, line
    assert match.group(2) == str(home)
    return proc, match.group(1)


def _get(base: str, path: str, token: str) -> object:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_until_signalled_then_exits_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    home = tmp_path / "home"
    proc, base = _start(home)
    try:
        token = (home / "admin-token").read_text().strip()
        assert _get(base, "/whoami", token) == {
            "organizationId": "org_default",
            "tokenName": "admin",
            "admin": True,
        }
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert token not in err


def test_a_restarted_daemon_keeps_its_flows(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for round_ in range(2):
        proc, base = _start(home)
        token = (home / "admin-token").read_text().strip()
        try:
            if round_ == 0:
                request = urllib.request.Request(
                    base + "/flows",
                    data=b'{"name": "durable"}',
                    method="POST",
                    headers={"Authorization": f"Bearer {token}"},
                )
                urllib.request.urlopen(request, timeout=10).close()
            items = _get(base, "/flows", token)["items"]  # type: ignore[index]
            assert [f["spec"]["name"] for f in items] == ["durable"]
        finally:
            proc.terminate()
            proc.communicate(timeout=15)
        assert proc.returncode == 0


# anyio is the client's: it and its asyncio backend were 2 MB of an idle server's 49
_LAZY = ("anyio", "difflib", "importlib.metadata", "importlib.resources", "vi_flow.server.openapi")
_IDLE_SCRIPT = f"""
import os, signal, sys, threading, urllib.request
from pathlib import Path
from vi_flow.server import ServerSettings, run_server
home = Path(sys.argv[1])
def ready(port):
    def probe():
        token = (home / "admin-token").read_text().strip()
        request = urllib.request.Request(
            f"http://127.0.0.1:{{port}}/v1/flows", headers={{"Authorization": f"Bearer {{token}}"}}
        )
        urllib.request.urlopen(request, timeout=10).read()
        print(sorted(m for m in {_LAZY!r} if m in sys.modules), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=probe).start()
run_server(ServerSettings(home=home, port=0), ready=ready)
"""


def test_an_idle_server_has_not_loaded_what_few_requests_need(tmp_path: Path) -> None:
    """Idle memory (issue 15): plugins, console files, OpenAPI, spelling hints and the
    client's anyio load late, or never.

    On SQLite, the default whose idle memory is measured (psycopg imports
    ``importlib.metadata`` itself).
    """
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    env.pop("VI_FLOW_DATABASE", None)
    done = subprocess.run(
        [sys.executable, "-c", _IDLE_SCRIPT, str(tmp_path / "home")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_the_startup_line_of_an_ipv6_server_is_a_url_a_client_takes(tmp_path: Path) -> None:
    # QA Z: `vi-flow serve --host ::1` printed "listening on http://::1:PORT/v1", which
    # --base-url refused ("Port could not be cast to integer value")
    home = tmp_path / "home"
    script = _SCRIPT.replace("port=0)", "port=0, host='::1')")
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(home)], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"listening on (http://\S+/v1) ", line)
        assert match and match.group(1).startswith("http://[::1]:"), line
        token = (home / "admin-token").read_text().strip()
        with vi_flow.Client(base_url=match.group(1), api_key=token, max_retries=0) as client:
            assert client.flows.list().items == []
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
