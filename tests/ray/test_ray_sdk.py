"""The public SDK against a local server whose compute provider is a real Ray head.

Each test is something a user of ``vi_flow.AsyncClient`` would notice: what a task prints
and exits with, which GPUs it sees, that cancel works whether Ray runs the job or still
queues it, that a secret never shows in Ray's Jobs API, and clear errors when Ray is down.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import vi_flow
from vi_flow.models.tasks import TaskConfig, TaskStatus

from .conftest import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.anyio]


@pytest.fixture
async def client(ray_server: object) -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as c:
        yield c


async def test_run_logs_follow_status_and_exit_code(client: Any) -> None:
    task = await client.run("echo hello; echo oops >&2; exit 3")
    assert await client.status(task.task_id) in ("pending", "running", "failed")
    assert await task.wait(timeout=20) == TaskStatus.FAILED
    assert task.exit_code == 3
    assert await task.logs() == "hello"
    assert await client.logs(task.task_id, stderr=True) == "oops"
    record = await client.get_task(task.task_id)
    assert (record.data.provider, record.reason) == ("ray", "NonZeroExit")
    assert record.data.provider_id == task.task_id  # the Ray submission id
    assert record.started_at is not None
    counted = await client.run("for i in 1 2 3 4; do echo line$i; sleep 0.2; done")
    assert [line async for line in counted.follow_logs()] == ["line1", "line2", "line3", "line4"]
    assert await client.logs(counted.task_id, tail=2) == "line3\nline4"
    assert await client.status(counted.task_id) == "completed"
    assert "ray" not in sys.modules  # the in-process server talks HTTP, it never imports ray


async def test_the_command_starts_in_its_working_dir(client: Any) -> None:
    # QA AA: working_dir was the local provider's only; on Ray the command started in the
    # workspace. HOME stays the workspace, as everywhere.
    task = await client.run('pwd; echo "$HOME"', working_dir="sub/dir")
    assert await task.wait(timeout=30) == TaskStatus.COMPLETED
    where, home = (await task.logs()).splitlines()
    assert where == f"{home}/sub/dir"


async def test_uploads_to_a_running_ray_task_go_over_sftp_every_time(
    client: Any, tmp_path: Path
) -> None:
    # QA AA: the upload tried a tar (a command, refused on Ray) first; its fallback to
    # SFTP depended on which came first, the refusal or the tar's input: one in three failed
    source = tmp_path / "code"
    (source / "pkg").mkdir(parents=True)
    (source / "train.py").write_text("print('hi')\n")
    (source / "pkg" / "data.txt").write_text("x" * 10_000)
    task = await client.run("sleep 60", wait=True)
    try:
        for i in range(4):
            done = await client.upload_code_to_task(
                task.task_id, source_dir=source, target_dir=f"d{i}"
            )
            assert (done.files, done.bytes) == (2, 10_012)
            assert done.path is not None
            assert (Path(done.path) / "pkg" / "data.txt").read_text() == "x" * 10_000
    finally:
        await task.cancel(force=True)


async def test_a_command_longer_than_ray_can_start_is_refused_naming_the_bound(
    client: Any,
) -> None:
    # QA AA: within the documented limits (each argument < 128 KiB, all < 1 MiB), but Ray
    # starts the entry point as one `sh -c` argument: it ended EngineFailed, its message
    # cut to "Traceback (most recent call last):"
    argv = ["sh", "-c", 'for a; do printf "%s" "$a" | wc -c; done', "sh", *["x" * 120_000] * 8]
    before = len(await client.list_tasks())
    with pytest.raises(vi_flow.UnprocessableEntityError, match="too long for a Ray job"):
        await client.run(argv)
    assert len(await client.list_tasks()) == before  # nothing queued, nothing recorded
    small = await client.run(["sh", "-c", 'printf "%s" "$1" | wc -c', "sh", "x" * 100_000])
    assert await small.wait(timeout=30) == TaskStatus.COMPLETED
    assert await small.logs() == "100000"


async def test_two_h100_are_visible_to_the_task_and_its_shell_is_refused(client: Any) -> None:
    task = await client.run('echo "$CUDA_VISIBLE_DEVICES"; sleep 60', gpu="h100:2", wait=True)
    assert task.gpu_type == "h100" and task.gpu_count == 2
    # Ray cannot run a command inside the job; never on the server's host (issue 11).
    with pytest.raises(vi_flow.ShellUnavailableError, match="Ray cannot run them there") as err:
        await client.shell(task.task_id, command="cat /etc/hostname; exit 5")
    assert (err.value.provider, err.value.task_id) == ("ray", task.task_id)
    devices = await client.logs(task.task_id)  # what Ray gave the entry point
    assert len(devices.split(",")) == 2
    assert await client.cancel(task.task_id)
    assert await client.status(task.task_id) == "cancelled"


async def test_cancel_running_stops_the_ray_job(client: Any, ray_cluster: RayCluster) -> None:
    task = await client.run("echo started; sleep 60", wait=True)
    assert await client.cancel(task.task_id)
    record = await client.get_task(task.task_id)
    assert (record.status, record.reason) == ("cancelled", "Cancelled")
    job = await asyncio.to_thread(ray_cluster.wait_until_over, task.task_id)
    assert job is not None and job["status"] == "STOPPED"


async def test_cancel_pending_never_runs_the_command(
    client: Any, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    holder = await client.run("sleep 60", gpu="h100:4", wait=True)
    marker = tmp_path / "ran"
    queued = await client.run(f"echo ran > {marker}", gpu="h100:1")
    await asyncio.sleep(0.5)
    assert await client.status(queued.task_id) == "pending"
    job = await asyncio.to_thread(ray_cluster.job, queued.task_id)
    assert job is not None and job["status"] == "PENDING"  # Ray could not stop this one
    started = time.monotonic()
    assert await client.cancel(queued.task_id)
    assert time.monotonic() - started < 2  # reported at once, not when Ray gets to it
    record = await client.get_task(queued.task_id)
    assert (record.status, record.reason) == ("cancelled", "Cancelled")
    assert await client.cancel(holder.task_id)  # frees the GPUs: Ray now starts the job
    # Ray runs the queued job's entry point, which exits without running the command;
    # vi_flow then deletes the job from Ray's list
    await asyncio.to_thread(ray_cluster.wait_until_gone, queued.task_id)
    assert not marker.exists()
    assert await client.status(queued.task_id) == "cancelled"


async def test_find_instances_and_gpus_the_cluster_lacks(client: Any) -> None:
    found = {i.instance_type: i for i in await client.find_instances({"gpu_type": "h100"})}
    assert set(found) == {"h100", "2xh100", "4xh100"}
    assert found["4xh100"].gpu_count == 4 and found["4xh100"].region == "ray"
    with pytest.raises(vi_flow.UnprocessableEntityError, match=r"'a100'.*h100 \(up to 4"):
        await client.run("true", gpu="a100")
    with pytest.raises(vi_flow.UnprocessableEntityError, match="up to 4 per node"):
        await client.run("true", gpu="h100:8")
    assert await client.list_tasks() == []


async def test_secret_env_is_not_visible_in_the_jobs_api(
    client: Any, ray_cluster: RayCluster
) -> None:
    secret = f"hf-{time.time_ns()}"
    task = await client.run(
        TaskConfig(command='echo "${#HF_TOKEN} chars"', env={"HF_TOKEN": secret})
    )
    assert await task.wait(timeout=20) == TaskStatus.COMPLETED
    assert await task.logs() == f"{len(secret)} chars"
    job = await asyncio.to_thread(ray_cluster.call, "GET", f"/api/jobs/{task.task_id}")
    logs = await asyncio.to_thread(ray_cluster.call, "GET", f"/api/jobs/{task.task_id}/logs")
    listed = await asyncio.to_thread(ray_cluster.call, "GET", "/api/jobs/")
    assert job["status"] == "SUCCEEDED"
    for answer in (job, logs, listed):
        assert secret not in str(answer)
    assert job["runtime_env"] in (None, {})
    assert "HF_TOKEN" not in str(job["metadata"])


async def test_job_stopped_outside_vi_flow_is_cancelled_with_a_reason(
    client: Any, ray_cluster: RayCluster
) -> None:
    task = await client.run("sleep 60", wait=True)
    await asyncio.to_thread(ray_cluster.call, "POST", f"/api/jobs/{task.task_id}/stop")
    assert await task.wait(timeout=20) == TaskStatus.CANCELLED
    record = await client.get_task(task.task_id)
    assert record.reason == "CancelledOutsideViFlow"
    assert "outside vi_flow" in (record.message or "")


async def test_max_run_time_stops_the_task(client: Any) -> None:
    task = await client.run(TaskConfig(command="echo begin; sleep 30", max_run_time=1.0))
    assert await task.wait(timeout=20) == TaskStatus.FAILED
    record = await client.get_task(task.task_id)
    assert record.reason == "TimeLimit"
    assert "max_run_time of 1 s" in (record.message or "")
    assert await task.logs() == "begin"


async def test_dashboard_down_answers_503_naming_the_url_and_records_nothing(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    from vi_flow.server import embedded

    settings = {"url": "http://127.0.0.1:9", "tasks_dir": str(tmp_path / "tasks")}
    home = Path(os.environ["VI_FLOW_HOME"])
    server = embedded.acquire(home, provider="ray", extra={"ray": settings})
    try:
        async with vi_flow.AsyncClient(max_retries=0) as client:
            with pytest.raises(vi_flow.APIStatusError, match=r"127\.0\.0\.1:9") as caught:
                await client.run("echo never")
            assert caught.value.status_code == 503
            assert await client.list_tasks() == []
    finally:
        embedded.release(server)


async def test_a_volume_cannot_be_mounted_into_a_ray_job_that_exists(client: Any) -> None:
    # It answered "mounted" while nothing in the job could see it: a Ray job's sandbox is
    # made when it is submitted, and Ray runs no shells that could see it later
    await client.create_volume(1, name="late", interface="file")
    task = await client.run("sleep 30")
    try:
        with pytest.raises(vi_flow.APIStatusError) as refused:
            await client.mount_volume("late", task.task_id)
        assert refused.value.status_code == 501, refused.value
        assert "when submitting" in str(refused.value)
    finally:
        await client.cancel(task.task_id)


async def test_the_cli_refuses_a_shell_into_a_ray_job_before_ssh_connects(
    client: Any, ray_server: Any
) -> None:
    # Found by QA: `vi-flow tasks ssh` at a terminal ran ssh, which connected and only
    # then got the server's refusal; the SDK refuses before connecting.
    task = await client.run("sleep 30", wait=True)
    home = Path(os.environ["VI_FLOW_HOME"])
    env = {
        **os.environ,
        "VI_FLOW_BASE_URL": ray_server.info.url,
        "VI_FLOW_API_KEY": (home / "admin-token").read_text().strip(),
    }
    cli = f"{sys.executable} -m vi_flow.cli tasks ssh {task.task_id}"
    try:  # `script` gives the command a terminal, as a person at one has
        done = await asyncio.create_subprocess_exec(
            "script", "-qec", cli, "/dev/null", env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(done.communicate(), timeout=30)
        text = out.decode(errors="replace")
        assert done.returncode == 1, text
        assert "error: " in text and "Ray cannot run them there" in text, text
    finally:
        await client.cancel(task.task_id)
