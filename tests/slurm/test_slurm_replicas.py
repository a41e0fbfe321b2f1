"""Replicas on one PostgreSQL database share one Slurm cluster: one of them polls it.

Two servers with the Slurm provider serve one schema. The cluster is polled by one at a
time (a lock held by its heartbeating session); a task submitted to the other one is
watched by the poller, and when the poller stops the other takes the polling over and
reports the end of the task that was running.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.live_server import LiveServer, Starter
from vi_flow.server.state import ServerSettings
from vi_flow.server.tasks import TASKS_KEY

from .conftest import SlurmCluster, server_settings

pytestmark = [pytest.mark.slurm, pytest.mark.anyio, pytest.mark.timeout(120)]


def _polls(server: LiveServer) -> bool:
    return bool(server.app[TASKS_KEY].provider._polling)  # type: ignore[attr-defined]


async def _until(check: Any, seconds: float, what: str) -> None:
    for _ in range(int(seconds / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds} s")


async def _status(server: LiveServer, task_id: str) -> str:
    return str((await server.call("GET", f"/tasks/{task_id}")).body["status"])


async def test_one_replica_polls_the_cluster_and_hands_over_when_it_stops(
    postgres_schema: str, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    files = tmp_path / "files"  # the task and volume directories every replica shares
    async with Starter(LiveServer) as starter:
        servers = [
            await starter.start(ServerSettings(
                home=tmp_path / name, provider="slurm", database=postgres_schema,
                extra={"slurm": server_settings(slurm_cluster, files)}, replica_lease=1.0,
                replica_name=name,
            ))
            for name in ("a", "b")
        ]  # fmt: skip

        async def one_polls() -> bool:
            return sum(_polls(s) for s in servers) == 1

        await _until(one_polls, 10, "one replica polls the cluster")
        poller, other = sorted(servers, key=_polls, reverse=True)
        # a task submitted to the replica that does not poll: the poller watches it
        quick = await other.call("POST", "/tasks", json={"command": "echo hi"})
        assert quick.status == 201, quick.body

        async def quick_done() -> bool:
            return await _status(other, quick.body["taskId"]) == "completed"

        await _until(quick_done, 30, "the task submitted to the other replica completes")
        # the poller stops while a task runs: the other one polls from then on
        slow = await other.call("POST", "/tasks", json={"command": "sleep 3"})
        assert slow.status == 201, slow.body

        async def slow_running() -> bool:
            return await _status(other, slow.body["taskId"]) == "running"

        await _until(slow_running, 30, "the slow task runs")
        await poller.runner.cleanup()

        async def other_polls() -> bool:
            return _polls(other)

        await _until(other_polls, 10, "the other replica takes the polling over")

        async def slow_done() -> bool:
            return await _status(other, slow.body["taskId"]) == "completed"

        await _until(slow_done, 30, "the running task's end is reported by the new poller")
