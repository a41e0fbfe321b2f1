"""The ``cluster`` fixture: replicas on a fresh PostgreSQL schema, all stopped afterwards.

It asks for ``postgres_schema``, so without PostgreSQL the tests skip (or fail under
``VI_FLOW_REQUIRE_POSTGRES=1``). Every process the cluster started is stopped by its pid
before the schema is dropped, whether the test passed or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .kit import Cluster


@pytest.fixture
def cluster(postgres_schema: str, tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path / "replicas", postgres_schema)
    try:
        yield started
    finally:
        started.stop_all()
