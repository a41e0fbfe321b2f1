"""The ``database`` fixture: every storage test runs on SQLite and on PostgreSQL.

SQLite is a file in the test's directory. PostgreSQL is a fresh schema (dropped after the
test) in the database of ``VI_FLOW_TEST_POSTGRES_URL``; ``VI_FLOW_TEST_POSTGRES_URL=start``
starts a throwaway cluster for the session (``tests/pgcluster.py``). Without it the
PostgreSQL half is skipped, or fails where ``VI_FLOW_REQUIRE_POSTGRES=1`` (``nox -s
tests_postgres``, CI).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from ..pgcluster import running_cluster
from ..providers_kit import unavailable

HOW_TO = "run `nox -s tests_postgres`, or set VI_FLOW_TEST_POSTGRES_URL (`start`: a throwaway one)"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """The PostgreSQL database the tests may use, or None."""
    url = os.environ.get("VI_FLOW_TEST_POSTGRES_URL", "")
    if url != "start":
        yield url or None
        return
    with running_cluster() as started:
        yield started


def _in_schema(url: str, schema: str) -> str:
    """``url`` with ``schema`` first on the search path, so every table lands in it."""
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options={quote(f'-c search_path={schema}')}"


@pytest.fixture
def postgres_schema(postgres_url: str | None) -> Iterator[str]:
    """A URL whose tables live in a fresh schema, dropped after the test."""
    if postgres_url is None:
        unavailable("VI_FLOW_REQUIRE_POSTGRES", "VI_FLOW_TEST_POSTGRES_URL is not set", HOW_TO)
    try:
        import psycopg
    except ImportError:
        unavailable("VI_FLOW_REQUIRE_POSTGRES", "psycopg is not installed", HOW_TO)
    assert postgres_url is not None
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    try:
        yield _in_schema(postgres_url, schema)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What ``Store.open`` takes: a SQLite file path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return str(request.getfixturevalue("postgres_schema"))
