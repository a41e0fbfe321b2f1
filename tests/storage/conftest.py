"""The ``database`` fixture: every storage test runs on SQLite and on PostgreSQL.

SQLite is a file in the test's directory; PostgreSQL is ``postgres_schema`` (a fresh
schema, see ``tests/conftest.py``), skipped without ``VI_FLOW_TEST_POSTGRES_URL`` unless
``VI_FLOW_REQUIRE_POSTGRES=1`` (``nox -s tests_postgres``, CI).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What ``Store.open`` takes: a SQLite file path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return str(request.getfixturevalue("postgres_schema"))
