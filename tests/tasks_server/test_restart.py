"""Reconciliation at start: tasks whose process died with the server are failed, queued ones re-run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.live_server import state_sql
from vi_flow.models.tasks import TaskConfig, TaskStatus
from vi_flow.server.providers.base import (
    LaunchSpec,
    Placement,
    RunningTask,
    TaskPaths,
    TaskUpdate,
)
from vi_flow.server.providers.local import LocalProvider
from vi_flow.server.providers.local.process import end_orphan
from vi_flow.server.providers.local.sandbox import detect_sandbox
from vi_flow.server.providers.local.spawn import start_process
from vi_flow.server.state import STORE_KEY
from vi_flow.server.tasks import TASKS_KEY

from .conftest import StartServer, TaskServer, group_alive


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


async def _crashed(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, queued_command: str
) -> tuple[TaskServer, dict[str, Any], dict[str, Any], int]:
    """A server of 2 CPUs whose one task runs (``sleep 30``, on both) while another waits
    for them, stopped as a killed server would be: the running task's process group (its
    id, returned) lives on."""
    first = await start_server(local_cpus=2, local_gpus=[])
    running = await first.submit(command="echo started; sleep 30", cpus=2)
    queued = await first.submit(command=queued_command, cpus=1)
    pid = int((await first.wait(running["taskId"], until={"running"}))["providerId"])
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
    return first, running, queued, pid


@pytest.mark.anyio
async def test_restart_fails_orphans_and_requeues_pending(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, running, queued, pid = await _crashed(start_server, monkeypatch, "echo after-restart")

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


async def _until_group_gone(pgid: int) -> None:
    for _ in range(300):
        if not group_alive(pgid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"process group {pgid} is still alive")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("command", "leader_dies"),
    [
        # The server is down when the task's shell dies; the process it started runs on.
        # The next server found the group's leader gone and recorded "ended with the
        # server", leaving the child running, untracked, for ever.
        ("cd / && sleep 300 & echo started; wait", True),
        # A command that left its directory was not recognized as the task's either.
        ("cd / && echo started && exec sleep 300", False),
    ],
)
async def test_restart_stops_a_task_out_of_its_directory_or_whose_leader_ended(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, command: str, leader_dies: bool
) -> None:
    # Out of the task's directory only its environment says a process is the task's.
    first = await start_server(local_cpus=2, local_gpus=[], sandbox=False)
    task = await first.submit(command=command, cpus=1)
    pgid = int((await first.wait(task["taskId"], until={"running"}))["providerId"])
    await first.until_logged(task["taskId"], "started", within=20)
    provider = first.app[TASKS_KEY].provider
    assert isinstance(provider, LocalProvider)
    monkeypatch.setattr(provider, "close", lambda: _crash(provider))
    await first.stop()
    try:
        if leader_dies:
            os.kill(pgid, signal.SIGKILL)
            await asyncio.sleep(0.1)
        assert group_alive(pgid)  # the sleep

        second = await start_server(first.home, local_cpus=2, local_gpus=[], sandbox=False)
        failed = await second.wait(task["taskId"])
        assert failed["reason"] == "ServerRestarted"
        assert f"process group {pgid} was stopped" in failed["message"]
        await _until_group_gone(pgid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


@pytest.mark.anyio
@pytest.mark.parametrize("sandbox", [True, False])
async def test_a_start_the_server_died_before_recording_never_runs(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, sandbox: bool
) -> None:
    # Killed between a task's fork and the record of its start, the server left the task
    # pending. Its command waited at its gate for that record: with the gate gone it
    # ends without running, and the next server runs the task, once.
    first = await start_server(local_cpus=2, local_gpus=[], sandbox=sandbox)
    provider = first.app[TASKS_KEY].provider
    assert isinstance(provider, LocalProvider)
    forked = asyncio.Event()
    report = provider._report

    async def dies_before_recording(update: TaskUpdate) -> bool:
        if update.status == TaskStatus.RUNNING:
            forked.set()
            await asyncio.Event().wait()
        return await report(update)

    monkeypatch.setattr(provider, "_report", dies_before_recording)
    task = await first.submit(command="echo started; sleep 300", cpus=1)
    with anyio.fail_after(10):
        await forked.wait()
    job = provider._jobs[task["taskId"]]
    assert job.process is not None
    pgid = job.process.pid

    async def crash() -> None:
        for launch in set(provider._launching):
            launch.cancel()
        await _crash(provider)

    monkeypatch.setattr(provider, "close", crash)
    await first.stop()
    if job.sandbox_info is not None:
        os.close(job.sandbox_info)
    stdout = provider.task_paths(task["taskId"]).stdout
    try:
        await _until_group_gone(pgid)  # by itself: nothing stopped it
        assert stdout.read_bytes() == b""
        second = await start_server(first.home, local_cpus=2, local_gpus=[], sandbox=sandbox)
        again = await second.wait(task["taskId"], until={"running"})
        assert again["providerId"] != str(pgid)
        await second.until_logged(task["taskId"], "started", within=20)
        assert stdout.read_bytes() == b"started\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


async def _starting_nothing(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> tuple[TaskServer, LocalProvider]:
    """A server whose provider takes tasks but never starts them (as one killed before)."""
    server = await start_server(local_cpus=2, local_gpus=[], sandbox=False)
    provider = server.app[TASKS_KEY].provider
    assert isinstance(provider, LocalProvider)
    monkeypatch.setattr(provider, "submit", lambda spec: asyncio.sleep(0))
    return server, provider


@contextlib.contextmanager
def _left_behind(task_id: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process such as a server killed between a fork and its record left of the task
    (the task's id in its environment); killed at the end whatever happened."""
    env = {"PATH": os.environ["PATH"], "VI_FLOW_TASK_ID": task_id}
    devnull = subprocess.DEVNULL
    left = start_process(["sleep", "300"], cwd=Path("/"), env=env, stdout=devnull, stderr=devnull)
    try:
        yield left
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(left.pid, signal.SIGKILL)
        left.wait()


async def _stopped_note(server: TaskServer, task_id: str) -> str:
    """The first line of the task's stderr: what the restart stopped of it."""
    logs = f"/tasks/{task_id}/logs"
    return str((await server.call("GET", logs, params={"stream": "stderr"})).body["lines"][0])


@pytest.mark.anyio
async def test_restart_stops_what_a_server_left_running_unrecorded(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server of a version before the gate, killed between a fork and its record, left
    # the task pending and its command running: the next server stops that one first.
    first, provider = await _starting_nothing(start_server, monkeypatch)
    task = await first.submit(command="echo started; sleep 300", cpus=1)
    await first.stop()
    with _left_behind(task["taskId"]) as left:
        second = await start_server(first.home, local_cpus=2, local_gpus=[], sandbox=False)
        again = await second.wait(task["taskId"], until={"running"})
        assert again["providerId"] != str(left.pid)
        await _until_group_gone(left.pid)
        stopped = f"(process group {left.pid}) was stopped and the task queued again"
        assert stopped in await _stopped_note(second, task["taskId"])
        await second.until_logged(task["taskId"], "started", within=20)
        assert provider.task_paths(task["taskId"]).stdout.read_bytes() == b"started\n"


@pytest.mark.anyio
async def test_restart_stops_what_a_server_left_of_a_task_whose_run_ended(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task block's task the server died starting, whose run the next server ended:
    # the task fails unstarted, and what the dead server had started of it is stopped
    # (QA twice found a sandbox's init left behind, holding the task's logs).
    first, provider = await _starting_nothing(start_server, monkeypatch)
    flow = await first.call("POST", "/flows", json={"name": "f", "blocks": [{"block": "template"}]})
    run = await first.call("POST", f"/flows/{flow.body['flowId']}/execute", json={})
    assert run.body["status"] == "Succeeded", run.body
    task = await first.submit(command="echo started; sleep 300", cpus=1)
    link = "UPDATE tasks SET run_id = ? WHERE task_id = ?"
    ids = (run.body["executionId"], task["taskId"])
    await first.app[STORE_KEY].run(lambda c: c.execute(link, ids).rowcount)
    await first.stop()
    with _left_behind(task["taskId"]) as left:
        second = await start_server(first.home, local_cpus=2, local_gpus=[], sandbox=False)
        failed = await second.wait(task["taskId"])
        assert (failed["status"], failed["reason"]) == ("failed", "ServerRestarted"), failed
        assert "its run ended" in failed["message"]
        await _until_group_gone(left.pid)
        stopped = f"(process group {left.pid}) was stopped and the task not started"
        assert stopped in await _stopped_note(second, task["taskId"])
        assert provider.task_paths(task["taskId"]).stdout.read_bytes() == b""


@pytest.mark.anyio
async def test_restart_stops_a_sandbox_whose_bubblewrap_died_setting_it_up(tmp_path: Path) -> None:
    # A server killed while bubblewrap sets a task's sandbox up closes the read end of its
    # --info-fd: bubblewrap dies of SIGPIPE writing to it, and the sandbox's init, in the
    # task's process group, waits for ever. Here the read end is closed before it starts.
    home = tmp_path / "home"
    paths = TaskPaths.under(home / "tasks" / "task_1")
    paths.workdir.mkdir(parents=True)
    paths.stdout.parent.mkdir()
    sandbox = detect_sandbox(home, {})
    assert sandbox.enabled, sandbox.reason
    read, write = os.pipe()
    os.close(read)
    argv = [*sandbox.prefix(paths.root, [], paths.workdir, info_fd=write), "sleep", "300"]
    env = {"PATH": os.environ["PATH"]}
    popen = start_process(
        argv, cwd=paths.workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        pass_fds=[write],
    )  # fmt: skip
    os.close(write)
    try:
        assert popen.wait(timeout=10) == -signal.SIGPIPE
        await asyncio.sleep(0.1)
        assert group_alive(popen.pid)  # the sandbox's init, left behind

        config = TaskConfig(command="sleep 300")
        spec = LaunchSpec("task_1", "org", config, Placement("cpu"), argv, {}, paths)
        message = end_orphan(RunningTask(spec, TaskStatus.RUNNING, str(popen.pid)))
        assert f"process group {popen.pid} was stopped" in message
        await _until_group_gone(popen.pid)
        assert message in paths.stderr.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)


@pytest.mark.anyio
async def test_graceful_stop_ends_running_tasks_with_a_reason(start_server: StartServer) -> None:
    first = await start_server(local_cpus=2, local_gpus=[])
    task = await first.submit(command="sleep 30")
    await first.wait(task["taskId"], until={"running"})
    await first.stop()
    second = await start_server(first.home, local_cpus=2, local_gpus=[])
    ended = (await second.call("GET", f"/tasks/{task['taskId']}")).body
    assert ended["status"] == "failed" and ended["reason"] == "ServerStopped", ended


@pytest.mark.anyio
async def test_first_release_signal_ends_read_as_this_ones(start_server: StartServer) -> None:
    """QA AE: the first release stored an end by a signal as a negative exit code (-15,
    -9), and an end by a signal nobody sent as NonZeroExit; after the upgrade they still
    read so, where docs/tasks.md says: no exit code, ``signal`` names it, ``Killed``."""
    first = await start_server()
    cancelled = await first.wait((await first.submit(command="true"))["taskId"])
    killed = await first.wait((await first.submit(command="true"))["taskId"])
    await first.stop()
    for task, code, reason in ((cancelled, -15, "Cancelled"), (killed, -9, "NonZeroExit")):
        state_sql(first.home, "UPDATE tasks SET exit_code = ?, signal = NULL, reason = ?"
                  " WHERE task_id = ?", code, reason, task["taskId"])  # fmt: skip
    state_sql(first.home, "DELETE FROM migrations WHERE name = 'tasks-8-first-release-signals'")
    again = await start_server(home=first.home)
    for task, sig, reason in ((cancelled, 15, "Cancelled"), (killed, 9, "Killed")):
        got = (await again.call("GET", f"/tasks/{task['taskId']}")).body
        assert (got["exitCode"], got["signal"], got["reason"]) == (None, sig, reason), got


@pytest.mark.anyio
async def test_a_server_of_another_provider_leaves_the_tasks_it_did_not_start(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA AU: a home served with --provider slurm whose server died was taken by the
    # background server a plain command starts (the local provider): it failed the
    # Slurm tasks "ended with the server" and ran a pending one on the host, while Slurm
    # ran them all. Here the first server's tasks are made another provider's in the
    # database after a crash; the next (local) server must leave them as they are.
    first, running, queued, pid = await _crashed(start_server, monkeypatch, "echo ran-here")
    try:
        state_sql(first.home, "UPDATE tasks SET provider = 'slurm'")
        second = await start_server(first.home, local_cpus=2, local_gpus=[])
        await asyncio.sleep(1.0)  # its take-over, at start, is done: nothing more happens
        tasks = {t["taskId"]: t for t in (await second.call("GET", "/tasks")).body["items"]}
        assert tasks[running["taskId"]]["status"] == "running", tasks
        assert tasks[queued["taskId"]]["status"] == "pending", tasks
        assert group_alive(pid)
        cancelled = await second.call("POST", f"/tasks/{running['taskId']}/cancel", json={})
        assert cancelled.status == 409, cancelled.body
        assert "started by the slurm provider" in cancelled.body["error"]["message"]
        logs = (await second.call("GET", f"/tasks/{queued['taskId']}/logs")).body
        assert logs["lines"] == []  # never run on this host
        # QA AW: nor are they this server's work in flight: 'server stop' refused ("not
        # finished"; with force, the 409 above), and it never idled out
        status = (await second.call("GET", "/server")).body
        assert status["activeTasks"] == 0, status
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        await _until_group_gone(pid)
