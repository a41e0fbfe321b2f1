"""The task feature's SQLite tables and reading task records back.

:data:`SCHEMA` holds the tables the service adds to the server's store (tasks, volumes,
task mounts, SSH keys and reservation owners). :class:`TaskRecords` is the part every
other part of the :class:`~vi_flow.server.tasks.service.TaskService` holds: the store
and the provider, turning a ``tasks`` row into a :class:`~vi_flow.models.tasks.Task`
(with its log sizes and where its SSH server listens), paging through an organization's
tasks, and the per-task events that wake waiters when a task changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import orjson

from ...models._base import from_wire
from ...models.tasks import ENV_REDACTED, Task, TaskConfig, TaskStatus
from .._records import seq_window
from ..db import Row
from ..errors import APIProblem
from ..providers.base import ComputeProvider, Placement
from ..store import Store
from . import files

__all__ = ["SCHEMA", "SCHEMA_EXITS", "SSHAddress", "TaskRecords", "to_json"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    placement TEXT NOT NULL,
    env TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    ended_at INTEGER,
    exit_code INTEGER,
    message TEXT,
    reason TEXT,
    provider TEXT NOT NULL,
    provider_id TEXT,
    gpu_ids TEXT NOT NULL DEFAULT '[]',
    run_id TEXT,
    step_id TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_org ON tasks (org_id, seq);
CREATE INDEX IF NOT EXISTS tasks_by_run ON tasks (run_id);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status);
CREATE TABLE IF NOT EXISTS volumes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    volume_id TEXT NOT NULL UNIQUE,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    size_gb INTEGER NOT NULL,
    interface TEXT NOT NULL,
    region TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE IF NOT EXISTS task_mounts (
    task_id TEXT NOT NULL,
    volume_id TEXT NOT NULL,
    name TEXT NOT NULL,
    host_path TEXT NOT NULL,
    mount_path TEXT NOT NULL,
    visible_path TEXT NOT NULL,
    PRIMARY KEY (task_id, mount_path)
);
CREATE INDEX IF NOT EXISTS task_mounts_by_volume ON task_mounts (volume_id);
CREATE TABLE IF NOT EXISTS ssh_keys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL UNIQUE,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (org_id, fingerprint)
);
CREATE TABLE IF NOT EXISTS reservation_orgs (
    reservation_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL
);
"""

#: How a task ended and why it waits: the signal and the engine's own words.
SCHEMA_EXITS = """
ALTER TABLE tasks ADD COLUMN signal INTEGER;
ALTER TABLE tasks ADD COLUMN raw_reason TEXT;
"""


def to_json(obj: Any) -> str:
    """``obj`` as a JSON text column."""
    return orjson.dumps(obj).decode()


@attrs.frozen
class SSHAddress:
    """Where the embedded SSH server listens, once it does.

    Attributes:
        host: Its address (``127.0.0.1`` or ``::1``).
        port: Its port.
        host_key: Answers its public host key line, for clients to pin (starting the SSH
            implementation on first call; raises ``OSError`` when it cannot start).
    """

    host: str
    port: int
    host_key: Callable[[], Awaitable[str]]


class TaskRecords:
    """Reading task records and waking their waiters; every part of the service holds it.

    Args:
        store: The server's store (the service adds :data:`SCHEMA` to it).
        provider: The compute provider.
    """

    def __init__(self, store: Store, provider: ComputeProvider) -> None:
        self.store = store
        self.provider = provider
        self.ssh_address: SSHAddress | None = None
        """Set once the SSH server listens; tasks name it as their SSH host."""
        self.files_elsewhere: Callable[[Row], bool] = lambda row: False
        """Whether a task's files are on another replica's host (the local provider, with
        replicas): its answers then name no SSH host of this server, its own paths."""
        self._changed: dict[str, asyncio.Event] = {}

    # -- change events -----------------------------------------------------------------

    def notify(self, task_id: str) -> None:
        """Wake whoever waits on ``task_id`` (its status or logs changed)."""
        event = self._changed.pop(task_id, None)
        if event is not None:
            event.set()

    def changed(self, task_id: str) -> asyncio.Event:
        """An event set at the task's next change; take it *before* reading the task."""
        return self._changed.setdefault(task_id, asyncio.Event())

    # -- reading tasks -----------------------------------------------------------------

    async def _row(self, task_id: str, org_id: str | None) -> Row:
        row: Row | None = await self.store.run(
            lambda c: c.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        )
        if row is None or (org_id is not None and row["org_id"] != org_id):
            raise APIProblem.not_found("TASK_NOT_FOUND", "task", task_id)
        return row

    def decode(self, row: Row) -> Task:
        """The task of a ``tasks`` row as it is answered, before it wrote any log."""
        return self._task(row, (0, 0))

    def _task(self, row: Row, sizes: tuple[int, int]) -> Task:
        config = from_wire(orjson.loads(row["config"]), TaskConfig)
        # Env values are write-only: answers name the variables, never their values.
        config = attrs.evolve(config, env=dict.fromkeys(config.env, ENV_REDACTED))
        placement = Placement(**orjson.loads(row["placement"]))
        paths = self.provider.task_paths(row["task_id"])
        env = orjson.loads(row["env"])
        workdir, ssh = str(paths.workdir), self.ssh_address
        if self.files_elsewhere(row):  # its paths on that host, no SSH server of this one
            workdir, ssh = env.get("VI_FLOW_WORKSPACE", workdir), None
        return Task(
            task_id=row["task_id"],
            name=row["name"],
            status=TaskStatus(row["status"]),
            config=config,
            organization_id=row["org_id"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            exit_code=row["exit_code"],
            message=row["message"],
            reason=row["reason"],
            instance_type=placement.instance_type,
            gpu_type=placement.gpu_type,
            gpu_count=placement.gpu_count,
            gpu_ids=orjson.loads(row["gpu_ids"]),
            cpus=placement.cpus,
            provider=row["provider"],
            provider_id=row["provider_id"],
            ssh_host=None if ssh is None else ssh.host,
            ssh_port=None if ssh is None else ssh.port,
            ssh_user=row["task_id"],
            workdir=workdir,
            output_dir=env.get("VI_FLOW_OUTPUT_DIR", str(paths.output_dir)),
            run_id=row["run_id"],
            step_id=row["step_id"],
            stdout_size=sizes[0],
            stderr_size=sizes[1],
            price_per_hour=placement.price_per_hour,
            signal=row["signal"],
            raw_reason=row["raw_reason"],
        )

    def _sizes(self, task_ids: Sequence[str]) -> list[tuple[int, int]]:
        result = []
        for task_id in task_ids:
            paths = self.provider.task_paths(task_id)
            result.append((files.file_size(paths.stdout), files.file_size(paths.stderr)))
        return result

    async def _tasks(self, rows: Sequence[Row]) -> list[Task]:
        sizes = await asyncio.to_thread(self._sizes, [r["task_id"] for r in rows])
        return [self._task(row, size) for row, size in zip(rows, sizes, strict=True)]

    async def status(self, task_id: str) -> TaskStatus:
        """The task's status alone (no file sizes read).

        Raises:
            APIProblem: 404 ``TASK_NOT_FOUND``.
        """
        row = await self.store.run(
            lambda c: c.execute("SELECT status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        )
        if row is None:
            raise APIProblem.not_found("TASK_NOT_FOUND", "task", task_id)
        return TaskStatus(row["status"])

    async def get(self, task_id: str, org_id: str | None = None) -> Task:
        """The task ``task_id`` (of ``org_id`` when given).

        Raises:
            APIProblem: 404 ``TASK_NOT_FOUND``.
        """
        return (await self._tasks([await self._row(task_id, org_id)]))[0]

    async def list_tasks(
        self,
        org_id: str,
        statuses: Sequence[str],
        size: int,
        after: int = 0,
        *,
        newest: bool = True,
    ) -> tuple[list[Task], int | None]:
        """A page of the organization's tasks, newest first (unless ``newest=False``).

        ``after`` is the ``seq`` of the last task of the previous page (0 for the first);
        returns the page and the next cursor.
        """
        window, bound, order = seq_window(after, newest)
        where = f"org_id = ? AND {window}"
        params: list[Any] = [org_id, *bound]
        if statuses:
            where += f" AND status IN ({', '.join('?' for _ in statuses)})"
            params.extend(statuses)
        sql = f"SELECT * FROM tasks WHERE {where} ORDER BY {order} LIMIT ?"
        rows = await self.store.run(lambda c: c.execute(sql, (*params, size + 1)).fetchall())
        cursor = rows[size - 1]["seq"] if len(rows) > size else None
        return await self._tasks(rows[:size]), cursor

    async def run_task_ids(self, org_id: str, run_id: str) -> list[str]:
        """The tasks of the run ``run_id`` of ``org_id``, oldest first."""
        rows = await self.store.run(
            lambda c: c.execute(
                "SELECT task_id FROM tasks WHERE org_id = ? AND run_id = ? ORDER BY seq",
                (org_id, run_id),
            ).fetchall()
        )
        return [r["task_id"] for r in rows]
