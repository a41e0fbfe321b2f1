"""The connection interface on both backends: rows, placeholders, transactions, types."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from vi_flow.server import db
from vi_flow.server.db.dialect import postgres_ddl, to_pyformat
from vi_flow.server.errors import APIProblem
from vi_flow.server.store import Store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

THINGS = """
CREATE TABLE IF NOT EXISTS things (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    size INTEGER, blob BLOB, ratio REAL);
"""


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    store = Store.open(database)
    await store.migrate("things-1", THINGS)
    yield store
    await store.close()


def _add(conn: db.Connection, name: str, size: int | None = None) -> int:
    row = conn.execute(
        "INSERT INTO things (name, size) VALUES (?, ?) RETURNING seq", (name, size)
    ).fetchone()
    return int(row["seq"])


async def test_rows_by_name_and_by_position(store: Store) -> None:
    await store.run(lambda c: _add(c, "a", 7))
    row = await store.run(lambda c: c.execute("SELECT name, size FROM things").fetchone())
    assert (row["name"], row["size"]) == ("a", 7)
    assert (row[0], row[1]) == ("a", 7)
    assert row.keys() == ["name", "size"] and len(row) == 2
    assert dict(zip(row.keys(), row, strict=True)) == {"name": "a", "size": 7}
    names = await store.run(lambda c: [r["name"] for r in c.execute("SELECT name FROM things")])
    assert names == ["a"]


def test_urls_are_shown_without_their_password() -> None:
    assert db.redact("postgresql://vf:s3cret@db:5432/vf") == "postgresql://vf:***@db:5432/vf"
    assert (
        db.redact("postgresql://db/vf?password=s3cret&x=1") == "postgresql://db/vf?password=***&x=1"
    )
    assert db.redact("postgresql://vf@db/vf") == "postgresql://vf@db/vf"


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://vf:s3cret%PW@127.0.0.1:1/vf", "s3cret%PW"),
        ("postgresql://vf@127.0.0.1:1/vf?password=s3cr%ZZetPW", "s3cr%ZZetPW"),
        ("postgresql://vf:abc@defPW@127.0.0.1:1/vf", "abc@defPW"),
    ],
)
def test_a_password_libpq_cannot_read_never_shows(url: str, secret: str) -> None:
    # QA: a bare "%" or "@" in the password, and libpq quoted it back ('invalid
    # percent-encoded token: "s3cret%PW"', "failed to resolve host 'defPW@127.0.0.1'"),
    # in the error vi-flow serve prints; the URL itself showed "vf:***@defPW@..."
    assert "PW" not in db.redact(url)
    pytest.importorskip("psycopg")  # tests_postgres installs it
    from vi_flow.server.db.postgres import PostgresDatabase

    with pytest.raises(db.PostgresError) as caught:
        PostgresDatabase(url).connect()
    assert "PW" not in str(caught.value) and secret not in repr(caught.value), caught.value
    assert caught.value.__cause__ is None  # psycopg's error holds the password whole
    assert caught.value.__suppress_context__


def test_scrubbed_takes_every_form_of_the_password_out_of_a_message() -> None:
    url = "postgresql://vf:p%40ss@word99@db/vf?password=opt%41on"
    message = "bad p%40ss@word99, p@ss@word99, word99@db, optAon, opt%41on; vf at db"
    assert db.scrubbed(message, url) == "bad ***, ***, ***@db, ***, ***; vf at db"


async def test_returning_gives_the_new_key(store: Store) -> None:
    first = await store.run(lambda c: _add(c, "a"))
    second = await store.run(lambda c: _add(c, "b"))
    assert second > first


@pytest.mark.parametrize("text", ["50% off", "what?", "it's 100%?", "%s %(x)s ?"])
async def test_question_marks_and_percents_in_literals_and_parameters(
    store: Store, text: str
) -> None:
    await store.run(lambda c: _add(c, text))
    quoted = text.replace("'", "''")
    row = await store.run(
        lambda c: c.execute(
            f"SELECT '{quoted}', ?, name FROM things WHERE name = ? AND name LIKE '%'", (text, text)
        ).fetchone()
    )
    assert tuple(row) == (text, text, text)


async def test_a_failing_transaction_leaves_nothing(store: Store) -> None:
    def add_then_fail(conn: db.Connection) -> None:
        _add(conn, "half")
        raise APIProblem(409, "CONFLICT", "no")

    with pytest.raises(APIProblem):
        await store.run(add_then_fail)
    count = await store.run(lambda c: c.execute("SELECT count(*) FROM things").fetchone()[0])
    assert count == 0
    await store.run(lambda c: _add(c, "half"))  # the connection is usable again


async def test_a_duplicate_key_is_an_integrity_error_on_both(store: Store) -> None:
    await store.run(lambda c: _add(c, "a"))
    with pytest.raises(db.IntegrityError):
        await store.run(lambda c: _add(c, "a"))
    with pytest.raises(db.Error):
        await store.run(lambda c: c.execute("SELECT nope FROM nowhere"))
    assert await store.run(lambda c: _add(c, "b")) > 0


async def test_64_bit_integers_bytes_and_floats_round_trip(store: Store) -> None:
    big, raw = 2**62 + 12345, bytes(range(256))

    def write(conn: db.Connection) -> None:
        conn.execute(
            "INSERT INTO things (name, size, blob, ratio) VALUES (?, ?, ?, ?)",
            ("big", big, raw, 0.25),
        )
        conn.execute("INSERT INTO things (name, size) VALUES (?, ?)", ("neg", -big))

    await store.run(write)
    rows = await store.run(
        lambda c: c.execute("SELECT size, blob, ratio FROM things ORDER BY seq").fetchall()
    )
    assert rows[0]["size"] == big and bytes(rows[0]["blob"]) == raw and rows[0]["ratio"] == 0.25
    assert rows[1]["size"] == -big and rows[1]["blob"] is None


async def test_executemany_and_rowcount(store: Store) -> None:
    await store.run(
        lambda c: c.executemany(
            "INSERT INTO things (name, size) VALUES (?, ?)", [(f"n{i}", i) for i in range(10)]
        )
    )
    deleted = await store.run(lambda c: c.execute("DELETE FROM things WHERE size < ?", (4,)))
    assert deleted.rowcount == 4


async def test_booleans_are_stored_as_integers(store: Store) -> None:
    await store.run(
        lambda c: c.execute("INSERT INTO things (name, size) VALUES (?, ?)", ("t", True))
    )
    assert await store.run(lambda c: c.execute("SELECT size FROM things").fetchone()[0]) == 1


async def test_untyped_null_parameters_compare(store: Store) -> None:
    await store.run(lambda c: _add(c, "a", 3))
    sql = "SELECT name FROM things WHERE (? IS NULL OR size = ?) AND (? IS NULL OR name = ?)"
    rows = await store.run(lambda c: c.execute(sql, (None, None, "a", "a")).fetchall())
    assert [r["name"] for r in rows] == ["a"]


def test_placeholders_translate_outside_literals_only() -> None:
    sql = "SELECT '?%', \"a?\", ? FROM t WHERE x LIKE 'it''s ?' AND y = ?"
    want = "SELECT '?%%', \"a?\", %s FROM t WHERE x LIKE 'it''s ?' AND y = %s"
    assert to_pyformat(sql) == want


def test_table_definitions_in_postgres_words() -> None:
    sql = "CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB, n INTEGER) WITHOUT ROWID;"
    assert postgres_ddl(sql) == (
        "CREATE TABLE t (seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        " blob BYTEA, n BIGINT);"
    )
