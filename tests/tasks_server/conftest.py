"""Fixtures for the task server tests: a real app on 127.0.0.1 with the local provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import asyncssh
import attrs
import pytest
from aiohttp import web

from vi_flow.server.app import create_app
from vi_flow.server.bootstrap import read_admin_token
from vi_flow.server.state import ServerSettings

TERMINAL = {"completed", "failed", "cancelled"}


@attrs.define
class Answer:
    """One HTTP answer: status and decoded JSON body (or raw bytes)."""

    status: int
    body: Any
    raw: bytes = b""


@attrs.define
class TaskServer:
    """A running server, its admin token and a raw aiohttp session."""

    root: str
    token: str
    home: Path
    app: web.Application
    runner: web.AppRunner
    session: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        token: str | None = None,
    ) -> Answer:
        """Call ``/v1<path>``; the body is JSON when it parses, else raw bytes."""
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        async with self.session.request(
            method, f"{self.root}/v1{path}", json=json, params=params, headers=headers
        ) as resp:
            raw = await resp.read()
            try:
                body = await resp.json(content_type=None) if raw else None
            except ValueError:
                body = None
            return Answer(resp.status, body, raw)

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

    async def stop(self) -> None:
        """Stop the app (runs the cleanup contexts)."""
        await self.runner.cleanup()


StartServer = Callable[..., Awaitable[TaskServer]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start task servers (``extra`` goes to ``ServerSettings.extra``); stopped after the test."""
    runners: list[web.AppRunner] = []
    session = aiohttp.ClientSession()

    async def start(home: Path | None = None, **extra: Any) -> TaskServer:
        home = home or tmp_path / "home"
        app = create_app(ServerSettings(home=home, extra=extra))
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        token = read_admin_token(home) or ""
        return TaskServer(f"http://127.0.0.1:{port}", token, home, app, runner, session)

    yield start
    await session.close()
    for runner in runners:
        if runner.server is not None:
            await runner.cleanup()


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
