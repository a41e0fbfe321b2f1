"""A server whose PostgreSQL is away is stopped from the CLI (``vi-flow server stop``).

Here, not in ``tests/localserver`` (whose home's server it is), because ``tests_postgres``
runs this directory: elsewhere it would only ever be skipped.
"""

from __future__ import annotations

from pathlib import Path

from ..localserver.kit import cli, foreground_serve


def test_a_server_whose_postgresql_is_away_stops_when_forced(
    served_home: Path, postgres_database: str
) -> None:
    import psycopg

    with foreground_serve(served_home, VI_FLOW_DATABASE=postgres_database) as serve:
        admin = psycopg.connect(postgres_database, dbname="postgres", autocommit=True)
        name = psycopg.conninfo.conninfo_to_dict(postgres_database)["dbname"]
        try:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'.encode())
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            refused = cli(
                served_home, "server", "stop", check=False
            )  # whether work runs is unknown
            assert refused.returncode != 0 and "DATABASE_UNAVAILABLE" in refused.stderr, refused
            cli(served_home, "server", "stop", "--force")
            assert serve.wait(timeout=60) == 0
        finally:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'.encode())
            admin.close()
