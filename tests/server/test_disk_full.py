"""A full disk under a running server: a typed 507 that is not retried, and nothing
half-written (the 500 it was had a request id in no log: the log was full too).

SQLite's own ``max_page_count`` makes the database full, as a full filesystem does
(``SQLITE_FULL``, "database or disk is full").
"""

from __future__ import annotations

import os

import pytest

from vi_flow.server.state import STORE_KEY

from .conftest import Server, spec

pytestmark = pytest.mark.anyio


async def _cap_pages(server: Server, pages: int) -> None:
    store = server.app[STORE_KEY]
    await store.run(lambda c: c.execute(f"PRAGMA max_page_count = {pages}").fetchall())


@pytest.mark.skipif(
    os.environ.get("VI_FLOW_TEST_DATABASE") == "postgres",
    reason="SQLite's own page cap fills the database; PostgreSQL's DiskFull has the test below",
)
async def test_a_full_database_is_507_not_retried_and_changes_nothing(server: Server) -> None:
    before = (await server.call("GET", "/flows")).body["items"]
    await _cap_pages(server, 1)  # no page more than it has now
    try:
        blocks = [
            {"block": "template", "id": f"b{i}", "settings": {"template": f"{i}" * 2000}}
            for i in range(200)
        ]  # 400 KB: more pages than the database has free
        full = await server.call("POST", "/flows", json={"name": "too-big", "blocks": blocks})
        assert full.status == 507, full.body
        assert full.body["error"]["code"] == "INSUFFICIENT_STORAGE"
        assert "disk is full" in full.body["error"]["message"]
        assert full.headers["X-Should-Retry"] == "false"
        assert (await server.call("GET", "/flows")).body["items"] == before  # reads go on
    finally:
        await _cap_pages(server, 1_073_741_823)
    made = await server.call("POST", "/flows", json=spec("fits"))
    assert made.status == 201


def test_a_full_postgresql_disk_is_a_full_disk_not_an_outage() -> None:
    # psycopg's DiskFull is an OperationalError, which the backend made
    # DatabaseUnavailable: 503 with Retry-After 1, retried (found in review).
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL sessions run it")
    from vi_flow.server.db import DatabaseUnavailable
    from vi_flow.server.db.postgres import _translated_errors
    from vi_flow.server.middleware import _disk_full

    with pytest.raises(Exception) as raised, _translated_errors():
        raise psycopg.errors.DiskFull("could not extend file: No space left on device")
    assert not isinstance(raised.value, DatabaseUnavailable)
    assert _disk_full(raised.value)
