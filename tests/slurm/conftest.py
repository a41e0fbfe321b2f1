"""A real one-host Slurm cluster for the tests in this folder, started once per session.

``scripts/slurm/start_cluster.sh`` starts munged, slurmctld, slurmd and slurmrestd (JWT)
on free loopback ports with four fake H100 GPUs, under a fresh scratch directory;
``stop_cluster.sh`` stops exactly those processes at the end. Without the Slurm packages
(or without root) the tests skip with a note on how to run them; with
``VI_FLOW_REQUIRE_SLURM=1`` (CI) they fail instead, so they are never silently skipped.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.providers_kit import Updates, unavailable
from vi_flow.models.tasks import TaskConfig
from vi_flow.server.providers.base import LaunchSpec
from vi_flow.server.providers.slurm import SlurmProvider, SlurmSettings

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "slurm"
BINARIES = ("munged", "slurmctld", "slurmd", "slurmrestd", "scontrol", "sinfo")
HOW_TO = "run `nox -s tests_slurm` (it needs root and the slurm-wlm, slurmrestd, "
HOW_TO += "slurm-wlm-jwt-plugin and munge packages)"


@attrs.frozen
class SlurmCluster:
    """Where the session's cluster lives and how to reach it."""

    work: Path
    url: str
    user: str
    token_file: Path
    jobs_dir: Path
    slurm_conf: Path

    def restart_slurmd(self, hiding: Path | None = None) -> None:
        """Restart the node's slurmd; with ``hiding``, in a mount namespace where an empty
        tmpfs covers that directory (a node that does not share it), until the next call.
        """
        node = self.run("sinfo", "-h", "-N", "-o", "%N").split()[0]
        command = ["slurmd", "-D", "-N", node]
        if hiding is not None:
            mount = f"mount -t tmpfs -o size=1m vi-flow-hidden {shlex.quote(str(hiding))}"
            sh = f"{mount} && exec {shlex.join(command)}"
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", sh]
        daemon = self._respawn("slurmd", command)
        deadline = time.monotonic() + 20
        while "idle" not in self.run("sinfo", "-h", "-N", "-o", "%T"):
            assert daemon.poll() is None, f"slurmd exited ({daemon.returncode})"
            assert time.monotonic() < deadline, "the node did not come back idle"
            time.sleep(0.1)

    def restart_slurmctld(self, down_for: float) -> None:
        """Stop the controller, leave it down ``down_for`` seconds, start it again (its
        state kept) and wait until it answers (blocking: call it in a thread)."""
        try:
            self._stop("slurmctld")
            time.sleep(down_for)
        finally:
            daemon = self._respawn("slurmctld", ["slurmctld", "-D", "-i"])
        deadline = time.monotonic() + 20
        while subprocess.run(["scontrol", "ping"], env=self._env, capture_output=True).returncode:
            assert daemon.poll() is None, f"slurmctld exited ({daemon.returncode})"
            assert time.monotonic() < deadline, "slurmctld did not answer again"
            time.sleep(0.1)

    @property
    def _env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.slurm_conf)}

    def _respawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        """Stop daemon ``name`` (if it runs) and start ``command`` in its place, where
        stop_cluster.sh will find it."""
        slurm = self.work / "slurm"
        self._stop(name)
        with (slurm / "log" / f"{name}.out").open("ab") as log:
            daemon = subprocess.Popen(
                command,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        _DAEMONS[daemon.pid] = daemon
        (slurm / "run" / f"{name}.pid").write_text(f"{daemon.pid}\n")
        return daemon

    def _stop(self, name: str) -> None:
        """Stop daemon ``name`` if it runs (slurmctld removes its pid file as it exits)."""
        pid_file = self.work / "slurm" / "run" / f"{name}.pid"
        if pid_file.exists():
            _stop(int(pid_file.read_text()))

    def run(self, *argv: str) -> str:
        """Run a Slurm command (``scancel``, ``squeue``, ...) against this cluster."""
        env = {**os.environ, "SLURM_CONF": str(self.slurm_conf)}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)
        if done.returncode:
            raise AssertionError(f"{argv} failed ({done.returncode}): {done.stderr}")
        return done.stdout


#: The daemons the tests started themselves, by pid (reaped when stopped).
_DAEMONS: dict[int, subprocess.Popen[bytes]] = {}


def _stop(pid: int) -> None:
    """SIGTERM a daemon of the cluster and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    own = _DAEMONS.pop(pid, None)
    if own is not None:
        own.wait(timeout=10)
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not stop")


def _unavailable(reason: str) -> None:
    unavailable("VI_FLOW_REQUIRE_SLURM", reason, HOW_TO)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / name)], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start the cluster once for the session (or skip/fail when Slurm is not installed)."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        _unavailable(f"the Slurm binaries {missing} are not installed")
    if os.geteuid() != 0:
        _unavailable("the Slurm cluster needs root")
    work = Path(tempfile.mkdtemp(prefix="vi-flow-slurm-"))
    work.chmod(0o755)  # slurmrestd (user slurm) and munged (user munge) read under it
    rest, ctld, slurmd = _free_ports(3)
    env = {
        **os.environ,
        "WORK": str(work),
        "VI_FLOW_SLURM_REST_PORT": str(rest),
        "VI_FLOW_SLURMCTLD_PORT": str(ctld),
        "VI_FLOW_SLURMD_PORT": str(slurmd),
        "VI_FLOW_SLURM_USER": "root",
        "VI_FLOW_SLURM_WATCH_PID": str(os.getpid()),
    }
    started = _script("start_cluster.sh", env)
    try:
        if started.returncode:
            _unavailable(f"start_cluster.sh failed:\n{started.stdout}{started.stderr}")
        slurm = work / "slurm"
        yield SlurmCluster(
            work=work,
            url=f"http://127.0.0.1:{rest}",
            user="root",
            token_file=slurm / "token",
            jobs_dir=slurm / "jobs",
            slurm_conf=slurm / "slurm.conf",
        )
    finally:
        _script("stop_cluster.sh", env)
        for pid in list(_DAEMONS):  # daemons a test restarted: stopped by the script, reaped here
            _stop(pid)
        if os.environ.get("VI_FLOW_SLURM_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def slurm_server(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """The embedded server of this test's ``VI_FLOW_HOME``, with Slurm as its provider.

    Clients made afterwards without arguments share it (the embedded server is
    reference-counted per home), so SDK code runs unchanged against Slurm.
    """
    from vi_flow.server import embedded

    # not under tmp_path: tests upload tmp_path into tasks, which must not include them
    settings = server_settings(slurm_cluster, tmp_path_factory.mktemp("slurm-server"))
    home = Path(os.environ["VI_FLOW_HOME"])
    server = embedded.acquire(home, provider="slurm", extra={"slurm": settings})
    try:
        yield server
    finally:
        embedded.release(server)


def server_settings(cluster: SlurmCluster, files: Path) -> dict[str, Any]:
    """A server's ``extra["slurm"]`` for this cluster, its task and volume directories
    under ``files`` (servers sharing the cluster share them), polling fast."""
    return {
        "url": cluster.url,
        "user": cluster.user,
        "token_file": str(cluster.token_file),
        "tasks_dir": str(files / "tasks"),
        "volumes_dir": str(files / "volumes"),
        "slurm_conf": str(cluster.slurm_conf),
        "poll_interval": 0.05,
        "idle_poll_interval": 0.5,
    }


# -- the provider on this cluster, for tests of the provider protocol --------------------


def settings_for(cluster: SlurmCluster, tmp_path: Path, **changes: object) -> SlurmSettings:
    values: dict[str, object] = {
        "url": cluster.url,
        "user": cluster.user,
        "token_file": cluster.token_file,
        "tasks_dir": tmp_path / "tasks",
        "volumes_dir": tmp_path / "volumes",
        "slurm_conf": str(cluster.slurm_conf),
        "poll_interval": 0.05,
        "idle_poll_interval": 0.5,
        **changes,
    }
    return SlurmSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def updates() -> Updates:
    return Updates(within=8)


@pytest.fixture
async def provider(
    slurm_cluster: SlurmCluster, tmp_path: Path, updates: Updates
) -> AsyncIterator[SlurmProvider]:
    provider = SlurmProvider(settings_for(slurm_cluster, tmp_path))
    await provider.start(updates)
    try:
        yield provider
    finally:
        for task_id in list(provider._tracked):
            await provider.cancel(task_id, 0)
        await provider.close()


async def launch(
    provider: SlurmProvider,
    task_id: str,
    command: str,
    env: dict[str, str] | None = None,
    **config: object,
) -> LaunchSpec:
    task_config = TaskConfig(name=task_id, command=command, **config)  # type: ignore[arg-type]
    spec = LaunchSpec(
        task_id=task_id,
        organization_id="org_default",
        config=task_config,
        placement=await provider.place(task_config),
        argv=["/bin/sh", "-c", command],
        env={"VI_FLOW_TASK_ID": task_id, **(env or {})},
        paths=provider.task_paths(task_id),
        max_run_time=task_config.max_run_time,
    )
    await provider.submit(spec)
    return spec
