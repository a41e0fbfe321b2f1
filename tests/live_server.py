"""A real vi_flow server app on 127.0.0.1 for the server-side tests, and raw calls to it.

:class:`LiveServer` is one running app with its admin token and a raw aiohttp session;
:class:`Starter` starts as many as a test wants on free loopback ports and stops them
all afterwards. The server, engine and task-server suites subclass :class:`LiveServer`
with their own helpers.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import aiohttp
import attrs
import pytest
from aiohttp import web

from vi_flow.server.app import create_app
from vi_flow.server.bootstrap import read_admin_token
from vi_flow.server.db import open_database
from vi_flow.server.limits import raise_open_file_limit
from vi_flow.server.serve import answer_malformed_as_json
from vi_flow.server.state import ServerSettings

SQLITE_ONLY = pytest.mark.skipif(
    os.environ.get("VI_FLOW_TEST_DATABASE") == "postgres",
    reason="about SQLite itself (its own file, its PRAGMAs)",
)
"""For tests of SQLite itself (an old state.db built by hand, a full disk made with
``PRAGMA max_page_count``), skipped where servers use PostgreSQL."""


def state_sql(home: Path, statement: str, *args: object) -> list[Any]:
    """Run one statement (``?`` placeholders) on a server's database, as another replica
    would: ``VI_FLOW_DATABASE`` when set, else ``<home>/state.db``. Returns a SELECT's rows."""
    database = open_database(os.environ.get("VI_FLOW_DATABASE") or home / "state.db")
    conn = database.connect()
    try:
        database.begin(conn)
        cursor = conn.execute(statement, args)
        rows = cursor.fetchall() if statement.lstrip().upper().startswith("SELECT") else []
        database.commit(conn)
    finally:
        conn.close()
    return rows


DEEP = sys.getrecursionlimit() + 200
"""Levels of :func:`deep_tree`: past what a recursive walk reaches (QA: 1,200 broke it)."""


def deep_tree(variable: str, depth: int = DEEP) -> list[str]:
    """A task command that makes ``d/a/a/.../a/f.txt`` (``depth`` times ``a``) in the
    directory ``$variable`` names, as a task may (a test using it takes the
    ``deep_trees`` fixture, which removes it)."""
    script = (
        f"import os; os.chdir(os.environ[{variable!r}]); os.mkdir('d'); os.chdir('d')\n"
        f"for _ in range({depth}): os.mkdir('a'); os.chdir('a')\n"
        "open('f.txt', 'w').write('bottom')\n"
    )
    return [sys.executable, "-c", script]


def deep_path(depth: int = DEEP) -> str:
    """The file :func:`deep_tree` makes, relative to its directory."""
    return "d/" + "a/" * depth + "f.txt"


@attrs.define
class Answer:
    """One HTTP answer: status, JSON body (``None`` when empty or not JSON), headers, bytes."""

    status: int
    body: Any
    headers: Any = None
    raw: bytes = b""


@attrs.define
class LiveServer:
    """A running server app, its admin token and a raw aiohttp session to call it with."""

    root: str
    token: str
    home: Path
    app: web.Application
    session: aiohttp.ClientSession
    runner: web.AppRunner

    async def stop(self) -> None:
        """Stop the app gracefully, as a restart would (cleanup then skips it)."""
        await self.runner.cleanup()

    def headers(
        self, token: str | None = None, extra: dict[str, str] | None = None
    ) -> dict[str, str]:
        """``extra`` plus the admin token, or ``token`` (``""``: no Authorization at all)."""
        chosen = self.token if token is None else token
        auth = {"Authorization": f"Bearer {chosen}"} if chosen else {}
        return {**auth, **(extra or {})}

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        params: Any = None,
        data: bytes | None = None,
    ) -> Answer:
        """Call ``/v1<path>`` with the admin token unless ``token`` is given."""
        async with self.session.request(
            method,
            f"{self.root}/v1{path}",
            json=json,
            params=params,
            data=data,
            headers=self.headers(token, headers),
        ) as resp:
            raw = await resp.read()
            try:
                body = await resp.json(content_type=None) if raw else None
            except ValueError:
                body = None
            return Answer(resp.status, body, resp.headers, raw)

    async def task_ended(self, task_id: str, within: float = 30) -> dict[str, Any]:
        """The task once it is neither pending nor running (polled every 0.1 s)."""
        for _ in range(int(within * 10)):
            task: dict[str, Any] = (await self.call("GET", f"/tasks/{task_id}")).body
            if task["status"] not in ("pending", "running"):
                return task
            await asyncio.sleep(0.1)
        raise AssertionError(f"task {task_id} still {task['status']} after {within} s")


S = TypeVar("S", bound=LiveServer)


class Starter(Generic[S]):
    """Starts ``kind`` servers on free loopback ports; ``async with`` stops them all."""

    def __init__(self, kind: type[S]) -> None:
        self.kind = kind
        self.runners: list[web.AppRunner] = []
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Starter[S]:
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.session is not None:
            await self.session.close()
        for runner in self.runners:
            if runner.server is not None:
                await runner.cleanup()

    async def start(
        self, settings: ServerSettings, prepare: Callable[[web.Application], None] | None = None
    ) -> S:
        """Serve an app made from ``settings`` (changed by ``prepare`` first, if given)."""
        assert self.session is not None, "use the Starter in 'async with'"
        # as `vi-flow serve` does: the SSH server's shares of open files follow the limit
        # (a user who is not root has 1024 by default, too few for the SFTP tests: QA AZ)
        raise_open_file_limit()
        app = create_app(settings)
        if prepare is not None:
            prepare(app)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        answer_malformed_as_json(runner)  # as `vi-flow serve` does
        self.runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        token = read_admin_token(settings.home) or ""
        return self.kind(
            f"http://127.0.0.1:{port}", token, settings.home, app, self.session, runner
        )
