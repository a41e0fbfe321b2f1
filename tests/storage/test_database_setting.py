"""``--database`` / ``VI_FLOW_DATABASE`` that names nothing usable: a clear error, the
password never shown, nothing created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vi_flow.server import db

BAD = "mysql://vi:s3cret-pw@db.internal/vi"


def test_a_url_of_another_kind_is_refused_without_its_password() -> None:
    with pytest.raises(db.DatabaseSettingError) as refused:
        db.open_database(BAD)
    assert "s3cret-pw" not in str(refused.value)
    assert "neither a postgresql:// URL nor a SQLite file path" in str(refused.value)


def test_a_libpq_key_value_string_is_refused_not_made_a_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was read as a relative path: the server kept its state in a SQLite file named
    # "host=... dbname=..." in whatever directory it started from, saying nothing.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(db.DatabaseSettingError) as refused:
        db.open_database(CONNINFO)
    assert "s3cret-pw" not in str(refused.value)
    assert "key=value string" in str(refused.value) and "postgresql://" in str(refused.value)
    assert list(tmp_path.iterdir()) == []
    assert isinstance(db.open_database("./host=x.db"), db.SQLiteDatabase)  # asked for by path


CONNINFO = "host=db.internal port=5432 dbname=vi user=vi password=s3cret-pw"


@pytest.mark.parametrize(
    ("setting", "shown"),
    [(BAD, "'mysql://vi:***@db.internal/vi'"), (CONNINFO, "password=***'")],
)
def test_vi_flow_serve_names_the_bad_database_and_creates_nothing(
    tmp_path: Path, setting: str, shown: str
) -> None:
    home = tmp_path / "home"
    serve = [sys.executable, "-m", "vi_flow.cli", "serve", "--home", str(home)]
    answer = subprocess.run(
        [*serve, "--database", setting],
        capture_output=True, text=True, timeout=60, env=os.environ, cwd=tmp_path,
    )  # fmt: skip
    assert answer.returncode == 2, answer.stderr
    assert "--database: the database " in answer.stderr and shown in answer.stderr
    assert "s3cret-pw" not in answer.stderr + answer.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("lease", ["0.5", "nan", "inf", "abc"])
def test_vi_flow_serve_refuses_a_replica_lease_that_is_not_1_to_86400_seconds(
    tmp_path: Path, lease: str
) -> None:
    home = tmp_path / "home"
    serve = [sys.executable, "-m", "vi_flow.cli", "serve", "--home", str(home)]
    env = {**os.environ, "VI_FLOW_REPLICA_LEASE": lease}
    answer = subprocess.run(serve, capture_output=True, text=True, timeout=60, env=env)
    assert answer.returncode == 2, answer.stderr
    assert "--replica-lease" in answer.stderr and not home.exists()
