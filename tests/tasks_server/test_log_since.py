"""``since``: the lines of a task's log written since a time, snapshot and follow, SDK and CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import vi_flow

from .conftest import TaskServer

pytestmark = pytest.mark.anyio

# "early" lines, a pause well over the server's one-second notes, then "late" lines
SCRIPT = (
    "import sys, time\n"
    "for i in range(3): print('early', i, flush=True); print('e-early', i, file=sys.stderr)\n"
    "time.sleep(3)\n"
    "for i in range(3): print('late', i, flush=True); print('e-late', i, file=sys.stderr)\n"
    "time.sleep({linger})\n"
)


async def _task_with_a_pause(server: TaskServer, linger: float = 0) -> tuple[str, datetime]:
    """Submit the script; return its id and a time between its early and late lines."""
    task = await server.submit(command=[sys.executable, "-c", SCRIPT.format(linger=linger)])
    await server.wait(task["taskId"], until={"running"})
    await asyncio.sleep(2.0)  # the early lines are out and noted; the late ones are not
    return task["taskId"], datetime.now()


def _client(server: TaskServer, home: Path) -> vi_flow.AsyncClient:
    return vi_flow.AsyncClient(base_url=f"{server.root}/v1", api_key=server.token, home=home)


async def test_snapshot_since_has_only_the_lines_written_since(
    server: TaskServer, tmp_path: Path
) -> None:
    task_id, middle = await _task_with_a_pause(server)
    await server.wait(task_id)
    async with _client(server, tmp_path) as client:
        late = await client.tasks.logs(task_id, since=middle, tail=1000)
        both = await client.tasks.logs(task_id, since=middle, stream="both")
        every = await client.tasks.logs(task_id, since=timedelta(hours=1))
    assert late.lines == ["late 0", "late 1", "late 2"]
    assert both.lines == ["late 0", "late 1", "late 2", "e-late 0", "e-late 1", "e-late 2"]
    assert every.lines == [*(f"early {i}" for i in range(3)), *(f"late {i}" for i in range(3))]


async def test_follow_since_starts_at_the_lines_written_since(
    server: TaskServer, tmp_path: Path
) -> None:
    task_id, middle = await _task_with_a_pause(server, linger=1)
    async with _client(server, tmp_path) as client:
        lines = [line async for line in client.follow_logs(task_id, "both", since=middle)]
    assert sorted(lines) == sorted(
        ["late 0", "late 1", "late 2", "e-late 0", "e-late 1", "e-late 2"]
    )


async def test_since_before_the_task_is_every_line_and_bad_since_is_named(
    server: TaskServer, tmp_path: Path
) -> None:
    task = await server.submit(command=["echo", "one"])
    await server.wait(task["taskId"])
    async with _client(server, tmp_path) as client:
        offsets = await client.tasks.log_offsets(task["taskId"], timedelta(days=1))
        with pytest.raises(ValueError, match="negative"):
            await client.tasks.logs(task["taskId"], since=timedelta(seconds=-1))
    assert offsets == {"stdout": 0, "stderr": 0}
    for bad in ("yesterday", "-5", "1e3", str(2**64), ""):  # "": no time (schemathesis)
        for follow in ("", "&follow=true"):
            answer = await server.call("GET", f"/tasks/{task['taskId']}/logs?since={bad}{follow}")
            assert answer.status == 422 and "since" in answer.body["error"]["message"], bad
    # a stream checks tail as a snapshot does (schemathesis sent tail=true, taken)
    answer = await server.call("GET", f"/tasks/{task['taskId']}/logs?tail=true&follow=true")
    assert answer.status == 422 and answer.body["error"]["message"].startswith("tail"), answer
    answer = await server.call("GET", f"/tasks/{task['taskId']}/logs/offsets")
    assert answer.status == 422 and "since" in answer.body["error"]["message"]


async def test_another_organizations_task_offsets_are_404(server: TaskServer) -> None:
    task = await server.submit(command=["echo", "one"])
    org = await server.call("POST", "/organizations", json={"name": "other"})
    token = await server.call(
        "POST", f"/organizations/{org.body['organizationId']}/tokens", json={"name": "t"}
    )
    answer = await server.call(
        "GET", f"/tasks/{task['taskId']}/logs/offsets?since=0", token=token.body["token"]
    )
    assert answer.status == 404


async def test_cli_logs_since(server: TaskServer, tmp_path: Path) -> None:
    task_id, middle = await _task_with_a_pause(server)
    await server.wait(task_id)
    env = {
        **os.environ,
        "VI_FLOW_BASE_URL": f"{server.root}/v1",
        "VI_FLOW_API_KEY": server.token,
        "VI_FLOW_HOME": str(tmp_path),
    }
    cli = [sys.executable, "-m", "vi_flow.cli", "tasks", "logs", task_id]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, env=env, timeout=60)

    late = await asyncio.to_thread(run, "--since", middle.isoformat())
    assert late.returncode == 0, late.stderr
    assert late.stdout.split("\n") == ["late 0", "late 1", "late 2", ""]
    hour = await asyncio.to_thread(run, "--since", "1h", "-f")
    assert hour.returncode == 0, hour.stderr
    assert hour.stdout.splitlines() == [
        *(f"early {i}" for i in range(3)),
        *(f"late {i}" for i in range(3)),
    ]
    bad = await asyncio.to_thread(run, "--since", "soon")
    assert bad.returncode == 2 and "'soon' is neither a duration" in bad.stderr


async def test_the_snapshot_names_the_signal_that_ended_the_task(
    server: TaskServer, tmp_path: Path
) -> None:
    killed = await server.submit(command=["/bin/sh", "-c", "echo before; kill -9 $$"])
    exited = await server.submit(command=["/bin/sh", "-c", "echo before; exit 3"])
    await server.wait(killed["taskId"])
    await server.wait(exited["taskId"])
    async with _client(server, tmp_path) as client:
        by_signal = await client.tasks.logs(killed["taskId"])
        by_code = await client.tasks.logs(exited["taskId"])
    assert (by_signal.lines, by_signal.exit_code, by_signal.signal) == (["before"], None, 9)
    assert (by_code.lines, by_code.exit_code, by_code.signal) == (["before"], 3, None)


async def test_since_after_the_task_ended_or_still_to_come_is_no_line(
    server: TaskServer,
) -> None:
    # The lines after the last once-a-second sample counted as written since any later
    # time: `since` an hour ahead answered the task's last line (found by QA).
    task = await server.submit(command="echo early; sleep 1.5; echo late")
    done = await server.wait(task["taskId"])
    logs = f"/tasks/{task['taskId']}/logs"
    for since in (done["endedAt"] + 1, done["endedAt"] + 3_600_000, 253402300799999):
        answer = await server.call("GET", logs, params={"since": str(since)})
        assert answer.status == 200 and answer.body["lines"] == [], (since, answer.body)
    before = await server.call("GET", logs, params={"since": str(done["startedAt"])})
    assert before.body["lines"] == ["early", "late"]
