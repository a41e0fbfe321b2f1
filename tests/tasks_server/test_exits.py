"""How a local task ended, in the figures every provider reports (docs/tasks.md).

The same four endings are checked on Slurm (tests/slurm/test_slurm_exits.py) and Ray
(tests/ray/test_ray_exits.py): ``exit 3``, ``kill -9 $$``, a cancel and a time limit.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.providers_kit import TIME_LIMIT_MESSAGE
from vi_flow.server.providers._exits import END_REASONS

from .conftest import TaskServer

pytestmark = pytest.mark.anyio


def figures(task: dict[str, Any]) -> tuple[Any, ...]:
    assert task["reason"] in END_REASONS  # the documented list
    return task["status"], task["exitCode"], task["signal"], task["reason"]


async def test_exit_3_is_exit_code_3(server: TaskServer) -> None:
    task = await server.submit(command="exit 3")
    done = await server.wait(task["taskId"])
    assert figures(done) == ("failed", 3, None, "NonZeroExit")
    assert done["message"] == "exited with status 3"


async def test_kill_9_is_signal_9_without_an_exit_code(server: TaskServer) -> None:
    task = await server.submit(command="kill -9 $$")
    done = await server.wait(task["taskId"])
    assert figures(done) == ("failed", None, 9, "Killed")
    assert done["message"] == "killed by SIGKILL (signal 9)"


async def test_exit_147_is_an_exit_code_not_a_stop_signal(server: TaskServer) -> None:
    # 147 is 128 + SIGSTOP, but no process ends stopped: it read "killed by SIGSTOP"
    task = await server.submit(command="exit 147")
    done = await server.wait(task["taskId"])
    assert figures(done) == ("failed", 147, None, "NonZeroExit")
    assert done["message"] == "exited with status 147"


async def test_cancel_is_sigterm_and_cancelled(server: TaskServer) -> None:
    task = await server.submit(command="echo up; sleep 30")
    await server.wait(task["taskId"], until={"running"})
    answer = await server.call("POST", f"/tasks/{task['taskId']}/cancel")
    assert figures(answer.body) == ("cancelled", None, 15, "Cancelled")


async def test_time_limit_is_sigterm_and_time_limit(server: TaskServer) -> None:
    task = await server.submit(command="sleep 30", maxRunTime=0.5)
    done = await server.wait(task["taskId"])
    assert figures(done) == ("failed", None, 15, "TimeLimit")
    # the same words on Slurm and Ray (tests/slurm, tests/ray)
    assert done["message"] == TIME_LIMIT_MESSAGE.format(limit="0.5")


async def test_success_says_completed(server: TaskServer) -> None:
    task = await server.submit(command="true")
    done = await server.wait(task["taskId"])
    assert figures(done) == ("completed", 0, None, "Completed")
