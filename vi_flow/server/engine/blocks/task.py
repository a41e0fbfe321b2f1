"""The ``task`` block: run a command on the compute provider and stream its log lines.

Settings are a :class:`~vi_flow.models.tasks.TaskConfig` (``command`` required; ``gpu``,
``instance_type``, ``cpus``, ``env``, ``volumes``, ``working_dir``, ``max_run_time``...
in snake_case or camelCase) plus two block options: ``tail_lines`` (log lines kept in
the output, default 50, at most :data:`~vi_flow.models.limits.MAX_TAIL_CHARS` characters
in all) and ``allow_failure`` (a non-zero exit does not fail the step).
The task goes through the server's task service, so it is listed under ``/v1/tasks``
with the run and step ids. Every line it prints becomes a ``log`` event of the step.
The output is ``{"taskId", "status", "exitCode", "signal", "reason", "message",
"logTail", "artifacts", "artifactCount", "artifactsTruncated"}`` where ``exitCode``,
``signal``, ``reason`` and ``message`` say how the task ended (docs/tasks.md, "How a task
ended"; ``message`` also notes logs a full disk lost), ``artifacts``
lists the first :data:`MAX_ARTIFACTS` files (by path) written to ``$VI_FLOW_OUTPUT_DIR``
(``{"path", "size"}``), ``artifactCount`` how many there are and ``artifactsTruncated``
whether some were left out (``GET /v1/tasks/{taskId}/outputs`` lists them all).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ....models._base import to_wire
from ....models.limits import (
    MAX_TAIL_CHARS,
    MAX_TAIL_LINES,
    check_int,
    check_name,
    check_relative_path,
)
from ....models.tasks import TaskConfig, TaskStatus
from ...db import DatabaseUnavailable, UnstorableText
from ...errors import APIProblem
from ..eventlog import EventQuotaExceeded
from .base import BlockContext, StepError, checked_setting

__all__ = ["MAX_ARTIFACTS", "task_block"]

T = TypeVar("T")

_BLOCK_OPTIONS = {"tail_lines", "tailLines", "allow_failure", "allowFailure"}

MAX_ARTIFACTS = 1000
"""The most output files a step's output names: the output is stored in three events
(QA: 300,000 files made 82 MB of events)."""


class _Tail(collections.deque[str]):
    """The last ``count`` lines, and no more than :data:`MAX_TAIL_CHARS` characters of
    them: but for the last line, which is cut to its end (a task that prints gigabytes
    without a newline sends pieces of 256 KiB: 10,000 of them were 2.5 GB held here)."""

    def __init__(self, count: int) -> None:
        super().__init__(maxlen=count)
        self.chars = 0

    def append(self, line: str) -> None:
        if self.maxlen == 0:
            return
        if len(line) > MAX_TAIL_CHARS:
            line = line[-MAX_TAIL_CHARS:]
        if len(self) == self.maxlen:
            self.chars -= len(self[0])
        super().append(line)
        self.chars += len(line)
        while self.chars > MAX_TAIL_CHARS:
            self.chars -= len(self.popleft())


def _brief(line: str, most: int = 200) -> str:
    """``line`` for an error message: its first ``most`` characters, control characters
    written out (``\\x1b``): the message reaches terminals, where a task's escape
    sequences would set their title or rewrite the line."""
    cut = line if len(line) <= most else f"{line[:most]}… ({len(line)} characters)"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)


async def _through_an_outage(read: Callable[[], Awaitable[T]]) -> T:
    """``read()``, again every half second while the database cannot be reached: the
    task ran on meanwhile, and an outage longer than the replica lease ends the run
    anyway (its replica gives it up)."""
    while True:
        try:
            return await read()
        except DatabaseUnavailable:  # noqa: PERF203 - rare, and waiting is the point
            await asyncio.sleep(0.5)


def _config(ctx: BlockContext) -> TaskConfig:
    fields = {k: v for k, v in ctx.settings.items() if k not in _BLOCK_OPTIONS}
    fields.setdefault("name", f"{ctx.run_id}/{ctx.step_id}")
    if not fields.get("command"):
        raise StepError(
            f"task step {ctx.step_id!r}: settings.command is required", "INVALID_SETTINGS"
        )
    try:
        config = TaskConfig.from_dict(fields)
        check_name("settings.name", config.name)  # as POST /v1/tasks (a template rendered)
        if config.working_dir is not None:  # inside the task's workspace, as for POST /tasks
            check_relative_path("settings.workingDir", config.working_dir)
        ids = [config.reservation_id, *(v.volume_id for v in config.volumes)]
        if any(i and "\x00" in i for i in ids):  # as POST /tasks (QA AP: "not found")
            raise ValueError("settings: expected ids without a NUL character")
    except (TypeError, ValueError) as exc:
        raise StepError(f"task step {ctx.step_id!r}: {exc}", "INVALID_SETTINGS") from exc
    return config


async def task_block(ctx: BlockContext) -> Any:
    """Submit the task, stream its logs as events, and output its exit code and files."""
    tasks = ctx.tasks
    if tasks is None:
        raise StepError(
            f"task step {ctx.step_id!r}: this server has no compute provider (501 NOT_SUPPORTED)",
            "NOT_SUPPORTED",
        )
    try:
        task = await tasks.submit(
            ctx.organization_id, _config(ctx), run_id=ctx.run_id, step_id=ctx.step_id
        )
    except APIProblem as exc:
        raise StepError(f"task step {ctx.step_id!r}: {exc.message}", exc.code) from exc
    except UnstorableText as exc:  # an id of the settings (QA AN: PostgreSQL's raw error)
        raise StepError(f"task step {ctx.step_id!r}: settings: {exc}", "INVALID_SETTINGS") from exc
    kept = checked_setting(ctx, "tail_lines", 50, check_int, 0, MAX_TAIL_LINES)
    tail = _Tail(kept)
    try:
        async for stream, line in tasks.follow(task.task_id):
            tail.append(line)
            await ctx.log(line, stream)
    except EventQuotaExceeded:
        await tasks.cancel(task.task_id)  # its logs have nowhere to go: stop it
        raise
    task = await _through_an_outage(lambda: tasks.get(task.task_id))
    files = await tasks.output_files(task.task_id)
    output = {
        "taskId": task.task_id,
        "status": task.status.value,
        "exitCode": task.exit_code,
        "signal": task.signal,
        "reason": task.reason,
        # what the task's own record says of how it went (QA: a completed task whose logs
        # a full disk lost said so only there: the step showed an empty logTail)
        "message": task.message,
        "logTail": list(tail),
        "artifacts": to_wire(files[:MAX_ARTIFACTS]),
        "artifactCount": len(files),
        "artifactsTruncated": len(files) > MAX_ARTIFACTS,
    }
    if task.status != TaskStatus.COMPLETED and not ctx.setting("allow_failure", False):
        reason = task.message or f"exit code {task.exit_code}"
        last = "; ".join(_brief(line) for line in list(tail)[-3:])
        raise StepError(
            f"task {task.task_id} {task.status.value}: {reason}"
            + (f" (last lines: {last})" if last else ""),
            "TASK_FAILED",
        )
    return output
