"""Fixtures shared by every test: the anyio backend, a private vi_flow home, no leftovers.

The suite runs the home's server inside the test process (``local_server =
"in-process"``) unless a test opts into the default background server: hundreds of
tests would otherwise each start a server process. The background mode has its own
suite (``tests/localserver/``). Whatever server a test leaves in its home is stopped
by its pid afterwards, and the test fails: a server that outlives its test is a bug.

PostgreSQL (issue 17): ``postgres_schema`` is a fresh schema in the database of
``VI_FLOW_TEST_POSTGRES_URL`` (``start``: a throwaway cluster for the session, see
``tests/pgcluster.py``), dropped after the test. With ``VI_FLOW_TEST_DATABASE=postgres``
every server a test starts keeps its state there (``VI_FLOW_DATABASE``), not in
``<home>/state.db``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from vi_flow.models.server import RUN_FILE

from .localserver.kit import stop_server
from .pgcluster import running_cluster
from .providers_kit import unavailable

POSTGRES_HOW_TO = (
    "run `nox -s tests_postgres`, or set VI_FLOW_TEST_POSTGRES_URL (`start`: a throwaway one)"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[None]:
    """Point every vi_flow setting at the test's own directory, never the user's."""
    for name in (
        "VI_FLOW_API_KEY",
        "VI_FLOW_ORGANIZATION_ID",
        "VI_FLOW_BASE_URL",
        "VI_FLOW_LOG",
        "VI_FLOW_SERVER_IDLE_TIMEOUT",
        "VI_FLOW_DATABASE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VI_FLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VI_FLOW_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("VI_FLOW_LOCAL_SERVER", "in-process")
    if os.environ.get("VI_FLOW_TEST_DATABASE") == "postgres":
        monkeypatch.setenv("VI_FLOW_DATABASE", request.getfixturevalue("postgres_schema"))
    yield
    leftovers = [p for p in tmp_path.rglob(RUN_FILE) if stop_server(p.parent)]
    assert not leftovers, f"the test left a background server running: {leftovers}"


_DEEP_PLACES = ("home/tasks/*/*/d", "home/volumes/*/d", "home/volumes/.deleted-*")


@pytest.fixture
def deep_trees(tmp_path: Path) -> Iterator[None]:
    """For a test of :func:`tests.live_server.deep_tree`: what it made in the test's
    home is removed (``rm -rf``) before the clean-ups that walk ``tmp_path`` by recursion
    (``rglob`` above, pytest's own on Python 3.11), which a tree that deep would break."""
    yield
    found = [str(path) for pattern in _DEEP_PLACES for path in tmp_path.glob(pattern)]
    if found:
        subprocess.run(["rm", "-rf", "--", *found], check=True)


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


def _usable(postgres_url: str | None) -> str:
    """``postgres_url``, once PostgreSQL and psycopg are there (else skipped, or failed
    with ``VI_FLOW_REQUIRE_POSTGRES``)."""
    if postgres_url is None:
        unavailable(
            "VI_FLOW_REQUIRE_POSTGRES", "VI_FLOW_TEST_POSTGRES_URL is not set", POSTGRES_HOW_TO
        )
    if importlib.util.find_spec("psycopg") is None:
        unavailable("VI_FLOW_REQUIRE_POSTGRES", "psycopg is not installed", POSTGRES_HOW_TO)
    assert postgres_url is not None
    return postgres_url


@pytest.fixture
def postgres_schema(postgres_url: str | None) -> Iterator[str]:
    """A URL whose tables live in a fresh schema, dropped after the test."""
    with fresh_schema(_usable(postgres_url)) as url:
        yield url


@pytest.fixture
def postgres_database(postgres_url: str | None) -> Iterator[str]:
    """The URL of a database of the test's own, dropped after it: for a test that cuts
    every connection to its database off (an outage), which a schema cannot keep from
    the tests running beside it in the other pytest-xdist worker."""
    postgres_url = _usable(postgres_url)
    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    try:
        yield urlunsplit(urlsplit(postgres_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


@contextlib.contextmanager
def fresh_schema(postgres_url: str) -> Iterator[str]:
    """A URL of ``postgres_url`` whose tables live in a new schema, dropped on exit."""
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    try:
        yield _in_schema(postgres_url, schema)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())
