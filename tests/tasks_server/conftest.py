"""Fixtures for the task server tests: a real app on 127.0.0.1 with the local provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncssh
import pytest

from tests.live_server import LiveServer, Starter
from vi_flow.server.state import ServerSettings

TERMINAL = {"completed", "failed", "cancelled"}


class TaskServer(LiveServer):
    """A running server with the local provider; ``submit`` and ``wait`` drive tasks."""

    async def submit(self, **config: Any) -> dict[str, Any]:
        """POST a task config (camelCase keys); assert 201."""
        answer = await self.call("POST", "/tasks", json=config)
        assert answer.status == 201, answer.body
        return dict(answer.body)

    async def wait(
        self, task_id: str, *, until: set[str] | None = None, within: float = 8.0
    ) -> dict[str, Any]:
        """Poll the task until its status is in ``until`` (terminal by default)."""
        wanted = until or TERMINAL
        with anyio.fail_after(within):
            while True:
                task = (await self.call("GET", f"/tasks/{task_id}")).body
                if task["status"] in wanted:
                    return dict(task)
                await asyncio.sleep(0.02)

    async def until_logged(self, task_id: str, text: str, *, within: float = 8.0) -> None:
        """Poll the task's log (its last 200 lines) until it shows ``text``: what its
        command wrote before it went on, so the command is known to run."""
        with anyio.fail_after(within):
            while True:
                answer = await self.call("GET", f"/tasks/{task_id}/logs", params={"tail": "200"})
                if text in "\n".join(answer.body["lines"]):
                    return
                await asyncio.sleep(0.02)


StartServer = Callable[..., Awaitable[TaskServer]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start task servers (``extra`` goes to ``ServerSettings.extra``); stopped after the test."""
    async with Starter(TaskServer) as starter:

        async def start(home: Path | None = None, **extra: Any) -> TaskServer:
            settings = ServerSettings(home=home or tmp_path / "home", extra=extra)
            return await starter.start(settings)

        yield start


@pytest.fixture
async def server(start_server: StartServer) -> TaskServer:
    """A server with 2 CPUs and no GPUs."""
    return await start_server(local_cpus=2, local_gpus=[])


@pytest.fixture(scope="session")
def client_key() -> asyncssh.SSHKey:
    """One SSH key pair for the whole session (generation is not free)."""
    return asyncssh.generate_private_key("ssh-ed25519")


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is in group ``pgid`` (zombies reparented to a
    container's PID 1 may never be reaped, so ``killpg(pgid, 0)`` is not enough)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
