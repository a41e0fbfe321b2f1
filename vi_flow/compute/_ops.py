"""The task operations shared by :class:`AsyncTask` and the client's top-level methods.

Each function takes a :class:`ComputeClient` (the ``tasks`` and ``ssh_keys`` resources and
the home) and a task id: waiting for a status, opening a pinned SSH connection as the
task's user or its logs user, following logs, running a command or a shell.

A log follow goes over SSH or over the API's SSE stream, as the ``log_transport``
setting says; with ``auto`` it tries the task's SSH endpoint first and, when that does
not answer (a client behind a reverse proxy, on another network), follows over HTTP.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import sys
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import attrs

from .._config import bad_seconds, is_number
from .._errors import APIConnectionError, APIStatusError, TaskEndedError, TaskTimeoutError
from .._http import HTTPCore, path
from ..models._base import from_wire
from ..models.tasks import SSHEndpoint, Task, TaskStatus
from ..resources.ssh_keys import client_ssh_dir
from ._follow import HTTPLogFollower, LogFollower
from ._upload import (
    WORKSPACE,
    UploadError,
    UploadResult,
    check_target_dir,
    collect_files,
    progress_bar,
    send_tree,
    upload_files,
)
from .ssh import (
    ShellResult,
    SSHTarget,
    check_commands_allowed,
    connect,
    interactive_shell,
    known_hosts_file,
    run_remote,
    write_known_hosts,
)

if TYPE_CHECKING:
    import aiohttp
    import asyncssh

    from ..resources.ssh_keys import AsyncSSHKeys
    from ..resources.tasks import AsyncTasks, LogStream

__all__ = [
    "ComputeClient",
    "Until",
    "follow_lines",
    "open_ssh",
    "shell",
    "ssh_target",
    "upload_code",
    "wait_for",
    "wait_for_ssh",
]

Until = Literal["running", "terminal"]
"""What :func:`wait_for` waits for: the task running (or already over), or over."""

_FIRST_POLL = 0.05
_SSH_PROBE_TIMEOUT = 5.0
# The silence rule of an SSH log follow: a quiet task sends nothing, so the link is probed
# with keepalives; three unanswered ones (about 10 s) and the follow reconnects.
SSH_FOLLOW_KEEPALIVE = 2.5

log = logging.getLogger("vi_flow")


@attrs.frozen
class ComputeClient:
    """What the compute operations need: the tasks and SSH keys resources, the home, and
    the HTTP core (for the log stream).

    Attributes:
        tasks: The tasks resource.
        ssh_keys: The SSH keys resource.
        home: Where the client keeps its SSH key and known hosts (``HOME/client/ssh``).
        http: The client's HTTP core (its settings say the ``log_transport``).
    """

    tasks: AsyncTasks
    ssh_keys: AsyncSSHKeys
    home: Path
    http: HTTPCore


def _reached(status: TaskStatus, until: Until) -> bool:
    if until == "running":
        return status == TaskStatus.RUNNING or status.terminal
    return status.terminal


async def wait_for(
    client: ComputeClient,
    task_id: str,
    *,
    until: Until = "terminal",
    timeout: float | None = None,  # noqa: ASYNC109 - the seed API takes timeout=
    poll_interval: float = 1.0,
) -> Task:
    """Poll a task until it is running (``until="running"``) or over; return it.

    Raises:
        TaskTimeoutError: ``timeout`` seconds passed first (the message says the status).
    """
    if until not in ("running", "terminal"):
        raise ValueError(f"until must be 'running' or 'terminal', got {until!r}")
    if not is_number(poll_interval) or not poll_interval > 0:  # QA AB: 0 polled ~900/s
        raise bad_seconds("poll_interval", poll_interval, "a positive number of seconds")
    if timeout is not None and (not is_number(timeout) or not timeout >= 0):  # QA AD: -1
        raise bad_seconds("timeout", timeout, "a number of seconds >= 0, or None")
    if timeout is not None and timeout <= 0:  # one look, however long it takes
        task = await client.tasks.get(task_id)
        if _reached(task.status, until):
            return task
        raise _still(task, timeout, until)
    found: Task | None = None
    delay = _FIRST_POLL
    with anyio.move_on_after(timeout) as scope:  # the first look too: a server that hangs
        found = await client.tasks.get(task_id)
        while not _reached(found.status, until):
            await anyio.sleep(delay)
            delay = min(delay * 1.5, poll_interval)
            found = await client.tasks.get(task_id)
    if found is None:
        raise TaskTimeoutError(f"the server did not answer for task {task_id} within {timeout} s")
    if scope.cancelled_caught:
        raise _still(found, timeout, until)
    return found


def _still(task: Task, timeout: float | None, until: Until) -> TaskTimeoutError:
    return TaskTimeoutError(
        f"task {task.task_id} is still {task.status.value} after {timeout} s (waited for {until})"
    )


async def ssh_target(client: ComputeClient, task_id: str, *, logs: bool = False) -> SSHTarget:
    """Build the pinned SSH target of a task (default key ensured, known_hosts written).

    Args:
        client: The client.
        task_id: The task.
        logs: Log in as the task's logs user (works in every status) instead of its user.
    """
    target, _ = await _target_and_endpoint(client, task_id, logs=logs)
    return target


async def _target_and_endpoint(
    client: ComputeClient, task_id: str, *, logs: bool
) -> tuple[SSHTarget, SSHEndpoint]:
    pair, _ = await client.ssh_keys.ensure_default()
    endpoint = await client.tasks.ssh_endpoint(task_id)
    target = _target(client, endpoint, pair.private_path, logs=logs)
    await anyio.to_thread.run_sync(write_known_hosts, target)
    return target, endpoint


def _target(client: ComputeClient, ep: SSHEndpoint, key: Path, *, logs: bool) -> SSHTarget:
    settings = client.http.connection.settings
    server = "local" if settings.is_local else urlsplit(settings.base_url).netloc
    known = known_hosts_file(client_ssh_dir(client.home), server, ep.host)
    return SSHTarget(
        host=ep.host,
        port=ep.port,
        username=ep.logs_user if logs else ep.user,
        host_key=ep.host_key,
        key_path=key,
        known_hosts_path=known,
    )


async def open_ssh(
    client: ComputeClient, task_id: str, *, logs: bool = False
) -> asyncssh.SSHClientConnection:
    """Open a pinned SSH connection to a task (as its logs user when ``logs``)."""
    return await connect(await ssh_target(client, task_id, logs=logs))


async def wait_for_ssh(
    client: ComputeClient,
    task_id: str,
    *,
    timeout: float = 600.0,  # noqa: ASYNC109 - the seed API takes timeout=
) -> Task:
    """Wait until the task runs and its SSH server answers a command.

    Raises:
        TaskTimeoutError: Not reachable within ``timeout`` seconds.
        TaskEndedError: The task ended before it could be reached.
    """
    import asyncssh

    begun = anyio.current_time()
    task = await wait_for(client, task_id, until="running", timeout=timeout)  # checks it
    deadline = begun + timeout
    _check_running(task)
    with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
        while True:
            if await _answers(client, task_id, asyncssh.Error):
                return task
            await anyio.sleep(0.2)
    raise TaskTimeoutError(f"task {task_id} was not reachable over SSH after {timeout} s")


async def _answers(client: ComputeClient, task_id: str, error: type[Exception]) -> bool:
    try:
        async with await open_ssh(client, task_id) as conn:
            await run_remote(conn, "true")
    except (OSError, error):
        return False
    return True


def _check_running(task: Task) -> None:
    if task.status.terminal:
        raise TaskEndedError(task.task_id, task.status.value)


async def shell(
    client: ComputeClient,
    task_id: str,
    command: str | Sequence[str] | None = None,
    *,
    echo: bool = False,
    timeout: float = 600.0,  # noqa: ASYNC109 - how long to wait for the task to run
    input: bytes | BinaryIO | None = None,
) -> ShellResult:
    """Run a command in a running task, or attach an interactive shell to this terminal.

    ``input`` is the command's standard input. Without ``command``: ``input`` as a
    script, else an interactive PTY shell when stdin is a terminal, else stdin read to
    its end and run as a script. Waits for the task to run first.

    Raises:
        ShellUnavailableError: The task's provider cannot run commands inside it (Ray).
        TaskEndedError: The task ended before it ran the command.
    """
    task = await wait_for(client, task_id, until="running", timeout=timeout)
    _check_running(task)
    import asyncssh

    target, endpoint = await _target_and_endpoint(client, task_id, logs=False)
    check_commands_allowed(endpoint)
    conn = await connect(target)
    try:
        with _lost_as_connection_error(task_id, asyncssh.ConnectionLost, asyncssh.DisconnectError):
            return await _shell_on(conn, command, input, echo)
    finally:
        conn.close()
        await conn.wait_closed()


@contextlib.contextmanager
def _lost_as_connection_error(task_id: str, *lost: type[Exception]) -> Iterator[None]:
    """The connection dropping under a command (its server stopped or died) is the
    documented ``APIConnectionError``, not asyncssh's own error."""
    try:
        yield
    except lost as exc:
        raise APIConnectionError(
            f"lost the SSH connection to task {task_id} (its server stopped?): {exc}"
        ) from exc


async def _shell_on(
    conn: asyncssh.SSHClientConnection,
    command: str | Sequence[str] | None,
    input: bytes | BinaryIO | None,
    echo: bool,
) -> ShellResult:
    """The command, or else the interactive shell or the script, on an open connection."""
    if command is not None:
        return await run_remote(conn, command, input=input, echo=echo)
    if input is None and sys.stdin is not None and sys.stdin.isatty():
        status = await interactive_shell(conn)
        return ShellResult(stdout="", stderr="", exit_status=status)
    source = sys.stdin.buffer if input is None else input
    script = source if isinstance(source, bytes) else await anyio.to_thread.run_sync(source.read)
    return await run_remote(conn, "exec /bin/sh", input=script, echo=echo)


def _streams(stream: LogStream) -> list[str]:
    if stream == "both":
        return ["stdout", "stderr"]
    if stream in ("stdout", "stderr"):
        return [stream]
    raise ValueError(f"stream must be 'stdout', 'stderr' or 'both', got {stream!r}")


async def follow_lines(
    client: ComputeClient,
    task_id: str,
    *,
    stream: LogStream = "stdout",
    poll_interval: float = 0.5,
    on_update: Callable[[Task], None] | None = None,
    offsets: Mapping[str, int] | None = None,
    progress: bool | None = None,
) -> AsyncGenerator[tuple[str, list[str]], None]:
    """Yield ``(stream, lines)`` of a task's logs until it ended and is drained, over SSH
    or HTTP (the ``log_transport`` setting); lines come in the batches they arrived in,
    so only the outermost iterator pays a step per line.

    Survives dropped connections (resumes at the exact byte offset). ``on_update``
    receives task states read on the way, the last one terminal (with its exit code).
    ``progress``: hand out a progress bar's unfinished line as it redraws; by default
    when one stream is followed. Following both, a caller that does not get the stream
    of each line could not tell whose piece it is (QA AC): lines come whole.
    """
    names = _streams(stream)
    pieces = len(names) == 1 if progress is None else progress
    follower: LogFollower | HTTPLogFollower
    if client.http.connection.settings.log_transport == "http":
        follower = _http_follower(client, task_id, names, on_update, offsets, pieces)
    else:
        follower = await _ssh_follower(
            client, task_id, names, poll_interval, on_update, offsets, pieces
        )
    async with contextlib.aclosing(follower.batches()) as batches:
        async for batch in batches:
            yield batch


async def _ssh_follower(
    client: ComputeClient,
    task_id: str,
    names: list[str],
    poll_interval: float,
    on_update: Callable[[Task], None] | None,
    offsets: Mapping[str, int] | None,
    progress: bool,
) -> LogFollower | HTTPLogFollower:
    """The SSH follow; with ``log_transport = auto``, the HTTP one when SSH does not answer."""
    target, endpoint = await _target_and_endpoint(client, task_id, logs=True)
    first = await _first_connection(client, target)
    if first is None:
        return _http_follower(client, task_id, names, on_update, offsets, progress)
    paths = {"stdout": endpoint.stdout_path, "stderr": endpoint.stderr_path}

    async def final_sizes() -> dict[str, int] | None:
        task = await client.tasks.get(task_id)
        if on_update is not None:
            on_update(task)
        if not task.status.terminal:
            return None
        return {"stdout": task.stdout_size, "stderr": task.stderr_size}

    async def connector() -> asyncssh.SSHClientConnection:
        nonlocal first
        conn, first = first, None
        return conn if conn is not None else await _follow_connection(await retarget())

    async def retarget() -> SSHTarget:
        """Where the task's SSH server is now: a restarted server (the home's next one)
        listens on another port. Its API not answering is one more failed reconnect."""
        try:
            return (await _target_and_endpoint(client, task_id, logs=True))[0]
        except APIConnectionError as exc:
            raise OSError(f"the server does not answer: {exc}") from exc
        except APIStatusError as exc:  # a proxy's 502, a server still starting its SSH
            if exc.status_code < 500:
                raise
            raise OSError(f"the server cannot say where the task's SSH is now: {exc}") from exc

    return LogFollower(
        connector,
        {name: paths[name] for name in names},
        is_terminal=final_sizes,
        offsets=offsets,
        poll_interval=poll_interval,
        progress=progress,
    )


async def _first_connection(
    client: ComputeClient, target: SSHTarget
) -> asyncssh.SSHClientConnection | None:
    """A connection to ``target``; ``None`` when it does not answer and HTTP may be used."""
    if client.http.connection.settings.log_transport == "ssh":
        return await _follow_connection(target)
    import asyncssh

    try:
        return await _follow_connection(target, connect_timeout=_SSH_PROBE_TIMEOUT)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        where = f"{target.host}:{target.port}"
        log.info("ssh %s does not answer (%s); following the logs over HTTP", where, exc)
        return None


async def _follow_connection(
    target: SSHTarget, connect_timeout: float = 30.0
) -> asyncssh.SSHClientConnection:
    return await connect(
        target, connect_timeout=connect_timeout, keepalive_interval=SSH_FOLLOW_KEEPALIVE
    )


def _http_follower(
    client: ComputeClient,
    task_id: str,
    names: list[str],
    on_update: Callable[[Task], None] | None,
    offsets: Mapping[str, int] | None,
    progress: bool,
) -> HTTPLogFollower:
    url = path("/tasks/{}/logs", task_id)
    query = {"follow": "true", "stream": names[0] if len(names) == 1 else "all"}

    def open_stream(
        event_id: str | None,
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        headers = {"Accept": "text/event-stream"}
        if event_id is not None:
            headers["Last-Event-ID"] = event_id
        return client.http.stream("GET", url, params=query, headers=headers)

    def on_end(data: object) -> None:
        if on_update is not None:
            on_update(from_wire(data, Task))

    return HTTPLogFollower(
        open_stream,
        names,
        offsets=offsets,
        on_end=on_end,
        sleep=client.http.pause,
        progress=progress,
    )


async def upload_code(
    client: ComputeClient,
    task_id: str,
    *,
    source_dir: str | Path | None = None,
    target_dir: str = "/workspace",
    timeout: float = 600.0,  # noqa: ASYNC109 - the seed API takes timeout=
) -> UploadResult:
    """Send a directory to a running task as one stream (see :mod:`vi_flow.compute._upload`).

    A rich progress bar is shown when stderr is a terminal.

    Raises:
        TaskEndedError: The task ended before the upload began.
        APIConnectionError: The connection to the task's server was lost (it stopped
            or died) during the upload.
        UploadError: The task's server refused a file (the task ended meanwhile).
    """
    import asyncssh

    target = check_target_dir(target_dir)
    source = Path(source_dir) if source_dir is not None else Path(".")
    files, skipped = await anyio.to_thread.run_sync(collect_files, source)
    total = await anyio.to_thread.run_sync(lambda: sum(p.stat().st_size for _, p in files))
    task = await wait_for(client, task_id, until="running", timeout=timeout)
    _check_running(task)
    login, endpoint = await _target_and_endpoint(client, task_id, logs=False)
    # Where commands cannot run (a Ray job), file by file over SFTP at once: a tar there
    # was refused, and the refusal raced its own input (QA AA: one upload in three failed)
    tar = endpoint.commands_refused is None
    # a server that dies under the upload resets it (QA AE: ConnectionResetError and
    # asyncssh's own errors reached the caller); local files' errors stay what they are
    lost = (asyncssh.ConnectionLost, ConnectionError)
    with _lost_as_connection_error(task_id, *lost):
        conn = await connect(login)
    async with conn:
        bar = progress_bar(total)
        try:
            with _lost_as_connection_error(task_id, *lost):
                count, sent = await _send(conn, files, target_dir, bar[0] if bar else None, tar=tar)
        except asyncssh.SFTPError as exc:
            raise UploadError(f"the task's server refused the upload: {exc.reason}") from exc
        finally:
            if bar is not None:
                bar[1]()
    return UploadResult(
        target_dir=target, files=count, bytes=sent, skipped=skipped, path=_real(task, target)
    )


async def _send(
    conn: asyncssh.SSHClientConnection,
    files: list[tuple[str, Path]],
    target_dir: str,
    progress: Callable[[int], None] | None,
    *,
    tar: bool = True,
) -> tuple[int, int]:
    """One tar stream (unless not ``tar``); file by file over SFTP where the task has no
    ``tar`` or runs no commands."""
    done = await send_tree(conn, files, target_dir, progress=progress) if tar else None
    if done is not None:
        return done
    async with conn.start_sftp_client() as sftp:
        return await upload_files(sftp, files, target_dir, progress=progress)


def _real(task: Task, target: str) -> str | None:
    """Where ``target`` (``/workspace/...``) is on the task's machine."""
    if not task.workdir:
        return None
    return posixpath.normpath(posixpath.join(task.workdir, posixpath.relpath(target, WORKSPACE)))
