"""Retention: deleting finished runs, tasks and idempotency records past an age.

:class:`Pruner` removes, for one organization or all of them, what finished before a
cutoff: terminal runs with their event log, step records and tool answers; terminal
tasks with their mount records and their directories on disk; ``Idempotency-Key``
answers saved before it. It works in bounded batches (``batch`` rows per transaction on
the store's DB thread, a pause between them), so requests queued behind a batch wait
for one small transaction at most, never for the whole prune.

A run the engine still holds open, a pending or running task, a finished task of a run
still going, and anything newer than the cutoff are never touched. Task directories are
removed without following links (a task may have planted one to a file of the
server's): see :func:`~vi_flow.server.trees.remove_tree`.

The periodic job (:mod:`vi_flow.server.routes.retention`) prunes each organization by
its :class:`~vi_flow.models.retention.RetentionPolicy`: its own override
(``retention_orgs``) or the server's default :attr:`RetentionSettings.days`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import attrs

from ..models.common import Condition
from ..models.retention import PruneResult, RetentionPolicy, parse_age
from .clock import now_ms
from .db import Connection, lock_name
from .store import PENDING_ANSWER, Store
from .trees import remove_tree

__all__ = ["MIGRATION", "SCHEMA", "Pruner", "RetentionSettings"]

log = logging.getLogger("vi_flow.server")

T = TypeVar("T")

MIGRATION = "retention-1"
SCHEMA = "CREATE TABLE IF NOT EXISTS retention_orgs (org_id TEXT PRIMARY KEY, days REAL NOT NULL);"
"""Per-organization overrides of the default age; ``days = 0`` keeps everything."""

_RUN_DONE = tuple(c.value for c in Condition if c.terminal)
_TASK_DONE = ("completed", "failed", "cancelled")
_DAY = 86400.0


def _env_age(env: Mapping[str, str], name: str, unit: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw or raw.lower() in ("none", "off"):
        return None
    text = raw if raw[-1].isalpha() else f"{raw}{unit}"  # a bare number is in ``unit``
    try:
        return parse_age(text, name)
    except ValueError as exc:  # name what was written, not what it was read as
        raise ValueError(str(exc).replace(repr(text), repr(raw))) from None


@attrs.frozen
class RetentionSettings:
    """How long the server keeps finished work, and how it prunes.

    Attributes:
        days: The default age in days past which finished runs, tasks and idempotency
            records are pruned; ``None`` (the default) keeps them forever. An
            organization's override (``PUT /v1/organizations/{id}/retention``) wins.
        interval: Seconds between periodic prunes.
        batch: Rows deleted per transaction.
        pause: Seconds between two batches, so other requests interleave.
    """

    days: float | None = None
    interval: float = 3600.0
    batch: int = 100
    pause: float = 0.02

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetentionSettings:
        """The defaults, changed by ``VI_FLOW_RETENTION_DAYS`` (days, or ``30d``/``12h``)
        and ``VI_FLOW_RETENTION_INTERVAL`` (seconds, or ``1h``).

        Raises:
            ValueError: A variable that is not an age, named.
        """
        env = os.environ if env is None else env
        days = _env_age(env, "VI_FLOW_RETENTION_DAYS", "d")
        interval = _env_age(env, "VI_FLOW_RETENTION_INTERVAL", "s")
        settings = cls(days=None if not days else days / _DAY)
        return attrs.evolve(settings, interval=interval) if interval else settings


# -- the SQL, run on the store's thread -------------------------------------------------


def _marks(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join("?" for _ in values)


def _org_clause(org_id: str | None) -> tuple[str, tuple[str, ...]]:
    return ("", ()) if org_id is None else (" AND org_id = ?", (org_id,))


Rows = list[tuple[int, str]]
"""Selected rows: a cursor (``seq`` or ``rowid``) and the id to delete."""


@attrs.frozen
class _Scope:
    """What a prune removes: finished before ``cutoff`` (ms), in ``org_id`` (None: all)."""

    org_id: str | None
    cutoff: int


Select = Callable[[Connection, _Scope, int, int], Rows]
"""``select(conn, scope, after, limit)``: up to ``limit`` rows past the cursor ``after``."""


def _old_runs(conn: Connection, scope: _Scope, after: int, limit: int) -> Rows:
    """Old finished runs; the ident is the run's ``seq`` (run ids are per organization)."""
    where, bound = _org_clause(scope.org_id)
    rows = conn.execute(
        f"SELECT seq FROM runs WHERE condition IN ({_marks(_RUN_DONE)})"
        f" AND updated_at < ?{where} AND seq > ? AND NOT EXISTS (SELECT 1 FROM engine_runs e"
        " WHERE e.org_id = runs.org_id AND e.run_id = runs.run_id AND e.closed = 0)"
        " ORDER BY seq LIMIT ?",
        (*_RUN_DONE, scope.cutoff, *bound, after, limit),
    ).fetchall()
    return [(r[0], str(r[0])) for r in rows]


def _of_runs(seqs: list[str]) -> str:
    """SQL: the row belongs to one of the runs whose ``seq`` is in ``seqs``."""
    return f"(org_id, run_id) IN (SELECT org_id, run_id FROM runs WHERE seq IN ({_marks(seqs)}))"


def _delete_runs(conn: Connection, seqs: list[str]) -> int:
    from .engine.tables import ENGINE_TABLES  # not at the top: the engine imports this module

    for table in ENGINE_TABLES:
        conn.execute(f"DELETE FROM {table} WHERE {_of_runs(seqs)}", seqs)
    return int(conn.execute(f"DELETE FROM runs WHERE seq IN ({_marks(seqs)})", seqs).rowcount)


def _run_keys(conn: Connection, seqs: list[str]) -> list[tuple[str, str]]:
    rows = conn.execute(
        f"SELECT org_id, run_id FROM runs WHERE seq IN ({_marks(seqs)})", seqs
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


_EVENT_ROWS = 64
"""Event rows (up to 2,048 events each) deleted per transaction before their runs go."""


def _trim_events(conn: Connection, seqs: list[str]) -> int:
    """Delete up to :data:`_EVENT_ROWS` event rows of the runs ``seqs``; how many went."""
    cursor = conn.execute(
        "DELETE FROM engine_events WHERE (org_id, run_id, first_id) IN (SELECT org_id, run_id,"
        f" first_id FROM engine_events WHERE {_of_runs(seqs)} LIMIT ?)",
        (*seqs, _EVENT_ROWS),
    )
    return cursor.rowcount


def _old_tasks(conn: Connection, scope: _Scope, after: int, limit: int) -> Rows:
    where, bound = _org_clause(scope.org_id)
    # A task of a run still going (paused for days, say) stays: the run reads its outputs.
    rows = conn.execute(
        f"SELECT seq, task_id FROM tasks WHERE status IN ({_marks(_TASK_DONE)})"
        f" AND COALESCE(ended_at, created_at) < ?{where} AND seq > ?"
        " AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.org_id = tasks.org_id"
        " AND r.run_id = tasks.run_id"
        f" AND r.condition NOT IN ({_marks(_RUN_DONE)})) ORDER BY seq LIMIT ?",
        (*_TASK_DONE, scope.cutoff, *bound, after, *_RUN_DONE, limit),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


_ORPHAN_AGE = 600.0
_TASK_DIR = re.compile(r"task_[0-9a-f]{16}")


def _idle_task_dirs(top: Path, before: float) -> list[str]:
    """The task directories in ``top`` (real ones, not links) last changed before ``before``."""
    try:
        entries = list(os.scandir(top))
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        with contextlib.suppress(OSError):
            if (
                _TASK_DIR.fullmatch(entry.name)
                and entry.is_dir(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_mtime < before
            ):
                names.append(entry.name)
    return names


def _known_tasks(conn: Connection, names: list[str]) -> set[str]:
    rows = conn.execute(f"SELECT task_id FROM tasks WHERE task_id IN ({_marks(names)})", names)
    return {row[0] for row in rows.fetchall()}


def _delete_tasks(conn: Connection, task_ids: list[str]) -> int:
    for table in ("task_mounts", "task_log_times"):
        conn.execute(f"DELETE FROM {table} WHERE task_id IN ({_marks(task_ids)})", task_ids)
    sql = f"DELETE FROM tasks WHERE task_id IN ({_marks(task_ids)})"
    return int(conn.execute(sql, task_ids).rowcount)


_IN_FLIGHT_MS = 3600 * 1000
"""Past this age a placeholder a request put on its key in its creating transaction
(empty: on PostgreSQL) is its crash's: a retry waits at most 15 minutes for it."""


def _old_idempotency(conn: Connection, scope: _Scope, after: int, limit: int) -> Rows:
    """Old saved answers, and old placeholders whose request is over (see
    :func:`_abandoned`). QA Y: a prune shorter than a running execute freed its key's
    placeholder, and the client's retry on another replica started a second run."""
    where, bound = _org_clause(scope.org_id)
    rows = conn.execute(
        f"SELECT rowid FROM idempotency WHERE created_at < ?{where} AND status != ?"
        " AND rowid > ? ORDER BY rowid LIMIT ?",
        (scope.cutoff, *bound, PENDING_ANSWER, after, limit),
    ).fetchall()
    found = [(r[0], str(r[0])) for r in rows]
    if len(found) < limit:
        found += _abandoned(conn, scope, limit - len(found))
    return found


def _abandoned(conn: Connection, scope: _Scope, limit: int) -> Rows:
    """Up to ``limit`` old placeholders (``PENDING_ANSWER``) no request will answer: held
    by a replica that is gone (``@`` and its id), naming a run that is no more (pruned
    just before), or made in a transaction over an hour ago (empty). Those of a request
    still running stay: a retry meanwhile must wait for its answer, not make another."""
    where, bound = _org_clause(scope.org_id)
    pending = conn.execute(
        f"SELECT rowid, org_id, body, created_at FROM idempotency WHERE created_at < ?{where}"
        " AND status = ? ORDER BY rowid",
        (scope.cutoff, *bound, PENDING_ANSWER),
    ).fetchall()
    if not pending:
        return []
    live = {str(r[0]) for r in conn.execute("SELECT replica_id FROM replicas").fetchall()}
    found: Rows = []
    for rowid, org_id, raw, created_at in pending:
        body = bytes(raw)
        if body.startswith(b"@"):
            over = body[1:].decode(errors="replace") not in live
        elif body:
            named = "SELECT 1 FROM runs WHERE org_id = ? AND run_id = ?"
            over = conn.execute(named, (org_id, body.decode(errors="replace"))).fetchone() is None
        else:
            over = created_at < now_ms() - _IN_FLIGHT_MS
        if over:
            found.append((rowid, str(rowid)))
            if len(found) == limit:
                break
    return found


def _delete_idempotency(conn: Connection, rowids: list[str]) -> int:
    sql = f"DELETE FROM idempotency WHERE rowid IN ({_marks(rowids)})"
    return int(conn.execute(sql, rowids).rowcount)


def _apply(fn: Callable[[Connection, list[str]], T], ids: list[str], conn: Connection) -> T:
    """``fn(conn, ids)``: a batch's statement, bound to its ids for the store's thread.

    Replicas that prune at once take turns, a transaction each: two deleting the same
    runs' rows in different orders deadlocked on PostgreSQL.
    """
    lock_name(conn, "vi_flow.retention")
    return fn(conn, ids)


def _policies(conn: Connection) -> list[tuple[str, float | None]]:
    rows = conn.execute(
        "SELECT o.org_id, r.days FROM orgs o LEFT JOIN retention_orgs r ON r.org_id = o.org_id"
        " ORDER BY o.created_at"
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


# -- the pruner -------------------------------------------------------------------------


class Pruner:
    """Prunes finished work in bounded batches; one prune at a time.

    Args:
        store: The server's store.
        settings: The default age, the batch size and the pause between batches.
        task_root: The directory of a task (the provider's ``task_paths(id).root``);
            ``None`` leaves task directories alone.
        forget_run: Called with each pruned run's ``(org id, run id)`` (the engine drops
            its live channel).
    """

    def __init__(
        self,
        store: Store,
        settings: RetentionSettings,
        task_root: Callable[[str], Path] | None = None,
        forget_run: Callable[[tuple[str, str]], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._task_root = task_root
        self._forget_run = forget_run
        self._removed = 0  # task directories removed by the prune in progress
        self.lock = asyncio.Lock()

    async def open(self) -> None:
        """Create the overrides table."""
        await self.store.migrate(MIGRATION, SCHEMA)

    # -- policies ------------------------------------------------------------------

    def _policy(self, org_id: str, days: float | None) -> RetentionPolicy:
        if days is None:
            return RetentionPolicy(org_id, self.settings.days, inherited=True)
        return RetentionPolicy(org_id, days or None, inherited=False)

    async def policy(self, org_id: str) -> RetentionPolicy:
        """The organization's retention: its override, else the server's default."""
        row = await self.store.run(
            lambda c: c.execute(
                "SELECT days FROM retention_orgs WHERE org_id = ?", (org_id,)
            ).fetchone()
        )
        return self._policy(org_id, None if row is None else float(row[0]))

    async def set_policy(self, org_id: str, days: float | None) -> RetentionPolicy:
        """Override the organization's age (``0`` keeps all); ``None`` drops the override."""

        def write(conn: Connection) -> None:
            conn.execute("DELETE FROM retention_orgs WHERE org_id = ?", (org_id,))
            if days is not None:
                conn.execute("INSERT INTO retention_orgs VALUES (?, ?)", (org_id, days))

        await self.store.run(write)
        return await self.policy(org_id)

    # -- pruning -------------------------------------------------------------------

    async def prune(
        self, older_than: float, org_id: str | None = None, *, dry_run: bool = False
    ) -> PruneResult:
        """Remove (or with ``dry_run`` count) what finished more than ``older_than`` s ago.

        Args:
            older_than: The age in seconds.
            org_id: The organization; ``None`` prunes every organization.
            dry_run: Count only; nothing is deleted.
        """
        cutoff = now_ms() - int(older_than * 1000)
        orgs = [org_id if org_id is not None else "*"]
        result = PruneResult(dry_run, older_than, cutoff, orgs)
        scope = _Scope(org_id, cutoff)
        async with self.lock:
            self._removed = 0
            if dry_run:
                runs, tasks, idem = [
                    await self._count(select, scope)
                    for select in (_old_runs, _old_tasks, _old_idempotency)
                ]
                dirs = tasks if self._task_root is not None else 0
            else:
                runs = await self._drain(_old_runs, scope, _delete_runs, self._before_runs)
                tasks = await self._drain(_old_tasks, scope, _delete_tasks, self._remove_dirs)
                dirs = self._removed
                idem = await self._drain(_old_idempotency, scope, _delete_idempotency)
        return attrs.evolve(
            result, runs=runs, tasks=tasks, task_directories=dirs, idempotency_records=idem
        )

    async def _select(self, select: Select, scope: _Scope, after: int, limit: int) -> Rows:
        return await self.store.run(lambda conn: select(conn, scope, after, limit))

    async def _count(self, select: Select, scope: _Scope) -> int:
        """How many rows ``select`` finds, read in pages (a read blocks nobody for long)."""
        total, after, size = 0, 0, self.settings.batch * 10
        while rows := await self._select(select, scope, after, size):
            total, after = total + len(rows), rows[-1][0]
            if len(rows) < size:
                break
        return total

    async def _drain(
        self,
        select: Select,
        scope: _Scope,
        delete: Callable[[Connection, list[str]], int],
        before: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> int:
        """Delete what ``select`` finds, ``batch`` rows per transaction, pausing between.

        ``before`` runs on each batch's ids before their rows go (task directories).
        """
        done, batch = 0, self.settings.batch
        while rows := await self._select(select, scope, 0, batch):
            ids = [ident for _, ident in rows]
            if before is not None:
                await before(ids)
            # what went: a replica pruning at once may have taken some of them first
            done += await self.store.run(functools.partial(_apply, delete, ids))
            if len(ids) < batch:
                break
            await asyncio.sleep(self.settings.pause)
        return done

    async def _before_runs(self, seqs: list[str]) -> None:
        """Delete the runs' events a few rows per transaction (a run may hold millions),
        and drop their live channels."""
        trim = functools.partial(_apply, _trim_events, seqs)
        while await self.store.run(trim) == _EVENT_ROWS:
            pass
        if self._forget_run is not None:
            for key in await self.store.run(lambda c: _run_keys(c, seqs)):
                self._forget_run(key)

    async def _remove_dirs(self, task_ids: list[str]) -> None:
        self._removed += await asyncio.to_thread(self._remove_dirs_now, task_ids)

    def _remove_dirs_now(self, task_ids: list[str]) -> int:
        return sum(self._remove_dir(task_id) for task_id in task_ids)

    def _remove_dir(self, task_id: str) -> bool:
        if self._task_root is None:
            return False
        try:
            return remove_tree(self._task_root(task_id))
        except OSError as exc:
            log.warning("retention: task %s: its directory was not removed: %s", task_id, exc)
            return False

    async def sweep_orphans(self) -> int:
        """Remove this server's task directories whose task is gone: with replicas, a
        prune on another replica deleted their rows but could not reach them. Only
        ``task_<hex>`` directories untouched for :data:`_ORPHAN_AGE` seconds are looked
        at; returns how many were removed."""
        if self._task_root is None:
            return 0
        top = self._task_root("task_0").parent
        names = await asyncio.to_thread(_idle_task_dirs, top, time.time() - _ORPHAN_AGE)
        removed = 0
        for at in range(0, len(names), self.settings.batch):
            batch = names[at : at + self.settings.batch]
            known = await self.store.run(functools.partial(_known_tasks, names=batch))
            gone = [name for name in batch if name not in known]
            if gone:
                removed += await asyncio.to_thread(self._remove_dirs_now, gone)
        if removed:
            log.info("retention: removed %d task directories whose tasks were pruned", removed)
        return removed

    async def prune_due(self) -> list[PruneResult]:
        """Prune every organization whose policy keeps less than forever; log each."""
        policies = await self.store.run(_policies)
        results = []
        for org_id, days in policies:
            policy = self._policy(org_id, days)
            if policy.days is None:
                continue
            result = await self.prune(policy.days * _DAY, org_id)
            if result.runs or result.tasks or result.idempotency_records:
                log.info(
                    "retention: %s: pruned %d runs, %d tasks (%d directories) and %d"
                    " idempotency records older than %g days",
                    org_id, result.runs, result.tasks, result.task_directories,
                    result.idempotency_records, policy.days,
                )  # fmt: skip
            results.append(result)
        return results
