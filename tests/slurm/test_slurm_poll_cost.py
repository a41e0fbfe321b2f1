"""What watching tasks costs a shared cluster: the server polls only its own jobs.

Another user (``nobody``) queues 2,000 held jobs, as on a busy site; the whole queue is
about 6 MB as ``GET /jobs`` (what vi_flow used to fetch every 0.2 s). The server watches
10 tasks of its own and must spend under 5 % of a core on it (about 0.1 % here). The
foreign jobs are cancelled afterwards, also when the test fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.providers_kit import Updates
from vi_flow.server.providers.slurm import SlurmProvider

from .conftest import SlurmCluster, launch, settings_for

pytestmark = [pytest.mark.slurm, pytest.mark.anyio]

FOREIGN = 2000
FOREIGN_NAME = "vi-flow-test-foreign"


@pytest.fixture(scope="module")
def foreign_jobs(slurm_cluster: SlurmCluster) -> Iterator[int]:
    """2,000 held jobs of user ``nobody`` (one ``sbatch`` loop; about 10 s)."""
    loop = (
        f"for i in $(seq {FOREIGN}); do sbatch -Q --hold -J {FOREIGN_NAME} "
        "--output=/dev/null --chdir=/tmp --wrap true || exit 1; done"
    )
    env = {**os.environ, "SLURM_CONF": str(slurm_cluster.slurm_conf)}
    try:
        subprocess.run(
            ["runuser", "-u", "nobody", "--", "bash", "-c", loop], env=env, check=True, timeout=300
        )
        queued = slurm_cluster.run("squeue", "-h", "-u", "nobody", "-n", FOREIGN_NAME)
        yield len(queued.splitlines())
    finally:
        slurm_cluster.run("scancel", "-u", "nobody", "-n", FOREIGN_NAME)


@pytest.mark.timeout(300)  # 2,000 sbatch calls first, then 25 s of watching
async def test_ten_watched_tasks_cost_little_beside_2000_foreign_jobs(
    slurm_cluster: SlurmCluster, tmp_path: Path, foreign_jobs: int
) -> None:
    assert foreign_jobs == FOREIGN
    settings = settings_for(slurm_cluster, tmp_path, poll_interval=0.2, idle_poll_interval=3.0)
    provider, updates = SlurmProvider(settings), Updates(within=30)
    await provider.start(updates)
    try:
        for i in range(10):
            await launch(provider, f"task_watched{i}", "sleep 300")
        await asyncio.sleep(5)  # starts and pending reasons settle; polls back off
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(20)
        share = (time.process_time() - cpu) / (time.monotonic() - wall)
        assert share < 0.05, f"watching 10 tasks took {share:.1%} of a core"
        assert len(provider._tracked) == 10  # all still watched, none lost
    finally:
        for task_id in list(provider._tracked):
            await provider.cancel(task_id, 0)
        await provider.close()
