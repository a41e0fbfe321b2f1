"""The server's own life: its status, a draining stop, and the idle exit.

``GET /v1/server`` tells an admin which process serves the home and what work it holds;
``POST /v1/server/shutdown`` stops it, refusing while work runs unless ``force`` (then it
cancels that work first, so tasks end cleanly rather than by a kill). A background server
also watches itself: after ``idle_timeout`` seconds with no client connection and no run,
task or reservation in flight, it stops by itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
from aiohttp import web

from ... import __version__
from ...models.common import Condition
from ...models.runs import Run
from ...models.server import ServerInfo, ServerStatus
from ...models.tasks import ReservationStatus
from ..db import Connection, DatabaseFileGone, DatabaseUnavailable, is_disk_full
from ..errors import APIProblem
from ..helpers import Handler, json_response, principal_of, read_body
from ..home import HomeError, mark_stopped, publish, read_run_file
from ..middleware import SHUTDOWN_PATH
from ..state import IDENTITY_KEY, REPLICA_KEY, SETTINGS_KEY, STORE_KEY
from ..tasks import TASKS_KEY
from .executions import EXECUTION_ENGINE_KEY
from .tasks import SSHD_KEY

__all__ = ["LIFECYCLE_KEY", "Lifecycle", "setup"]

log = logging.getLogger("vi_flow.server")

_OPEN_RESERVATIONS = frozenset({ReservationStatus.SCHEDULED, ReservationStatus.ACTIVE})
#: How often an idle background server looks at itself.
_IDLE_CHECK = 5.0
#: How often a server looks at its run file (someone may have removed it).
_RUN_FILE_CHECK = 2.0


@attrs.define
class Lifecycle:
    """How the process that serves the app lets routes stop it and count connections.

    Attributes:
        request_stop: Stops the serving process; ``None`` when it cannot be stopped
            through the API (an in-process server lives as long as its process).
        connections: How many client connections are open now.
        stopping: A stop was accepted (:func:`refuse_while_stopping`).
        published: What the server wrote to its home's run file; None before it did
            (and for a server that publishes none).
    """

    request_stop: Callable[[], None] | None = None
    connections: Callable[[], int] = lambda: 0
    stopping: bool = False  # a stop was accepted: requests that change things get 503
    published: ServerInfo | None = None


LIFECYCLE_KEY = web.AppKey("vi_flow.lifecycle", Lifecycle)


def _require_admin(request: web.Request) -> None:
    if not principal_of(request).admin:
        raise APIProblem(403, "PERMISSION_DENIED", "this API key is not an admin key")


async def _held_work(app: web.Application) -> tuple[list[Run], list[str]]:
    """The runs and task ids in flight that this server holds, across every organization:
    with replicas, those it drives (the others' work is theirs to stop)."""
    store, replica = app[STORE_KEY], app[REPLICA_KEY]
    provider = app[TASKS_KEY].provider.name
    runs = await store.list_active_runs()
    if not replica.shared:
        return runs, await store.run(lambda conn: _task_ids(conn, provider))
    me = replica.id

    def read(conn: Connection) -> tuple[set[tuple[str, str]], list[str]]:
        owned = conn.execute(
            "SELECT org_id, run_id FROM engine_runs WHERE closed = 0 AND owner = ?", (me,)
        ).fetchall()
        return {(r[0], r[1]) for r in owned}, _task_ids(conn, provider, me)

    owned, task_ids = await store.run(read)
    return [r for r in runs if (r.organization_id, r.run_id) in owned], task_ids


def _task_ids(conn: Connection, provider: str, replica: str | None = None) -> list[str]:
    """The tasks in flight that ``provider`` started: every one, or those of ``replica``.

    Another provider's are not this server's to wait for or stop: a local background
    server on the home of a dead ``--provider slurm`` server refused ``server stop``
    (its Slurm tasks "not finished"; with force, "started by the slurm provider") and
    never idled out, so the Slurm server could not come back (QA AW)."""
    sql = "SELECT task_id FROM tasks WHERE status IN ('pending','running') AND provider = ?"
    rows = (
        conn.execute(sql, (provider,))
        if replica is None
        else conn.execute(f"{sql} AND replica = ?", (provider, replica))
    )
    return [str(r[0]) for r in rows.fetchall()]


async def server_status(app: web.Application) -> ServerStatus:
    """The server and the work it holds, across every organization."""
    runs, tasks = await _held_work(app)
    reservations = await app[TASKS_KEY].provider.list_reservations()
    open_ones = sum(r.status in _OPEN_RESERVATIONS for r in reservations)
    return _status(app, len(runs), len(tasks), open_ones, await app[REPLICA_KEY].names())


def _status(
    app: web.Application, runs: int, tasks: int, reservations: int, replicas: list[str]
) -> ServerStatus:
    settings, identity = app[SETTINGS_KEY], app[IDENTITY_KEY]
    return ServerStatus(
        pid=identity.pid,
        version=__version__,
        mode=settings.mode,
        started_at=identity.started_at,
        uptime_s=round(time.time() - identity.started_at / 1000, 3),
        home=str(settings.home),
        idle_timeout_s=settings.idle_timeout,
        active_runs=runs,
        active_tasks=tasks,
        active_reservations=reservations,
        connections=app[LIFECYCLE_KEY].connections() + _ssh_connections(app),
        replica=app[REPLICA_KEY].name,
        replicas=replicas,
    )


def _ssh_connections(app: web.Application) -> int:
    sshd = app.get(SSHD_KEY)
    return 0 if sshd is None else sshd.connection_count


async def get_server(request: web.Request) -> web.Response:
    """Who serves this home and what work it holds (admin only)."""
    _require_admin(request)
    return json_response(await server_status(request.app))


async def shutdown(request: web.Request) -> web.Response:
    """Stop the server; 409 while work runs unless ``{"force": true}`` (admin only)."""
    _require_admin(request)
    force = (await read_body(request)).get("force", False)
    if not isinstance(force, bool):
        raise APIProblem.validation("force", f"must be true or false, got {force!r}")
    stop = request.app[LIFECYCLE_KEY].request_stop
    if stop is None:
        raise APIProblem(
            409,
            "SERVER_IN_PROCESS",
            f"this server runs inside process {os.getpid()} and stops when that process exits",
        )
    try:
        status = await server_status(request.app)
    except DatabaseFileGone:  # it can read and save nothing: stopping is all it can do
        status = None
    except DatabaseUnavailable:  # whether work is in flight is not known
        if not force:
            raise
        status = None  # the next start (or another replica) recovers what was in flight
    if status is not None and (status.active_tasks or status.active_runs) and not force:
        raise APIProblem(
            409,
            "SERVER_BUSY",
            f"{status.active_tasks} task(s) and {status.active_runs} run(s) are not finished; "
            "stop with force to cancel them",
        )
    request.app[LIFECYCLE_KEY].stopping = True  # from now on, no new work is taken
    if force and status is not None:
        try:
            await _cancel_all_work(request.app)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            # the cancels cannot be recorded: stop all the same, as a crash would; the
            # next start recovers what was in flight
            log.warning("shutdown: the disk is full; work in flight is left for the next start")
    log.info("shutdown requested by %s (force=%s)", principal_of(request).token_name, force)
    # the clients that used this server do not start another for the home (see
    # STOPPED_FILE): a follower left running must not undo the stop
    await asyncio.to_thread(mark_stopped, request.app[SETTINGS_KEY].home, os.getpid())
    asyncio.get_running_loop().call_soon(stop)
    if status is None:  # the database cannot be read: no work it could act on
        return json_response(_status(request.app, 0, 0, 0, []), 202)
    return json_response(await server_status(request.app), 202)


_STOPPED = ("cancelled: the server was stopped", "ServerStopped")


async def _cancel_all_work(app: web.Application) -> None:
    """Cancel every run and task still in flight that this server holds, as their own
    cancel routes would (runs end ``Cancelled``, reason ``ServerStopped``). Work that
    requests accepted just before the stop made is cancelled too: the server looks again
    until nothing is left (a few rounds at most)."""
    store, engine, service = app[STORE_KEY], app[EXECUTION_ENGINE_KEY], app[TASKS_KEY]
    at_once = asyncio.Semaphore(_CANCELS_AT_ONCE)  # one at a time, runs went on finishing

    async def cancel(run: Run) -> None:
        async with at_once:
            await engine.cancel(run, _STOPPED)
            await store.set_run_condition(
                (run.organization_id, run.run_id), Condition.CANCELLED, *_STOPPED
            )

    for _ in range(_CANCEL_ROUNDS):
        runs, task_ids = await _held_work(app)
        if not runs and not task_ids:
            return
        await asyncio.gather(*(cancel(run) for run in runs))
        await asyncio.gather(*(service.cancel(task_id) for task_id in task_ids))


_CANCEL_ROUNDS = 3
_CANCELS_AT_ONCE = 64
_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@web.middleware
async def refuse_while_stopping(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Once a stop was accepted, a request that would change something (start a run, a
    task...) is ``503 SERVER_STOPPING``: nothing new starts that the stop would cut short.
    Reads go on (a stream sees its run end)."""
    stopping = request.app[LIFECYCLE_KEY].stopping
    # a second stop request is answered as the first
    if stopping and request.method in _CHANGES and request.path != SHUTDOWN_PATH:
        raise APIProblem(
            503, "SERVER_STOPPING", "the server is stopping; this request changed nothing"
        )
    return await handler(request)


async def _idle_watch(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    watcher = None
    if settings.mode == "background" and settings.idle_timeout > 0:
        watcher = asyncio.create_task(_exit_when_idle(app, settings.idle_timeout))
    keeper = asyncio.create_task(_keep_published(app[LIFECYCLE_KEY]))
    yield
    for task in (watcher, keeper):  # cancelled before the home lets its run file go
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _keep_published(lifecycle: Lifecycle) -> None:
    """Write the run file again when it went missing or was overwritten while this
    server holds the home: clients would find no server, and start none either."""
    while True:
        await asyncio.sleep(_RUN_FILE_CHECK)
        info = lifecycle.published
        if info is None or lifecycle.stopping:
            continue
        current = await asyncio.to_thread(read_run_file, Path(info.home))
        if current is not None and current.secret == info.secret:
            continue
        log.warning("the run file in %s was missing or not this server's: written again", info.home)
        try:
            await asyncio.to_thread(publish, info)
        except HomeError as exc:
            log.warning("%s", exc)


async def _exit_when_idle(app: web.Application, timeout: float) -> None:
    idle_since = time.monotonic()
    while True:
        await asyncio.sleep(min(_IDLE_CHECK, timeout / 4))
        try:
            status = await server_status(app)
        except DatabaseUnavailable:  # busy or not, it cannot tell now
            idle_since = time.monotonic()
            continue
        except DatabaseFileGone:  # it serves nothing more; the next client starts another
            stop = app[LIFECYCLE_KEY].request_stop
            if stop is not None:
                log.error("the database file is gone: stopping")
                stop()
                return
            raise
        busy = (
            status.connections
            or status.active_runs
            or status.active_tasks
            or status.active_reservations
        )
        if busy:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= timeout:
            stop = app[LIFECYCLE_KEY].request_stop
            if stop is not None:
                log.info("no client and no work for %.0f s: stopping (idle timeout)", timeout)
                stop()
                return


def setup(app: web.Application) -> None:
    """Add ``/v1/server`` and ``/v1/server/shutdown``, and the idle watch."""
    app[LIFECYCLE_KEY] = Lifecycle()
    app.middlewares.append(refuse_while_stopping)
    app.router.add_get("/v1/server", get_server)
    app.router.add_post(SHUTDOWN_PATH, shutdown)
    app.cleanup_ctx.append(_idle_watch)
