"""A real one-host Ray head for the tests in this folder, started once per session.

``scripts/ray/start_ray.sh`` starts ``ray start --head --block`` with every port on
127.0.0.1, 2 CPUs, four fake H100 GPUs and a small object store, under a fresh scratch
directory (short, because Ray's unix sockets live under it); ``stop_ray.sh`` stops exactly
that head at the end. Should the head die during the session (it did once in CI, right
after it answered), the next test's fixture prints the tail of Ray's own logs and starts
it again, at most twice a session. Without the ``ray`` CLI the tests skip with a note on
how to run them; with ``VI_FLOW_REQUIRE_RAY=1`` (CI) they fail instead, so they are never
silently skipped. Tests reach Ray only through vi_flow, except where they play someone
else using the Jobs API (``RayCluster.call``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.providers_kit import unavailable

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "ray"
HOW_TO = 'run `nox -s tests_ray` (or pip install "ray[default]==2.60.0")'


#: How many times a session may start a head again after it died.
RESTARTS = 2


@attrs.define
class RayCluster:
    """Where the session's head lives and how to reach its Jobs API."""

    work: Path
    url: str
    env: dict[str, str] = attrs.field(factory=dict, repr=False)
    restarts: int = 0

    def answers(self) -> bool:
        """Whether the Jobs API answers ``GET /api/version`` now."""
        try:
            self.call("GET", "/api/version")
        except (OSError, ValueError):
            return False
        return True

    def ensure_up(self, report: Callable[[str], object] = print) -> None:
        """Start the head again when it died since the last test, telling ``report`` why
        it died; fail once it has died more than :data:`RESTARTS` times in the session."""
        if self.answers():
            return
        why = self.log_tails()
        if self.restarts >= RESTARTS:
            pytest.fail(f"the Ray head died again after {self.restarts} restarts:\n{why}")
        self.restarts += 1
        report(f"the Ray head died; starting it again ({self.restarts}/{RESTARTS}):\n{why}")
        _script("stop_ray.sh", self.env)
        started = _script("start_ray.sh", self.env)
        if started.returncode:
            pytest.fail(f"start_ray.sh failed:\n{started.stdout}{started.stderr}")

    def log_tails(self, lines: int = 20) -> str:
        """The last lines of the head's own logs: how ``ray start`` and the dashboard ended."""
        logs = self.work / "ray"
        found = [logs / "log" / "ray-start.out"]
        for name in ("dashboard.log", "dashboard.err", "gcs_server.err", "raylet.err"):
            found += sorted(logs.glob(f"tmp/session_2*/logs/{name}"))  # not session_latest
        parts = []
        for path in found:
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                parts.append(f"--- {path.relative_to(logs)}\n" + "\n".join(text))
        return "\n".join(parts) or "(no Ray logs were found)"

    def call(self, method: str, path: str) -> Any:
        """One Jobs API call as another Ray user would make it; None for a 404."""
        request = urllib.request.Request(self.url + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def job(self, submission_id: str) -> dict[str, Any] | None:
        """``GET /api/jobs/{id}``, or None once Ray has forgotten the job."""
        found: dict[str, Any] | None = self.call("GET", f"/api/jobs/{submission_id}")
        return found

    def wait_until_over(self, submission_id: str, timeout: float = 20) -> dict[str, Any] | None:
        """Poll until the job has ended (or is gone); its last record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(submission_id)
            if job is None or job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"Ray job {submission_id} did not end in {timeout} s")

    def wait_until_gone(self, submission_id: str, timeout: float = 20) -> None:
        """Poll until Ray no longer knows the job (someone deleted it)."""
        deadline = time.monotonic() + timeout
        while self.job(submission_id) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"Ray still lists job {submission_id} after {timeout} s")
            time.sleep(0.05)

    def settle(self, tasks_dir: Path) -> None:
        """Leave no job holding CPUs or GPUs for the next test: revoke the start tokens
        of tasks that never started, stop what runs, wait until every job has ended."""
        for token in tasks_dir.glob("*/.vi-flow-env"):
            token.unlink(missing_ok=True)
        if not self.answers():
            return  # the head died, and its jobs with it: the next test starts it again
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            alive = [
                j for j in self.call("GET", "/api/jobs/") if j["status"] in ("PENDING", "RUNNING")
            ]
            if not alive:
                return
            for job in alive:
                if job["status"] == "RUNNING":
                    self.call("POST", f"/api/jobs/{job['submission_id']}/stop")
            time.sleep(0.2)
        raise AssertionError(f"Ray jobs still alive after the test: {alive}")


def _tell(config: pytest.Config, text: str) -> None:
    """Show ``text`` on the terminal now, past pytest's capture."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        terminal.write_line("\n" + text, yellow=True)


def _unavailable(reason: str) -> None:
    unavailable("VI_FLOW_REQUIRE_RAY", reason, HOW_TO)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / name)], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """Start the head once for the session (or skip/fail when Ray is not installed)."""
    if shutil.which("ray") is None:
        _unavailable("the `ray` command is not installed")
    # not pytest's tmp dir: Ray's socket paths under it must stay below 107 bytes
    work = Path(tempfile.mkdtemp(prefix="vi-flow-ray-"))
    port = _free_port()
    env = {
        **os.environ,
        "WORK": str(work),
        "VI_FLOW_RAY_DASHBOARD_PORT": str(port),
        "VI_FLOW_RAY_WATCH_PID": str(os.getpid()),
    }
    started = _script("start_ray.sh", env)
    try:
        if started.returncode:
            _unavailable(f"start_ray.sh failed:\n{started.stdout}{started.stderr}")
        yield RayCluster(work=work, url=f"http://127.0.0.1:{port}", env=env)
    finally:
        _script("stop_ray.sh", env)
        if os.environ.get("VI_FLOW_RAY_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def ray_files(
    ray_cluster: RayCluster,
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[Path]:
    """Task and volume directories for one test; its jobs are settled afterwards."""
    ray_cluster.ensure_up(lambda text: _tell(pytestconfig, text))
    # not under tmp_path: tests upload tmp_path into tasks, which must not include them
    files = tmp_path_factory.mktemp("ray-server")
    yield files
    ray_cluster.settle(files / "tasks")


@pytest.fixture
def ray_server(ray_cluster: RayCluster, ray_files: Path) -> Iterator[object]:
    """The embedded server of this test's ``VI_FLOW_HOME``, with Ray as its provider.

    Clients made afterwards without arguments share it (the embedded server is
    reference-counted per home), so SDK code runs unchanged against Ray.
    """
    from vi_flow.server import embedded

    settings = {
        "url": ray_cluster.url,
        "tasks_dir": str(ray_files / "tasks"),
        "volumes_dir": str(ray_files / "volumes"),
        "poll_interval": 0.05,
        "idle_poll_interval": 0.5,
    }
    home = Path(os.environ["VI_FLOW_HOME"])
    server = embedded.acquire(home, provider="ray", extra={"ray": settings})
    try:
        yield server
    finally:
        embedded.release(server)
