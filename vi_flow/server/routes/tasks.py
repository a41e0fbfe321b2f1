"""Routes for GPU tasks and what they use: tasks, logs, SSH endpoints, volumes, instances,
reservations, SSH keys and run artifacts (see "Tasks wire" in the contracts).

:func:`setup` builds the :class:`~vi_flow.server.tasks.TaskService` over the
provider named in the settings, registers it under
:data:`~vi_flow.server.tasks.TASKS_KEY`, and starts the provider and the SSH
server in a cleanup context (stopped in reverse order when the app closes). Handlers
call the service for the task life cycle and its parts (``volumes``, ``ssh``,
``outputs``, ``records``) for the rest.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ...models._base import dumps
from ...models.limits import (
    MAX_DURATION_HOURS,
    MAX_INT,
    MAX_LOG_TAIL,
    MAX_TIME_MS,
    MAX_VOLUME_GB,
    check_int,
    check_name,
    check_number,
    check_relative_path,
    check_time_ms,
    shown,
)
from ...models.tasks import (
    AvailableInstance,
    MountRequest,
    Reservation,
    ReservationRequest,
    ReservationStatus,
    SSHKeyRequest,
    TaskConfig,
    TaskOutputFile,
    TaskStatus,
    VolumeRequest,
    env_problem,
    env_text,
)
from ..db import Connection
from ..endpoints import EndpointError, advertised_ssh, cannot_listen, ssh_listen_host
from ..errors import APIProblem
from ..helpers import (
    Handler,
    begin_body,
    idempotent,
    int_query,
    json_response,
    org_of,
    page_response,
    paginate,
    principal_of,
    read_body,
    read_json,
    structure,
)
from ..providers import create_provider
from ..providers.base import ProviderError, problem_for
from ..state import REPLICA_KEY, SETTINGS_KEY, STORE_KEY, ServerSettings
from ..tasks import TASKS_KEY, TaskService, files
from ..tasks.records import SSHAddress
from ..tasks.ssh import KEY_DELETED
from ..tasks.sshlisten import TaskSSHServer
from ..tasks.volumes import MAX_VOLUME_NAME
from ..validation import limited
from . import task_logs as task_logs_sse

__all__ = ["SSHD_KEY", "setup"]

SSHD_KEY = web.AppKey("vi_flow.sshd", TaskSSHServer)


def _on_its_replica(handler: Handler) -> Handler:
    """Answer 409 ``TASK_ON_OTHER_REPLICA`` for a task whose files (logs, outputs, its
    shell) are on another replica's host: the local provider's, with replicas."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["taskId"]
        owner = await _service(request).elsewhere(task_id, org_of(request))
        if owner is not None:
            name, live = owner
            where = (
                "send this request to that replica"
                if live
                else "that replica is not running now: start it again with the same name"
                " (on its host and home) to reach them"
            )
            raise APIProblem(
                409,
                "TASK_ON_OTHER_REPLICA",
                f"task {task_id!r} is on server replica {name!r} (the local provider): its"
                f" logs, files and shell are on that replica's host; {where}",
            )
        return await handler(request)

    return wrapper


def _service(request: web.Request) -> TaskService:
    return request.app[TASKS_KEY]


def _float_query(
    request: web.Request, name: str, low: float = -MAX_INT, high: float = MAX_INT
) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)  # "" is not a number either
    except ValueError:
        raise APIProblem.validation(name, f"expected a number, got {raw[:40]!r}") from None
    return limited(check_number, name, value, low, high)  # nan, inf and 1e400 too


def _check_config(config: TaskConfig) -> None:
    # A working directory is made inside the task's workspace: never an absolute one.
    if config.working_dir is not None:
        limited(check_relative_path, "workingDir", config.working_dir)
    argv = [config.command] if isinstance(config.command, str) else config.command or []
    if any("\x00" in part for part in argv):  # no process can take it: the task would hang
        raise APIProblem.validation("command", "must not hold a NUL byte")
    for i, volume in enumerate(config.volumes):
        limited(check_int, f"volumes[{i}].sizeGb", volume.size_gb, 1, MAX_VOLUME_GB)
    for field, amount in (
        ("cpus", config.cpus),
        ("memoryGb", config.memory_gb),
        ("minGpuMemoryGb", config.min_gpu_memory_gb),
    ):
        if amount is not None:  # none: the provider's default
            limited(check_int, field, amount, 1, MAX_INT)
    if config.max_price_per_hour is not None:
        limited(check_number, "maxPricePerHour", config.max_price_per_hour, 0, MAX_INT)
    if config.name is not None:
        limited(check_name, "name", config.name)


def _check_file_path(path: str) -> None:
    try:
        check_relative_path("path", path)
    except ValueError as exc:
        raise APIProblem(400, "INVALID_REQUEST", str(exc)) from None


# -- tasks -------------------------------------------------------------------------------


@idempotent
async def create_task(request: web.Request) -> web.StreamResponse:
    """Submit a task (body: TaskConfig)."""
    body = await read_body(request)
    env = body.get("env") if isinstance(body, dict) else None
    if env is not None:
        if problem := env_problem(env):  # in the SDK's words, as flows'
            raise APIProblem.validation(*problem)
        body["env"] = {name: env_text(value) for name, value in env.items()}
    config = structure(body, TaskConfig)
    _check_config(config)
    task = await _service(request).submit(org_of(request), config, answer_status=201)
    return json_response(task, status=201)


def _statuses(request: web.Request, kind: type[TaskStatus | ReservationStatus]) -> list[str]:
    """The ``status`` filter of a list (repeated or comma-separated), each one of ``kind``."""
    wanted = [s.strip() for raw in request.query.getall("status", []) for s in raw.split(",")]
    wanted = [s for s in wanted if s]
    known = {s.value for s in kind}
    for status in wanted:
        if status not in known:
            raise APIProblem.validation(
                "status", f"unknown status {status!r}; known: {', '.join(sorted(known))}"
            )
    return wanted


async def list_tasks(request: web.Request) -> web.StreamResponse:
    """List tasks, newest first (``order=oldest``; filters: status, limit)."""
    page = paginate(request)
    size = int_query(request, "limit", page.size, 1, 1000)
    items, cursor = await _service(request).records.list_tasks(
        org_of(request), _statuses(request, TaskStatus), size, page.after, newest=page.newest
    )
    return page_response(items, cursor, page)


async def get_task(request: web.Request) -> web.StreamResponse:
    """Get a task."""
    return json_response(await _service(request).get(request.match_info["taskId"], org_of(request)))


async def cancel_task(request: web.Request) -> web.StreamResponse:
    """Cancel a task (SIGTERM, then SIGKILL after the grace period)."""
    service = _service(request)
    task_id = request.match_info["taskId"]
    body = await read_body(request)  # checked first: a bad body is refused for any task
    grace = body.get("gracePeriod", 5.0)
    if not isinstance(grace, int | float) or isinstance(grace, bool) or not 0 <= grace <= 300:
        raise APIProblem.validation("gracePeriod", f"must be 0..300 seconds, got {shown(grace)}")
    if not isinstance(body.get("force", False), bool):
        raise APIProblem.validation("force", f"must be true or false, got {shown(body['force'])}")
    await service.get(task_id, org_of(request))
    if body.get("force"):
        grace = 0.0
    return json_response(await service.cancel(task_id, float(grace)))


@_on_its_replica
async def task_logs(request: web.Request) -> web.StreamResponse:
    """Snapshot of a task's logs (tail, stream=stdout|stderr|both, since); with ``follow`` (or
    ``Accept: text/event-stream``) the SSE stream of :mod:`.task_logs`."""
    tail = int_query(request, "tail", 100, 0, MAX_LOG_TAIL)  # checked for a stream too
    if task_logs_sse.wants_stream(request):
        return await task_logs_sse.follow_logs(request)
    task_logs_sse.resume_point(request)  # a bad one is refused here too, as documented
    stream = request.query.get("stream", "stdout")
    stream = "both" if stream == "all" else stream  # as the stream's `all`
    if stream not in ("stdout", "stderr", "both"):
        raise APIProblem.validation(
            "stream", f"must be stdout, stderr, both or all, got {shown(stream)}"
        )
    logs = await _service(request).outputs.logs(
        request.match_info["taskId"],
        org_of(request),
        tail,
        stream,
        task_logs_sse.since_query(request),
    )
    return json_response(logs)


@_on_its_replica
async def task_log_offsets(request: web.Request) -> web.StreamResponse:
    """Byte offsets in stdout and stderr where the lines written since ``since`` start."""
    service, task_id = _service(request), request.match_info["taskId"]
    since = task_logs_sse.since_query(request)
    if since is None:
        raise APIProblem.validation("since", "required: milliseconds since the epoch")
    await service.get(task_id, org_of(request))  # 404 for another organization's task
    return json_response(await service.log_times.offsets_since(task_id, since))


@_on_its_replica
async def task_ssh(request: web.Request) -> web.StreamResponse:
    """The task's SSH endpoint (host key to pin, log paths, exec prefix)."""
    endpoint = await _service(request).ssh.ssh_endpoint(
        request.match_info["taskId"], org_of(request)
    )
    return json_response(endpoint)


@_on_its_replica
async def mount_volume(request: web.Request) -> web.StreamResponse:
    """Mount a volume into a pending or running task."""
    body = await read_json(request, MountRequest)
    task = await _service(request).volumes.mount(
        org_of(request), request.match_info["taskId"], body.volume_id, body.mount_path
    )
    return json_response(task)


# -- outputs / artifacts -----------------------------------------------------------------

_FILE_CHUNK = 256 * 1024  # bytes of an output file read (in a worker thread) per write


async def _outputs_of_run(service: TaskService, org_id: str, run_id: str) -> dict[str, int]:
    """path -> size; later tasks win on a clash."""
    found: dict[str, int] = {}
    for task_id in await service.records.run_task_ids(org_id, run_id):
        for item in await service.outputs.output_files(task_id):
            found[item.path] = item.size
    return found


async def _file_response(
    request: web.Request, service: TaskService, task_id: str, path: str
) -> web.StreamResponse:
    """Send the output file ``path`` of the task, as it was when opened (404 when it is
    not a regular file reached without links: a task may swap its files at any time)."""
    root = service.outputs.output_dir(task_id)
    fd = await asyncio.to_thread(_open_output, root, path)
    if fd is None:
        raise APIProblem.not_found("NOT_FOUND", "artifact", path)
    return await _send_file(request, fd)


_DOWNLOAD_HEADERS = {
    "Content-Type": "application/octet-stream",
    "Content-Disposition": "attachment",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
}


async def _send_file(request: web.Request, fd: int) -> web.StreamResponse:
    """Send the open file ``fd`` (closed here) as it is now."""
    with os.fdopen(fd, "rb", buffering=0) as handle:
        size = os.fstat(fd).st_size
        # a task's file, on the console's origin: downloaded, never shown (nor sniffed)
        # as a page that would run there
        response = web.StreamResponse(headers=_DOWNLOAD_HEADERS)
        response.content_length = size
        if not await begin_body(request, response):
            return response
        sent = 0
        while sent < size:
            chunk = await asyncio.to_thread(handle.read, min(_FILE_CHUNK, size - sent))
            if not chunk:  # cut short meanwhile: the answer cannot be whole, end it
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
    return response


def _open_output(root: Path, path: str) -> int | None:
    try:
        return files.open_output(root, path)
    except files.UnsafePath as exc:
        raise APIProblem(400, "INVALID_REQUEST", f"path: {exc}") from exc
    except files.Unreadable:  # QA: was a 404 "not found" for a file the listing shows
        raise APIProblem(
            403,
            "PERMISSION_DENIED",
            f"output file {path!r} is there, but this server (not root) may not read it:"
            " its task took the read permission away (chmod)",
        ) from None


@_on_its_replica
async def list_task_outputs(request: web.Request) -> web.StreamResponse:
    """Files the task wrote to $VI_FLOW_OUTPUT_DIR."""
    service = _service(request)
    task_id = request.match_info["taskId"]
    await service.get(task_id, org_of(request))
    return await _listing(await service.outputs.output_files(task_id))


@_on_its_replica
async def get_task_output(request: web.Request) -> web.StreamResponse:
    """Download one output file of a task."""
    service = _service(request)
    task_id, path = request.match_info["taskId"], request.match_info["path"]
    _check_file_path(path)
    await service.get(task_id, org_of(request))
    # opened beneath the output directory, one component at a time: no listing of
    # the task's outputs first (300,000 files took seconds a download)
    return await _file_response(request, service, task_id, path)


async def list_run_artifacts(request: web.Request) -> web.StreamResponse:
    """Files the run's tasks wrote to their output directories."""
    run_id = request.match_info["runId"]
    await request.app[STORE_KEY].get_run(run_id, org_of(request))
    found = await _outputs_of_run(_service(request), org_of(request), run_id)
    return await _listing([TaskOutputFile(path, size) for path, size in sorted(found.items())])


async def _listing(items: list[TaskOutputFile]) -> web.Response:
    """``{"items": [...]}``, encoded in a worker thread: a task may write 200,000 files,
    whose answer held the event loop, every organization's requests, for half a second."""
    body = await asyncio.to_thread(dumps, {"items": items})
    return web.Response(body=body, content_type="application/json")


async def get_run_artifact(request: web.Request) -> web.StreamResponse:
    """Download one artifact of a run."""
    run_id = request.match_info["runId"]
    path = request.match_info["path"]
    _check_file_path(path)
    await request.app[STORE_KEY].get_run(run_id, org_of(request))
    service = _service(request)
    # the run's newest task holding the path wins, as in the listing
    for task_id in reversed(await service.records.run_task_ids(org_of(request), run_id)):
        fd = await asyncio.to_thread(_open_output, service.outputs.output_dir(task_id), path)
        if fd is not None:
            return await _send_file(request, fd)
    raise APIProblem.not_found("NOT_FOUND", "artifact", path)


# -- volumes -----------------------------------------------------------------------------


@idempotent
async def create_volume(request: web.Request) -> web.StreamResponse:
    """Create a volume."""
    body = await read_json(request, VolumeRequest)
    limited(check_int, "sizeGb", body.size_gb, 1, MAX_VOLUME_GB)
    if body.name is not None:
        limited(check_name, "name", body.name, MAX_VOLUME_NAME)
    volume = await _service(request).volumes.create_volume(
        org_of(request), body.size_gb, body.name, body.interface, body.region, answer_status=201
    )
    return json_response(volume, status=201)


async def list_volumes(request: web.Request) -> web.StreamResponse:
    """List volumes, newest first (``order=oldest``)."""
    page = paginate(request)
    size = int_query(request, "limit", page.size, 1, 1000)
    items, cursor = await _service(request).volumes.list_volumes(
        org_of(request), size, page.after, newest=page.newest
    )
    return page_response(items, cursor, page)


async def get_volume(request: web.Request) -> web.StreamResponse:
    """Get a volume by id or name."""
    volume = await _service(request).volumes.get_volume(
        org_of(request), request.match_info["volumeId"]
    )
    return json_response(volume)


@idempotent
async def delete_volume(request: web.Request) -> web.StreamResponse:
    """Delete a volume (409 while a task mounts it)."""
    volume_id = await _service(request).volumes.delete_volume(
        org_of(request), request.match_info["volumeId"], answer_status=200
    )
    return json_response({"volumeId": volume_id, "deleted": True})


# -- instances ---------------------------------------------------------------------------


def _matches(item: AvailableInstance, request: web.Request) -> bool:
    gpu_type = request.query.get("gpuType", "").strip().lower()
    max_price = _float_query(request, "maxPrice", 0)  # below 0 would match nothing,
    min_memory = _float_query(request, "minGpuMemoryGb", 0)  # or everything: a mistake
    gpu_count = _float_query(request, "gpuCount", 0)
    if gpu_type and item.gpu_type != gpu_type:
        return False
    if max_price is not None and item.price_per_hour > max_price:
        return False
    if min_memory is not None and item.gpu_memory_gb < min_memory:
        return False
    return gpu_count is None or item.gpu_count >= gpu_count


async def list_instances(request: web.Request) -> web.StreamResponse:
    """Instance types this provider can run (filters: gpuType, maxPrice, limit)."""
    limit = int_query(request, "limit", 100, 1, 1000)
    try:
        catalog = await _service(request).provider.instances()
    except ProviderError as exc:
        raise problem_for(exc) from exc
    items = [i for i in catalog if _matches(i, request)]
    items.sort(key=lambda i: (i.price_per_hour, i.gpu_count, i.instance_type))
    return json_response({"items": items[:limit]})


# -- reservations ------------------------------------------------------------------------


async def _owned(request: web.Request, reservation_id: str) -> Reservation:
    service = _service(request)
    if await service.reservation_org(reservation_id) != org_of(request):
        raise APIProblem.not_found("NOT_FOUND", "reservation", reservation_id)
    try:
        reservations = await service.provider.list_reservations()
    except ProviderError as exc:
        raise problem_for(exc) from exc
    for item in reservations:
        if item.reservation_id == reservation_id:
            return item
    if (elsewhere := await service.reservation_elsewhere(reservation_id)) is not None:
        raise elsewhere
    raise APIProblem.not_found("NOT_FOUND", "reservation", reservation_id)


def _check_reservation(body: ReservationRequest) -> None:
    # Checked before the provider holds anything: a time SQLite cannot store was saved
    # and then broke every later list.
    if body.start_time is not None:
        limited(check_time_ms, "startTime", body.start_time)
    limited(check_number, "durationHours", body.duration_hours, 0, MAX_DURATION_HOURS)
    if body.duration_hours * 3600 < 1:  # over before it is answered
        raise APIProblem.validation(
            "durationHours",
            f"must be at least one second (1/3600 hours), got {body.duration_hours!r}",
        )
    now = time.time() * 1000
    start = now if body.start_time is None else body.start_time  # 0, the epoch, is a start
    end = start + body.duration_hours * 3_600_000
    if body.start_time is not None and end <= now:  # it could hold nothing
        raise APIProblem.validation(
            "startTime", f"the reservation would have ended already (start {body.start_time})"
        )
    if end > MAX_TIME_MS:  # QA: saved, then every list of the CLI failed on year 10000
        raise APIProblem.validation(
            "durationHours",
            f"the reservation would end after the year 9999 (start {body.start_time},"
            f" {body.duration_hours:g} hours)",
        )
    if body.cpus is not None:
        limited(check_int, "cpus", body.cpus, 1, 1_000_000)
    if body.name is not None:
        limited(check_name, "name", body.name)


async def _mine(request: web.Request) -> list[Reservation]:
    """The caller's organization's reservations, with their status as of now."""
    service = _service(request)
    try:
        reservations = await service.provider.list_reservations()
    except ProviderError as exc:
        raise problem_for(exc) from exc
    org = org_of(request)
    return [r for r in reservations if await service.reservation_org(r.reservation_id) == org]


async def _check_quota(request: web.Request, body: ReservationRequest) -> None:
    service = _service(request)
    config = TaskConfig(
        command="true", gpu=body.gpu, instance_type=body.instance_type, cpus=body.cpus
    )  # placed as the provider will place the reservation
    try:
        placement = await service.provider.place(config)
    except ProviderError as exc:
        raise problem_for(exc) from exc
    service.quotas.check_reservation(await _mine(request), placement.cpus, placement.gpu_count)


@idempotent
async def create_reservation(request: web.Request) -> web.StreamResponse:
    """Reserve capacity for a time window."""
    body = await read_json(request, ReservationRequest)
    _check_reservation(body)
    service = _service(request)
    async with service.reservations_lock:  # the quota is checked and used as one step
        await _check_quota(request, body)
        try:
            reservation = await service.provider.create_reservation(body)
        except ProviderError as exc:
            raise problem_for(exc) from exc
        try:
            await service.claim_reservation(reservation, org_of(request), answer_status=201)
        except BaseException:
            await service.provider.cancel_reservation(reservation.reservation_id)  # held by none
            raise
    return json_response(reservation, status=201)


async def list_reservations(request: web.Request) -> web.StreamResponse:
    """List the organization's reservations, newest first (``order=oldest``; filter: status)."""
    newest = paginate(request).newest
    wanted = _statuses(request, ReservationStatus)
    mine = [r for r in await _mine(request) if not wanted or r.status.value in wanted]
    mine.sort(key=lambda r: (r.created_at, r.reservation_id), reverse=newest)
    return json_response({"items": mine})


async def get_reservation(request: web.Request) -> web.StreamResponse:
    """Get a reservation."""
    return json_response(await _owned(request, request.match_info["reservationId"]))


@idempotent
async def cancel_reservation(request: web.Request) -> web.StreamResponse:
    """Cancel a reservation."""
    reservation = await _owned(request, request.match_info["reservationId"])
    try:
        cancelled = await _service(request).provider.cancel_reservation(reservation.reservation_id)
    except ProviderError as exc:
        raise problem_for(exc) from exc
    return json_response(cancelled)


def _time_query(request: web.Request, name: str) -> float | None:
    value = _float_query(request, name)
    return None if value is None else limited(check_time_ms, name, value)


async def reservation_availability(request: web.Request) -> web.StreamResponse:
    """Windows in which an instance type could be reserved."""
    now = int(time.time() * 1000)
    given_start = _time_query(request, "earliestStartTime")
    start = now if given_start is None else int(given_start)
    given_end = _time_query(request, "latestEndTime")  # 0 is a time, not "none given"
    end = start + 7 * 24 * 3600 * 1000 if given_end is None else int(given_end)
    hours = _float_query(request, "durationHours", 0, MAX_DURATION_HOURS) or 1.0
    if end <= start:
        raise APIProblem.validation("latestEndTime", "must be after earliestStartTime")
    instance_type = request.query.get("instanceType") or None
    gpu = request.query.get("gpu")
    provider = _service(request).provider
    try:
        if gpu and not instance_type:
            instance_type = (
                await provider.place(TaskConfig(command="true", gpu=gpu))
            ).instance_type
        slots = await provider.availability(instance_type, start, end, int(hours * 3600 * 1000))
    except ProviderError as exc:
        raise problem_for(exc) from exc
    return json_response({"items": slots})


# -- ssh keys ----------------------------------------------------------------------------


async def create_ssh_key(request: web.Request) -> web.StreamResponse:
    """Register an SSH public key for the organization."""
    body = await read_json(request, SSHKeyRequest)
    key, created = await _service(request).ssh.add_ssh_key(
        org_of(request), body.name, body.public_key, principal_of(request).token_name
    )
    return json_response(key, status=201 if created else 200)


async def list_ssh_keys(request: web.Request) -> web.StreamResponse:
    """List the organization's SSH keys, whole (the paging parameters are checked)."""
    paginate(request)
    return json_response({"items": await _service(request).ssh.list_ssh_keys(org_of(request))})


async def get_ssh_key(request: web.Request) -> web.StreamResponse:
    """Get an SSH key."""
    key = await _service(request).ssh.get_ssh_key(org_of(request), request.match_info["keyId"])
    return json_response(key)


def forget_keys_of_revoked(app: web.Application) -> Callable[[Connection, str, str], list[str]]:
    """What revoking the API keys of a name does to SSH, in the revoking transaction:
    the SSH keys they registered are deleted (:meth:`SSHAccess.delete_keys_added_by`);
    the caller then ends the logins made with them (:func:`drop_logins_of`)."""

    def forget(conn: Connection, org_id: str, token_name: str) -> list[str]:
        if TASKS_KEY not in app:
            return []
        return app[TASKS_KEY].ssh.delete_keys_added_by(conn, org_id, token_name)

    return forget


def drop_logins_of(app: web.Application, org_id: str, fingerprints: list[str]) -> None:
    """Close this server's SSH connections that logged in with those keys (deleted)."""
    if SSHD_KEY in app:
        for fingerprint in fingerprints:
            app[SSHD_KEY].drop_logins(org_id, fingerprint)


@idempotent
async def delete_ssh_key(request: web.Request) -> web.StreamResponse:
    """Delete an SSH key."""
    key_id, org = request.match_info["keyId"], org_of(request)
    key = await _service(request).ssh.delete_ssh_key(org, key_id, answer_status=200)
    # connections that logged in with it end now, here and (told by the delete's
    # message) on the other replicas: their new channels would be refused, but an SFTP
    # session opened on one is not looked at again
    drop_logins_of(request.app, org, [key.fingerprint])
    return json_response({"keyId": key_id, "deleted": True})


# -- wiring ------------------------------------------------------------------------------

_RESERVATION = "/v1/reservations/{reservationId:(?!availability$)[^/]+}"
"""A reservation's path; ``availability`` is a route of its own (``Allow`` says only GET)."""


async def _compute_ctx(app: web.Application) -> AsyncIterator[None]:
    service, settings = app[TASKS_KEY], app[SETTINGS_KEY]
    await service.start()
    try:
        sshd = await _start_sshd(settings, service)
    except BaseException:
        await service.close()
        raise
    app[SSHD_KEY] = sshd
    # a key deleted on another replica ends the connections that logged in with it here
    service.replica.handle(KEY_DELETED, lambda m: sshd.drop_logins(str(m[2]), str(m[3])))
    host, port = advertised_ssh(settings, sshd.host, sshd.port)
    service.records.ssh_address = SSHAddress(host, port, sshd.ready)
    try:
        yield
    finally:
        await sshd.close()
        await service.close()


async def _start_sshd(settings: ServerSettings, service: TaskService) -> TaskSSHServer:
    host = ssh_listen_host(settings)
    sshd = TaskSSHServer(settings.home, service.ssh, host=host, port=settings.ssh_port)
    try:
        await sshd.start()
    except OSError as exc:  # the port is taken, the address is not this machine's
        raise EndpointError("ssh_port", cannot_listen(f"{host}:{settings.ssh_port}", exc)) from None
    return sshd


def _routes() -> list[tuple[str, str, Any]]:
    return [
        ("POST", "/v1/tasks", create_task),
        ("GET", "/v1/tasks", list_tasks),
        ("GET", "/v1/tasks/{taskId}", get_task),
        ("POST", "/v1/tasks/{taskId}/cancel", cancel_task),
        ("GET", "/v1/tasks/{taskId}/logs", task_logs),
        ("GET", "/v1/tasks/{taskId}/logs/offsets", task_log_offsets),
        ("GET", "/v1/tasks/{taskId}/ssh", task_ssh),
        ("POST", "/v1/tasks/{taskId}/volumes", mount_volume),
        ("GET", "/v1/tasks/{taskId}/outputs", list_task_outputs),
        ("GET", r"/v1/tasks/{taskId}/outputs/{path:[\s\S]+}", get_task_output),
        ("GET", "/v1/runs/{runId}/artifacts", list_run_artifacts),
        ("GET", r"/v1/runs/{runId}/artifacts/{path:[\s\S]+}", get_run_artifact),
        ("POST", "/v1/volumes", create_volume),
        ("GET", "/v1/volumes", list_volumes),
        ("GET", "/v1/volumes/{volumeId}", get_volume),
        ("DELETE", "/v1/volumes/{volumeId}", delete_volume),
        ("GET", "/v1/instances", list_instances),
        ("POST", "/v1/reservations", create_reservation),
        ("GET", "/v1/reservations", list_reservations),
        ("GET", "/v1/reservations/availability", reservation_availability),
        ("GET", _RESERVATION, get_reservation),
        ("DELETE", _RESERVATION, cancel_reservation),
        ("POST", "/v1/ssh-keys", create_ssh_key),
        ("GET", "/v1/ssh-keys", list_ssh_keys),
        ("GET", "/v1/ssh-keys/{keyId}", get_ssh_key),
        ("DELETE", "/v1/ssh-keys/{keyId}", delete_ssh_key),
    ]


def setup(app: web.Application) -> None:
    """Register the task service and the task, volume, instance, reservation, SSH key and
    artifact routes; start the provider and SSH server with the app."""
    settings = app[SETTINGS_KEY]
    service = TaskService(
        app[STORE_KEY], create_provider(settings), settings.quotas, app[REPLICA_KEY]
    )
    app[TASKS_KEY] = service
    for method, path, handler in _routes():
        if method == "GET":  # and HEAD, as every GET route answers it
            app.router.add_get(path, handler)
        else:
            app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_compute_ctx)
