"""A server whose PostgreSQL takes no writes for a while (a standby after a failover,
writes turned off) answers reads, refuses writes ``503``, and writes again once it can.

Here (not in ``tests/storage``) because it is the server's answers that matter, and
``tests_postgres`` runs this directory.
"""

from __future__ import annotations

from pathlib import Path

from ..localserver.kit import foreground_serve, wait_for
from .conftest import call_served


def test_a_read_only_database_answers_reads_and_refuses_writes_503(
    served_home: Path, postgres_database: str
) -> None:
    # QA J: every request, reads too, answered 500 with a traceback in the log: each new
    # connection ran the schema's CREATE TABLE IF NOT EXISTS, which a read-only database
    # refuses, and a refused write was not told from a bug.
    import psycopg

    flow = {"name": "kept", "blocks": [{"block": "template", "id": "t"}]}
    name = psycopg.conninfo.conninfo_to_dict(postgres_database)["dbname"]
    with (
        foreground_serve(served_home, VI_FLOW_DATABASE=postgres_database),
        psycopg.connect(postgres_database, dbname="postgres", autocommit=True) as admin,
    ):
        assert call_served(served_home, "POST", "/flows", flow)[0] == 201

        def read_only(on: bool) -> None:
            setting = "on" if on else "off"
            admin.execute(
                f'ALTER DATABASE "{name}" SET default_transaction_read_only = {setting}'.encode()
            )
            admin.execute(  # its sessions end: the server's next connection reads the setting
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )

        read_only(True)
        listed = wait_for(
            lambda: (got := call_served(served_home, "GET", "/flows"))[0] == 200 and got, 30
        )
        assert [f["spec"]["name"] for f in listed[1]["items"]] == ["kept"]
        status, body, headers = call_served(
            served_home, "POST", "/flows", {**flow, "name": "refused"}
        )
        assert (status, body["error"]["code"]) == (503, "DATABASE_UNAVAILABLE"), body
        assert "read-only" in body["error"]["message"] and headers["Retry-After"]
        read_only(False)
        wait_for(
            lambda: call_served(served_home, "POST", "/flows", {**flow, "name": "again"})[0] == 201,
            30,
        )
        names = [f["spec"]["name"] for f in call_served(served_home, "GET", "/flows")[1]["items"]]
        assert sorted(names) == ["again", "kept"]
