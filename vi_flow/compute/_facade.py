"""``AsyncCompute``: the GPU-task methods of seed 002, which ``AsyncClient`` offers too.

``run``, ``submit``, ``status``, ``cancel``, ``logs``, ``shell``, ``ssh``, volumes,
instances, reservations, SSH keys, ``upload_code_to_task`` and ``get_model``, under
their seed names. Each is a few lines over the resources it is given (``self.tasks``...)
and the operations in :mod:`vi_flow.compute._ops`; handles come back as
:class:`AsyncTask`. The client holds one as ``client.compute`` and forwards the seed's
names to it.
"""

from __future__ import annotations

import contextlib
import uuid
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast, overload

import anyio
import anyio.to_thread
import attrs

from .._errors import APIConnectionError, APIStatusError, NotFoundError
from .._http import path
from ..models import Page
from ..models.runs import Run
from ..models.tasks import (
    AvailableInstance,
    Reservation,
    TaskConfig,
    TaskOutputFile,
    TaskStatus,
    Volume,
    parse_gpu,
)
from ..resources.tasks import artifact_path
from . import _configs, _ops
from ._dicts import InstanceRequirements, slot_dict, ssh_key_dict
from ._task import AsyncTask
from .ssh import ShellResult, ssh_command_line

if TYPE_CHECKING:
    from .._http import HTTPCore
    from ..resources.instances import AsyncInstances
    from ..resources.reservations import AsyncReservations
    from ..resources.tasks import LogStream
    from ..resources.volumes import AsyncVolumes
    from ._upload import UploadResult

__all__ = ["AsyncCompute", "ModelArtifacts"]


@attrs.frozen
class ModelArtifacts:
    """What :meth:`AsyncCompute.get_model` downloaded.

    Attributes:
        run_id: The run.
        path: The directory the files were saved in.
        files: The saved files.
    """

    run_id: str
    path: Path
    files: list[Path]


def log_choice(follow: bool, stderr: bool, stream: str | None) -> LogStream:
    """The stream ``logs()`` reads (``stream`` wins over ``stderr``), its arguments checked.

    Raises:
        TypeError: ``follow`` or ``stderr`` is not a bool (``"no"`` would count as yes).
        ValueError: An unknown ``stream``.
    """
    _configs.flag(follow, "follow")
    return _stream_of(_configs.flag(stderr, "stderr"), stream)


def _stream_of(stderr: bool, stream: str | None) -> LogStream:
    if stream is None:
        return "stderr" if stderr else "stdout"
    if stream not in ("stdout", "stderr", "both"):
        raise ValueError(f"stream must be 'stdout', 'stderr' or 'both', got {stream!r}")
    return stream  # type: ignore[return-value]


def _check_node(node: int | None) -> None:
    if node not in (None, 0):
        raise ValueError(f"node {node} does not exist: tasks here run on a single node (0)")


class AsyncCompute:
    """The seed's GPU-task methods over the task, volume, instance, reservation and key resources.

    Args:
        http: The HTTP core (``get_model`` downloads through it).
        context: The tasks and SSH keys resources and the home, which task handles use.
        volumes: The volumes resource.
        instances: The instances resource.
        reservations: The reservations resource.
    """

    def __init__(
        self,
        http: HTTPCore,
        context: _ops.ComputeClient,
        volumes: AsyncVolumes,
        instances: AsyncInstances,
        reservations: AsyncReservations,
    ) -> None:
        self.http = http
        self._context = context
        self.tasks = context.tasks
        self.ssh_keys = context.ssh_keys
        self.volumes = volumes
        self.instances = instances
        self.reservations = reservations

    # -- tasks ---------------------------------------------------------------------------

    async def run(
        self,
        /,
        task: TaskConfig | str | Path | list[str],
        gpu: str | None = None,
        cpus: int | None = None,
        memory_gb: int | None = None,
        wait: bool = False,
        mounts: str | Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> AsyncTask:
        """Submit a task.

        Args:
            task: A ``TaskConfig``, a YAML file (``Path``, or a string ending in
                ``.yaml``/``.yml`` naming an existing file), an argv list, or a command line.
            gpu: GPU shorthand: ``"a100"``, ``"a100:4"``, ``"4xa100"``, ``"gpu:40gb"``.
            cpus: CPU cores.
            memory_gb: Memory in GB.
            wait: Return only once the task runs (or has already ended).
            mounts: ``{"/data": "volume://datasets"}`` (target -> source).
            (by position): ``run(task, gpu, cpus, memory_gb, wait)`` as the compute
                client's ``run``, or ``run(task, wait, mounts)`` as flow-compute's
                ``Flow.run`` (a bool second means ``wait``).
            **kwargs: Other ``TaskConfig`` fields (``instance_type``, ``env``, ``name``...).

        Returns:
            A handle on the task.

        Raises:
            UnprocessableEntityError: The server refused the config, such as a GPU
                request this machine can never meet (the message says what exists).
            ValueError: Bad GPU shorthand or mount, before any request.
        """
        second, third = cast(object, gpu), cast(object, cpus)
        if isinstance(second, bool):  # flow-compute's Flow.run(task, wait, mounts), by position
            if third is not None and not isinstance(third, (str, Mapping)):
                raise TypeError(f"mounts must be a string or a mapping, got {third!r}")
            wait, gpu, cpus = second, None, None
            mounts = mounts if third is None else third
        elif second is not None and not isinstance(second, str):
            raise TypeError(f"gpu must be a string such as 'a100:4', got {second!r}")
        _configs.flag(wait, "wait")
        config = await _configs.build_config(
            task, mounts=mounts, gpu=gpu, cpus=cpus, memory_gb=memory_gb, **kwargs
        )
        handle = AsyncTask(self._context, await self.tasks.create(config))
        if wait:
            await handle.wait(until="running")
        return handle

    async def submit(
        self,
        command: str | list[str],
        gpu: str | None = None,
        mounts: str | Mapping[str, str] | None = None,
        instance_type: str | None = None,
        wait: bool = False,
    ) -> AsyncTask:
        """Submit a shell command with minimal configuration.

        Args:
            command: A command line (run by ``/bin/sh -c``) or an argv list.
            gpu: GPU shorthand; ignored when ``instance_type`` is given.
            mounts: ``{"/data": "volume://datasets"}``.
            instance_type: An explicit instance type.
            wait: Return only once the task has ended (any outcome).
        """
        _configs.flag(wait, "wait")
        handle = await self.run(
            command, gpu=None if instance_type else gpu, mounts=mounts, instance_type=instance_type
        )
        if wait:
            await handle.wait(until="terminal")
        return handle

    @overload
    async def status(self, task_id: str) -> str: ...

    @overload
    async def status(self, task_id: None = None) -> list[AsyncTask]: ...

    async def status(self, task_id: str | None = None) -> str | list[AsyncTask]:
        """The status of a task (``"pending"``... ``"cancelled"``), or recent tasks when no id."""
        if task_id is None:
            return await self.list_tasks(limit=100)
        return (await self.tasks.get(task_id)).status.value

    async def cancel(self, task_id: str, force: bool = False) -> bool:
        """Cancel a task (SIGTERM, then SIGKILL; at once with ``force``); ``True`` when stopped."""
        task = await self.tasks.cancel(task_id, force=_configs.flag(force, "force"))
        return task.status.terminal

    async def get_task(self, task_id: str) -> AsyncTask:
        """Return a handle on an existing task (``TaskNotFoundError`` when missing)."""
        return AsyncTask(self._context, await self.tasks.get(task_id))

    async def list_tasks(
        self,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        limit: int = 10,
        force_refresh: bool = False,
    ) -> list[AsyncTask]:
        """List recent tasks, newest first, optionally only in the given statuses.

        ``force_refresh`` is accepted for the seed's signature: every call reads the server.
        """
        handles: list[AsyncTask] = []
        async for page in self.tasks.list(
            status=status, pagination={"page_size": min(_limit(limit), 1000)}
        ):
            handles += [AsyncTask(self._context, t) for t in page.items[: limit - len(handles)]]
            if len(handles) >= limit:
                break
        return handles

    # -- logs and shells -----------------------------------------------------------------

    @overload
    async def logs(
        self,
        task_id: str,
        follow: Literal[False] = False,
        tail: int = 100,
        stderr: bool = False,
        source: str | None = None,
        stream: str | None = None,
    ) -> str: ...

    @overload
    async def logs(
        self,
        task_id: str,
        follow: Literal[True],
        tail: int = 100,
        stderr: bool = False,
        source: str | None = None,
        stream: str | None = None,
    ) -> AsyncIterator[str]: ...

    @overload
    async def logs(
        self,
        task_id: str,
        follow: bool,
        tail: int = 100,
        stderr: bool = False,
        source: str | None = None,
        stream: str | None = None,
    ) -> str | AsyncIterator[str]: ...

    async def logs(
        self,
        task_id: str,
        follow: bool = False,
        tail: int = 100,
        stderr: bool = False,
        source: str | None = None,
        stream: str | None = None,
    ) -> str | AsyncIterator[str]:
        """Return recent log lines now, or (``follow=True``) an iterator of lines as written.

        Args:
            task_id: The task.
            follow: Stream lines until the task ended and every line was read (over SSH
                or HTTP, as the ``log_transport`` setting says).
            tail: Trailing lines to return when not following (empty while pending);
                with ``"both"``, of each stream: stdout's, then stderr's.
            stderr: Read standard error instead of standard output.
            source: Accepted for the seed's signature; logs come from the task itself.
            stream: ``"stdout"``, ``"stderr"`` or ``"both"``; overrides ``stderr``.
        """
        chosen = log_choice(follow, stderr, stream)
        if follow:
            return self.follow_logs(task_id, stream=chosen)
        return (await self.tasks.logs(task_id, tail=tail, stream=chosen)).text

    async def follow_logs(
        self,
        task_id: str,
        stream: LogStream = "stdout",
        *,
        poll_interval: float = 0.5,
        since: datetime | timedelta | None = None,
    ) -> AsyncIterator[str]:
        """Yield a task's log lines as written, exactly once each, until it ended and is drained.

        Over the task's SSH endpoint, or the API's event stream when SSH does not answer
        (the ``log_transport`` setting: ``auto``, ``ssh`` or ``http``); survives dropped
        connections by resuming at the exact byte offset. With ``since`` (a time, or a
        ``timedelta`` before now), starts at the lines written since then (see
        ``tasks.logs``). Following one stream, a progress bar's unfinished line comes in
        pieces as it redraws (a :class:`~vi_flow.LinePiece` each, ending with its
        ``\\r``); joined with the line's last part, they are the line.
        """
        offsets = None if since is None else await self._context.tasks.log_offsets(task_id, since)
        lines = _ops.follow_lines(
            self._context, task_id, stream=stream, poll_interval=poll_interval, offsets=offsets
        )
        async with contextlib.aclosing(lines):
            async for _, batch in lines:
                for line in batch:
                    yield line

    async def _follow_streams(
        self, task_id: str, stream: LogStream = "both"
    ) -> AsyncIterator[tuple[str, str]]:
        """:meth:`follow_logs`, each line with the stream it was written to (for the CLI,
        which prints a task's stderr on its own), a progress bar's line in pieces as it
        redraws on either stream."""
        lines = _ops.follow_lines(self._context, task_id, stream=stream, progress=True)
        async with contextlib.aclosing(lines):
            async for name, batch in lines:
                for line in batch:
                    yield name, line

    async def shell(
        self,
        task_id: str,
        command: str | Sequence[str] | None = None,
        node: int | None = None,
        progress_context: object | None = None,
        record: bool = False,
        *,
        echo: bool = False,
        input: bytes | BinaryIO | None = None,
    ) -> ShellResult:
        """Run a command in a task, or open an interactive shell on this terminal.

        Args:
            task_id: The task (waited for until it runs).
            command: A command line, or an argv list quoted word by word; ``None`` for
                an interactive shell (a PTY when stdin is a terminal).
            node: Only node 0 exists here.
            progress_context: Accepted for the seed's signature.
            record: Accepted for the seed's signature.
            echo: Also copy the output to this process's stdout/stderr as it arrives.
            input: The command's standard input (then end of file): bytes, or a binary
                file read while the command runs (``sys.stdin.buffer`` streams a pipe
                through); with no command, the script to run instead of this process's stdin.

        Returns:
            The command's output and exit status (``str(result)`` is the output).

        Raises:
            ShellUnavailableError: The task's provider cannot run commands inside it (Ray).
            TaskEndedError: The task ended before it ran the command.
        """
        _check_node(node)
        return await _ops.shell(self._context, task_id, command, echo=echo, input=input)

    async def ssh(self, task_id: str, node: int | None = None) -> str:
        """Return an ``ssh`` command line for your own OpenSSH client, host key pinned."""
        _check_node(node)
        return ssh_command_line(await _ops.ssh_target(self._context, task_id))

    async def resolve_ssh_endpoint(self, task_id: str, node: int | None = None) -> tuple[str, int]:
        """Return the ``(host, port)`` of a task's SSH server."""
        _check_node(node)
        endpoint = await self.tasks.ssh_endpoint(task_id)
        return endpoint.host, endpoint.port

    async def get_task_ssh_connection_info(self, task_id: str) -> tuple[Path | None, str]:
        """Return ``(private key path, "")``, or ``(None, why)`` when SSH is not possible.

        Creates and registers the default key when needed, and writes the pinned
        known-hosts file, so the returned key works with :meth:`ssh`'s command line.
        """
        try:
            target = await _ops.ssh_target(self._context, task_id)
        except (APIStatusError, OSError) as exc:
            return None, str(exc)
        return target.key_path, ""

    async def wait_for_ssh(
        self,
        task_id: str,
        timeout: int = 600,  # noqa: ASYNC109 - the seed API takes timeout=
        show_progress: bool = True,
        progress_adapter: object | None = None,
    ) -> AsyncTask:
        """Wait until the task runs and answers over SSH.

        Raises:
            TaskTimeoutError: Not reachable within ``timeout`` seconds.
            TaskEndedError: The task ended before it could be reached.
        """
        return AsyncTask(
            self._context, await _ops.wait_for_ssh(self._context, task_id, timeout=timeout)
        )

    async def upload_code_to_task(
        self,
        task_id: str,
        source_dir: Path | str | None = None,
        timeout: int = 600,  # noqa: ASYNC109 - the seed API takes timeout=
        console: object | None = None,
        target_dir: str = "/workspace",
        progress_reporter: object | None = None,
        git_incremental: bool | None = None,
    ) -> UploadResult:
        """Upload a directory (default: the current one) to a running task, as one stream.

        Inside a git repository the files git would commit are sent (``git ls-files``);
        elsewhere every ``.gitignore`` applies to its own directory; ``.flowignore`` files
        leave out more. Nothing is written outside ``target_dir`` (``/workspace`` is the
        task's working directory; ``UploadResult.path`` says where that is). A progress
        bar shows on a terminal.

        Raises:
            TaskEndedError: The task ended before the upload began.
        """
        return await _ops.upload_code(
            self._context, task_id, source_dir=source_dir, target_dir=target_dir, timeout=timeout
        )

    # -- volumes and instances -----------------------------------------------------------

    async def create_volume(
        self,
        size_gb: int,
        name: str | None = None,
        interface: Literal["block", "file"] = "block",
        region: str | None = None,
    ) -> Volume:
        """Create a persistent volume of 1 to 65,536 GB (``ValueError`` for another size,
        ``UnprocessableEntityError`` for a name with ``/``/``..``)."""
        return await self.volumes.create(size_gb, name=name, interface=interface, region=region)

    async def list_volumes(self, limit: int = 100) -> list[Volume]:
        """List volumes, newest first."""
        volumes: list[Volume] = []
        async for page in self.volumes.list(pagination={"page_size": min(_limit(limit), 1000)}):
            volumes += page.items[: limit - len(volumes)]
            if len(volumes) >= limit:
                break
        return volumes

    async def delete_volume(self, volume_id: str) -> None:
        """Delete a volume (``ConflictError`` while a running task mounts it)."""
        await self.volumes.delete(volume_id)

    async def mount_volume(
        self, volume_id: str, task_id: str, mount_point: str | None = None
    ) -> bool:
        """Attach a volume (id or name) to a task; ``True`` when attached."""
        await self.tasks.mount_volume(task_id, volume_id, mount_path=mount_point)
        return True

    async def find_instances(
        self, requirements: InstanceRequirements | Mapping[str, Any] | None = None, limit: int = 10
    ) -> list[AvailableInstance]:
        """List instance types meeting ``requirements``, cheapest first.

        Args:
            requirements: An ``InstanceRequirements`` dict: any of ``gpu_type``,
                ``max_price``, ``min_gpu_memory_gb``, ``gpu_count``.
            limit: At most this many.

        Returns:
            ``AvailableInstance`` objects (``catalog_entry(i)`` gives the seed's dict).
        """
        wanted = _configs.mapping_of(requirements, "requirements", "{'gpu_type': 'a100'}")
        gpu_type = wanted.get("gpu_type")
        if gpu_type is not None and not isinstance(gpu_type, str):  # 5 would match nothing
            raise TypeError(f"gpu_type must be a GPU model such as 'a100', got {gpu_type!r}")
        unknown = sorted(set(wanted) - _configs.INSTANCE_REQUIREMENT_KEYS)
        if unknown:
            raise ValueError(f"unknown instance requirement(s): {', '.join(unknown)}")
        return await self.instances.list(**wanted, limit=limit)

    def normalize_instance_request(
        self, gpu_count: int, gpu_type: str | None = None
    ) -> tuple[str, int, str | None]:
        """Map a GPU count to ``(instance_type, num_instances, warning)`` (no request made)."""
        return _configs.normalize_instance_request(gpu_count, gpu_type)

    # -- reservations --------------------------------------------------------------------

    async def reserve(self, gpu: str, duration_hours: int = 1, auto_renew: bool = False) -> str:
        """Reserve GPU capacity from now on; returns the reservation id.

        Raises:
            TypeError: ``gpu`` is not a string.
            ValueError: ``gpu`` is not GPU shorthand (``"a100"``, ``"a100:2"``); an empty
                one would have held a CPU instead.
        """
        if not isinstance(gpu, str):
            raise TypeError(f"gpu must be GPU shorthand such as 'a100' or 'a100:2', got {gpu!r}")
        parse_gpu(gpu)  # before any request: "" is no GPU at all
        reservation = await self.reservations.create(
            gpu=gpu, duration_hours=duration_hours, auto_renew=auto_renew
        )
        return reservation.reservation_id

    async def list_reservations(self, params: Mapping[str, Any] | None = None) -> list[Reservation]:
        """List reservations, newest first.

        Args:
            params: Filters; only ``status`` (one status or a list) is known.

        Raises:
            TypeError: A filter other than ``status`` (it would filter nothing).
            UnprocessableEntityError: A status the server does not know (it names those
                it does).
        """
        filters = _configs.mapping_of(params, "params", "{'status': 'active'}")
        unknown = sorted(set(filters) - {"status"}, key=str)
        if unknown:
            raise TypeError(f"unknown reservation filter(s) {unknown}; the one known is 'status'")
        return await self.reservations.list(status=filters.get("status"))

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        """Get a reservation; ``None`` when there is none with that id."""
        try:
            return await self.reservations.get(reservation_id)
        except NotFoundError:
            return None

    async def reservation_availability(self, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """List windows that could be reserved, as the seed's dicts.

        Args:
            params: ``instance_type``, ``gpu``, ``earliest_start_time``, ``latest_end_time``
                (ms since the epoch or datetimes), ``duration_hours``; ``region`` is ignored.

        Returns:
            One dict per slot: ``instance_type``, ``start_time``, ``end_time`` (ms since
            the epoch), ``gpu_count``, ``cpus``, ``region``. The typed alternative is
            ``client.reservations.availability()`` (``AvailabilitySlot`` objects).
        """
        params = _configs.mapping_of(params, "params", "{'instance_type': 'a100'}")
        start: int | float | datetime | None = params.get("earliest_start_time")
        end: int | float | datetime | None = params.get("latest_end_time")
        slots = await self.reservations.availability(
            instance_type=params.get("instance_type"),
            gpu=params.get("gpu"),
            earliest_start_time=_configs.to_millis(start, "earliest_start_time"),
            latest_end_time=_configs.to_millis(end, "latest_end_time"),
            duration_hours=params.get("duration_hours"),
        )
        return [slot_dict(slot) for slot in slots]

    # -- SSH keys ------------------------------------------------------------------------

    async def list_ssh_keys(self, project_id: str | None = None) -> list[dict[str, str]]:
        """List the organization's registered SSH keys as dicts (``project_id`` is unused).

        Each dict has ``id`` (also ``key_id``), ``name``, ``public_key``, ``fingerprint``
        and ``created_at`` (ISO 8601); ``client.ssh_keys.list()`` gives ``SSHKey`` objects.
        """
        return [ssh_key_dict(key) for key in await self.ssh_keys.list()]

    async def list_platform_ssh_keys(self) -> list[dict[str, str]]:
        """List the organization's registered SSH keys as dicts (as :meth:`list_ssh_keys`)."""
        return await self.list_ssh_keys()

    async def create_platform_ssh_key(self, name: str, public_key: str) -> dict[str, str]:
        """Register a public key for task SSH; returns it as a dict (see :meth:`list_ssh_keys`).

        ``client.ssh_keys.create(name, public_key)`` returns an ``SSHKey`` object instead.
        """
        return ssh_key_dict(await self.ssh_keys.create(name, public_key))

    async def delete_platform_ssh_key(self, key_id: str) -> bool:
        """Unregister a key; ``True`` once deleted."""
        await self.ssh_keys.delete(key_id)
        return True

    async def ensure_default_ssh_key(self) -> str | None:
        """Create (once) ``<home>/client/ssh/id_ed25519`` and register it; returns its key id."""
        _, key = await self.ssh_keys.ensure_default()
        return key.key_id

    # -- artifacts -----------------------------------------------------------------------

    async def get_model(self, run_id: str, save_dir: str | Path | None = None) -> ModelArtifacts:
        """Download the files a run's tasks wrote to ``$VI_FLOW_OUTPUT_DIR``.

        Args:
            run_id: The run.
            save_dir: Where to save them (default ``./models/<run_id>``).

        Returns:
            The run id, the directory and the saved files, as absolute paths.

        Raises:
            TypeError: ``save_dir`` is not a path.
            ValueError: ``save_dir`` is ``""``, which names no directory (it would have
                written into the current one).

        Warns:
            UserWarning: The run has not ended: its tasks may still write files (what
                they wrote so far is downloaded).
        """
        if save_dir is not None and not isinstance(save_dir, (str, Path)):
            raise TypeError(f"save_dir must be a directory's path, got {save_dir!r}")
        given = save_dir if isinstance(save_dir, str) else None
        if given is not None and not given.strip():
            raise ValueError(f"save_dir must name a directory, got {save_dir!r}")
        run = await self.http.request("GET", path("/runs/{}", run_id), cast=Run)
        condition = run.status.condition
        if condition is None or not condition.terminal:
            warnings.warn(
                f"run {run_id} is {condition.value if condition else 'Pending'}: its model may"
                " be incomplete (get_model downloads what its tasks have written so far)",
                UserWarning,
                stacklevel=2,
            )
        chosen = save_dir if save_dir is not None else Path("models") / run_id
        target = await anyio.to_thread.run_sync(lambda: Path(chosen).expanduser().resolve())
        url = path("/runs/{}/artifacts", run_id)
        listing = await self.http.request("GET", url, cast=Page[TaskOutputFile])
        files = [await self._download(url, item.path, target) for item in listing.items]
        return ModelArtifacts(run_id=run_id, path=target, files=files)

    async def _download(self, base: str, relative: str, target: Path) -> Path:
        destination = target.joinpath(*relative.split("/"))
        url = f"{base}/{artifact_path(relative)}"
        await anyio.to_thread.run_sync(
            lambda: destination.parent.mkdir(parents=True, exist_ok=True)
        )
        # written beside it and renamed when whole: a download cut short (the client
        # closed, the link or the server gone) leaves no file that looks complete
        partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            out = await anyio.open_file(partial, "wb")
            async with out, self.http.stream("GET", url) as resp:
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
            await anyio.to_thread.run_sync(partial.replace, destination)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: partial.unlink(missing_ok=True))
            if _cut_short(exc):
                raise APIConnectionError(
                    f"the download of {relative!r} of this run was cut short ({exc}); get_model"
                    " again to download it whole"
                ) from exc
            raise
        return destination


def _cut_short(exc: BaseException) -> bool:
    """Whether ``exc`` is a download's body cut short (aiohttp's own errors, raised past
    the client's request, where it would not be a vi_flow error)."""
    import aiohttp

    return isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError))


def _limit(limit: object) -> int:
    """``limit`` of a list call: a whole number >= 1 (the error names it, not the page size)."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be a whole number >= 1, got {limit!r}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return limit
