"""The engine's own SQLite tables and the synchronous SQL that reads and writes them.

``engine_runs`` holds what a run needs to continue after a pause or a server restart
(the frozen flow spec, the execution request, the pending tool calls and the block's
saved state), ``engine_outputs`` the output of each finished step; ``engine_steps`` holds per-step timing, tokens and,
for traced runs, input/output snapshots; ``engine_answers`` remembers every tool result
accepted so an exact resend is a no-op; ``engine_credits`` holds optional
per-organization credits. Every function here runs on the store's DB thread inside a
transaction (see :meth:`vi_flow.server.store.Store.run`).
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from ..db import Connection, Row, for_update
from ..errors import APIProblem
from .eventlog import SCHEMA as EVENTS_SCHEMA
from .eventlog import RunKey

__all__ = ["ENGINE_TABLES", "MIGRATION", "MIGRATIONS", "SCHEMA", "RunRow", "StepRow"]

MIGRATION = "engine-1"

SCHEMA = (
    EVENTS_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS engine_runs (
    run_id TEXT PRIMARY KEY, org_id TEXT NOT NULL, flow_id TEXT NOT NULL,
    flow_version TEXT NOT NULL, state TEXT NOT NULL, request BLOB NOT NULL,
    spec BLOB NOT NULL, step_index INTEGER NOT NULL DEFAULT 0,
    outputs BLOB NOT NULL DEFAULT '{}', pause BLOB, usage BLOB, outcome BLOB,
    closed INTEGER NOT NULL DEFAULT 0, started_at INTEGER NOT NULL, ended_at INTEGER);
CREATE INDEX IF NOT EXISTS engine_runs_open ON engine_runs (closed, state);
CREATE TABLE IF NOT EXISTS engine_steps (
    run_id TEXT NOT NULL, step_id TEXT NOT NULL, idx INTEGER NOT NULL, block TEXT NOT NULL,
    status TEXT NOT NULL, started_at INTEGER, ended_at INTEGER, duration_ms INTEGER,
    input BLOB, output BLOB, error TEXT, usage BLOB, PRIMARY KEY (run_id, step_id));
CREATE TABLE IF NOT EXISTS engine_answers (
    run_id TEXT NOT NULL, tool_call_id TEXT NOT NULL, result BLOB NOT NULL,
    PRIMARY KEY (run_id, tool_call_id));
CREATE TABLE IF NOT EXISTS engine_credits (
    org_id TEXT PRIMARY KEY, credits INTEGER NOT NULL);
"""
)

MIGRATIONS = (
    (
        # Run ids are scoped to their organization (as ``runs`` is, see
        # ``runs-per-organization-1``): every engine table is keyed by (org_id, run_id).
        "engine-2-runs-per-organization",
        """
CREATE TABLE engine_runs_scoped (
    org_id TEXT NOT NULL, run_id TEXT NOT NULL, flow_id TEXT NOT NULL,
    flow_version TEXT NOT NULL, state TEXT NOT NULL, request BLOB NOT NULL,
    spec BLOB NOT NULL, step_index INTEGER NOT NULL DEFAULT 0,
    outputs BLOB NOT NULL DEFAULT '{}', pause BLOB, usage BLOB, outcome BLOB,
    closed INTEGER NOT NULL DEFAULT 0, started_at INTEGER NOT NULL, ended_at INTEGER,
    PRIMARY KEY (org_id, run_id));
INSERT INTO engine_runs_scoped SELECT org_id, run_id, flow_id, flow_version, state, request,
    spec, step_index, outputs, pause, usage, outcome, closed, started_at, ended_at
    FROM engine_runs;
CREATE TABLE engine_steps_scoped (
    org_id TEXT NOT NULL, run_id TEXT NOT NULL, step_id TEXT NOT NULL, idx INTEGER NOT NULL,
    block TEXT NOT NULL, status TEXT NOT NULL, started_at INTEGER, ended_at INTEGER,
    duration_ms INTEGER, input BLOB, output BLOB, error TEXT, usage BLOB,
    PRIMARY KEY (org_id, run_id, step_id));
INSERT INTO engine_steps_scoped SELECT r.org_id, s.run_id, s.step_id, s.idx, s.block,
    s.status, s.started_at, s.ended_at, s.duration_ms, s.input, s.output, s.error, s.usage
    FROM engine_steps s JOIN engine_runs r ON r.run_id = s.run_id;
CREATE TABLE engine_answers_scoped (
    org_id TEXT NOT NULL, run_id TEXT NOT NULL, tool_call_id TEXT NOT NULL,
    result BLOB NOT NULL, PRIMARY KEY (org_id, run_id, tool_call_id));
INSERT INTO engine_answers_scoped SELECT r.org_id, a.run_id, a.tool_call_id, a.result
    FROM engine_answers a JOIN engine_runs r ON r.run_id = a.run_id;
CREATE TABLE engine_events_scoped (
    org_id TEXT NOT NULL, run_id TEXT NOT NULL, first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL, frames BLOB NOT NULL, terminal INTEGER NOT NULL, settled INTEGER,
    PRIMARY KEY (org_id, run_id, first_id)) WITHOUT ROWID;
INSERT INTO engine_events_scoped SELECT r.org_id, e.run_id, e.first_id, e.last_id, e.frames,
    e.terminal, e.settled FROM engine_events e JOIN engine_runs r ON r.run_id = e.run_id;
DROP TABLE engine_events;
DROP TABLE engine_answers;
DROP TABLE engine_steps;
DROP TABLE engine_runs;
ALTER TABLE engine_runs_scoped RENAME TO engine_runs;
ALTER TABLE engine_steps_scoped RENAME TO engine_steps;
ALTER TABLE engine_answers_scoped RENAME TO engine_answers;
ALTER TABLE engine_events_scoped RENAME TO engine_events;
CREATE INDEX IF NOT EXISTS engine_runs_open ON engine_runs (closed, state);
""",
    ),
    (
        # Replicas (see vi_flow.server.replicas): the replica that drives a run, and a
        # cancel asked on another one, for the owner to carry out.
        "engine-3-run-owners",
        """
ALTER TABLE engine_runs ADD COLUMN owner TEXT;
ALTER TABLE engine_runs ADD COLUMN cancel INTEGER NOT NULL DEFAULT 0;
""",
    ),
    (
        # Each step's output in a row of its own, written once as the step ends: the run
        # rewrote every earlier output with each step (engine_runs.outputs), so a long flow
        # cost the square of its outputs (QA AF: 80 steps of 1 MB, 16x the time of 20).
        # Runs stored before keep their outputs in engine_runs.outputs, read with these.
        "engine-4-step-outputs",
        """
CREATE TABLE engine_outputs (
    org_id TEXT NOT NULL, run_id TEXT NOT NULL, step_id TEXT NOT NULL, output BLOB NOT NULL,
    PRIMARY KEY (org_id, run_id, step_id));
""",
    ),
)
"""Changes to :data:`SCHEMA`, applied once each, in order, after it."""


def _load(blob: Any) -> Any:
    return None if blob is None else orjson.loads(blob)


def _dump(value: Any) -> bytes | None:
    return None if value is None else orjson.dumps(value)


@attrs.define
class RunRow:
    """One run's durable engine state (JSON columns decoded).

    Attributes:
        run_id: The run.
        org_id: Its organization.
        flow_id: The flow executed.
        flow_version: ``"draft"`` or the version number as text.
        state: ``pending``, ``running``, ``paused`` or ``done``.
        request: The execution request (wire JSON, camelCase).
        spec: The frozen flow spec (wire JSON).
        step_index: The step to run (or the paused one).
        outputs: Step id -> output of the finished steps (read by :func:`get_run` only
            when asked; each is stored once, by :func:`put_output`).
        outputs_size: The size of ``outputs`` as stored (their JSON, in bytes).
        pause: The pause record while paused (``stepId``, ``toolCalls``, ``state``,
            ``deadline``, ``token``) and, after the answers came, ``results``.
        usage: Token totals so far (wire JSON) or None.
        outcome: The final ``status``/``output``/``error``/``failedStep`` once done.
        closed: Whether the terminal event is on disk.
        started_at: Start time (ms).
        ended_at: End time (ms), once done.
        owner: The replica driving it (see :mod:`vi_flow.server.replicas`).
        cancel: Whether a cancel was asked (its owner, or whoever takes it over, ends it
            ``Cancelled``); see :func:`ask_cancel`.
    """

    run_id: str
    org_id: str
    flow_id: str
    flow_version: str
    state: str
    request: dict[str, Any]
    spec: dict[str, Any]
    step_index: int = 0
    outputs: dict[str, Any] = attrs.Factory(dict)
    outputs_size: int = 0
    pause: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None
    closed: bool = False
    started_at: int = 0
    ended_at: int | None = None
    owner: str | None = None
    cancel: bool = False

    @property
    def key(self) -> RunKey:
        """The run's ``(org_id, run_id)``."""
        return self.org_id, self.run_id


_RUN_COLUMNS = (
    "run_id, org_id, flow_id, flow_version, state, request, spec, step_index, outputs,"
    " pause, usage, outcome, closed, started_at, ended_at, owner, cancel"
)


def _run_row(row: Row) -> RunRow:
    outputs = row["outputs"]  # a run stored before engine-4-step-outputs: all of them
    return RunRow(
        run_id=row["run_id"],
        org_id=row["org_id"],
        flow_id=row["flow_id"],
        flow_version=row["flow_version"],
        state=row["state"],
        request=orjson.loads(row["request"]),
        spec=orjson.loads(row["spec"]),
        step_index=int(row["step_index"]),
        outputs=orjson.loads(outputs),
        outputs_size=0 if outputs in (b"{}", "{}") else len(outputs),
        pause=_load(row["pause"]),
        usage=_load(row["usage"]),
        outcome=_load(row["outcome"]),
        closed=bool(row["closed"]),
        started_at=int(row["started_at"]),
        ended_at=row["ended_at"],
        owner=row["owner"],
        cancel=bool(row["cancel"]),
    )


def insert_run(conn: Connection, run: RunRow) -> None:
    """Store a new run's engine state."""
    conn.execute(
        f"INSERT INTO engine_runs ({_RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            run.run_id, run.org_id, run.flow_id, run.flow_version, run.state,
            orjson.dumps(run.request), orjson.dumps(run.spec), run.step_index,
            orjson.dumps(run.outputs), _dump(run.pause), _dump(run.usage),
            _dump(run.outcome), int(run.closed), run.started_at, run.ended_at, run.owner,
            int(run.cancel),
        ),
    )  # fmt: skip


def get_run(conn: Connection, key: RunKey, *, lock: bool = False, outputs: bool = False) -> RunRow:
    """The run's engine state; 404 ``RUN_NOT_FOUND`` when the engine never ran it.

    ``lock``: as for :func:`find_run`. ``outputs``: with every finished step's output
    (what a run that goes on needs; nothing else reads them).
    """
    found = find_run(conn, key, lock=lock)
    if found is None:
        raise APIProblem.not_found("RUN_NOT_FOUND", "run", key[1])
    if outputs:
        rows = conn.execute(
            "SELECT step_id, output FROM engine_outputs WHERE org_id = ? AND run_id = ?", key
        ).fetchall()
        for step_id, blob in rows:
            found.outputs[step_id] = orjson.loads(blob)
            found.outputs_size += len(blob)
    return found


def find_run(conn: Connection, key: RunKey, *, lock: bool = False) -> RunRow | None:
    """The run's engine state, or None.

    ``lock``: the transaction changes it; on PostgreSQL other servers' changes of the
    run wait for this transaction (see :func:`~vi_flow.server.db.for_update`).
    """
    row = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM engine_runs WHERE org_id = ? AND run_id = ?"
        + (for_update(conn) if lock else ""),
        key,
    ).fetchone()
    return None if row is None else _run_row(row)


def set_owner(conn: Connection, key: RunKey, owner: str) -> None:
    """Make ``owner`` the replica that drives the run."""
    conn.execute("UPDATE engine_runs SET owner = ? WHERE org_id = ? AND run_id = ?", (owner, *key))


def ask_cancel(conn: Connection, key: RunKey) -> None:
    """Record that the run is to be cancelled (its owner does it, or whoever takes it over)."""
    conn.execute("UPDATE engine_runs SET cancel = 1 WHERE org_id = ? AND run_id = ?", key)


def claim_orphans(conn: Connection, owner: str) -> list[RunRow]:
    """Make ``owner`` the owner of every open run whose replica is gone; return them.

    Two replicas claiming at once each get a disjoint share: on PostgreSQL the second
    update waits for the first's row locks, then finds those rows owned by a live replica.
    """
    rows = conn.execute(
        "UPDATE engine_runs SET owner = ? WHERE closed = 0 AND (owner IS NULL OR owner NOT IN"
        f" (SELECT replica_id FROM replicas)) RETURNING {_RUN_COLUMNS}",
        (owner,),
    ).fetchall()
    return [_run_row(r) for r in rows]


def cancels_for(conn: Connection, owner: str) -> list[RunKey]:
    """Open runs of ``owner`` another replica asked to cancel."""
    rows = conn.execute(
        "SELECT org_id, run_id FROM engine_runs WHERE closed = 0 AND cancel = 1 AND owner = ?",
        (owner,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def save_run(conn: Connection, run: RunRow) -> None:
    """Write back the mutable columns of a run (its outputs: :func:`put_output`)."""
    conn.execute(
        "UPDATE engine_runs SET state = ?, step_index = ?, pause = ?, usage = ?,"
        " outcome = ?, closed = ?, ended_at = ? WHERE org_id = ? AND run_id = ?",
        (
            run.state, run.step_index, _dump(run.pause), _dump(run.usage),
            _dump(run.outcome), int(run.closed), run.ended_at, *run.key,
        ),
    )  # fmt: skip


def put_output(conn: Connection, key: RunKey, step_id: str, output: bytes) -> None:
    """Store a finished step's output (its JSON), once."""
    conn.execute(
        "INSERT INTO engine_outputs (org_id, run_id, step_id, output) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (org_id, run_id, step_id) DO UPDATE SET output = excluded.output",
        (*key, step_id, output),
    )


def open_runs(conn: Connection) -> list[RunRow]:
    """Runs whose terminal event is not on disk yet (running, paused or just done)."""
    rows = conn.execute(f"SELECT {_RUN_COLUMNS} FROM engine_runs WHERE closed = 0").fetchall()
    return [_run_row(r) for r in rows]


ENGINE_TABLES = ("engine_runs", "engine_steps", "engine_outputs", "engine_answers", "engine_events")
"""The tables that hold a run's engine state, each keyed by ``(org_id, run_id)``."""


def delete_run(conn: Connection, key: RunKey) -> None:
    """Delete everything the engine stored for a run, its event log included."""
    for table in ENGINE_TABLES:
        conn.execute(f"DELETE FROM {table} WHERE org_id = ? AND run_id = ?", key)


def mark_closed(conn: Connection, key: RunKey) -> None:
    """Record that the run's terminal event is on disk."""
    conn.execute("UPDATE engine_runs SET closed = 1 WHERE org_id = ? AND run_id = ?", key)


# -- steps ------------------------------------------------------------------------------


@attrs.define
class StepRow:
    """One step's trace record (JSON columns decoded).

    Attributes:
        step_id: The step.
        index: Its position in the flow.
        block: Its block type.
        status: ``Running``, ``Succeeded``, ``Failed``, ``Error`` or ``Cancelled``.
        started_at: Start time (ms).
        ended_at: End time (ms).
        duration_ms: Time spent running (pauses excluded).
        input: Input snapshot (traced runs only).
        output: Output snapshot (traced runs only).
        error: Failure message.
        usage: Tokens (wire JSON).
    """

    step_id: str
    index: int
    block: str
    status: str
    started_at: int | None = None
    ended_at: int | None = None
    duration_ms: int | None = None
    input: Any = None
    output: Any = None
    error: str | None = None
    usage: dict[str, Any] | None = None


def put_step(conn: Connection, key: RunKey, step: StepRow) -> None:
    """Insert or replace a step's trace record."""
    conn.execute(
        "INSERT INTO engine_steps (org_id, run_id, step_id, idx, block, status, started_at,"
        " ended_at, duration_ms, input, output, error, usage) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT (org_id, run_id, step_id) DO UPDATE SET idx = excluded.idx,"
        " block = excluded.block, status = excluded.status, started_at = excluded.started_at,"
        " ended_at = excluded.ended_at, duration_ms = excluded.duration_ms,"
        " input = excluded.input, output = excluded.output, error = excluded.error,"
        " usage = excluded.usage",
        (
            *key, step.step_id, step.index, step.block, step.status, step.started_at,
            step.ended_at, step.duration_ms, _dump(step.input), _dump(step.output), step.error,
            _dump(step.usage),
        ),
    )  # fmt: skip


def _step_row(row: Row) -> StepRow:
    return StepRow(
        step_id=row["step_id"],
        index=int(row["idx"]),
        block=row["block"],
        status=row["status"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        duration_ms=row["duration_ms"],
        input=_load(row["input"]),
        output=_load(row["output"]),
        error=row["error"],
        usage=_load(row["usage"]),
    )


def get_steps(conn: Connection, key: RunKey) -> list[StepRow]:
    """Every step record of a run, in flow order."""
    rows = conn.execute(
        "SELECT * FROM engine_steps WHERE org_id = ? AND run_id = ? ORDER BY idx", key
    ).fetchall()
    return [_step_row(r) for r in rows]


def close_running_steps(conn: Connection, key: RunKey, status: str, ended: int) -> None:
    """Give steps still ``Running`` a final status (on cancel, timeout or restart)."""
    conn.execute(
        "UPDATE engine_steps SET status = ?, ended_at = ?"
        " WHERE org_id = ? AND run_id = ? AND status = 'Running'",
        (status, ended, *key),
    )


# -- tool answers -----------------------------------------------------------------------


def get_answers(conn: Connection, key: RunKey) -> dict[str, Any]:
    """Tool call id -> the result (wire JSON) accepted for it."""
    rows = conn.execute(
        "SELECT tool_call_id, result FROM engine_answers WHERE org_id = ? AND run_id = ?", key
    ).fetchall()
    return {r[0]: orjson.loads(r[1]) for r in rows}


def put_answers(conn: Connection, key: RunKey, answers: dict[str, Any]) -> None:
    """Remember accepted tool results."""
    conn.executemany(
        "INSERT INTO engine_answers (org_id, run_id, tool_call_id, result) VALUES (?, ?, ?, ?)",
        [(*key, call_id, orjson.dumps(result)) for call_id, result in answers.items()],
    )


# -- credits ----------------------------------------------------------------------------


def set_credits(conn: Connection, org_id: str, credits: int | None) -> None:
    """Set an organization's credits; None removes the limit."""
    if credits is None:
        conn.execute("DELETE FROM engine_credits WHERE org_id = ?", (org_id,))
        return
    conn.execute(
        "INSERT INTO engine_credits (org_id, credits) VALUES (?, ?)"
        " ON CONFLICT (org_id) DO UPDATE SET credits = excluded.credits",
        (org_id, credits),
    )


def get_credits(conn: Connection, org_id: str) -> int | None:
    """An organization's remaining credits, or None when unlimited."""
    row = conn.execute("SELECT credits FROM engine_credits WHERE org_id = ?", (org_id,)).fetchone()
    return None if row is None else int(row[0])


def spend_credit(conn: Connection, org_id: str) -> None:
    """Take one credit for an execution; 402 ``INSUFFICIENT_CREDITS`` when none is left.

    One conditional ``UPDATE``, so replicas spending at once never spend one credit twice.
    """
    spent = conn.execute(
        "UPDATE engine_credits SET credits = credits - 1 WHERE org_id = ? AND credits > 0",
        (org_id,),
    ).rowcount
    if spent or get_credits(conn, org_id) is None:
        return
    raise APIProblem(
        402,
        "INSUFFICIENT_CREDITS",
        f"organization {org_id!r} has no credits left (each execution costs 1)",
    )
