"""How a Ray task ended, in the figures every provider reports, as the SDK reads them.

The endings match tests/tasks_server/test_exits.py (local) and tests/slurm/test_slurm_exits.py:
``exit 3``, ``kill -9 $$``, a cancel and a time limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import vi_flow
from tests.providers_kit import TIME_LIMIT_MESSAGE
from vi_flow.models.tasks import TaskConfig

pytestmark = [pytest.mark.ray, pytest.mark.anyio]


@pytest.fixture
async def client(ray_server: object) -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as c:
        yield c


async def figures(client: Any, task: Any) -> tuple[Any, ...]:
    await task.wait(timeout=30)
    record = await client.get_task(task.task_id)
    return record.status, record.exit_code, record.signal, record.reason


async def test_exit_3_is_exit_code_3(client: Any) -> None:
    task = await client.run("exit 3")
    assert await figures(client, task) == ("failed", 3, None, "NonZeroExit")


async def test_kill_9_is_signal_9(client: Any) -> None:
    task = await client.run("kill -9 $$")
    assert await figures(client, task) == ("failed", None, 9, "Killed")
    assert (await client.get_task(task.task_id)).message == "killed by SIGKILL (signal 9)"


async def test_cancel_is_sigterm(client: Any) -> None:
    task = await client.run("sleep 60", wait=True)
    await client.cancel(task.task_id)
    assert await figures(client, task) == ("cancelled", None, 15, "Cancelled")


async def test_time_limit_is_sigterm(client: Any) -> None:
    task = await client.run(TaskConfig(command="sleep 60", max_run_time=1.0))
    assert await figures(client, task) == ("failed", None, 15, "TimeLimit")
    message = (await client.get_task(task.task_id)).message
    assert message == TIME_LIMIT_MESSAGE.format(limit="1")  # the local provider's words


async def test_a_job_waiting_for_gpus_says_so_with_rays_words(client: Any) -> None:
    holder = await client.run("sleep 60", gpu="h100:4", wait=True)
    waiting = await client.run("echo later", gpu="h100:4")
    for _ in range(200):
        record = await client.get_task(waiting.task_id)
        if record.raw_reason:
            break
        await asyncio.sleep(0.05)
    assert (record.status, record.reason) == ("pending", "WaitingForCapacity")
    assert record.raw_reason and record.raw_reason in (record.message or "")
    await client.cancel(waiting.task_id)
    await client.cancel(holder.task_id)
