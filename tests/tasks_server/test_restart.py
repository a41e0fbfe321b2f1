"""Reconciliation at start: tasks whose process died with the server are failed, queued ones re-run."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from vi_flow.server.providers.local import LocalProvider
from vi_flow.server.tasks import TASKS_KEY

from .conftest import StartServer, group_alive


async def _crash(provider: LocalProvider) -> None:
    """Stop watching like a killed server would: processes live on, nothing is recorded."""
    tasks = [provider._loop_task, *(j.watcher for j in provider._jobs.values())]
    for task in tasks:
        if task is not None:
            task.cancel()
    for task in tasks:
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.mark.anyio
async def test_restart_fails_orphans_and_requeues_pending(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await start_server(local_cpus=2, local_gpus=[])
    running = await first.submit(command="echo started; sleep 30", cpus=2)
    queued = await first.submit(command="echo after-restart", cpus=1)
    running = await first.wait(running["taskId"], until={"running"})
    pid = int(running["providerId"])
    # Crash only once the command runs: before, bubblewrap may still have to write its
    # --info-fd, whose reader the crash closes; it would die of that (a real crash ends
    # a sandbox that is still being set up too), and the test found "ended with the
    # server" (seen once under two test workers).
    await first.until_logged(running["taskId"], "started", within=20)
    provider = first.app[TASKS_KEY].provider
    assert isinstance(provider, LocalProvider)
    monkeypatch.setattr(provider, "close", lambda: _crash(provider))
    await first.stop()
    assert group_alive(pid)  # the "crash" left it behind

    second = await start_server(first.home, local_cpus=2, local_gpus=[])
    failed = await second.wait(running["taskId"])
    assert failed["status"] == "failed" and failed["reason"] == "ServerRestarted"
    assert f"process group {pid} was stopped" in failed["message"]
    for _ in range(200):
        if not group_alive(pid):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the orphaned process group is still alive")
    done = await second.wait(queued["taskId"])
    assert done["status"] == "completed"
    logs = (await second.call("GET", f"/tasks/{queued['taskId']}/logs")).body
    assert logs["lines"] == ["after-restart"]


@pytest.mark.anyio
async def test_graceful_stop_ends_running_tasks_with_a_reason(start_server: StartServer) -> None:
    first = await start_server(local_cpus=2, local_gpus=[])
    task = await first.submit(command="sleep 30")
    await first.wait(task["taskId"], until={"running"})
    await first.stop()
    second = await start_server(first.home, local_cpus=2, local_gpus=[])
    ended = (await second.call("GET", f"/tasks/{task['taskId']}")).body
    assert ended["status"] == "failed" and ended["reason"] == "ServerStopped", ended
