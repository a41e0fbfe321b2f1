"""Synchronous SQL for the foundation's tables; runs only on the store's DB thread.

Each function takes the open ``Connection`` first and is called by
:class:`vi_flow.server.store.Store` inside a transaction. Missing rows raise
:class:`~vi_flow.server.errors.APIProblem` with the wire code, so the transaction rolls
back and the handler answers the right 404/409/412.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import orjson

from ..models._base import from_wire, to_wire
from ..models.common import Condition, ResourceCondition, ResourceMetadata
from ..models.flows import Flow, FlowSpec
from ..models.runs import Run, RunSpec, RunStatus
from .clock import now_ms
from .db import Connection, IntegrityError, Migration, Row, for_update, log_when_committed
from .errors import APIProblem

__all__ = ["MIGRATIONS", "SCHEMA", "new_id", "readable", "seq_window", "split_page"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("vi_flow.server")

SCHEMA = """
CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orgs (
    org_id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, org_id TEXT NOT NULL, name TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS flows (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, flow_id TEXT NOT NULL UNIQUE,
    org_id TEXT NOT NULL, spec TEXT NOT NULL, etag TEXT NOT NULL,
    generation INTEGER NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    production_version INTEGER, latest_version INTEGER);
CREATE INDEX IF NOT EXISTS flows_by_org ON flows (org_id, seq);
CREATE TABLE IF NOT EXISTS flow_versions (
    flow_id TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
    created_at INTEGER NOT NULL, PRIMARY KEY (flow_id, version));
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,
    org_id TEXT NOT NULL, flow_id TEXT NOT NULL, condition TEXT NOT NULL,
    spec TEXT NOT NULL, conditions TEXT NOT NULL, log TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL, etag TEXT NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS runs_by_org ON runs (org_id, seq);
CREATE INDEX IF NOT EXISTS runs_by_condition ON runs (condition);
CREATE TABLE IF NOT EXISTS idempotency (
    org_id TEXT NOT NULL, key TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
    body_hash TEXT NOT NULL, status INTEGER NOT NULL, body BLOB NOT NULL,
    created_at INTEGER NOT NULL, PRIMARY KEY (org_id, key, method, path));
"""

MIGRATIONS: tuple[tuple[str, Migration], ...] = (
    (
        # Client-chosen flow ids are scoped to their organization: another organization
        # may use the same id, so a taken id is never an oracle of what others have.
        "flows-per-organization-1",
        """
CREATE TABLE flows_scoped (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, flow_id TEXT NOT NULL,
    org_id TEXT NOT NULL, spec TEXT NOT NULL, etag TEXT NOT NULL,
    generation INTEGER NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    production_version INTEGER, latest_version INTEGER, UNIQUE (org_id, flow_id));
INSERT INTO flows_scoped SELECT seq, flow_id, org_id, spec, etag, generation, created_at,
    updated_at, production_version, latest_version FROM flows;
DROP TABLE flows;
ALTER TABLE flows_scoped RENAME TO flows;
CREATE INDEX IF NOT EXISTS flows_by_org ON flows (org_id, seq);
CREATE TABLE flow_versions_scoped (
    org_id TEXT NOT NULL, flow_id TEXT NOT NULL, version INTEGER NOT NULL,
    spec TEXT NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (org_id, flow_id, version));
INSERT INTO flow_versions_scoped SELECT f.org_id, v.flow_id, v.version, v.spec, v.created_at
    FROM flow_versions v JOIN flows f ON f.flow_id = v.flow_id;
DROP TABLE flow_versions;
ALTER TABLE flow_versions_scoped RENAME TO flow_versions;
""",
    ),
    (
        # Client-chosen run ids are scoped to their organization, for the same reason.
        "runs-per-organization-1",
        """
CREATE TABLE runs_scoped (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,
    org_id TEXT NOT NULL, flow_id TEXT NOT NULL, condition TEXT NOT NULL,
    spec TEXT NOT NULL, conditions TEXT NOT NULL, log TEXT NOT NULL DEFAULT '',
    generation INTEGER NOT NULL, etag TEXT NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, UNIQUE (org_id, run_id));
INSERT INTO runs_scoped SELECT seq, run_id, org_id, flow_id, condition, spec, conditions, log,
    generation, etag, created_at, updated_at FROM runs;
DROP TABLE runs;
ALTER TABLE runs_scoped RENAME TO runs;
CREATE INDEX IF NOT EXISTS runs_by_org ON runs (org_id, seq);
CREATE INDEX IF NOT EXISTS runs_by_condition ON runs (condition);
""",
    ),
    (
        # Retention pages idempotency records by rowid; PostgreSQL tables have none.
        "idempotency-rowid-1",
        {
            "sqlite": "SELECT 1;",
            "postgresql": "ALTER TABLE idempotency"
            " ADD COLUMN rowid BIGINT GENERATED BY DEFAULT AS IDENTITY;",
        },
    ),
)
"""Changes to :data:`SCHEMA`, applied once each, in order, when the store opens."""

_ACTIVE = tuple(c.value for c in Condition if not c.terminal)


def new_id(prefix: str) -> str:
    """A fresh random identifier such as ``flow_3f9a0c1d2e4b5a6c``."""
    return f"{prefix}_{secrets.token_hex(8)}"


def hash_token(token: str) -> str:
    """The sha256 hex digest under which a bearer token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def split_page(
    rows: Sequence[T], size: int, cursor_of: Callable[[T], int]
) -> tuple[list[T], int | None]:
    """Cut ``size + 1`` fetched rows into a page and the cursor of the next one (or None)."""
    if len(rows) <= size:
        return list(rows), None
    page = list(rows[:size])
    return page, cursor_of(page[-1])


def seq_window(after: int, newest: bool, column: str = "seq") -> tuple[str, tuple[int, ...], str]:
    """SQL for one page of a table keyed by ``column``: ``(condition, parameters, ORDER BY)``.

    Newest first: ``column < after`` (no bound when ``after`` is 0, the first page) and
    ``column DESC``; oldest first: ``column > after`` and ``column ASC``.
    """
    if newest:
        return f"(? = 0 OR {column} < ?)", (after, after), f"{column} DESC"
    return f"{column} > ?", (after,), f"{column} ASC"


def readable(rows: Sequence[T], decode: Callable[[T], R], kind: str) -> list[R]:
    """``decode`` each row, skipping (with a warning) any stored record it cannot read.

    What was accepted can always be read back: one bad record (written by an older
    server, or edited by hand) must not make a whole list answer 500.
    """
    out: list[R] = []
    for row in rows:
        item = _decode_or_none(row, decode, kind)
        if item is not None:
            out.append(item)
    return out


def _decode_or_none(row: T, decode: Callable[[T], R], kind: str) -> R | None:
    try:
        return decode(row)
    except Exception as exc:  # any decoding failure: the list goes on without it
        log.warning("skipped an unreadable %s record %s: %r", kind, _row_id(row), exc)
        return None


def _row_id(row: object) -> str:
    try:
        return str(row[1])  # type: ignore[index]  # flow_id, run_id: the second column
    except (TypeError, IndexError, KeyError):
        return "?"


def _json(obj: Any) -> str:
    return orjson.dumps(to_wire(obj)).decode()


# -- organizations and tokens ---------------------------------------------------------


def create_org(conn: Connection, name: str, org_id: str | None = None) -> str:
    org_id = org_id or new_id("org")
    conn.execute(
        "INSERT INTO orgs (org_id, name, created_at) VALUES (?, ?, ?)", (org_id, name, now_ms())
    )
    return org_id


def org_exists(conn: Connection, org_id: str) -> bool:
    return conn.execute("SELECT 1 FROM orgs WHERE org_id = ?", (org_id,)).fetchone() is not None


def create_token(conn: Connection, org_id: str, name: str, admin: bool) -> str:
    if not org_exists(conn, org_id):
        raise APIProblem.not_found("NOT_FOUND", "organization", org_id)
    if (
        not admin
        and conn.execute(
            "SELECT 1 FROM tokens WHERE org_id = ? AND name = ? AND admin = 1", (org_id, name)
        ).fetchone()
    ):
        # Keys are revoked by name, and with them the SSH keys they registered: a key of
        # the admin token's name could not be told from it (its SSH keys outlived it).
        raise APIProblem(
            409, "CONFLICT", f"{name!r} is the admin token's name; give this key another"
        )
    token = f"vf_{secrets.token_urlsafe(32)}"
    conn.execute(
        "INSERT INTO tokens (token_hash, org_id, name, admin, created_at) VALUES (?, ?, ?, ?, ?)",
        (hash_token(token), org_id, name, int(admin), now_ms()),
    )
    return token


def list_tokens(conn: Connection, org_id: str) -> list[dict[str, object]]:
    if not org_exists(conn, org_id):
        raise APIProblem.not_found("NOT_FOUND", "organization", org_id)
    rows = conn.execute(
        "SELECT name, admin, created_at FROM tokens WHERE org_id = ? ORDER BY created_at, name",
        (org_id,),
    ).fetchall()
    return [
        {"name": r["name"], "admin": bool(r["admin"]), "createdAt": r["created_at"]} for r in rows
    ]


def revoke_tokens(conn: Connection, org_id: str, name: str) -> int:
    """Delete the organization's tokens named ``name``; the admin token is never revoked
    here (it is the operator's way in: replace ``<home>/admin-token`` instead), but
    other tokens given its name are."""
    if not org_exists(conn, org_id):
        raise APIProblem.not_found("NOT_FOUND", "organization", org_id)
    rows = conn.execute(
        "SELECT admin FROM tokens WHERE org_id = ? AND name = ?", (org_id, name)
    ).fetchall()
    if not rows:
        raise APIProblem.not_found("NOT_FOUND", "token", name)
    revoked = sum(1 for r in rows if not r["admin"])
    if not revoked:
        raise APIProblem(
            409, "CONFLICT", f"token {name!r} is the admin token; it cannot be revoked"
        )
    conn.execute("DELETE FROM tokens WHERE org_id = ? AND name = ? AND admin = 0", (org_id, name))
    return revoked


def lookup_token(conn: Connection, token: str) -> tuple[str, str, bool] | None:
    row = conn.execute(
        "SELECT org_id, name, admin FROM tokens WHERE token_hash = ?", (hash_token(token),)
    ).fetchone()
    return None if row is None else (row["org_id"], row["name"], bool(row["admin"]))


# -- flows ---------------------------------------------------------------------------


def _flow(row: Row) -> Flow:
    return Flow(
        organization_id=row["org_id"],
        flow_id=row["flow_id"],
        spec=from_wire(orjson.loads(row["spec"]), FlowSpec),
        metadata=ResourceMetadata(row["created_at"], row["updated_at"], row["generation"]),
        self_link=f"/v1/flows/{row['flow_id']}",
        etag=row["etag"],
        production_version=row["production_version"],
        latest_version=row["latest_version"],
    )


def _flow_row(conn: Connection, org_id: str, flow_id: str, *, lock: bool = False) -> Row:
    """The flow's row (404 ``FLOW_NOT_FOUND``); ``lock``: the transaction changes it, and
    another replica's change of it waits (see :func:`~vi_flow.server.db.for_update`)."""
    row: Row | None = conn.execute(
        "SELECT * FROM flows WHERE flow_id = ? AND org_id = ?" + (for_update(conn) if lock else ""),
        (flow_id, org_id),
    ).fetchone()
    if row is None:
        raise APIProblem.not_found("FLOW_NOT_FOUND", "flow", flow_id)
    return row


def _insert(conn: Connection, kind: str, ident: str, sql: str, args: tuple[Any, ...]) -> None:
    try:
        conn.execute(sql, args)
    except IntegrityError:
        raise APIProblem.conflict(f"{kind} id {ident!r} is already taken") from None


def create_flow(conn: Connection, org_id: str, spec: FlowSpec, flow_id: str | None = None) -> Flow:
    flow_id, now = flow_id or new_id("flow"), now_ms()
    _insert(
        conn,
        "flow",
        flow_id,
        "INSERT INTO flows (flow_id, org_id, spec, etag, generation, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 1, ?, ?)",
        (flow_id, org_id, _json(spec), secrets.token_hex(8), now, now),
    )
    return get_flow(conn, org_id, flow_id)


def get_flow(conn: Connection, org_id: str, flow_id: str) -> Flow:
    return _flow(_flow_row(conn, org_id, flow_id))


def list_flows(
    conn: Connection, org_id: str, size: int, after: int, newest: bool = True
) -> tuple[list[Flow], int | None]:
    where, bound, order = seq_window(after, newest)
    rows = conn.execute(
        f"SELECT * FROM flows WHERE org_id = ? AND {where} ORDER BY {order} LIMIT ?",
        (org_id, *bound, size + 1),
    ).fetchall()
    page, cursor = split_page(rows, size, lambda r: int(r["seq"]))
    return readable(page, _flow, "flow"), cursor


def _etag_matches(if_match: str, etag: str) -> bool:
    # If-Match compares strongly (RFC 9110 13.1.1): a weak tag W/"..." matches nothing
    candidates = [c.strip() for c in if_match.split(",")]
    return "*" in candidates or any(c.strip('"') == etag for c in candidates if c[:2] != "W/")


def _check_if_match(row: Row, flow_id: str, if_match: str | None) -> None:
    if if_match is not None and not _etag_matches(if_match, row["etag"]):
        raise APIProblem(
            412,
            "ETAG_MISMATCH",
            f"flow {flow_id!r} changed: etag is {row['etag']!r}, not {if_match!r}",
        )


def update_flow(
    conn: Connection, org_id: str, flow_id: str, spec: FlowSpec, if_match: str | None
) -> Flow:
    row = _flow_row(conn, org_id, flow_id, lock=True)
    _check_if_match(row, flow_id, if_match)
    conn.execute(
        "UPDATE flows SET spec = ?, etag = ?, generation = generation + 1, updated_at = ?"
        " WHERE flow_id = ? AND org_id = ?",
        (_json(spec), secrets.token_hex(8), now_ms(), flow_id, org_id),
    )
    return get_flow(conn, org_id, flow_id)


def delete_flow(conn: Connection, org_id: str, flow_id: str, if_match: str | None = None) -> None:
    _check_if_match(_flow_row(conn, org_id, flow_id, lock=True), flow_id, if_match)
    where, args = "WHERE flow_id = ? AND org_id = ?", (flow_id, org_id)
    conn.execute(f"DELETE FROM flow_versions {where}", args)
    conn.execute(f"DELETE FROM flows {where}", args)


def publish_flow(conn: Connection, org_id: str, flow_id: str) -> int:
    row = _flow_row(conn, org_id, flow_id, lock=True)
    version = (row["latest_version"] or 0) + 1
    conn.execute(
        "INSERT INTO flow_versions (org_id, flow_id, version, spec, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (org_id, flow_id, version, row["spec"], now_ms()),
    )
    conn.execute(
        "UPDATE flows SET latest_version = ?, etag = ?, updated_at = ?"
        " WHERE flow_id = ? AND org_id = ?",
        (version, secrets.token_hex(8), now_ms(), flow_id, org_id),
    )
    return version


def _version_spec(conn: Connection, org_id: str, flow_id: str, version: int) -> str:
    row = conn.execute(
        "SELECT spec FROM flow_versions WHERE org_id = ? AND flow_id = ? AND version = ?",
        (org_id, flow_id, version),
    ).fetchone()
    if row is None:
        raise APIProblem.not_found("FLOW_VERSION_NOT_FOUND", f"flow {flow_id!r} version", version)
    return str(row["spec"])


def promote_flow(conn: Connection, org_id: str, flow_id: str, version: int) -> Flow:
    _flow_row(conn, org_id, flow_id, lock=True)
    _version_spec(conn, org_id, flow_id, version)
    conn.execute(
        "UPDATE flows SET production_version = ?, etag = ?, updated_at = ?"
        " WHERE flow_id = ? AND org_id = ?",
        (version, secrets.token_hex(8), now_ms(), flow_id, org_id),
    )
    return get_flow(conn, org_id, flow_id)


def resolve_flow_version(
    conn: Connection, org_id: str, flow_id: str, version: str | int
) -> tuple[FlowSpec, str]:
    row = _flow_row(conn, org_id, flow_id)
    if version == "draft":
        return from_wire(orjson.loads(row["spec"]), FlowSpec), "draft"
    if version == "production":
        if row["production_version"] is None:
            raise APIProblem(
                404, "FLOW_VERSION_NOT_FOUND", f"flow {flow_id!r} has no production version"
            )
        version = int(row["production_version"])
    if not isinstance(version, int) or isinstance(version, bool):
        raise APIProblem.validation(
            "version", f"expected 'draft', 'production' or an int, got {version!r}"
        )
    spec = _version_spec(conn, org_id, flow_id, version)
    return from_wire(orjson.loads(spec), FlowSpec), str(version)


# -- runs ----------------------------------------------------------------------------


def _run(row: Row) -> Run:
    conditions = [from_wire(c, ResourceCondition) for c in orjson.loads(row["conditions"])]
    return Run(
        organization_id=row["org_id"],
        run_id=row["run_id"],
        spec=from_wire(orjson.loads(row["spec"]), RunSpec),
        status=RunStatus(
            log=row["log"], observed_generation=row["generation"], conditions=conditions
        ),
        metadata=ResourceMetadata(row["created_at"], row["updated_at"], row["generation"]),
        self_link=f"/v1/runs/{row['run_id']}",
        etag=row["etag"],
    )


def _run_row(conn: Connection, org_id: str, run_id: str) -> Row:
    row: Row | None = conn.execute(
        "SELECT * FROM runs WHERE org_id = ? AND run_id = ?", (org_id, run_id)
    ).fetchone()
    if row is None:
        raise APIProblem.not_found("RUN_NOT_FOUND", "run", run_id)
    return row


def create_run(
    conn: Connection,
    org_id: str,
    spec: RunSpec,
    run_id: str | None = None,
    log: str = "",
    *,
    running: bool = False,
) -> Run:
    """Insert a run (``Pending``); ``log`` says where its event log lives, when known.

    ``running``: the run starts in the same transaction: it is stored ``Running`` at once,
    its history ``Pending`` then ``Running`` (as :func:`change_run_condition` would
    leave it, without reading the row back and writing it again), and the change logged.
    The run is returned as stored, built from what was written rather than read back.
    """
    run_id, now = run_id or new_id("run"), now_ms()
    conditions = [ResourceCondition(Condition.PENDING, last_transition_time=now)]
    if running:
        conditions.append(ResourceCondition(Condition.RUNNING, last_transition_time=now))
    etag = secrets.token_hex(8)
    _insert(
        conn,
        "run",
        run_id,
        "INSERT INTO runs (run_id, org_id, flow_id, condition, spec, conditions, log, generation,"
        " etag, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
        (
            run_id,
            org_id,
            spec.flow_id,
            conditions[-1].condition.value,
            _json(spec),
            _json(conditions),
            log,
            etag,
            now,
            now,
        ),
    )
    if running:
        log_change(run_id, org_id, Condition.PENDING, Condition.RUNNING, None)
    return Run(
        organization_id=org_id,
        run_id=run_id,
        spec=spec,
        status=RunStatus(log=log, observed_generation=1, conditions=conditions),
        metadata=ResourceMetadata(now, now, 1),
        self_link=f"/v1/runs/{run_id}",
        etag=etag,
    )


def get_run(conn: Connection, org_id: str, run_id: str) -> Run:
    return _run(_run_row(conn, org_id, run_id))


def list_runs(
    conn: Connection,
    org_id: str,
    flow_id: str | None,
    condition: str | None,
    size: int,
    after: int,
    newest: bool = True,
) -> tuple[list[Run], int | None]:
    where, bound, order = seq_window(after, newest)
    rows = conn.execute(
        f"SELECT * FROM runs WHERE org_id = ? AND {where} AND (? IS NULL OR flow_id = ?)"
        f" AND (? IS NULL OR condition = ?) ORDER BY {order} LIMIT ?",
        (org_id, *bound, flow_id, flow_id, condition, condition, size + 1),
    ).fetchall()
    page, cursor = split_page(rows, size, lambda r: int(r["seq"]))
    return readable(page, _run, "run"), cursor


def list_active_runs(conn: Connection) -> list[Run]:
    marks = ", ".join("?" for _ in _ACTIVE)
    rows = conn.execute(
        f"SELECT * FROM runs WHERE condition IN ({marks}) ORDER BY seq", _ACTIVE
    ).fetchall()
    return readable(rows, _run, "run")


def change_run_condition(
    conn: Connection,
    org_id: str,
    run_id: str,
    condition: Condition,
    message: str | None,
    reason: str | None,
) -> Condition:
    """Append ``condition`` to the run's history unless the run already ended; log the
    change (without the message, which may quote a step's input or output). Returns the
    condition the run had. Only the condition columns are read and written (the hot path
    of every run): the spec only on a cancel, to stamp ``killed_at``.
    """
    row: Row | None = conn.execute(
        "SELECT condition, conditions FROM runs WHERE org_id = ? AND run_id = ?",
        (org_id, run_id),
    ).fetchone()
    if row is None:
        raise APIProblem.not_found("RUN_NOT_FOUND", "run", run_id)
    current = Condition(row["condition"])
    if current.terminal:
        return current
    now = now_ms()
    entry = ResourceCondition(condition, last_transition_time=now, message=message, reason=reason)
    history = [*orjson.loads(row["conditions"]), to_wire(entry)]
    changes = {"condition": condition.value, "conditions": orjson.dumps(history).decode()}
    if condition == Condition.CANCELLED:
        spec = attrs.evolve(get_run(conn, org_id, run_id).spec, killed_at=now)
        changes["spec"] = _json(spec)
    assignments = "".join(f"{column} = ?, " for column in changes)
    conn.execute(
        f"UPDATE runs SET {assignments}etag = ?, updated_at = ? WHERE org_id = ? AND run_id = ?",
        (*changes.values(), secrets.token_hex(8), now, org_id, run_id),
    )
    if current != condition:
        log_change(run_id, org_id, current, condition, reason)
    return current


def log_change(
    run_id: str, org_id: str, before: Condition, after: Condition, reason: str | None
) -> None:
    """Log a run's change of condition (never its message: it may quote a step's data)."""
    why = f" ({reason})" if reason else ""
    log_when_committed(log, "run %s of %s: %s -> %s%s", run_id, org_id, before.value, after.value, why)  # fmt: skip


def set_run_log(conn: Connection, org_id: str, run_id: str, log: str) -> None:
    _run_row(conn, org_id, run_id)
    conn.execute("UPDATE runs SET log = ? WHERE org_id = ? AND run_id = ?", (log, org_id, run_id))


def delete_run(conn: Connection, org_id: str, run_id: str) -> None:
    row = _run_row(conn, org_id, run_id)
    if not Condition(row["condition"]).terminal:
        raise APIProblem.conflict(
            f"run {run_id!r} is {row['condition']}; cancel it before deleting it"
        )
    conn.execute("DELETE FROM runs WHERE org_id = ? AND run_id = ?", (org_id, run_id))


# -- idempotency ---------------------------------------------------------------------


def get_idempotent(
    conn: Connection, org_id: str, key: str, method: str, path: str
) -> tuple[str, int, bytes] | None:
    row = conn.execute(
        "SELECT body_hash, status, body FROM idempotency"
        " WHERE org_id = ? AND key = ? AND method = ? AND path = ?",
        (org_id, key, method, path),
    ).fetchone()
    return None if row is None else (row["body_hash"], int(row["status"]), bytes(row["body"]))


_PUT_IDEMPOTENT = (
    "INSERT INTO idempotency (org_id, key, method, path, body_hash, status, body, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (org_id, key, method, path)"
)
"""Store a key's record; what a key that has one already does follows (``DO ...``)."""


def reserve_idempotent(
    conn: Connection,
    org_id: str,
    key: str,
    method: str,
    path: str,
    record: tuple[str, int, bytes],
) -> bool:
    """Store ``record`` (a placeholder) for a key that has no row yet: whether it did."""
    row = conn.execute(
        _PUT_IDEMPOTENT + " DO NOTHING RETURNING 1",
        (org_id, key, method, path, *record, now_ms()),
    ).fetchone()
    return row is not None


def put_idempotent(
    conn: Connection,
    org_id: str,
    key: str,
    method: str,
    path: str,
    record: tuple[str, int, bytes],
) -> None:
    conn.execute(
        _PUT_IDEMPOTENT + " DO UPDATE SET body_hash = excluded.body_hash,"
        " status = excluded.status, body = excluded.body, created_at = excluded.created_at",
        (org_id, key, method, path, *record, now_ms()),
    )
