"""The Ray compute provider on the real local head, through the provider protocol.

What the SDK tests cannot reach: recovery after a server restart, and where the head's
ports listen.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.providers_kit import Updates
from vi_flow.models.tasks import TaskConfig, TaskStatus
from vi_flow.server.providers.base import (
    ComputeProvider,
    LaunchSpec,
    RunningTask,
    UnsupportedOperation,
)
from vi_flow.server.providers.ray import RayProvider, RaySettings

from .conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.anyio]


def settings_for(cluster: RayCluster, files: Path) -> RaySettings:
    return RaySettings(
        url=cluster.url,
        tasks_dir=files / "tasks",
        volumes_dir=files / "volumes",
        poll_interval=0.05,
        idle_poll_interval=0.5,
    )


@pytest.fixture
async def provider(ray_cluster: RayCluster, ray_files: Path) -> AsyncIterator[RayProvider]:
    provider = RayProvider(settings_for(ray_cluster, ray_files))
    await provider.start(Updates(within=20))
    try:
        yield provider
    finally:
        await provider.close()


async def spec_for(provider: RayProvider, task_id: str, command: str) -> LaunchSpec:
    config = TaskConfig(name=task_id, command=command)
    return LaunchSpec(
        task_id=task_id,
        organization_id="org_default",
        config=config,
        placement=await provider.place(config),
        argv=["/bin/sh", "-c", command],
        env={"VI_FLOW_TASK_ID": task_id},
        paths=provider.task_paths(task_id),
    )


async def test_is_a_compute_provider(provider: RayProvider) -> None:
    assert isinstance(provider, ComputeProvider)
    assert provider.name == "ray"
    with pytest.raises(UnsupportedOperation, match="Ray cannot run them there"):
        provider.exec_prefix("task_x", "task_x")  # never a shell on the server's host


async def test_recover_watches_a_running_job_and_resubmits_an_unsent_one(
    provider: RayProvider, ray_cluster: RayCluster, ray_files: Path
) -> None:
    task_id = f"task_recover{time.time_ns()}"
    spec = await spec_for(provider, task_id, "echo up; sleep 60")
    await provider.submit(spec)
    assert isinstance(provider._sink, Updates)
    running = await provider._sink.wait(task_id, TaskStatus.RUNNING)
    await provider.close()  # as if the server had stopped; the Ray job runs on
    unsent = await spec_for(provider, f"task_unsent{time.time_ns()}", "echo late")
    later = Updates(within=20)
    again = RayProvider(settings_for(ray_cluster, ray_files))
    await again.start(later)
    try:
        await again.recover(
            [
                RunningTask(spec, TaskStatus.RUNNING, running.provider_id),
                RunningTask(unsent, TaskStatus.PENDING, None),
            ]
        )
        done = await later.wait(unsent.task_id, TaskStatus.COMPLETED, TaskStatus.FAILED)
        assert (done.status, done.exit_code) == (TaskStatus.COMPLETED, 0)
        assert unsent.paths.stdout.read_text() == "late\n"
        await again.cancel(task_id, 1.0)
        cancelled = await later.wait(task_id, TaskStatus.CANCELLED)
        assert cancelled.reason == "Cancelled"
        assert spec.paths.stdout.read_text() == "up\n"
    finally:
        await again.close()


def _listening_inodes() -> dict[str, str]:
    """inode -> local address of every listening TCP socket (hex, as /proc shows it)."""
    found: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    found[fields[9]] = fields[1].split(":")[0]
    return found


def _session_sockets(sid: int) -> set[str]:
    inodes: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) != sid:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return inodes


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_every_port_of_the_head_listens_on_loopback_only(ray_cluster: RayCluster) -> None:
    head = int((ray_cluster.work / "ray" / "run" / "ray.pid").read_text())
    listening = _listening_inodes()
    addresses = [listening[i] for i in _session_sockets(head) if i in listening]
    loopback_v4 = "0100007F"  # 127.0.0.1, little-endian hex
    loopback_v6 = ("0000000000000000FFFF00000100007F", "00000000000000000000000001000000")
    assert len(addresses) >= 5  # GCS, raylet x2, dashboard, agents, client server...
    assert set(addresses) <= {loopback_v4, *loopback_v6}, addresses
