"""The public SDK against a local server whose compute provider is Slurm (seed 002 calls)."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import vi_flow
from vi_flow.models.tasks import TaskStatus

from .conftest import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.anyio]


@pytest.fixture
async def client(slurm_server: object) -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as c:
        yield c


async def test_run_logs_follow_and_exit_code_on_slurm(client: Any) -> None:
    task = await client.run("echo hello; echo oops >&2; exit 3")
    assert await task.wait(timeout=8) == TaskStatus.FAILED
    assert task.exit_code == 3
    assert await task.logs() == "hello"
    assert await client.logs(task.task_id, stderr=True) == "oops"
    record = await client.get_task(task.task_id)
    assert (record.data.provider, record.reason) == ("slurm", "NonZeroExit")
    assert record.data.provider_id and record.data.provider_id.isdigit()
    assert record.started_at is not None
    # Slurm's times are whole seconds: the start came before the creation (QA AY)
    assert record.created_at <= record.started_at <= record.ended_at
    counted = await client.run("for i in 1 2 3; do echo line$i; sleep 0.2; done")
    assert [line async for line in counted.follow_logs()] == ["line1", "line2", "line3"]


async def test_gpu_task_shell_and_cancel_on_slurm(client: Any) -> None:
    task = await client.run("echo ready; sleep 60", gpu="h100:2", wait=True)
    result = await client.shell(task.task_id, command='echo "$CUDA_VISIBLE_DEVICES"; exit 5')
    assert result.exit_status == 5
    assert len(result.stdout.strip().split(",")) == 2
    assert await client.cancel(task.task_id)
    assert await task.wait(timeout=8) == TaskStatus.CANCELLED


async def test_a_shell_on_a_terminal_has_one_in_the_job(client: Any) -> None:
    # QA AY: `srun --overlap` without --pty gave the job's shell pipes: `tty` said "not
    # a tty", bash had no job control, and Ctrl-C did not stop `sleep`
    from vi_flow.compute._ops import ssh_target
    from vi_flow.compute.ssh import connect

    task = await client.run("sleep 120", wait=True)
    target = await ssh_target(client.compute._context, task.task_id)
    async with await connect(target) as conn:
        shell = await conn.create_process(term_type="xterm", term_size=(80, 24), encoding=None)
        shell.stdin.write(b"tty\n")
        seen = b""
        with anyio.fail_after(20):  # `tty` names the terminal (bwrap's /dev/console)
            while not re.search(rb"(/dev/\S+|not a tty)\r\n", seen):
                seen += await shell.stdout.read(4096)
        assert b"not a tty" not in seen, seen
        shell.stdin.write(b"sleep 30\n")
        await anyio.sleep(1)  # sleep runs
        shell.stdin.write(b"\x03echo after-$?\n")
        with anyio.fail_after(10):
            while b"after-130" not in seen:
                seen += await shell.stdout.read(4096)
        shell.stdin.write(b"exit 3\n")
        with anyio.fail_after(10):
            done = await shell.wait()
    assert done.exit_status == 3, seen
    await client.cancel(task.task_id)


async def test_cancel_pending_on_slurm(client: Any) -> None:
    holder = await client.run("sleep 60", gpu="h100:4", wait=True)
    queued = await client.run("echo never", gpu="h100:1")
    assert await client.status(queued.task_id) == "pending"
    assert await client.cancel(queued.task_id)
    assert await queued.wait(timeout=8) == TaskStatus.CANCELLED
    assert await client.cancel(holder.task_id)


async def test_find_instances_and_unknown_gpu_on_slurm(client: Any) -> None:
    from vi_flow import UnprocessableEntityError

    found = await client.find_instances({"gpu_type": "h100"})
    assert {i.instance_type for i in found} >= {"h100", "2xh100", "4xh100"}
    with pytest.raises(UnprocessableEntityError, match="h100"):
        await client.run("true", gpu="a100")


async def test_rest_down_answers_503_naming_the_url_and_records_nothing(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    from vi_flow.server import embedded

    settings = {
        "url": "http://127.0.0.1:9",
        "token_file": str(slurm_cluster.token_file),
        "max_retries": 0,  # no real backoff in tests
    }
    home = Path(os.environ["VI_FLOW_HOME"])
    server = embedded.acquire(home, provider="slurm", extra={"slurm": settings})
    try:
        async with vi_flow.AsyncClient(max_retries=0) as client:
            with pytest.raises(vi_flow.APIStatusError, match=r"127\.0\.0\.1:9") as caught:
                await client.run("echo never")
            assert caught.value.status_code == 503
            assert await client.list_tasks() == []
    finally:
        embedded.release(server)
