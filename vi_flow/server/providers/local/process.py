"""Running one local task as a process group, and stopping it.

A :class:`Job` is the local provider's record of one submitted task (queued, launching,
running, done). This module prepares a task's workspace, volume links and log files
before it starts, builds its environment, stops its process group (SIGTERM, then
SIGKILL after a grace period, for ``cancel`` and ``max_run_time`` alike), turns an exit
status into the final :class:`~vi_flow.server.providers.base.TaskUpdate`, and ends the
process groups of tasks left running by a server that went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import attrs

from ....models.tasks import TaskStatus
from ...beneath import append_beneath, link_beneath, makedirs_beneath, open_beneath
from ...clock import now_ms
from ...home import disk_full
from .._exits import describe, end_reason, from_returncode
from ..base import InvalidRequest, LaunchSpec, RunningTask, TaskPaths, TaskUpdate
from .sandbox import allowed_environment
from .spawn import TaskProcess

__all__ = [
    "DISK_FULL_NOTE",
    "KILL_WAIT",
    "MAX_RUN_TIME_GRACE",
    "TASK_ID_ENV",
    "Job",
    "append_line",
    "ask_to_stop",
    "describe_exit",
    "disk_is_full",
    "end_orphan",
    "end_unrecorded",
    "final_update",
    "prepare_launch",
    "signal_group",
    "started_update",
    "stop_job",
    "task_environment",
    "terminate",
]

KILL_WAIT = 5.0
"""Seconds to wait for a killed process group's leader to be reaped."""

MAX_RUN_TIME_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when a task exceeds its ``max_run_time``."""

DISK_FULL_NOTE = "the disk holding its logs was full while it ran: lines it printed may be missing"


@attrs.define
class Job:
    """One submitted task, from the queue until its process ended."""

    spec: LaunchSpec
    process: TaskProcess | None = None
    gpu_ids: list[int] = attrs.Factory(list)
    stop_reason: str | None = None  # "Cancelled", "TimeLimit", "ServerStopped"
    stop_message: str | None = None
    state: str = "queued"  # queued -> launching -> running -> done
    waiting: bool = False
    done: asyncio.Event = attrs.Factory(asyncio.Event)
    watcher: asyncio.Task[None] | None = None
    sandboxed: bool = False
    late_volumes: list[Path] = attrs.Factory(list)  # mounted while it ran
    sandbox_info: int | None = None  # the read end of bubblewrap's --info-fd
    held: bool = True  # its command has not been let through its gate (GATE)
    disk_full: bool = False  # the disk of its logs was seen full while it ran


# -- starting --------------------------------------------------------------------------


def prepare_launch(spec: LaunchSpec) -> tuple[int, int, Path]:
    """Create the directories, volume links and log files (blocking; run in a thread).

    Everything is made below the task directory without following a link (see
    :mod:`vi_flow.server.beneath`): what was put there before the start (over SFTP, or
    by an upload) cannot send the server's writes elsewhere on the host.

    Returns the stdout and stderr file descriptors and the directory to start in.

    Raises:
        LinkInTheWay: A link where a directory or log file of the task belongs.
    """
    paths = spec.paths
    paths.root.mkdir(parents=True, exist_ok=True)
    for directory in (paths.workdir, paths.output_dir, paths.stdout.parent):
        makedirs_beneath(paths.root, directory)
    for mount in spec.mounts:
        _link_mount(paths.root, mount.host_path, mount.visible_path)
    cwd = spec.command_dir
    if cwd != paths.workdir:
        makedirs_beneath(paths.root, cwd)
    logs = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    out = open_beneath(paths.root, paths.stdout, logs)
    try:
        err = open_beneath(paths.root, paths.stderr, logs)
    except BaseException:
        os.close(out)
        raise
    return out, err, cwd


def _link_mount(root: Path, host_path: Path, visible: Path) -> None:
    try:
        link_beneath(root, visible, host_path)
    except FileExistsError:
        raise InvalidRequest(
            f"volumes: mount path {visible} already exists in the workspace"
        ) from None


def task_environment(job: Job, base: Mapping[str, str], machine_has_gpus: bool) -> dict[str, str]:
    """An allow-list of ``base`` (``PATH``, ``HOME``, locale; never the server's own
    variables or secrets), the task's own environment and its :func:`gpu_environment`."""
    env = allowed_environment(base, job.spec.paths.workdir)
    env.update(job.spec.env)
    env.update(gpu_environment(job, machine_has_gpus))
    return env


def gpu_environment(job: Job, machine_has_gpus: bool) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for the task's processes and its SSH sessions: its own
    GPUs, empty on a GPU machine when it has none (its ``env`` cannot change it)."""
    if machine_has_gpus or job.gpu_ids:
        return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in job.gpu_ids)}
    return {}


def append_line(paths: TaskPaths, text: str) -> None:
    """Append one line to the task's stderr log, never through a link (blocking)."""
    append_beneath(paths.root, paths.stderr, text)


def disk_is_full(paths: TaskPaths) -> bool:
    """Whether the file system of the task's logs has (nearly) no space left for it
    (blocking; :func:`~vi_flow.server.home.disk_full`): a task writes its logs itself
    (they are its stdout and stderr), so the server never sees a write that failed; it
    looks at the disk instead."""
    return disk_full(paths.stdout.parent)


# -- stopping --------------------------------------------------------------------------


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def ask_to_stop(pgid: int, sandboxed: bool) -> None:
    """SIGTERM the task's processes.

    In a sandbox the group's leader is ``bwrap``, which would die of SIGTERM and take
    the task down with SIGKILL before its grace period: the task's own processes get the
    signal instead (the sandbox's PID 1 exits with them). Right after a start they may
    not exist yet, so wait for them a little.
    """
    if not sandboxed:
        signal_group(pgid, signal.SIGTERM)
        return
    for _ in range(50):
        members = await asyncio.to_thread(_task_processes, pgid)
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        if members:
            return
        await asyncio.sleep(0.02)


async def wait_group_gone(pgid: int, timeout: float, members: list[int] | None = None) -> bool:
    """Wait until no live (non-zombie) process is left in group ``pgid``; whether none is.
    A SIGKILL is delivered asynchronously: this is what makes "cancelled" mean "nothing
    of it runs any more".

    ``members``: the group's processes, when the caller knows them all (a sandbox's init,
    see :func:`~vi_flow.server.providers.local.sandbox.sandbox_child`); else one scan of
    ``/proc`` (on a worker thread, 2 ms with 250 processes) finds them. Then only those
    are looked at again, every 10 ms, on the loop: once the group was sent SIGKILL no
    process can join it. (It used to scan all of ``/proc`` every 10 ms on a worker thread
    until the group was gone; 50 tasks ending at once held every worker thread, and the
    starts of other tasks waited.)
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True  # nothing is left in the group, not even a zombie: no /proc scan
    except PermissionError:
        pass  # someone's process is in it: the scan tells whether it still runs
    # (a sandbox's inner bwrap may stay a zombie until the machine's init reaps it, and is
    # in uninterruptible sleep until every process of its PID namespace is gone)
    if members is not None:
        live = [pid for pid in members if _runs_in_group(pid, pgid)]
    else:
        found = await asyncio.to_thread(lambda: list(_group_members(pgid)))
        live = [pid for pid, state in found if state not in _ENDED]
    deadline = time.monotonic() + timeout
    while live:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
        live = [pid for pid in live if _runs_in_group(pid, pgid)]
    return True


_ENDED = (b"Z", b"X")  # zombie, dead


def _runs_in_group(pid: int, pgid: int) -> bool:
    """Whether ``pid`` is still a live process of group ``pgid`` (one small ``/proc``
    read; a pid reused by another group's process does not count)."""
    found = _state_and_group(pid)
    return found is not None and found[1] == str(pgid).encode() and found[0] not in _ENDED


def _state_and_group(pid: int | str) -> tuple[bytes, bytes] | None:
    """The state and process group of ``pid``, from the start of ``/proc/<pid>/stat``
    ("pid (comm) state ppid pgrp ..."); None when it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            stat = os.read(fd, 1024)
        finally:
            os.close(fd)
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split(maxsplit=3)
    return (fields[0], fields[2]) if len(fields) > 2 else None


def _task_processes(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that are not bubblewrap itself (blocking)."""
    members = []
    for pid, _ in _group_members(pgid):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if not argv0.endswith(b"bwrap"):
            members.append(pid)
    return members


def _group_members(pgid: int) -> Iterator[tuple[int, bytes]]:
    """``(pid, state)`` of each process in group ``pgid``, from ``/proc`` (blocking).

    Plain ``os`` calls on bytes: a scan runs at each task's end, for every process on
    the machine, beside the starts of other tasks (pathlib and text made it 4x slower).
    """
    wanted = str(pgid).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        found = _state_and_group(entry)
        if found is not None and found[1] == wanted:
            yield int(entry), found[0]


async def stop_job(job: Job, grace: float) -> None:
    """SIGTERM the job's group; SIGKILL it if it has not ended after ``grace`` seconds
    (at once, without a SIGTERM, for no grace: a forced cancel is a kill, never a
    SIGTERM the task may have died of first)."""
    process = job.process
    if process is None or process.returncode is not None:
        return
    if grace > 0:
        await ask_to_stop(process.pid, job.sandboxed)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(job.done.wait()), grace)
    if not job.done.is_set():
        signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(job.done.wait()), KILL_WAIT)


async def terminate(process: TaskProcess, grace: float, sandboxed: bool = False) -> None:
    """SIGTERM the process's group, SIGKILL after ``grace`` seconds; wait for the leader."""
    await ask_to_stop(process.pid, sandboxed)
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), grace)
    except asyncio.TimeoutError:
        signal_group(process.pid, signal.SIGKILL)
        await process.wait()


def end_orphan(task: RunningTask) -> str:
    """Kill what is left of a task that ran under a previous server; says what happened
    (blocking)."""
    pgid = int(task.provider_id) if task.provider_id and task.provider_id.isdigit() else 0
    if pgid and _group_alive_for(pgid, task):
        signal_group(pgid, signal.SIGKILL)
        message = (
            "the server restarted while the task ran; its process group "
            f"{pgid} was stopped (exit status unknown)"
        )
    else:
        message = "the task's process ended with the server; its exit status is unknown"
    with contextlib.suppress(OSError):
        append_line(task.spec.paths, f"[vi-flow] {message}")
    return message


def end_unrecorded(
    tasks: Iterable[RunningTask], then: str = "the task queued again"
) -> dict[str, str]:
    """Kill what a previous server started for ``tasks`` and died before recording (each
    still pending, with no process group): every group with a live process whose
    environment holds one of their ids. What happened (ending with ``then``), for each
    task's log, by task id; only tasks something was found for (blocking: one scan of
    ``/proc`` for them all)."""
    pending = {task.spec.task_id: task for task in tasks}
    groups: dict[str, set[int]] = {}
    for entry in os.listdir("/proc") if pending else ():
        found = _state_and_group(entry) if entry.isdigit() else None
        if found is None or found[0] in _ENDED:
            continue
        task_id = _task_of(entry)
        if task_id in pending and int(found[1]) != os.getpgrp():
            groups.setdefault(task_id, set()).add(int(found[1]))
    messages = {}
    for task_id, pgids in groups.items():
        for pgid in sorted(pgids):
            signal_group(pgid, signal.SIGKILL)
        messages[task_id] = message = (
            "the server restarted while it started the task; what it had started (process"
            f" group {', '.join(map(str, sorted(pgids)))}) was stopped and {then}"
        )
        with contextlib.suppress(OSError):
            append_line(pending[task_id].spec.paths, f"[vi-flow] {message}")
    return messages


TASK_ID_ENV = "VI_FLOW_TASK_ID"
"""The variable holding a task's id in the environment of each of its processes."""
_TASK_ID = f"{TASK_ID_ENV}=".encode()


def _task_of(pid: int | str) -> str | None:
    """The task whose id is in the environment ``pid`` was started with, if any (the
    server sets ``VI_FLOW_TASK_ID`` in bubblewrap's own environment and the command's,
    and every process of the task inherits it; a task's id is random, so a process of
    no task holds none by chance)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            environ = file.read()
    except OSError:  # gone, or not ours to read
        return None
    for item in environ.split(b"\0"):
        if item.startswith(_TASK_ID):
            return item[len(_TASK_ID) :].decode("ascii", "replace")
    return None


def _group_alive_for(pgid: int, task: RunningTask) -> bool:
    """Whether group ``pgid`` still has a live process of ``task``: one whose cwd is in the
    task's directory or whose environment holds the task's id (the pid-reuse guard;
    blocking). The leader may have gone first: a command's shell killed while its
    children run on, or a sandbox's bubblewrap that died setting it up (of SIGPIPE on its
    ``--info-fd``, whose reader was the crashed server), leaving the sandbox's init
    waiting for ever; and a command may have left its directory."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    root, task_id = task.spec.paths.root, task.spec.task_id
    for pid, state in _group_members(pgid):
        if state not in _ENDED and (_cwd_inside(pid, root) or _task_of(pid) == task_id):
            return True
    return False


def _cwd_inside(pid: int, directory: Path) -> bool:
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:  # gone, or a zombie
        return False
    return cwd == directory or directory in cwd.parents


# -- ending ----------------------------------------------------------------------------


def describe_exit(code: int) -> str:
    """``exited with status N`` or ``killed by SIGNAME (signal N)`` for a ``returncode``."""
    return describe(from_returncode(code))


def final_update(job: Job, code: int) -> TaskUpdate:
    """The update that ends ``job``, whose process ended with ``returncode`` ``code``
    (negative: killed by that signal); figures as :mod:`.._exits` defines them."""
    end = from_returncode(None if job.held else code)  # held: its command never ran
    status = TaskStatus.FAILED
    if job.stop_reason == "Cancelled":
        status, reason, message = TaskStatus.CANCELLED, "Cancelled", job.stop_message
    elif job.stop_reason is not None:
        reason, message = job.stop_reason, job.stop_message
        if not job.held:
            message = f"{message} ({describe(end)})"
    else:
        reason, message = end_reason(end), describe(end)
        if reason == "Completed":
            status = TaskStatus.COMPLETED
    if job.disk_full and not job.held:
        message = f"{message}; {DISK_FULL_NOTE}" if message else DISK_FULL_NOTE
    return TaskUpdate(
        job.spec.task_id,
        status,
        end.exit_code,
        message,
        reason,
        time=now_ms(),
        signal=end.signal,
    )


def started_update(job: Job) -> TaskUpdate:
    """The update that reports ``job`` running (its process group id and GPUs)."""
    assert job.process is not None
    return TaskUpdate(
        job.spec.task_id,
        TaskStatus.RUNNING,
        message=None,
        reason="Started",
        provider_id=str(job.process.pid),
        gpu_ids=list(job.gpu_ids),
        time=now_ms(),
    )
