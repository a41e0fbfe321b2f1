"""Execution routes: execute, stream, jobs, tool results, run events, traces, credits.

``setup(app)`` creates the :class:`~vi_flow.server.engine.Engine`, registers it under
:data:`~vi_flow.server.state.ENGINE_KEY` (so ``POST /v1/runs`` and ``POST
/v1/runs/{id}/cancel`` use it too) and adds the "Execution wire" endpoints:

- ``POST /v1/flows/{flowId}/execute`` -> ``ExecutionOutcome`` (completed, paused, failed)
- ``POST /v1/flows/{flowId}/events`` -> SSE of the whole run (``X-Execution-Id`` header)
- ``POST /v1/flows/{flowId}/jobs`` -> 202 ``ExecutionJob`` (``{"executionId", "status"}``)
- ``POST /v1/runs/{runId}/tool-results`` (``?wait=true`` answers the next outcome)
- ``GET /v1/runs/{runId}/events`` (``Last-Event-ID`` or ``?after=`` replays, then live)
- ``GET /v1/runs/{runId}/trace``, ``GET /v1/runs/{runId}/steps/{stepId}/trace``
- ``GET``/``PUT /v1/organizations/{organizationId}/credits`` (``PUT`` needs an admin key)

Streams send ``: heartbeat`` comments every ``heartbeat_interval`` seconds while idle,
and announce that interval in the ``X-Heartbeat-Interval`` header.
A run started by a stream keeps running when its client goes away unless the request
said ``cancelOnDisconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import orjson
from aiohttp import web

from ...models._base import dumps, from_wire
from ...models.events import ExecutionOutcome, ToolResult
from ...models.execution import HEARTBEAT_HEADER
from ...models.limits import MAX_INT, shown
from ..db import Connection
from ..engine import Engine, parse_request, tables
from ..engine.eventlog import RunKey
from ..errors import APIProblem
from ..helpers import (
    begin_body,
    bool_query,
    idempotent,
    idempotent_in_transaction,
    json_response,
    org_in_path,
    org_of,
    read_body,
)
from ..middleware import StillAuthorized
from ..state import ENGINE_KEY, REPLICA_KEY, SETTINGS_KEY, STORE_KEY
from ..store import IDEMPOTENCY_SLOT, AlreadyAnswered, answer_saver
from ..tasks import TASKS_KEY

__all__ = ["EXECUTION_ENGINE_KEY", "setup"]

EXECUTION_ENGINE_KEY = web.AppKey("vi_flow.execution_engine", Engine)
"""The application's :class:`~vi_flow.server.engine.Engine` (typed access for tests)."""

log = logging.getLogger("vi_flow.server")

_HEARTBEAT = b": heartbeat\n\n"
_BEGIN_AFTER = 1.0  # seconds after which a waiting execute's answer begins, at most
_GONE_POLL = 0.5  # seconds between looks at a stream's (or a waiting answer's) connection
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def _engine(request: web.Request) -> Engine:
    return request.app[EXECUTION_ENGINE_KEY]


# -- starting runs ---------------------------------------------------------------------


def _names_its_run(outcome: bytes) -> dict[str, str]:
    """A replayed outcome names its run in ``X-Execution-Id``, as the first answer did
    (QA AY: only the body did)."""
    try:
        run_id = orjson.loads(outcome).get("executionId")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return {"X-Execution-Id": run_id} if isinstance(run_id, str) else {}


@functools.partial(idempotent_in_transaction, replay_headers=_names_its_run)
async def execute(request: web.Request) -> web.StreamResponse:
    """Run a flow to completion or to its first pause; answer the ``ExecutionOutcome``."""
    engine = _engine(request)
    body = parse_request(await read_body(request))
    # the idempotent answer is saved in the transaction that ends the run (or, when it
    # pauses, in the one that reads the pause)
    save = answer_saver(200)
    headers = {}
    try:
        key = await engine.submit(org_of(request), request.match_info["flowId"], body, save)
    except AlreadyAnswered as found:
        # the same request made a run that has not answered yet (it still runs on another
        # replica, or a crash cut its request short): its outcome is the answer
        run_id = save.held_run(found.stored)
        if run_id is None:
            raise
        key = (org_of(request), run_id)
        headers["Idempotent-Replayed"] = "true"  # the first request's run, answered
    if (slot := IDEMPOTENCY_SLOT.get()) is not None:
        # A retry waits for the run's outcome beside this request, not behind it: a
        # first connection that hung open (a stalled proxy) held the key until the run
        # ended, and every retry answered nothing as long. Either saves the same answer.
        slot.key_names_run()
    return await _outcome_answer(request, key, engine.outcome(key, 0, save), headers)


async def _outcome_answer(
    request: web.Request,
    key: RunKey,
    waiting: Coroutine[Any, Any, ExecutionOutcome],
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Answer the outcome ``waiting`` gives: at once when the run pauses or ends within a
    second (or a heartbeat interval, if shorter); else the answer begins then (``200``,
    ``X-Execution-Id``) and a space follows every heartbeat interval until the outcome's
    JSON (which may begin with spaces).

    A client counts its read timeout between bytes: a run working for longer than that
    (a training step) answered nothing, and every retry timed out in turn (QA AF: a
    3-minute run failed ``execute()`` with ``APITimeoutError`` while it succeeded). If
    the outcome fails once the answer began (the server is stopping), the connection is
    cut, unfinished: the client's retry with its ``Idempotency-Key`` gets the outcome.
    A timer, not a task, waits for the interval (and looks at the connection every
    :data:`_GONE_POLL` seconds): most runs answer before it.
    """
    interval = request.app[SETTINGS_KEY].heartbeat_interval
    # begun after a second at most: a client whose own timeout is shorter than the
    # heartbeat interval (execute(timeout=5)) learnt nothing of the run that goes on
    # (QA AR); a run answered within it is answered whole, its status its own
    begin_after = min(interval, _BEGIN_AFTER)
    loop, handler = asyncio.get_running_loop(), asyncio.current_task()
    started, every = loop.time(), min(_GONE_POLL, begin_after)
    stop = asyncio.Event()
    begun: list[tuple[web.StreamResponse, asyncio.Task[None]]] = []
    gone = False

    def begin() -> None:
        response = web.StreamResponse(headers={
            **(headers or {}), "Content-Type": "application/json", "X-Execution-Id": key[1],
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        })  # fmt: skip
        beat = asyncio.ensure_future(_beat(request, response, stop, interval))
        beat.add_done_callback(_retrieved)  # a client that left, if nobody awaits it
        begun.append((response, beat))

    def look() -> None:
        # A client that left stops the wait: the request held its Idempotency-Key's
        # lock until the run ended, and the client's retry waited behind it without a
        # byte, until its read timeout (QA AG). The run goes on; the retry answers it.
        nonlocal gone
        if request.transport is None or request.transport.is_closing():
            gone = True
            if handler is not None:
                handler.cancel()
            return
        if not begun and loop.time() - started >= begin_after:
            begin()
        timer[0] = loop.call_later(every, look)

    timer = [loop.call_later(every, look)]
    try:
        outcome = await waiting
    except asyncio.CancelledError:
        if not gone:
            raise
        if handler is not None and hasattr(handler, "uncancel"):  # 3.11+: ours, taken back
            handler.uncancel()
        log.info("run %s: the client of its answer left; the run goes on", key[1])
        return begun[0][0] if begun else web.Response(status=_CLIENT_LEFT)
    except Exception as exc:
        if not begun:
            raise
        # no status can say it now: the answer is left unfinished
        log.info("run %s: its outcome could not be answered (%s); connection cut", key[1], exc)
        await _stopped(begun[0][1], stop)
        if request.transport is not None:
            request.transport.abort()
        return begun[0][0]
    finally:
        timer[0].cancel()
        stop.set()
    if not begun:  # named as a begun answer is, however long the run took (QA AV)
        return json_response(outcome, headers={**(headers or {}), "X-Execution-Id": key[1]})
    response, beat = begun[0]
    if await _stopped(beat, stop):
        await response.write(dumps(outcome))
        await response.write_eof()
    return response


_CLIENT_LEFT = 499  # what no client reads: not a 2xx, so no answer is kept for the key


async def _beat(
    request: web.Request, response: web.StreamResponse, stop: asyncio.Event, interval: float
) -> None:
    """Begin ``response`` and write a space every ``interval`` until ``stop`` is set."""
    await response.prepare(request)
    while not stop.is_set():
        await response.write(b" ")
        with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError before 3.11
            await asyncio.wait_for(stop.wait(), interval)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _stopped(beat: asyncio.Task[None], stop: asyncio.Event) -> bool:
    """Stop the heartbeats; whether the answer is still good to write (its client there)."""
    stop.set()
    try:
        await beat
    except (ConnectionError, RuntimeError):  # the client left; or the transport closed
        return False
    return True


@idempotent_in_transaction
async def jobs(request: web.Request) -> web.Response:
    """Start a flow in the background; answer 202 with the execution id at once."""
    engine = _engine(request)
    body = parse_request(await read_body(request))
    # the run and the idempotent answer are saved in one transaction
    job = await engine.submit_job(
        org_of(request), request.match_info["flowId"], body, answer_saver(202)
    )
    return json_response(job, 202)


@idempotent_in_transaction
async def flow_events(request: web.Request) -> web.StreamResponse:
    """Start a flow and stream its events from ``run_started`` to ``flow_completed``.

    With an ``Idempotency-Key``, a retry (the answer was lost before its first byte, so
    the client never learnt the run's id) streams the run the first request started, from
    its ``Last-Event-ID``, rather than start a second run (found by QA: 19 runs for 15
    streams behind a proxy that cut connections).
    """
    engine = _engine(request)
    body = parse_request(await read_body(request))
    save = answer_saver(200, hold_only=True)
    try:
        key = await engine.submit(org_of(request), request.match_info["flowId"], body, save)
        after = 0
    except AlreadyAnswered as found:
        run_id = save.held_run(found.stored)
        if run_id is None:
            raise  # the key with another body: 422
        key, after = (org_of(request), run_id), _after(request)
    if (slot := IDEMPOTENCY_SLOT.get()) is not None:
        slot.key_names_run()  # a retry streams the run at once, this stream still open
    return await _stream(request, key, after, cancel_on_disconnect=body.cancel_on_disconnect)


# -- streams ---------------------------------------------------------------------------


def _after(request: web.Request) -> int:
    """The event id to resume after: ``Last-Event-ID``, else ``?after=``; each is checked."""
    given = (
        ("Last-Event-ID", request.headers.get("Last-Event-ID")),
        ("after", request.query.get("after")),
    )
    ids = [_event_id(name, raw) for name, raw in given if raw and raw.strip()]  # " ": none
    return ids[0] if ids else 0


def _event_id(name: str, raw: str) -> int:
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):
        raise APIProblem.validation(name, f"expected an event id, got {raw[:40]!r}")
    if len(text) > 19 or int(text) > MAX_INT:
        raise APIProblem.validation(name, f"must be 0..{MAX_INT}, got {text[:40]}")
    return int(text)


async def _stream(
    request: web.Request, key: RunKey, after: int, *, cancel_on_disconnect: bool = False
) -> web.StreamResponse:
    engine = _engine(request)
    heartbeat = request.app[SETTINGS_KEY].heartbeat_interval
    # Announced, so a client treats 2x this much silence as a dead connection (a stalled
    # proxy keeps the socket open) and resumes with Last-Event-ID instead of waiting.
    headers = {**_SSE_HEADERS, "X-Execution-Id": key[1], HEARTBEAT_HEADER: f"{heartbeat:g}"}
    response = web.StreamResponse(headers=headers)
    if not await begin_body(request, response):
        return response
    frames = engine.log.follow(key, after, heartbeat)
    if cancel_on_disconnect:
        engine.guard(key)
    gone = False
    pump = _pump(response, frames, StillAuthorized(request, response))
    try:
        # every stream, not only a cancelOnDisconnect one: a POST .../events holds its
        # Idempotency-Key while it streams, and its client's retry waited for the next
        # heartbeat (15 s) to find the first connection gone (QA AS)
        gone = await _unless_gone(request, pump)
    except ConnectionError:  # the client went away; the run goes on unless asked
        gone = True
    except asyncio.CancelledError:
        gone = True
        raise
    finally:
        if cancel_on_disconnect:
            engine.unguard(key, gone=gone)
    return response


async def _unless_gone(request: web.Request, pump: Coroutine[Any, Any, None]) -> bool:
    """Run ``pump`` until it ends or the client's connection is gone (``True``).

    Only a write finds a dropped connection, and an idle run writes a heartbeat every
    ``heartbeat_interval`` (15 s): a ``cancelOnDisconnect`` run whose client left was
    cancelled up to that long after the documented grace (QA: 18 s, not 3 s), and a
    retry with the stream's ``Idempotency-Key`` waited as long. The connection is looked
    at every :data:`_GONE_POLL` seconds instead.
    """
    pumping = asyncio.ensure_future(pump)
    try:
        while not pumping.done():
            transport = request.transport
            if transport is None or transport.is_closing():
                return True  # the pump is stopped below
            await asyncio.wait({pumping}, timeout=_GONE_POLL)
        pumping.result()
        return False
    finally:
        if not pumping.done():  # the client is gone, or this handler was cancelled
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pumping


async def _pump(
    response: web.StreamResponse, frames: AsyncIterator[bytes | None], still: StillAuthorized
) -> None:
    try:
        async for chunk in frames:
            if not await still.holds():
                break  # a revoked key or ended session: the stream ends, its next call is 401
            if chunk is None:
                await response.write(_HEARTBEAT)
            elif _ends_run(chunk):  # the last frames leave with the stream's end, one send
                await response.write_eof(chunk)
                return
            else:
                await response.write(chunk)
    finally:
        await frames.aclose()  # type: ignore[attr-defined]
    await response.write_eof()


def _ends_run(chunk: bytes) -> bool:
    """Whether the last frame of ``chunk`` is the run's terminal ``flow_completed``
    (nothing follows it). A frame's data is JSON on one line, so the last ``event:``
    line of the chunk is its last frame's."""
    at = chunk.rfind(b"\nevent: ")
    return at >= 0 and chunk.startswith(b"flow_completed\n", at + 8)


async def run_events(request: web.Request) -> web.StreamResponse:
    """Stream a run's events after ``Last-Event-ID`` (replay, then live until the end)."""
    run_id, org = request.match_info["runId"], org_of(request)
    after = _after(request)
    await request.app[STORE_KEY].get_run(run_id, org)
    if not await _engine(request).has_run((org, run_id)):
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        await response.write_eof()
        return response
    # a client resuming its cancelOnDisconnect stream (it says where it was) keeps it so
    # (by the header, or by ?after=, which _after takes alike: QA AP found it cancelled)
    resuming = "Last-Event-ID" in request.headers or bool(request.query.get("after", "").strip())
    cancel = resuming and _engine(request).guarded((org, run_id))
    return await _stream(request, (org, run_id), after, cancel_on_disconnect=cancel)


# -- tool results ----------------------------------------------------------------------


def _tool_results(body: dict[str, Any]) -> list[ToolResult]:
    items = body.get("toolResults")
    if not isinstance(items, list) or not items:
        raise APIProblem.validation("toolResults", "expected a non-empty list of tool results")
    results, seen = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("toolCallId"), str):
            raise APIProblem.validation(f"toolResults[{i}].toolCallId", "required (a string)")
        if "\x00" in item["toolCallId"]:  # as every id a body names (QA AP: a 409 "unknown")
            raise APIProblem.validation(
                f"toolResults[{i}].toolCallId", "expected an id without a NUL character"
            )
        if not isinstance(item.get("isError", False), bool):
            raise APIProblem.validation(f"toolResults[{i}].isError", "expected a boolean")
        if item["toolCallId"] in seen:
            raise APIProblem.validation(
                f"toolResults[{i}].toolCallId", f"duplicate id {item['toolCallId']!r}"
            )
        seen.add(item["toolCallId"])
        results.append(from_wire(item, ToolResult))
    return results


async def tool_results(request: web.Request) -> web.StreamResponse:
    """Answer a paused run's tool calls; ``?wait=true`` answers the next outcome."""
    engine, run_id, org = _engine(request), request.match_info["runId"], org_of(request)
    wait = bool_query(request, "wait", False)  # checked before anything is accepted
    results = _tool_results(await read_body(request))
    accepted, settled = await engine.tool_results(org, run_id, results)
    if wait:
        return await _outcome_answer(request, (org, run_id), engine.outcome((org, run_id), settled))
    return json_response({"accepted": accepted})


# -- traces ----------------------------------------------------------------------------


async def run_trace(request: web.Request) -> web.Response:
    """The run's trace: status, steps with timing and tokens, total usage and duration."""
    trace = await _engine(request).trace(org_of(request), request.match_info["runId"])
    return json_response(trace)


async def step_trace(request: web.Request) -> web.Response:
    """One step's trace (input/output snapshots when the run was traced)."""
    info = request.match_info
    trace = await _engine(request).step_trace(org_of(request), info["runId"], info["stepId"])
    return json_response(trace)


# -- credits ---------------------------------------------------------------------------


async def get_credits(request: web.Request) -> web.Response:
    """An organization's remaining credits (``null``: unlimited)."""
    org_id = await org_in_path(request)
    credits = await request.app[STORE_KEY].run(lambda c: tables.get_credits(c, org_id))
    return json_response({"organizationId": org_id, "credits": credits})


@idempotent
async def put_credits(request: web.Request) -> web.Response:
    """Set an organization's credits (admin); ``{"credits": null}`` removes the limit."""
    org_id = await org_in_path(request, admin_for="setting credits")
    body = await read_body(request)
    if "credits" not in body:  # {"credit": 5} or {} took the limit away, unlimited
        raise APIProblem.validation(
            "credits", "is required: an integer >= 0, or null to remove the limit"
        )
    credits = body["credits"]
    if isinstance(credits, float) and credits.is_integer() and abs(credits) <= MAX_INT:
        credits = int(credits)  # 5.0 is the integer 5 in JSON
    if credits is not None and (not isinstance(credits, int) or isinstance(credits, bool)):
        raise APIProblem.validation("credits", f"expected an integer or null, got {shown(credits)}")
    if credits is not None and credits < 0:
        raise APIProblem.validation("credits", f"must be >= 0, got {credits}")

    def write(conn: Connection) -> None:
        tables.set_credits(conn, org_id, credits)

    await request.app[STORE_KEY].run(write)
    return json_response({"organizationId": org_id, "credits": credits})


# -- wiring ----------------------------------------------------------------------------


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = app[EXECUTION_ENGINE_KEY]
    engine.executor.tasks = app.get(TASKS_KEY)
    await engine.open()
    yield
    await engine.close()


async def _shutdown(app: web.Application) -> None:
    await app[EXECUTION_ENGINE_KEY].shutdown()


def setup(app: web.Application) -> None:
    """Create the engine, register it as the run starter and add the execution routes."""
    engine = Engine(app[STORE_KEY], app[SETTINGS_KEY], app[REPLICA_KEY])
    app[EXECUTION_ENGINE_KEY] = engine
    app[ENGINE_KEY] = engine
    app.cleanup_ctx.append(_engine_ctx)
    app.on_shutdown.append(_shutdown)
    add = app.router
    add.add_post("/v1/flows/{flowId}/execute", execute)
    add.add_post("/v1/flows/{flowId}/events", flow_events)
    add.add_post("/v1/flows/{flowId}/jobs", jobs)
    add.add_post("/v1/runs/{runId}/tool-results", tool_results)
    add.add_get("/v1/runs/{runId}/events", run_events)
    add.add_get("/v1/runs/{runId}/trace", run_trace)
    add.add_get("/v1/runs/{runId}/steps/{stepId}/trace", step_trace)
    add.add_get("/v1/organizations/{organizationId}/credits", get_credits)
    add.add_put("/v1/organizations/{organizationId}/credits", put_credits)
