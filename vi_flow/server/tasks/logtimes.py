"""When each part of a task's log was written: what ``vi-flow tasks logs --since`` reads.

A task writes its logs straight to files, so no line carries a time. While tasks run,
the server notes each log's size once a :data:`SAMPLE_INTERVAL` (a row only when a size
changed) in its own table, which the task cannot reach. "Since T" is then the sizes the
logs had at the last note before T, moved back to the start of the line they cut: every
line written at T or later is included, and lines written up to one interval before T
may be too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from .. import db
from ..clock import now_ms
from ..providers.base import TaskPaths
from ..store import Store
from .files import file_size
from .logfile import open_beneath
from .records import TaskRecords

__all__ = ["SAMPLE_INTERVAL", "SCHEMA_LOG_TIMES", "LogTimes"]

SAMPLE_INTERVAL = 1.0
"""Seconds between two looks at the running tasks' log sizes."""

SCHEMA_LOG_TIMES = """
CREATE TABLE IF NOT EXISTS task_log_times (
    task_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    stdout INTEGER NOT NULL,
    stderr INTEGER NOT NULL,
    PRIMARY KEY (task_id, at_ms)
) WITHOUT ROWID;
"""

_LINE_SEARCH = 64 * 1024
"""How far back from a noted size to look for the start of its line."""

log = logging.getLogger("vi_flow.server.tasks")


class LogTimes:
    """Notes the running tasks' log sizes over time; answers offsets "since" a time.

    Args:
        records: The task records (the store and the provider's task paths).
    """

    def __init__(self, records: TaskRecords) -> None:
        self._store: Store = records.store
        self._records = records
        self._last: dict[str, tuple[int, int]] = {}
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start noting sizes (call once the tables exist)."""
        self._watcher = asyncio.create_task(self._watch(), name="vi-flow log times")

    async def close(self) -> None:
        """Stop noting sizes; idempotent."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def offsets_since(self, task_id: str, since_ms: int) -> dict[str, int]:
        """Byte offsets in stdout and stderr where the lines written since ``since_ms`` start.

        A time after the task ended, or still to come, is the logs' ends: the sizes are
        sampled once a second while the task runs, so the lines after the last sample
        would otherwise count as written since then.
        """

        def read(conn: db.Connection) -> tuple[db.Row | None, db.Row | None]:
            sample = conn.execute(
                "SELECT stdout, stderr FROM task_log_times WHERE task_id = ? AND at_ms < ?"
                " ORDER BY at_ms DESC LIMIT 1",
                (task_id, since_ms),
            ).fetchone()
            task = conn.execute(
                "SELECT ended_at FROM tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
            return sample, task

        sample, task = await self._store.run(read)
        paths = self._records.provider.task_paths(task_id)
        ended = None if task is None else task["ended_at"]
        if since_ms >= now_ms() or (ended is not None and since_ms > ended):
            return await asyncio.to_thread(_ends, paths)
        if sample is None:
            return {"stdout": 0, "stderr": 0}
        sizes = {"stdout": int(sample["stdout"]), "stderr": int(sample["stderr"])}
        return await asyncio.to_thread(_line_starts, paths, sizes)

    async def _watch(self) -> None:
        while True:
            try:
                await self.note()
            except (OSError, db.Error) as exc:  # a busy disk: try again next time
                log.warning("could not note log sizes: %s", exc)
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def note(self) -> None:
        """Note the sizes of every running task's logs that changed since the last note."""
        running = await self._store.run(
            lambda c: [
                r[0] for r in c.execute("SELECT task_id FROM tasks WHERE status = 'running'")
            ]
        )
        self._last = {k: v for k, v in self._last.items() if k in running}
        paths = {task_id: self._records.provider.task_paths(task_id) for task_id in running}
        sizes = await asyncio.to_thread(_all_sizes, paths)
        changed = [(t, s) for t, s in sizes.items() if self._last.get(t) != s]
        if not changed:
            return
        at = now_ms()
        await self._store.run(
            lambda c: c.executemany(
                "INSERT INTO task_log_times VALUES (?, ?, ?, ?) ON CONFLICT (task_id, at_ms)"
                " DO UPDATE SET stdout = excluded.stdout, stderr = excluded.stderr",
                [(task_id, at, out, err) for task_id, (out, err) in changed],
            )
        )
        self._last.update(changed)


def _all_sizes(paths: dict[str, TaskPaths]) -> dict[str, tuple[int, int]]:
    return {
        task_id: (_size(p.root, p.stdout), _size(p.root, p.stderr)) for task_id, p in paths.items()
    }


def _size(root: Path, path: Path) -> int:
    with _opened(root, path) as fd:
        return 0 if fd is None else os.fstat(fd).st_size


def _ends(paths: TaskPaths) -> dict[str, int]:
    """The logs' sizes (where a line written from now on starts)."""
    return {"stdout": file_size(paths.stdout), "stderr": file_size(paths.stderr)}


def _line_starts(paths: TaskPaths, sizes: dict[str, int]) -> dict[str, int]:
    files = {"stdout": paths.stdout, "stderr": paths.stderr}
    return {name: _line_start(paths.root, files[name], size) for name, size in sizes.items()}


def _line_start(root: Path, path: Path, offset: int) -> int:
    """``offset`` moved back to the start of the line it falls in (or cuts)."""
    if offset <= 0:
        return 0
    with _opened(root, path) as fd:
        if fd is None:
            return 0
        offset = min(offset, os.fstat(fd).st_size)
        start = max(0, offset - _LINE_SEARCH)
        before = os.pread(fd, offset - start, start)
    newline = before.rfind(b"\n")
    return start + newline + 1 if newline >= 0 else start


@contextlib.contextmanager
def _opened(root: Path, path: Path) -> Iterator[int | None]:
    """The log opened beneath ``root`` (as the log readers do), or ``None``."""
    try:
        fd = open_beneath(root, path)
    except OSError:  # NotALogFile included: a link or a FIFO in its place
        fd = None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)
