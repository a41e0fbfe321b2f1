"""Runs a flow's steps in order, recording each change durably before it is announced.

:class:`Executor` drives one run from its stored state (``engine_runs``): it emits
``run_started``, then per step ``step_started`` (``step_input`` when tracing), calls the
block, and records the result — ``step_output`` + ``step_completed``, ``step_failed``,
or a durable pause (``step_paused`` + ``tool_calls_required``) — and finally
``flow_completed``. The stored state is always written before the events that
announce it, so a reader who sees ``tool_calls_required`` can answer it at once, and a
restarted server can continue a paused run or close an interrupted one.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import attrs
import orjson

from ...models._base import from_wire, to_wire
from ...models.common import Condition
from ...models.events import (
    FlowCompleted,
    LogLine,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepInput,
    StepOutput,
    StepPaused,
    StepStarted,
    TokenUsage,
    ToolCallsRequired,
    ToolResult,
)
from ...models.flows import FlowSpec
from ..clock import now_ms
from ..state import ServerSettings
from ..store import Store
from ..tasks import TaskService
from . import tables
from .blocks import BlockContext, BlockRegistry, Pause, Resume, StepDone, StepError
from .eventlog import EventLog
from .render import RenderError, render_value
from .request import ExecuteRequest, step_id_of
from .tables import RunRow, StepRow

__all__ = ["Executor", "Paused", "add_usage", "namespace_for", "request_of", "spec_of"]


def add_usage(total: TokenUsage | None, more: TokenUsage | None) -> TokenUsage | None:
    """The sum of two optional token counts."""
    if more is None:
        return total
    if total is None:
        return more
    return TokenUsage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
        total_tokens=total.total_tokens + more.total_tokens,
    )


def _usage(data: Any) -> TokenUsage | None:
    return None if data is None else from_wire(data, TokenUsage)


@attrs.frozen
class Paused:
    """A run stopped at a durable pause.

    Attributes:
        run_id: The run.
        token: Identifies this pause (a later pause of the run has another).
        deadline: When the pause times out, in ms since the epoch.
    """

    run_id: str
    token: str
    deadline: int


@attrs.frozen
class _Failure:
    step_id: str
    message: str
    code: str | None


def _check_json(step_id: str, result: Any) -> None:
    value = result.output if isinstance(result, StepDone) else result
    if isinstance(result, Pause):
        value = result.state
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise StepError(
            f"step {step_id!r} produced a value that is not JSON: {exc}", "BAD_OUTPUT"
        ) from exc


def request_of(row: RunRow) -> ExecuteRequest:
    """The execution request stored with a run."""
    return ExecuteRequest(**row.request)


def spec_of(row: RunRow) -> FlowSpec:
    """The frozen flow spec stored with a run."""
    return from_wire(row.spec, FlowSpec)


def namespace_for(row: RunRow, request: ExecuteRequest, previous: Any) -> dict[str, Any]:
    """The names templates may use for the next step of ``row``."""
    names: dict[str, Any] = dict(request.parameters)
    names.update(
        parameters=request.parameters,
        attachments=request.attachments,
        steps={step_id: {"output": output} for step_id, output in row.outputs.items()},
        input=previous,
    )
    if request.message is not None:
        names["message"] = request.message
    else:  # the seed lets a caller omit the message: it renders as "", never an error
        names.setdefault("message", "")
    return names


class Executor:
    """Drives runs; shared by every run of one server.

    Args:
        store: The server's store.
        settings: The server's settings.
        log: The event log.
        registry: Block implementations.
        http: Returns the shared outgoing HTTP session.
    """

    def __init__(
        self,
        store: Store,
        settings: ServerSettings,
        log: EventLog,
        registry: BlockRegistry,
        http: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self.store = store
        self.settings = settings
        self.log = log
        self.registry = registry
        self._http = http
        self.tasks: TaskService | None = None

    # -- the run ----------------------------------------------------------------------

    async def drive(self, run_id: str) -> Paused | None:
        """Run ``run_id`` from its stored state until it ends or pauses."""
        row = await self.store.run(lambda c: tables.get_run(c, run_id))
        if row.state == "done":
            return None
        spec, request = spec_of(row), request_of(row)
        if row.state == "pending":
            await self._begin(row)
        resume = self._resume_of(row)
        for index in range(row.step_index, len(spec.blocks)):
            result = await self._step(row, spec, request, index, resume)
            resume = None
            if isinstance(result, Paused):
                return result
            if isinstance(result, _Failure):
                await self.finish(row, Condition.FAILED, error=result.message,
                                  failed_step=result.step_id)  # fmt: skip
                return None
        last = step_id_of(spec, len(spec.blocks) - 1) if spec.blocks else None
        await self.finish(row, Condition.SUCCEEDED, output=row.outputs.get(last or ""))
        return None

    async def _begin(self, row: RunRow) -> None:
        row.state = "running"
        await self.store.run(lambda c: tables.save_run(c, row))
        await self.store.set_run_condition(row.run_id, Condition.RUNNING)
        await self.log.append(
            RunStarted, row.run_id, flow_id=row.flow_id, flow_version=row.flow_version
        )

    @staticmethod
    def _resume_of(row: RunRow) -> Resume | None:
        pause = row.pause
        if not pause or pause.get("results") is None:
            return None
        results = [from_wire(r, ToolResult) for r in pause["results"]]
        return Resume(state=pause.get("state"), results=results, usage=_usage(pause.get("usage")))

    async def finish(
        self,
        row: RunRow,
        status: Condition,
        *,
        output: Any = None,
        error: str | None = None,
        failed_step: str | None = None,
        reason: str | None = None,
    ) -> None:
        """End the run: store the outcome and condition, then append ``flow_completed``."""
        ended = now_ms()
        row.state, row.pause, row.ended_at = "done", None, ended
        row.outcome = {"status": status.value, "output": output, "error": error,
                       "failedStep": failed_step}  # fmt: skip
        step_status = Condition.ERROR if status == Condition.SUCCEEDED else status

        def store_outcome(conn: sqlite3.Connection) -> None:
            tables.save_run(conn, row)
            tables.close_running_steps(conn, row.run_id, step_status.value, ended)

        await self.store.run(store_outcome)
        await self.store.set_run_condition(row.run_id, status, error, reason)
        await self.close(row)

    async def close(self, row: RunRow) -> None:
        """Append the terminal event of a finished run (once) and mark it closed."""
        outcome = row.outcome or {}
        if not (await self.log.channel(row.run_id)).ended:
            await self.log.append(
                FlowCompleted, row.run_id,
                status=Condition(outcome.get("status", "Error")), output=outcome.get("output"),
                error=outcome.get("error"), failed_step=outcome.get("failedStep"),
                duration_ms=max(0, (row.ended_at or now_ms()) - row.started_at),
                usage=_usage(row.usage),
            )  # fmt: skip
        await self.log.sync()
        await self.store.run(lambda c: tables.mark_closed(c, row.run_id))
        self.log.forget(row.run_id)

    # -- one step ---------------------------------------------------------------------

    async def _step(
        self, row: RunRow, spec: FlowSpec, request: ExecuteRequest, index: int,
        resume: Resume | None,
    ) -> Paused | _Failure | None:  # fmt: skip
        block = spec.blocks[index]
        step_id = step_id_of(spec, index)
        step = self._step_record(row, step_id, index, block.block, resume)
        if resume is None:
            await self.store.run(lambda c: tables.put_step(c, row.run_id, step))
            await self.log.append(
                StepStarted, row.run_id, step_id=step_id, block=block.block, index=index
            )
        started = time.monotonic()
        try:
            ctx = self._context(row, spec, request, index, resume)
            if request.trace and resume is None:
                step.input = ctx.settings
                await self.log.append(StepInput, row.run_id, step_id=step_id, input=ctx.settings)
            result = await self.registry.get(block.block)(ctx)
            _check_json(step_id, result)
        except asyncio.CancelledError:
            raise
        except RenderError as exc:
            return await self._failed(row, step, str(exc), "TEMPLATE_ERROR", started)
        except StepError as exc:
            return await self._failed(row, step, exc.message, exc.code, started)
        except Exception as exc:
            return await self._failed(
                row, step, f"{type(exc).__name__}: {exc}", "BLOCK_ERROR", started
            )
        if isinstance(result, Pause):
            return await self._pause(row, step, result, started)
        done = result if isinstance(result, StepDone) else StepDone(output=result)
        await self._completed(row, step, done, request.trace, started)
        return None

    @staticmethod
    def _step_record(
        row: RunRow, step_id: str, index: int, block: str, resume: Resume | None
    ) -> StepRow:
        pause = row.pause or {}
        if resume is not None:
            return StepRow(step_id, index, block, "Running", started_at=pause.get("startedAt"),
                           duration_ms=int(pause.get("elapsedMs", 0)), input=pause.get("input"))  # fmt: skip
        return StepRow(step_id, index, block, "Running", started_at=now_ms(), duration_ms=0)

    def _context(
        self, row: RunRow, spec: FlowSpec, request: ExecuteRequest, index: int,
        resume: Resume | None,
    ) -> BlockContext:  # fmt: skip
        block = spec.blocks[index]
        step_id = step_id_of(spec, index)
        previous = row.outputs.get(step_id_of(spec, index - 1)) if index else None
        names = namespace_for(row, request, previous)
        raw = {**block.settings, **request.block_overrides.get(step_id, {})}
        return BlockContext(
            run_id=row.run_id, step_id=step_id, block=block.block, index=index,
            settings=render_value(raw, names), raw_settings=raw, namespace=names,
            message=request.message, parameters=request.parameters,
            attachments=request.attachments, previous=previous, tools=request.tools,
            tool_choice=request.tool_choice, resume=resume, server=self.settings,
            http=self._http(), emit_log=self._log_emitter(row.run_id, step_id),
            organization_id=row.org_id, tasks=self.tasks,
            emit_logs=functools.partial(self.log.append_lines, row.run_id, step_id),
        )  # fmt: skip

    def _log_emitter(self, run_id: str, step_id: str) -> Callable[[str, str], Any]:
        async def emit(stream: str, line: str) -> None:
            await self.log.append(LogLine, run_id, step_id=step_id, stream=stream, line=line)

        return emit

    @staticmethod
    def _elapsed(step: StepRow, started: float) -> int:
        return int(step.duration_ms or 0) + int((time.monotonic() - started) * 1000)

    async def _failed(
        self, row: RunRow, step: StepRow, message: str, code: str | None, started: float
    ) -> _Failure:
        step.status, step.error, step.ended_at = Condition.FAILED.value, message, now_ms()
        step.duration_ms = self._elapsed(step, started)
        await self.store.run(lambda c: tables.put_step(c, row.run_id, step))
        await self.log.append(
            StepFailed, row.run_id, step_id=step.step_id, block=step.block, error=message, code=code
        )
        return _Failure(step.step_id, f"step {step.step_id!r} failed: {message}", code)

    async def _completed(
        self, row: RunRow, step: StepRow, done: StepDone, trace: bool, started: float
    ) -> None:
        step.status, step.ended_at = Condition.SUCCEEDED.value, now_ms()
        step.duration_ms = self._elapsed(step, started)
        step.usage = to_wire(done.usage) if done.usage is not None else None
        step.output = done.output if trace else None
        step.input = step.input if trace else None
        row.outputs[step.step_id] = done.output
        row.step_index, row.pause = step.index + 1, None
        row.usage = to_wire(add_usage(_usage(row.usage), done.usage))

        def store_step(conn: sqlite3.Connection) -> None:
            tables.put_step(conn, row.run_id, step)
            tables.save_run(conn, row)

        await self.store.run(store_step)
        await self.log.append(StepOutput, row.run_id, step_id=step.step_id, output=done.output)
        await self.log.append(
            StepCompleted, row.run_id, step_id=step.step_id, block=step.block,
            output=done.output, duration_ms=step.duration_ms, usage=done.usage,
        )  # fmt: skip

    async def _pause(self, row: RunRow, step: StepRow, pause: Pause, started: float) -> Paused:
        timeout = pause.timeout if pause.timeout is not None else self.settings.tool_pause_timeout
        paused = Paused(row.run_id, secrets.token_hex(8), now_ms() + int(timeout * 1000))
        calls = to_wire(pause.tool_calls)
        row.state, row.step_index = "paused", step.index
        row.pause = {
            "stepId": step.step_id, "block": step.block, "toolCalls": calls,
            "state": pause.state, "usage": to_wire(pause.usage) if pause.usage else None,
            "startedAt": step.started_at, "elapsedMs": self._elapsed(step, started),
            "input": step.input, "deadline": paused.deadline, "token": paused.token,
            "timeout": timeout,
        }  # fmt: skip
        await self.store.run(lambda c: tables.save_run(c, row))
        await self.log.append(StepPaused, row.run_id, step_id=step.step_id, reason="tool_calls")
        await self.log.append(
            ToolCallsRequired, row.run_id, step_id=step.step_id, tool_calls=pause.tool_calls
        )
        await self.log.sync()
        return paused
