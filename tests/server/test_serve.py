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
