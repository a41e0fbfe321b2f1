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
import logging
import secrets
import threading
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
from ...models.limits import MAX_NESTING, MAX_RUN_OUTPUTS
from .. import _records as records
from ..clock import now_ms
from ..db import Connection
from ..flowsecrets import shown_settings
from ..state import ServerSettings
from ..store import Store
from ..tasks import TaskService
from . import tables
from .blocks import BlockContext, BlockRegistry, Pause, Resume, StepDone, StepError
from .blocks.base import add_usage
from .eventlog import Event, EventLog, RunKey
from .render import RenderError, render_value
from .request import ExecuteRequest, step_id_of
from .tables import RunRow, StepRow

log = logging.getLogger("vi_flow.server")

__all__ = ["Executor", "Paused", "add_usage", "namespace_for", "request_of", "spec_of"]


def _usage(data: Any) -> TokenUsage | None:
    return None if data is None else from_wire(data, TokenUsage)


@attrs.frozen
class Paused:
    """A run stopped at a durable pause.

    Attributes:
        key: The run's ``(org id, run id)``.
        token: Identifies this pause (a later pause of the run has another).
        deadline: When the pause times out, in ms since the epoch.
    """

    key: RunKey
    token: str
    deadline: int


@attrs.frozen
class Begun:
    """A run whose start the engine stored with its creation (one transaction).

    Attributes:
        row: Its engine state (``running``).
        step: The first step's record, stored ``Running`` (None for a flow without steps).
        spec: The flow spec ``row.spec`` holds, already structured (None: from ``row``).
    """

    row: RunRow
    step: StepRow | None
    spec: FlowSpec | None = None


def _no_change(conn: Connection) -> None:
    del conn


@attrs.frozen
class _Carry:
    """A finished step's state changes and events, stored with the next commit.

    ``store_step`` writes the step; ``run`` is the run as the step left it. The commit
    that ends the run stores the step alone (it writes the run as it ends).
    """

    store_step: Callable[[Connection], None]
    run: RunRow | None
    events: list[Event]

    def store(self, conn: Connection) -> None:
        """Write the step and the run as the step left it."""
        self.store_step(conn)
        if self.run is not None:
            tables.save_run(conn, self.run)


_NOTHING_CARRIED = _Carry(_no_change, None, [])


@attrs.frozen
class _Failure:
    step_id: str
    message: str
    code: str | None


def _check_json(step_id: str, result: Any) -> bytes:
    """``result``'s value (a step's output, a pause's state) as JSON; a ``StepError``
    when it is not JSON or nests too deep."""
    value = result.output if isinstance(result, StepDone) else result
    if isinstance(result, Pause):
        value = result.state
    # As deep as a request's fields may be: the events that carry it wrap it in a few
    # levels more, and orjson stops at its recursion limit (the run would end an
    # EngineError, events lost). Found by orjson itself, at C speed, over the value
    # wrapped in as many lists as the limit has above MAX_NESTING (a walk in Python took
    # a second of the loop for a 12 MB output). The lists are made once per thread: making
    # them for each step cost 15 µs of the loop.
    outer, inner = _wrapping()
    inner[0] = value
    try:
        wrapped = orjson.dumps(outer)
    except TypeError as exc:
        if "recursion" in str(exc).lower():
            raise StepError(
                f"step {step_id!r} produced a value whose objects and lists nest deeper"
                f" than {MAX_NESTING} levels",
                "BAD_OUTPUT",
            ) from None
        raise StepError(
            f"step {step_id!r} produced a value that is not JSON: {exc}", "BAD_OUTPUT"
        ) from exc
    finally:
        inner[0] = None  # the value is not kept alive
    wraps = _orjson_depth() - MAX_NESTING  # the "[" around it (its own list's too)
    return wrapped[wraps:-wraps]


def _check_budget(row: RunRow, step_id: str, size: int) -> None:
    """A ``StepError`` when an output of ``size`` bytes would take the run's outputs
    past :data:`MAX_RUN_OUTPUTS` (they are all kept, for the steps after)."""
    if row.outputs_size + size > MAX_RUN_OUTPUTS:
        raise StepError(
            f"step {step_id!r} produced {size} bytes of output, and the run's step outputs"
            f" would hold {row.outputs_size + size}: more than the {MAX_RUN_OUTPUTS} a run"
            " may keep",
            "OUTPUTS_TOO_LARGE",
        )


_wrappings = threading.local()


def _wrapping() -> tuple[list[Any], list[Any]]:
    """This thread's lists nested as deep as orjson's limit has above MAX_NESTING: the
    outermost and the innermost, whose one item is the place of the value to check."""
    made: tuple[list[Any], list[Any]] | None = getattr(_wrappings, "lists", None)
    if made is None:
        inner: list[Any] = [None]
        outer = inner
        for _ in range(_orjson_depth() - MAX_NESTING - 1):
            outer = [outer]
        made = _wrappings.lists = (outer, inner)
    return made


@functools.cache
def _orjson_depth() -> int:
    """How deeply lists may nest in what ``orjson.dumps`` encodes (254 in orjson 3.x)."""
    low, high = 1, 4096  # low encodes; high is past any limit (found by halving)

    def encodes(levels: int) -> bool:
        value: Any = 0
        for _ in range(levels):
            value = [value]
        try:
            orjson.dumps(value)
        except TypeError:
            return False
        return True

    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if encodes(middle) else (low, middle)
    return low


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
        self.on_finish: dict[RunKey, Callable[[Connection, RunRow], Callable[[], None]]] = {}
        """Per run: called in the transaction that ends it (after its changes); what it
        returns is called once that transaction has committed."""

    # -- the run ----------------------------------------------------------------------

    async def drive(self, key: RunKey, begun: Begun | None = None) -> Paused | None:
        """Run the run ``key`` from its stored state until it ends or pauses.

        ``begun``: the run was just created and started in one transaction (its
        ``run_started`` and first ``step_started`` are still to be announced).
        """
        if begun is None:
            row = await self.store.run(lambda c: tables.get_run(c, key, outputs=True))
        else:
            row = begun.row
            await self.log.append(RunStarted, key, **_started_fields(row))
        if row.state == "done":
            return None
        spec = begun.spec if begun is not None and begun.spec is not None else spec_of(row)
        request = request_of(row)
        if row.state == "pending":
            await self._begin(row)
        resume, carry = self._resume_of(row), _NOTHING_CARRIED
        stored = begun.step if begun is not None else None
        for index in range(row.step_index, len(spec.blocks)):
            result = await self._step(row, spec, request, index, resume, carry, stored)
            resume, stored = None, None
            if isinstance(result, Paused):
                return result
            if isinstance(result, _Failure):
                await self.finish(row, Condition.FAILED, error=result.message,
                                  failed_step=result.step_id, reason="StepFailed",
                                  code=result.code)  # fmt: skip
                return None
            carry = result
        last = step_id_of(spec, len(spec.blocks) - 1) if spec.blocks else None
        await self.finish(row, Condition.SUCCEEDED, output=row.outputs.get(last or ""), carry=carry)
        return None

    async def _begin(self, row: RunRow) -> None:
        row.state = "running"

        def begin(conn: Connection) -> None:
            tables.save_run(conn, row)
            set_condition(conn, row.key, Condition.RUNNING)

        await self.log.commit_with(begin, row.key, [(RunStarted, _started_fields(row))])

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
        carry: _Carry | None = None,
        code: str | None = None,
    ) -> None:
        """End the run: store the outcome, condition and ``flow_completed`` in one commit.

        ``carry``: the last step's own changes and events, stored in the same commit.
        ``code``: the failure's code (a failed step's), for the outcome and the event.
        """
        ended = now_ms()
        row.state, row.pause, row.ended_at = "done", None, ended
        row.outcome = {"status": status.value, "output": output, "error": error,
                       "failedStep": failed_step}  # fmt: skip
        if code is not None:
            row.outcome["errorCode"] = code
        step_status = Condition.ERROR if status == Condition.SUCCEEDED else status
        carry = carry or _NOTHING_CARRIED
        on_finish = self.on_finish.pop(row.key, None)
        # flow_completed goes in this commit (or went in an earlier one): closed with it
        row.closed = True

        def store_outcome(conn: Connection) -> Callable[[], None] | None:
            carry.store_step(conn)  # the step; the run is saved whole just below
            tables.save_run(conn, row)
            tables.close_running_steps(conn, row.key, step_status.value, ended)
            set_condition(conn, row.key, status, error, reason)
            return None if on_finish is None else on_finish(conn, row)

        def committed(then: Callable[[], None] | None) -> None:
            # not before: a commit a full disk failed ends the run otherwise (DiskFull),
            # and its caller must not hear it succeeded; and not after the readers are
            # woken: an execute waiting for the end would read the outcome again (QA:
            # a third transaction per execute, 30 % of its rate)
            if then is not None:
                then()

        channel = await self.log.channel(row.key)
        events = [*carry.events, *([] if channel.ended else [_completed_event(row)])]
        await self.log.commit_with(store_outcome, row.key, events, committed)
        self.log.forget(row.key)

    async def close(self, row: RunRow) -> None:
        """Append the terminal event of a finished run (once) and mark it closed."""
        if not (await self.log.channel(row.key)).ended:
            await self.log.append(FlowCompleted, row.key, **_completed_event(row)[1])
        await self.log.sync()
        await self.store.run(lambda c: tables.mark_closed(c, row.key))
        self.log.forget(row.key)

    # -- one step ---------------------------------------------------------------------

    async def _step(
        self, row: RunRow, spec: FlowSpec, request: ExecuteRequest, index: int,
        resume: Resume | None, carry: _Carry, stored: StepRow | None = None,
    ) -> Paused | _Failure | _Carry:  # fmt: skip
        block = spec.blocks[index]
        step_id = step_id_of(spec, index)
        step = stored or self._step_record(row, step_id, index, block.block, resume)
        started_event: Event = (StepStarted, {"step_id": step_id, "block": block.block, "index": index})  # fmt: skip
        if stored is not None:
            await self.log.append(StepStarted, row.key, **started_event[1])
        elif resume is None:

            def start(conn: Connection) -> None:
                carry.store(conn)
                tables.put_step(conn, row.key, step)

            await self.log.commit_with(start, row.key, [*carry.events, started_event])
        elif carry.events:
            await self.log.commit_with(carry.store, row.key, carry.events)
        started = time.monotonic()
        try:
            ctx = self._context(row, spec, request, index, resume)
            if request.trace and resume is None:
                step.input = shown_settings(block.block, ctx.settings)  # env values redacted
                await self.log.append(StepInput, row.key, step_id=step_id, input=step.input)
            result = await self.registry.get(block.block)(ctx)
            encoded = _check_json(step_id, result)
            if not isinstance(result, Pause):
                _check_budget(row, step_id, len(encoded))
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
        return self._completed(row, step, done, encoded, request.trace, started)

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
            http=self._http(), emit_log=self._log_emitter(row.key, step_id),
            organization_id=row.org_id, tasks=self.tasks,
            emit_logs=functools.partial(self.log.append_lines, row.key, step_id),
        )  # fmt: skip

    def _log_emitter(self, key: RunKey, step_id: str) -> Callable[[str, str], Any]:
        async def emit(stream: str, line: str) -> None:
            await self.log.append(LogLine, key, step_id=step_id, stream=stream, line=line)

        return emit

    @staticmethod
    def _elapsed(step: StepRow, started: float) -> int:
        return int(step.duration_ms or 0) + int((time.monotonic() - started) * 1000)

    async def _failed(
        self, row: RunRow, step: StepRow, message: str, code: str | None, started: float
    ) -> _Failure:
        step.status, step.error, step.ended_at = Condition.FAILED.value, message, now_ms()
        step.duration_ms = self._elapsed(step, started)
        fields = {"step_id": step.step_id, "block": step.block, "error": message, "code": code}
        await self.log.commit_with(
            lambda c: tables.put_step(c, row.key, step), row.key, [(StepFailed, fields)]
        )
        return _Failure(step.step_id, f"step {step.step_id!r} failed: {message}", code)

    def _completed(
        self, row: RunRow, step: StepRow, done: StepDone, encoded: bytes, trace: bool,
        started: float,
    ) -> _Carry:  # fmt: skip
        """Record a step's success in memory; its changes and events go with the next
        commit (``encoded``: its output's JSON, stored once)."""
        step.status, step.ended_at = Condition.SUCCEEDED.value, now_ms()
        step.duration_ms = self._elapsed(step, started)
        step.usage = to_wire(done.usage) if done.usage is not None else None
        step.output = done.output if trace else None
        step.input = step.input if trace else None
        row.outputs[step.step_id] = done.output
        row.outputs_size += len(encoded)
        row.step_index, row.pause = step.index + 1, None
        row.usage = to_wire(add_usage(_usage(row.usage), done.usage))

        saved = attrs.evolve(row)  # as it stands now, not later (its outputs are not saved)

        def put_step(conn: Connection) -> None:
            tables.put_step(conn, row.key, step)
            tables.put_output(conn, row.key, step.step_id, encoded)

        return _Carry(put_step, saved, [
            (StepOutput, {"step_id": step.step_id, "output": done.output}),
            (StepCompleted, {"step_id": step.step_id, "block": step.block, "output": done.output,
                             "duration_ms": step.duration_ms, "usage": done.usage}),
        ])  # fmt: skip

    async def _pause(self, row: RunRow, step: StepRow, pause: Pause, started: float) -> Paused:
        timeout = pause.timeout if pause.timeout is not None else self.settings.tool_pause_timeout
        paused = Paused(row.key, secrets.token_hex(8), now_ms() + int(timeout * 1000))
        calls = to_wire(pause.tool_calls)
        row.state, row.step_index = "paused", step.index
        row.pause = {
            "stepId": step.step_id, "block": step.block, "toolCalls": calls,
            "state": pause.state, "usage": to_wire(pause.usage) if pause.usage else None,
            "startedAt": step.started_at, "elapsedMs": self._elapsed(step, started),
            "input": step.input, "deadline": paused.deadline, "token": paused.token,
            "timeout": timeout,
        }  # fmt: skip
        await self.log.commit_with(lambda c: tables.save_run(c, row), row.key, [
            (StepPaused, {"step_id": step.step_id, "reason": "tool_calls"}),
            (ToolCallsRequired, {"step_id": step.step_id, "tool_calls": pause.tool_calls}),
        ])  # fmt: skip
        return paused


def _started_fields(row: RunRow) -> dict[str, Any]:
    return {"flow_id": row.flow_id, "flow_version": row.flow_version}


def _completed_event(row: RunRow) -> Event:
    """The terminal ``flow_completed`` of a finished run, from its stored outcome."""
    outcome = row.outcome or {}
    return FlowCompleted, {
        "status": Condition(outcome.get("status", "Error")), "output": outcome.get("output"),
        "error": outcome.get("error"), "failed_step": outcome.get("failedStep"),
        "error_code": outcome.get("errorCode"),
        "duration_ms": max(0, (row.ended_at or now_ms()) - row.started_at),
        "usage": _usage(row.usage),
    }  # fmt: skip


def set_condition(
    conn: Connection, key: RunKey, condition: Condition,
    message: str | None = None, reason: str | None = None,
) -> None:  # fmt: skip
    """Append a condition to the run record (as ``Store.set_run_condition``, in a transaction).

    A terminal condition is never changed; a change is logged (without the message,
    which may quote a step's input or output).
    """
    records.change_run_condition(conn, *key, condition, message, reason)
