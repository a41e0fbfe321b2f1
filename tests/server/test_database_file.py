"""The SQLite file removed or replaced under a running server (found by QA).

SQLite goes on writing to the file it has open: the server answered 201 for every flow
made after ``rm state.db`` and lost them all (and the ones before) at its next start. It
now refuses what needs its database once its path names another file or none: what it
would save is lost, what it would read is about to be.
"""

from __future__ import annotations

import os
import shutil

import pytest

from vi_flow.server.state import STORE_KEY

from .conftest import Server, spec

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        os.environ.get("VI_FLOW_TEST_DATABASE") == "postgres",
        reason="a PostgreSQL server's database is not a file of its home",
    ),
]


def _database_file(server: Server) -> str:
    return str(server.app[STORE_KEY].database.path)


async def _refused(server: Server) -> None:
    for method, json in (("POST", spec("after")), ("GET", None)):
        answer = await server.call(method, "/flows", json=json)
        assert answer.status == 503, answer.body
        assert answer.body["error"]["code"] == "DATABASE_GONE"
        assert "restarted" in answer.body["error"]["message"]
        assert "state.db" not in answer.body["error"]["message"]  # no server path to members
        assert answer.headers["X-Should-Retry"] == "false"
    assert (await server.call("GET", "/health")).status == 200  # it is up, and says why not
    # but not ready: a load balancer's check sends its requests elsewhere
    ready = await server.call("GET", "/health?ready=true")
    assert ready.status == 503 and ready.body["error"]["code"] == "DATABASE_GONE", ready.body


async def test_a_removed_database_file_refuses_writes(server: Server) -> None:
    assert (await server.call("POST", "/flows", json=spec("before"))).status == 201
    os.remove(_database_file(server))
    await _refused(server)


async def test_a_database_file_replaced_by_a_copy_refuses_writes(server: Server) -> None:
    assert (await server.call("POST", "/flows", json=spec("before"))).status == 201
    path = _database_file(server)
    shutil.copyfile(path, path + ".copy")
    os.replace(path + ".copy", path)
    await _refused(server)
