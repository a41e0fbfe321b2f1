"""The home's database file removed under its server (``rm ~/.vi-flow/state.db``).

The server answers ``503 DATABASE_GONE`` to what needs the database
(``tests/server/test_database_file.py``); here, what a user then meets. It used to
serve nothing for good: the background server never idled out (its idle watch died on
the error), ``vi-flow server stop`` was refused (the admin token could not be looked
up), and the CLI said "transient" (exit 6) for what no retry mends. (A server whose
PostgreSQL is away: ``tests/server/test_stop_without_database.py``.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .kit import alive, cli, cli_json, foreground_serve, run_file, started_server, wait_for

on_sqlite = pytest.mark.skipif(
    bool(os.environ.get("VI_FLOW_DATABASE")),
    reason="a PostgreSQL server's database is not a file of its home",
)


def _remove_database(home: Path) -> None:
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (home / name).unlink(missing_ok=True)


def _one_flow(home: Path) -> None:
    spec = home.parent / "flow.yaml"
    spec.write_text("name: kept\nblocks:\n  - {block: emit, id: e, settings: {count: 1}}\n")
    cli(home, "flows", "create", "-f", str(spec))


@on_sqlite
def test_a_background_server_stops_and_the_next_command_starts_another(home: Path) -> None:
    first = started_server(home)
    _one_flow(home)
    _remove_database(home)
    wait_for(lambda: not alive(first.pid), 30, "the server to stop by itself")
    assert "the database file is gone: stopping" in (home / "logs" / "server.log").read_text()
    assert cli_json(home, "flows", "list") == []  # a new server, on a new database
    second = run_file(home)
    assert second is not None and second.pid != first.pid


@on_sqlite
def test_a_foreground_server_says_so_and_stops_when_asked(home: Path) -> None:
    with foreground_serve(home) as serve:
        _one_flow(home)
        _remove_database(home)
        listed = cli(home, "flows", "list", check=False)
        assert listed.returncode == 1, listed  # not 6: no retry mends it
        assert "DATABASE_GONE" in listed.stderr and "vi-flow server stop" in listed.stderr
        status = cli(home, "server", "status", check=False)
        assert status.returncode == 1 and "DATABASE_GONE" in status.stderr, status
        cli(home, "server", "stop")
        assert serve.wait(timeout=30) == 0
