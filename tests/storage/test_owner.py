"""One server per PostgreSQL database (schema): a second one refuses to start, naming the
first, until the first stops; servers on other schemas of the database are not affected."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import fresh_schema
from vi_flow.server import db
from vi_flow.server.app import create_app
from vi_flow.server.state import ServerSettings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def _started(home: Path, database: str) -> web.AppRunner:
    runner = web.AppRunner(create_app(ServerSettings(home=home, database=database)))
    try:
        await runner.setup()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def test_a_second_server_on_one_database_is_refused_until_the_first_stops(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = str(request.getfixturevalue("postgres_schema"))
    first = await _started(tmp_path / "a", database)
    try:
        with pytest.raises(db.DatabaseInUseError) as refused:
            await _started(tmp_path / "b", database)
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and "one vi-flow server per database" in message
        assert refused.value.database == db.redact(database)
        with fresh_schema(request.getfixturevalue("postgres_url")) as other:
            beside = await _started(tmp_path / "c", other)  # another schema: its own lock
            await beside.cleanup()
    finally:
        await first.cleanup()
    again = await _started(tmp_path / "b", database)  # the first's session ended: free
    await again.cleanup()


def test_vi_flow_serve_on_a_database_in_use_exits_1_naming_the_server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = str(request.getfixturevalue("postgres_schema"))
    env = {**os.environ, "VI_FLOW_DATABASE": database}
    serve = [sys.executable, "-m", "vi_flow.cli", "serve", "--port", "0", "--home"]
    first = subprocess.Popen(
        [*serve, str(tmp_path / "a")], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert first.stderr is not None
        lines = iter(first.stderr.readline, "")
        assert any("listening on" in line for line in lines), "the first server did not start"
        second = subprocess.run(
            [*serve, str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=60
        )
        assert second.returncode == 1, second.stderr
        assert f"vi-flow server {socket.gethostname()} pid {first.pid}" in second.stderr
        assert "one vi-flow server per database" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.terminate()
        first.communicate(timeout=30)
