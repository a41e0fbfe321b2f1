"""How a Slurm task ended and why it waits, in the figures every provider reports.

The endings match tests/tasks_server/test_exits.py (local) and tests/ray/test_ray_exits.py:
``exit 3``, ``kill -9 $$``, a cancel and a time limit. Then what only Slurm says: a down
partition, a drained node, and a node that does not mount the task directory (its slurmd
restarted in a mount namespace). Every test that changes the cluster puts it back, even
when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.providers_kit import TIME_LIMIT_MESSAGE, Updates
from tests.proxy import CuttingProxy
from vi_flow.models.tasks import TaskConfig, TaskStatus
from vi_flow.server.providers.base import LaunchSpec, Placement, RunningTask, TaskUpdate
from vi_flow.server.providers.slurm import SlurmProvider

from .conftest import SlurmCluster, launch, settings_for

pytestmark = [pytest.mark.slurm, pytest.mark.anyio]

FAILED, CANCELLED, COMPLETED = TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.COMPLETED


def figures(update: TaskUpdate) -> tuple[Any, ...]:
    return update.status, update.exit_code, update.signal, update.reason


async def ended(updates: Updates, task_id: str) -> TaskUpdate:
    return await updates.wait(task_id, COMPLETED, FAILED, CANCELLED)


async def test_exit_3_is_exit_code_3(provider: SlurmProvider, updates: Updates) -> None:
    await launch(provider, "task_x3", "exit 3")
    done = await ended(updates, "task_x3")
    assert figures(done) == (FAILED, 3, None, "NonZeroExit")
    assert done.message == "exited with status 3"


async def test_kill_9_is_signal_9(provider: SlurmProvider, updates: Updates) -> None:
    await launch(provider, "task_k9", "kill -9 $$")
    done = await ended(updates, "task_k9")
    assert figures(done) == (FAILED, None, 9, "Killed")
    assert done.message == "killed by SIGKILL (signal 9)"


async def test_sigquit_is_signal_3(provider: SlurmProvider, updates: Updates) -> None:
    # QA AY: the batch shell re-raised it with bash's kill, but bash ignores SIGQUIT
    # itself: the job "exited with status 131"
    await launch(provider, "task_q3", "sh -c 'kill -QUIT $$'")
    done = await ended(updates, "task_q3")
    assert figures(done)[:3] == (FAILED, None, 3)


async def test_exit_147_ends_as_exit_code_147(provider: SlurmProvider, updates: Updates) -> None:
    # QA AA: the batch shell turned 147 into `kill -19 $$`, stopped itself, and the job
    # stayed RUNNING for good
    await launch(provider, "task_x147", "exit 147")
    done = await ended(updates, "task_x147")
    assert figures(done) == (FAILED, 147, None, "NonZeroExit")


async def test_cancel_is_sigterm(provider: SlurmProvider, updates: Updates) -> None:
    spec = await launch(provider, "task_cx", "echo up; sleep 60")
    await updates.wait("task_cx", TaskStatus.RUNNING)
    for _ in range(400):  # the command runs (not only its job): cancelled mid-setup,
        if spec.paths.stdout.exists() and spec.paths.stdout.read_text():  # Slurm may say 143
            break
        await asyncio.sleep(0.02)
    await provider.cancel("task_cx", 1.0)
    assert figures(await ended(updates, "task_cx")) == (CANCELLED, None, 15, "Cancelled")


# Saves on SIGTERM, taking half a second (the test cluster's KillWait is 2 s).
_SAVES_ON_TERM = (
    "trap 'echo got-term; sleep 0.5; echo saved; exit 0' TERM; echo up; while :; do sleep 0.1; done"
)


@pytest.mark.parametrize("ending", ["cancel", "time limit"])
async def test_a_task_has_killwait_to_end_on_sigterm(
    provider: SlurmProvider, updates: Updates, ending: str
) -> None:
    # QA AU: the batch shell died of Slurm's SIGTERM at once, bwrap with it, and the
    # sandbox was killed before the task's handler saved anything ("got-term" and no
    # "saved"), where the local provider gives a grace
    limit = 2.0 if ending == "time limit" else None
    spec = await launch(provider, "task_term", _SAVES_ON_TERM, max_run_time=limit)
    await updates.wait("task_term", TaskStatus.RUNNING)
    for _ in range(400):
        if "up" in spec.paths.stdout.read_text() if spec.paths.stdout.exists() else False:
            break
        await asyncio.sleep(0.02)
    if ending == "cancel":
        await provider.cancel("task_term", 5.0)
    await ended(updates, "task_term")
    assert spec.paths.stdout.read_text().split() == ["up", "got-term", "saved"]


async def test_scancel_signal_usr1_reaches_the_task_alone(
    provider: SlurmProvider, updates: Updates, slurm_cluster: SlurmCluster
) -> None:
    # `scancel --full --signal=USR1` (save a checkpoint) killed the batch shell, bwrap with it,
    # and the task before its handler ran: the job failed of signal 10
    command = "trap 'echo got-usr1; sleep 0.5; echo saved; exit 0' USR1; echo up; while :; do sleep 0.1; done"
    spec = await launch(provider, "task_usr1", command)
    running = await updates.wait("task_usr1", TaskStatus.RUNNING)
    for _ in range(400):
        if "up" in spec.paths.stdout.read_text() if spec.paths.stdout.exists() else False:
            break
        await asyncio.sleep(0.02)
    slurm_cluster.run("scancel", "--full", "--signal=USR1", str(running.provider_id))
    done = await ended(updates, "task_usr1")
    assert (done.status, done.exit_code, done.signal) == (COMPLETED, 0, None)
    assert spec.paths.stdout.read_text().split() == ["up", "got-usr1", "saved"]


@pytest.mark.parametrize("command", ["trap '' TERM; echo up; sleep 301.5", "sleep 301.5 & echo up"])
async def test_nothing_of_a_task_outlives_its_job(
    provider: SlurmProvider, updates: Updates, command: str
) -> None:
    # QA AW: with its sandbox let outlive the batch shell (a first try at the grace
    # above), a task ignoring TERM ran on after its cancel, outside Slurm, and one that
    # left a process behind never ended
    spec = await launch(provider, "task_left", command)
    await updates.wait("task_left", TaskStatus.RUNNING)
    for _ in range(400):
        if "up" in spec.paths.stdout.read_text() if spec.paths.stdout.exists() else False:
            break
        await asyncio.sleep(0.02)
    if command.startswith("trap"):
        await provider.cancel("task_left", 5.0)
    done = await ended(updates, "task_left")
    assert done.status == (CANCELLED if command.startswith("trap") else COMPLETED), done
    for _ in range(100):  # SIGKILL after KillWait (2 s)
        if not _processes_with(b"sleep\x00301.5"):
            break
        await asyncio.sleep(0.1)
    assert _processes_with(b"sleep\x00301.5") == []


def _processes_with(argv: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and Path(f"/proc/{entry}/cmdline").read_bytes().startswith(argv):
                found.append(int(entry))
    return found


async def test_time_limit_is_sigterm(provider: SlurmProvider, updates: Updates) -> None:
    await launch(provider, "task_tl", "sleep 60", max_run_time=1.0)
    done = await ended(updates, "task_tl")
    assert figures(done) == (FAILED, None, 15, "TimeLimit")
    # the local provider's words (QA: Slurm's said nothing of the signal)
    assert done.message == TIME_LIMIT_MESSAGE.format(limit="1")


@pytest.fixture
def partition_down(slurm_cluster: SlurmCluster) -> Iterator[None]:
    slurm_cluster.run("scontrol", "update", "partitionname=debug", "state=down")
    try:
        yield
    finally:
        slurm_cluster.run("scontrol", "update", "partitionname=debug", "state=up")


@pytest.fixture
def node_drained(slurm_cluster: SlurmCluster) -> Iterator[str]:
    node = slurm_cluster.run("sinfo", "-h", "-N", "-o", "%N").split()[0]
    slurm_cluster.run("scontrol", "update", f"nodename={node}", "state=drain", "reason=test")
    try:
        yield node
    finally:  # a test may have resumed it already; Slurm refuses a second resume
        if "drain" in slurm_cluster.run("sinfo", "-h", "-N", "-o", "%T", "-n", node):
            slurm_cluster.run("scontrol", "update", f"nodename={node}", "state=resume")


async def reason_seen(updates: Updates, task_id: str, reason: str, within: float) -> TaskUpdate:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = [u for u in updates.of(task_id) if u.reason == reason]
        if found:
            return found[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{task_id} never showed {reason}: {updates.of(task_id)}")


async def test_a_down_partition_shows_at_the_first_poll(
    provider: SlurmProvider, updates: Updates, partition_down: None
) -> None:
    await launch(provider, "task_pd", "echo never")
    waiting = await reason_seen(updates, "task_pd", "PartitionDown", within=2)
    assert [u.reason for u in updates.of("task_pd")] == ["Queued", "PartitionDown"]
    assert (waiting.status, waiting.raw_reason) == (TaskStatus.PENDING, "PartitionDown")
    assert waiting.message and "PartitionDown" in waiting.message


async def test_a_drained_node_keeps_the_task_pending_not_failed(
    provider: SlurmProvider, updates: Updates, slurm_cluster: SlurmCluster, node_drained: str
) -> None:
    await launch(provider, "task_dr", "echo ran")
    waiting = await reason_seen(updates, "task_dr", "ReqNodeNotAvail", within=3)
    assert waiting.status == TaskStatus.PENDING
    assert waiting.raw_reason == (
        "Required node not available (down, drained or reserved) (Slurm error 2068)"
    )
    slurm_cluster.run("scontrol", "update", f"nodename={node_drained}", "state=resume")
    done = await ended(updates, "task_dr")
    assert figures(done) == (COMPLETED, 0, None, "Completed")


@pytest.fixture
def node_without_tasks_dir(slurm_cluster: SlurmCluster, tmp_path: Path) -> Iterator[str]:
    """The node's slurmd in a mount namespace where the tasks directory is an empty tmpfs."""
    tasks_dir = tmp_path / "tasks"  # what settings_for gives the provider
    tasks_dir.mkdir(parents=True, exist_ok=True)
    slurm_cluster.restart_slurmd(hiding=tasks_dir)
    try:
        yield slurm_cluster.run("sinfo", "-h", "-N", "-o", "%N").split()[0]
    finally:
        slurm_cluster.restart_slurmd()


async def test_a_node_that_does_not_mount_the_task_directory_is_named(
    provider: SlurmProvider, updates: Updates, node_without_tasks_dir: str
) -> None:
    spec = await launch(provider, "task_mnt", "echo never")
    done = await ended(updates, "task_mnt")
    assert figures(done) == (FAILED, None, None, "LaunchFailed")
    assert done.raw_reason == "JobLaunchFailure"
    assert done.message == (
        f"Slurm could not launch job {done.provider_id} on node {node_without_tasks_dir}: "
        f"could not open the task's log files there; the task directory {spec.paths.root} "
        f"is not shared with node {node_without_tasks_dir}"
    )


async def test_a_controller_restart_is_waited_out_not_final(
    provider: SlurmProvider, updates: Updates, slurm_cluster: SlurmCluster
) -> None:
    await launch(provider, "task_ctl", "sleep 4")
    await updates.wait("task_ctl", TaskStatus.RUNNING)
    await asyncio.to_thread(slurm_cluster.restart_slurmctld, 3.0)  # polls fail meanwhile
    assert figures(await ended(updates, "task_ctl")) == (COMPLETED, 0, None, "Completed")
    assert [u.status for u in updates.of("task_ctl")][-2:] == [TaskStatus.RUNNING, COMPLETED]


async def test_a_task_resubmitted_while_slurmrestd_is_unreachable_waits_for_it(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    # After a restart the server submits the tasks that never reached Slurm. With
    # slurmrestd unreachable they stay pending and go in once it answers again.
    rest_port = int(slurm_cluster.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(rest_port)
    await proxy.start()
    await proxy.stop()  # nothing listens on proxy.port now: connections are refused
    settings = settings_for(slurm_cluster, tmp_path, url=f"http://127.0.0.1:{proxy.port}")
    provider, updates = SlurmProvider(settings), Updates(within=10)
    await provider.start(updates)
    spec = LaunchSpec(
        task_id="task_unreached",
        organization_id="org_default",
        config=TaskConfig(name="task_unreached", command="echo late"),
        placement=Placement("cpu"),
        argv=["/bin/sh", "-c", "echo late"],
        env={"VI_FLOW_TASK_ID": "task_unreached"},
        paths=provider.task_paths("task_unreached"),
    )
    server = None
    try:
        await provider.recover([RunningTask(spec, TaskStatus.PENDING, None)])
        waiting = updates.of("task_unreached")
        assert [(u.status, u.reason) for u in waiting] == [(TaskStatus.PENDING, "Queued")]
        assert waiting[0].message and "cannot be reached" in waiting[0].message
        await asyncio.sleep(1)  # a few polls fail; none fails the task
        assert {u.status for u in updates.of("task_unreached")} == {TaskStatus.PENDING}
        server = await asyncio.start_server(proxy._handle, "127.0.0.1", proxy.port)
        done = await ended(updates, "task_unreached")
        assert figures(done) == (COMPLETED, 0, None, "Completed")
        assert spec.paths.stdout.read_text() == "late\n"
    finally:
        await provider.close()
        if server is not None:
            server.close()
            proxy.cut()
            await server.wait_closed()
