"""Reading what a task wrote: its stdout/stderr logs and its output directory.

Snapshots (:meth:`TaskOutputs.logs`, :meth:`TaskOutputs.tail`) read the last lines of
the log files; :meth:`TaskOutputs.follow` streams both logs from the start until the
task ended and nothing is left to read, woken by the task's change event and otherwise
polling every :data:`FOLLOW_POLL` seconds. Files are read in a thread, never on the
event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from ...models.loglines import LineSplitter
from ...models.tasks import TaskLogs, TaskOutputFile, TaskStatus
from ..clock import wait_event
from ..db import DatabaseUnavailable
from . import files
from .logtimes import LogTimes
from .records import TaskRecords

__all__ = ["FOLLOW_POLL", "TaskOutputs"]

FOLLOW_POLL = 0.05
"""Seconds :meth:`TaskOutputs.follow` waits for news before reading the logs again."""


class TaskOutputs:
    """Task logs and output files (a part of the task service).

    Args:
        records: The service's task records.
        log_times: When the logs were written (for ``since``).
    """

    def __init__(self, records: TaskRecords, log_times: LogTimes) -> None:
        self._records = records
        self._provider = records.provider
        self._log_times = log_times

    async def logs(
        self,
        task_id: str,
        org_id: str | None,
        tail: int,
        stream: str,
        since_ms: int | None = None,
    ) -> TaskLogs:
        """A snapshot of the last ``tail`` lines of ``stream`` (stdout, stderr or both),
        of those written since ``since_ms`` when given."""
        task = await self._records.get(task_id, org_id)
        starts = None
        if since_ms is not None:
            starts = await self._log_times.offsets_since(task_id, since_ms)
        lines = await self.tail(task_id, tail, stream, starts)
        if lines and task.status == TaskStatus.PENDING:  # it began while they were read
            task = await self._records.get(task_id, org_id)
        return TaskLogs(
            task_id=task_id,
            status=task.status,
            stream=stream,
            lines=lines,
            stdout_size=task.stdout_size,
            stderr_size=task.stderr_size,
            exit_code=task.exit_code,
            signal=task.signal,
        )

    async def tail(
        self,
        task_id: str,
        lines: int = 50,
        stream: str = "both",
        starts: Mapping[str, int] | None = None,
    ) -> list[str]:
        """The last ``lines`` lines of ``stream`` (``both``: stdout's, then stderr's), none
        from before the byte offsets ``starts`` when given."""
        paths = self._provider.task_paths(task_id)
        every = {"stdout": paths.stdout, "stderr": paths.stderr}
        chosen = [stream] if stream in every else list(every)
        floor = starts or {}

        def read() -> list[str]:
            return [
                line
                for name in chosen
                for line in files.tail_lines(paths.root, every[name], lines, floor.get(name, 0))
            ]

        return await asyncio.to_thread(read)

    async def follow(self, task_id: str) -> AsyncIterator[tuple[str, str]]:
        """Yield ``(stream, line)`` from the start of the logs until the task ended and
        both logs are drained. While the database cannot be reached (a PostgreSQL
        restart), the task is taken to run on and its lines still come (QA AN: the
        failed status read failed the flow step of a task that ran on)."""
        paths = self._provider.task_paths(task_id)
        sources = {"stdout": paths.stdout, "stderr": paths.stderr}
        offsets = dict.fromkeys(sources, 0)
        splitters = {name: LineSplitter() for name in sources}
        while True:
            event = self._records.changed(task_id)
            try:
                ended = (await self._records.status(task_id)).terminal
            except DatabaseUnavailable:
                ended = False
            got_any = False
            for name, path in sources.items():
                chunk = await asyncio.to_thread(files.read_from, paths.root, path, offsets[name])
                offsets[name] += len(chunk)
                got_any = got_any or bool(chunk)
                for line in splitters[name].feed(chunk):
                    yield name, line
            if ended and not got_any:
                for name, splitter in splitters.items():
                    for line in splitter.flush():
                        yield name, line
                return
            if not got_any:
                await wait_event(event, FOLLOW_POLL)

    def output_dir(self, task_id: str) -> Path:
        """The task's ``$VI_FLOW_OUTPUT_DIR``."""
        return self._provider.task_paths(task_id).output_dir

    async def output_files(self, task_id: str) -> list[TaskOutputFile]:
        """Files the task wrote to its output directory."""
        return await asyncio.to_thread(files.list_outputs, self.output_dir(task_id))
