"""A local task's command runs only once its ``running`` state is stored (its start gate),
and what a start that cannot run says: sandboxed and not, over the real server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from vi_flow.models.tasks import TaskStatus
from vi_flow.server.providers.base import TaskUpdate
from vi_flow.server.providers.local import LocalProvider
from vi_flow.server.tasks import TASKS_KEY

from .conftest import StartServer, TaskServer

BOTH = pytest.mark.parametrize("sandbox", [True, False], ids=["sandboxed", "unsandboxed"])


class HeldStore:
    """The server's store of task updates, made slow to take a ``running`` update (as a
    busy database is) until :meth:`release`; or failing it, with ``fail``."""

    def __init__(self, server: TaskServer, fail: bool = False) -> None:
        provider = server.app[TASKS_KEY].provider
        assert isinstance(provider, LocalProvider)
        assert provider._sink is not None
        self.provider, self._record, self._fail = provider, provider._sink, fail
        self.recording, self._stored = asyncio.Event(), asyncio.Event()
        provider._sink = self._store

    async def _store(self, update: TaskUpdate) -> None:
        if update.status == TaskStatus.RUNNING:
            self.recording.set()
            await self._stored.wait()
            if self._fail:
                raise OSError("database is locked")
        await self._record(update)

    def release(self) -> None:
        self._stored.set()

    def stdout(self, task: dict[str, Any]) -> bytes:
        return self.provider.task_paths(task["taskId"]).stdout.read_bytes()


async def _held(
    start_server: StartServer, sandbox: bool, fail: bool = False
) -> tuple[TaskServer, HeldStore]:
    server = await start_server(local_cpus=2, local_gpus=[], sandbox=sandbox)
    held = HeldStore(server, fail)
    assert held.provider.sandbox.enabled is sandbox
    return server, held


@pytest.mark.anyio
@BOTH
async def test_a_task_prints_nothing_until_it_is_recorded_running(
    start_server: StartServer, sandbox: bool
) -> None:
    server, held = await _held(start_server, sandbox)
    task = await server.submit(command="echo first; sleep 30")
    try:
        await asyncio.wait_for(held.recording.wait(), 20)
        await asyncio.sleep(0.5)  # ample for a started command to print
        logs = (await server.call("GET", f"/tasks/{task['taskId']}/logs")).body
        assert (logs["status"], logs["lines"]) == ("pending", [])
        assert held.stdout(task) == b""
    finally:
        held.release()  # the server can stop
    await server.until_logged(task["taskId"], "first", within=20)
    assert (await server.call("GET", f"/tasks/{task['taskId']}")).body["status"] == "running"
    await server.call("POST", f"/tasks/{task['taskId']}/cancel")
    assert (await server.wait(task["taskId"]))["status"] == "cancelled"


@pytest.mark.anyio
@BOTH
async def test_a_start_that_cannot_be_recorded_never_runs(
    start_server: StartServer, sandbox: bool
) -> None:
    server, held = await _held(start_server, sandbox, fail=True)
    task = await server.submit(command='echo ran; touch "$VI_FLOW_OUTPUT_DIR/ran"')
    await asyncio.wait_for(held.recording.wait(), 20)
    held.release()
    done = await server.wait(task["taskId"], within=20)
    assert (done["status"], done["reason"], done["exitCode"]) == ("failed", "StartFailed", None)
    assert done["message"] == "its start could not be recorded; it did not run"
    assert held.stdout(task) == b""
    assert (await server.call("GET", f"/tasks/{task['taskId']}/outputs")).body["items"] == []


@pytest.mark.anyio
@BOTH
async def test_a_task_cancelled_as_it_starts_never_runs(
    start_server: StartServer, sandbox: bool
) -> None:
    server, held = await _held(start_server, sandbox)
    task = await server.submit(command="echo ran; sleep 30")
    try:
        await asyncio.wait_for(held.recording.wait(), 20)
        cancel = asyncio.ensure_future(server.call("POST", f"/tasks/{task['taskId']}/cancel"))
        job = held.provider._jobs[task["taskId"]]
        for _ in range(500):
            if job.stop_reason is not None:
                break
            await asyncio.sleep(0.01)
        assert job.stop_reason == "Cancelled"
    finally:
        held.release()
    assert (await asyncio.wait_for(cancel, 20)).status == 200
    done = await server.wait(task["taskId"], within=20)
    assert (done["status"], done["exitCode"], done["signal"]) == ("cancelled", None, None)
    assert held.stdout(task) == b""


@pytest.mark.anyio
@BOTH
async def test_a_snapshot_never_shows_lines_of_a_pending_task(
    start_server: StartServer, sandbox: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The snapshot reads the task, then its lines: the task may begin between the two.
    server, held = await _held(start_server, sandbox)
    outputs = server.app[TASKS_KEY].outputs
    tail, reading, read = outputs.tail, asyncio.Event(), asyncio.Event()

    async def slow_tail(*args: Any) -> list[str]:
        if not reading.is_set():
            reading.set()
            await read.wait()
        return await tail(*args)

    monkeypatch.setattr(outputs, "tail", slow_tail)
    task = await server.submit(command="echo first; sleep 30")
    try:
        await asyncio.wait_for(held.recording.wait(), 20)
        snapshot = asyncio.ensure_future(server.call("GET", f"/tasks/{task['taskId']}/logs"))
        await asyncio.wait_for(reading.wait(), 20)  # it read the task: still pending
    finally:
        held.release()
        await server.until_logged(task["taskId"], "first", within=20)
        read.set()
    logs = (await asyncio.wait_for(snapshot, 20)).body
    assert (logs["status"], logs["lines"]) == ("running", ["first"])
    await server.call("POST", f"/tasks/{task['taskId']}/cancel")


@pytest.mark.anyio
@BOTH
async def test_what_cannot_be_started_fails_at_start_saying_why(
    start_server: StartServer, sandbox: bool
) -> None:
    server = await start_server(local_cpus=2, local_gpus=[], sandbox=sandbox)
    home = Path(server.home)
    # in a volume: a sandbox shows a task its volumes at their host paths (no other path
    # of the host's, such as the test's own directory, where all would be "No such file")
    volume = (await server.call("POST", "/volumes", json={"name": "scripts"})).body["volumeId"]
    scripts = home / "volumes" / volume
    mount = [{"volumeId": volume, "mountPath": "scripts"}]
    plain = scripts / "plain"
    plain.write_text("echo hi\n")
    orphan = scripts / "orphan"
    orphan.write_text("#!/nonexistent/python3\nprint('hi')\n")
    orphan.chmod(0o755)
    cases = {
        str(plain): "Permission denied",  # not executable
        str(scripts): "Permission denied",  # a directory
        str(orphan): "No such file or directory (the interpreter of its #! line)",
        "no-such-tool-xyz": "No such file or directory",
    }
    for command, says in cases.items():
        task = await server.submit(command=[command], volumes=mount)
        done = await server.wait(task["taskId"], within=20)
        assert (done["status"], done["reason"], done["exitCode"]) == (
            "failed",
            "StartFailed",
            127,
        ), done
        assert (
            done["message"]
            == f"could not start {command!r}: [Errno {_errno(says)}] {says}: {command!r}"
        )


def _errno(says: str) -> int:
    return 13 if says == "Permission denied" else 2


@pytest.mark.anyio
@BOTH
async def test_a_relative_path_entry_is_the_task_s_directory(
    start_server: StartServer, sandbox: bool
) -> None:
    server = await start_server(local_cpus=2, local_gpus=[], sandbox=sandbox)
    blocker = await server.submit(command="sleep 30", cpus=2)
    await server.wait(blocker["taskId"], until={"running"})
    env = {"PATH": f"bin{os.pathsep}/usr/bin{os.pathsep}/bin"}
    task = await server.submit(command=["tool", "x"], env=env, cpus=1)  # waits for the CPUs
    provider = server.app[TASKS_KEY].provider
    tool = provider.task_paths(task["taskId"]).workdir / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.write_text('#!/bin/sh\necho "tool ran $1"\n')
    tool.chmod(0o755)
    await server.call("POST", f"/tasks/{blocker['taskId']}/cancel")
    done = await server.wait(task["taskId"], within=20)
    assert done["status"] == "completed", done
    await server.until_logged(task["taskId"], "tool ran x")
