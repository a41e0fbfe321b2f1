"""GPU tasks and what they use: configs, statuses, volumes, reservations, instances, SSH keys.

Pure data shared by the client and the local server. :class:`TaskConfig` is what a user
submits (also loadable from YAML); :class:`Task` is what the server answers. GPU requests
are written in the seed's shorthand (``"a100"``, ``"a100:4"``, ``"4xa100"``,
``"gpu:40gb"``) and read with :func:`parse_gpu`. Times are milliseconds since the epoch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import orjson

from ._base import CLOSED_MODELS, OpenEnum
from .limits import shown, type_name
from .textfile import load_yaml, read_utf8, yaml_problem

__all__ = [
    "ENV_REDACTED",
    "AvailabilitySlot",
    "AvailableInstance",
    "GPURequest",
    "MountRequest",
    "Reservation",
    "ReservationRequest",
    "ReservationStatus",
    "SSHEndpoint",
    "SSHKey",
    "SSHKeyRequest",
    "Task",
    "TaskConfig",
    "TaskLogs",
    "TaskOutputFile",
    "TaskStatus",
    "Volume",
    "VolumeRequest",
    "VolumeSpec",
    "env_problem",
    "parse_gpu",
]

MAX_GPU_COUNT = 64

_TYPE = r"[a-z][a-z0-9_.-]*"
_GPU_TYPE_COUNT = re.compile(rf"^(?P<type>{_TYPE})(?::(?P<count>\d+))?$")
_GPU_COUNT_X_TYPE = re.compile(rf"^(?P<count>\d+)x(?P<type>{_TYPE})$")
_GPU_MEMORY = re.compile(r"^gpu:(?P<mem>\d+)gb(?::(?P<count>\d+))?$")


class TaskStatus(OpenEnum):
    """Where a task stands. Unknown values from a newer server are kept, not rejected."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether a task in this state will not change any more."""
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class ReservationStatus(OpenEnum):
    """Where a reservation stands: ``scheduled`` before its window, ``active`` inside it."""

    SCHEDULED = "scheduled"
    ACTIVE = "active"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class GPURequest(NamedTuple):
    """A parsed GPU shorthand (a named tuple: ``gpu_type, gpu_count, min_memory_gb``).

    Attributes:
        gpu_type: The GPU model in lower case (``"a100"``), or ``None`` for "any GPU".
        gpu_count: How many GPUs.
        min_memory_gb: The least memory per GPU, from ``"gpu:40gb"``; ``None`` if not given.
    """

    gpu_type: str | None
    gpu_count: int = 1
    min_memory_gb: int | None = None


def parse_gpu(shorthand: str) -> GPURequest:
    """Read a GPU shorthand.

    Accepted forms: ``"a100"``, ``"a100:4"``, ``"4xa100"``, ``"gpu:40gb"`` and
    ``"gpu:40gb:2"`` (case-insensitive; ``"gpu"`` alone means one GPU of any type).

    Args:
        shorthand: The text to read.

    Returns:
        The GPU type (``None`` for any), the count and the least memory per GPU.

    Raises:
        ValueError: The text is not one of the forms above, or the count is out of range;
            the message quotes the input.

    Example:
        >>> parse_gpu("a100:4")
        GPURequest(gpu_type='a100', gpu_count=4, min_memory_gb=None)
    """
    text = str(shorthand).strip().lower()
    memory = _GPU_MEMORY.match(text)
    if memory:
        count = _gpu_count(memory.group("count"), shorthand)
        return GPURequest(None, count, int(memory.group("mem")))
    match = _GPU_COUNT_X_TYPE.match(text) or _GPU_TYPE_COUNT.match(text)
    if not match:
        raise ValueError(
            f"invalid GPU request {shown(shorthand)}: expected 'TYPE', 'TYPE:COUNT', "
            "'COUNTxTYPE' or 'gpu:MEMgb' (for example 'a100', 'a100:4', 'gpu:40gb')"
        )
    gpu_type: str | None = match.group("type")
    count = _gpu_count(match.group("count"), shorthand)
    if gpu_type in ("gpu", "any"):
        gpu_type = None
    return GPURequest(gpu_type, count, None)


def _gpu_count(text: str | None, shorthand: str) -> int:
    count = 1 if text is None else int(text)
    if not 1 <= count <= MAX_GPU_COUNT:
        raise ValueError(
            f"invalid GPU request {shown(shorthand)}: count must be 1..{MAX_GPU_COUNT}, got {count}"
        )
    return count


@attrs.frozen
class VolumeSpec:
    """A volume a task mounts: an existing one (``volume_id``) or one created by name.

    Attributes:
        mount_path: Where the task sees it (``/data``); mapped into the workspace when the
            path cannot be created on the host.
        volume_id: An existing volume's id or name.
        name: A display name; a volume of that name is created when it does not exist.
        size_gb: Capacity for a volume created on the fly.
        interface: ``"file"`` (multi-attach) or ``"block"`` (exclusive).
    """

    mount_path: str = "/data"
    volume_id: str | None = None
    name: str | None = None
    size_gb: int = 1
    interface: str = "file"


# `{"volume": "volume://data"}` for `volumeId`: ignored, it made and mounted a new volume
CLOSED_MODELS.add(VolumeSpec)

_VOLUME_KEYS = {
    "mountPath": "mount_path",
    "volumeId": "volume_id",
    "sizeGb": "size_gb",
}


def _volume_spec(value: VolumeSpec | Mapping[str, Any]) -> VolumeSpec:
    if isinstance(value, VolumeSpec):
        return value
    if isinstance(value, Mapping):
        fields = {_VOLUME_KEYS.get(k, k): v for k, v in value.items()}
        known = {a.name for a in attrs.fields(VolumeSpec)}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"volumes: unknown field(s) {', '.join(sorted(unknown))}")
        return VolumeSpec(**fields)
    raise TypeError(f"volumes: expected VolumeSpec or dict, got {type(value).__name__}")


def _volume_specs(values: Any) -> list[VolumeSpec]:
    if values is None:
        return []
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise TypeError(f"volumes must be a list of volume specs, got {shown(values)}")
    return [_volume_spec(v) for v in values]


def env_problem(values: object) -> tuple[str, str] | None:
    """What makes ``values`` no task environment: the field (``env`` or ``env.<NAME>``)
    and why, naming the type, never the value (a secret); ``None`` when it is one.

    A value is text, or a number or boolean that :func:`env_text` writes as JSON does
    (``3``, ``1.5``, ``true``: YAML's ``EPOCHS: 3`` means what it says); ``null``, a
    list, a mapping or a number that is not finite is refused.
    """
    if not isinstance(values, Mapping):
        return "env", f"must be a mapping of names to values, got a {type_name(values)}"
    for name, value in values.items():
        if not isinstance(value, (str, int, float)) or value != value or value in _INFINITE:
            why = f"must be text, a number or a boolean, got {type_name(value)}"
            return f"env.{str(name)[:64]}", why
    return None


_INFINITE = (float("inf"), float("-inf"))


def env_text(value: str | int | float) -> str:
    """An environment value as a task sees it: text as it is, a number or a boolean as
    JSON writes it (``true``, not Python's ``True``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)  # exact, at any size
    return orjson.dumps(value).decode()  # env_problem let only finite numbers through


def _env(values: Any) -> dict[str, str]:
    if values is None:
        return {}
    if problem := env_problem(values):
        raise TypeError(" ".join(problem))
    return {str(k): env_text(v) for k, v in values.items()}


ENV_REDACTED = "<redacted>"
"""What the server answers in place of each task env value: values are write-only."""


def _env_names(env: dict[str, str]) -> str:
    # repr() shows names only: a config printed in a log or traceback leaks no secret.
    return repr({name: ENV_REDACTED for name in env})


@attrs.frozen
class TaskConfig:
    """What a task runs and on what.

    Attributes:
        name: A display name.
        command: A shell command line (run with ``/bin/sh -c``) or an argv list.
        instance_type: An instance type from the catalog (``"cpu"``, ``"4xa100"``).
        gpu: GPU shorthand (``"a100"``, ``"a100:4"``, ``"gpu:40gb"``); ignored when
            ``instance_type`` is given.
        min_gpu_memory_gb: The least memory per GPU.
        cpus: CPU cores to hold (default 1).
        memory_gb: Memory to hold, in GB.
        env: Extra environment variables, names to text (a number or a boolean becomes its
            JSON text, ``3`` or ``true``; ``null`` is refused). Write-only: the server answers each value as
            ``"<redacted>"`` (:data:`ENV_REDACTED`) and ``repr()`` shows names only.
        volumes: Volumes to mount (``VolumeSpec`` or ``{"volume_id", "mount_path"}``).
        working_dir: Directory the command starts in, relative to the task workspace.
        max_price_per_hour: The most to pay per hour; instances above it are refused.
        max_run_time: Seconds after which the task is stopped (``None``: no limit).
        reservation_id: Run on this reservation's held capacity (it must be active).
        upload_code: Reserved for providers that copy the caller's code at submit.
    """

    name: str = "task"
    command: str | list[str] | None = None
    instance_type: str | None = None
    gpu: str | None = None
    min_gpu_memory_gb: int | None = None
    cpus: int | None = None
    memory_gb: int | None = None
    env: dict[str, str] = attrs.field(factory=dict, converter=_env, repr=_env_names)
    volumes: list[VolumeSpec] = attrs.field(factory=list, converter=_volume_specs)
    working_dir: str | None = None
    max_price_per_hour: float | None = None
    max_run_time: float | None = None
    reservation_id: str | None = None
    upload_code: bool = False

    def gpu_request(self) -> GPURequest | None:
        """The GPUs asked for, from ``gpu`` or ``min_gpu_memory_gb``; ``None`` for none.

        Raises:
            ValueError: ``gpu`` is not valid shorthand.
        """
        if self.gpu:
            request = parse_gpu(self.gpu)
            if self.min_gpu_memory_gb and request.min_memory_gb is None:
                request = request._replace(min_memory_gb=self.min_gpu_memory_gb)
            return request
        if self.min_gpu_memory_gb:
            return GPURequest(None, 1, self.min_gpu_memory_gb)
        return None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskConfig:
        """Build a config from a mapping with snake_case or camelCase keys.

        Raises:
            ValueError: A key is not a ``TaskConfig`` field.
        """
        known = {a.name for a in attrs.fields(cls)}
        wire: dict[str, Any] = {}
        for key, value in data.items():
            snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), str(key))
            if snake not in known:
                raise ValueError(f"unknown task config field {key!r}")
            wire[snake] = value
        return cls(**wire)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TaskConfig:
        """Load a config from a YAML file (blocking file read; call it off the event loop).

        Args:
            path: A YAML file whose top level is a mapping of config fields.

        Raises:
            ValueError: The file is not a mapping or names an unknown field.
        """
        return cls.from_yaml_text(read_utf8(Path(path)), str(path))

    @classmethod
    def from_yaml_text(cls, text: str, where: str = "<string>") -> TaskConfig:
        """Load a config from YAML text; ``where`` names it in errors (a path, ``<stdin>``).

        Raises:
            ValueError: Not YAML (aliases, ``*name``, and a key given twice are refused
                too), not a mapping, or naming an unknown field.
        """
        import yaml

        try:
            data, _ = load_yaml(text)
        except yaml.YAMLError as exc:
            raise ValueError(yaml_problem(where, exc)) from None
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a task YAML file must hold a mapping of config fields")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None


@attrs.frozen
class SSHEndpoint:
    """How to reach a task over SSH, and where its logs live there.

    Attributes:
        task_id: The task.
        host: The SSH server address (``127.0.0.1`` for the local server).
        port: Its TCP port.
        user: The login that runs commands inside the task (the task id).
        logs_user: The login that runs commands on the log host in the task workspace;
            it works also after the task ended (follow logs with it).
        host_key: The server's public host key (``ssh-ed25519 AAAA...``) to pin.
        known_hosts: A ready ``known_hosts`` line for ``host``/``port``.
        workdir: The task workspace (absolute path on the SSH host).
        stdout_path: The absolute path of the task's stdout log.
        stderr_path: The absolute path of the task's stderr log.
        exec_prefix: The argv the server puts before a command to run it inside the task
            (``[]`` locally, ``["srun", "--jobid=N", "--overlap"]`` on Slurm); the SSH
            server applies it itself, clients must not add it.
        status: The task status when the endpoint was read.
        provider: The compute provider that runs the task (``local``, ``slurm``, ``ray``).
        commands_refused: Why commands and shells cannot run inside this task on its
            provider (a Ray job cannot be entered); ``None`` where they can. Logs and
            SFTP work either way.
    """

    task_id: str
    host: str
    port: int
    user: str
    logs_user: str
    host_key: str
    known_hosts: str
    workdir: str
    stdout_path: str
    stderr_path: str
    exec_prefix: list[str] = attrs.Factory(list)
    status: TaskStatus = TaskStatus.PENDING
    provider: str = ""
    commands_refused: str | None = None


@attrs.frozen
class Task:
    """A task as stored by the server.

    Attributes:
        task_id: Unique identifier (``task_...``).
        name: The display name from the config.
        status: Where it stands.
        config: What was submitted.
        organization_id: The owning organization.
        created_at: Submission time.
        started_at: When it began running.
        ended_at: When it reached a terminal status.
        exit_code: The code the process passed to ``exit()``, 0-255; None while it runs
            and when it did not exit by itself (killed by a signal, never started).
        message: A sentence about the current status (why it failed, what it waits for).
        reason: One name from a documented list (docs/tasks.md, "How a task ended"):
            ``Completed``, ``NonZeroExit``, ``Killed``, ``Cancelled``, ``TimeLimit``,
            ``OutOfMemory``, ``LaunchFailed``, ... once ended; ``Resources``,
            ``PartitionDown``, ``Priority``, ``WaitingForCapacity``, ... while pending.
        instance_type: The instance type it runs on.
        gpu_type: The GPU model assigned, if any.
        gpu_count: How many GPUs it holds.
        gpu_ids: The device indices assigned (``CUDA_VISIBLE_DEVICES``).
        cpus: CPU cores it holds.
        provider: The compute provider (``local``, ``slurm``).
        provider_id: The provider's own id (process group id, Slurm job id).
        ssh_host: SSH host (see ``GET /v1/tasks/{id}/ssh`` for the full endpoint);
            ``None`` while the server's SSH server is not listening, and on a replica
            whose host does not hold the task's files (the local provider).
        ssh_port: SSH port (``None`` when ``ssh_host`` is).
        ssh_user: SSH login (the task id).
        workdir: The task workspace.
        output_dir: Where ``$VI_FLOW_OUTPUT_DIR`` points.
        run_id: The flow run that launched it, if any.
        step_id: The flow step that launched it, if any.
        stdout_size: Bytes in the stdout log.
        stderr_size: Bytes in the stderr log.
        price_per_hour: The instance price.
        signal: The signal that ended the process (9 for SIGKILL), when one did.
        raw_reason: The engine's own words for ``reason`` (Slurm's ``state_reason``,
            such as ``ReqNodeNotAvail, UnavailableNodes:n1``), when it gave any.
    """

    task_id: str
    name: str
    status: TaskStatus
    config: TaskConfig
    organization_id: str = ""
    created_at: int = 0
    started_at: int | None = None
    ended_at: int | None = None
    exit_code: int | None = None
    message: str | None = None
    reason: str | None = None
    instance_type: str = ""
    gpu_type: str | None = None
    gpu_count: int = 0
    gpu_ids: list[int] = attrs.Factory(list)
    cpus: int = 1
    provider: str = "local"
    provider_id: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str | None = None
    workdir: str = ""
    output_dir: str = ""
    run_id: str | None = None
    step_id: str | None = None
    stdout_size: int = 0
    stderr_size: int = 0
    price_per_hour: float = 0.0
    signal: int | None = None
    raw_reason: str | None = None


@attrs.frozen
class TaskLogs:
    """A snapshot of a task's logs (``GET /v1/tasks/{id}/logs``).

    Attributes:
        task_id: The task.
        status: Its status when read (logs are empty while ``pending``).
        stream: ``stdout``, ``stderr`` or ``both`` (stdout's tail, then stderr's).
        lines: The last ``tail`` lines, without line endings.
        stdout_size: Bytes in the stdout log when read (a follow starts from here).
        stderr_size: Bytes in the stderr log when read.
        exit_code: The exit status once ended (``None`` when a signal ended it).
        signal: The signal that ended the process (9 for SIGKILL), when one did.
    """

    task_id: str
    status: TaskStatus
    stream: str = "stdout"
    lines: list[str] = attrs.Factory(list)
    stdout_size: int = 0
    stderr_size: int = 0
    exit_code: int | None = None
    signal: int | None = None

    @property
    def text(self) -> str:
        """The lines joined with newlines."""
        return "\n".join(self.lines)


@attrs.frozen
class TaskOutputFile:
    """A file a task wrote to ``$VI_FLOW_OUTPUT_DIR`` (a run artifact).

    Attributes:
        path: Relative POSIX path inside the output directory.
        size: Bytes.
    """

    path: str
    size: int


@attrs.frozen
class Volume:
    """A persistent volume (a directory under the server home for the local provider).

    Attributes:
        volume_id: Unique identifier (``vol_...``).
        name: Display name, unique in the organization (``volume://name``).
        size_gb: Nominal capacity.
        interface: ``file`` or ``block``.
        region: Where it lives.
        created_at: Creation time.
        attached_to: Tasks that mount it.
        path: Its host path (local provider).
    """

    volume_id: str
    name: str
    size_gb: int
    interface: str = "file"
    region: str = "local"
    created_at: int = 0
    attached_to: list[str] = attrs.Factory(list)
    path: str = ""


@attrs.frozen
class VolumeRequest:
    """The body of ``POST /v1/volumes``.

    Attributes:
        size_gb: Capacity in GB (1 or more).
        name: Display name; letters, digits, ``-``, ``_`` and ``.`` (no ``/``, no ``..``).
        interface: ``file`` or ``block``.
        region: Region; the provider's default when omitted.
    """

    size_gb: int = 1
    name: str | None = None
    interface: str = "file"
    region: str | None = None


@attrs.frozen
class MountRequest:
    """The body of ``POST /v1/tasks/{id}/volumes``.

    Attributes:
        volume_id: The volume's id or name.
        mount_path: Where the task sees it; ``/volumes/<name>`` when omitted.
    """

    volume_id: str
    mount_path: str | None = None


@attrs.frozen
class AvailableInstance:
    """One instance type the provider can run, with what it has free now.

    Attributes:
        instance_type: Its name (``cpu``, ``a100``, ``4xa100``).
        gpu_type: GPU model, ``None`` for CPU-only.
        gpu_count: GPUs per instance.
        gpu_memory_gb: Memory per GPU.
        cpus: CPU cores.
        memory_gb: Memory.
        price_per_hour: Price (0 for the local machine).
        available: Whether it can start now (capacity free, not reserved).
        region: Where it runs.
    """

    instance_type: str
    gpu_type: str | None = None
    gpu_count: int = 0
    gpu_memory_gb: int = 0
    cpus: int = 1
    memory_gb: int = 0
    price_per_hour: float = 0.0
    available: bool = True
    region: str = "local"


@attrs.frozen
class ReservationRequest:
    """The body of ``POST /v1/reservations``.

    Attributes:
        gpu: GPU shorthand (``"a100:2"``); or give ``instance_type``.
        instance_type: An instance type from the catalog.
        cpus: CPU cores to hold (default 1, or the instance's).
        start_time: Window start in ms since the epoch (now when omitted).
        duration_hours: Window length.
        name: Display name.
        auto_renew: Start a new window of the same length each time one ends, until
            cancelled (the capacity is held open-ended from the start).
    """

    gpu: str | None = None
    instance_type: str | None = None
    cpus: int | None = None
    start_time: int | None = None
    duration_hours: float = 1.0
    name: str | None = None
    auto_renew: bool = False


@attrs.frozen
class Reservation:
    """Capacity held for a time window; only tasks that name it may use it.

    Attributes:
        reservation_id: Unique identifier (``res_...``).
        name: Display name.
        status: ``scheduled``, ``active``, ``expired`` or ``cancelled``.
        instance_type: The instance type held.
        gpu_type: GPU model held.
        gpu_count: GPUs held.
        cpus: CPU cores held.
        start_time: Window start.
        end_time: Window end.
        region: Where.
        created_at: Creation time.
        auto_renew: As requested.
    """

    reservation_id: str
    name: str
    status: ReservationStatus
    instance_type: str
    gpu_type: str | None = None
    gpu_count: int = 0
    cpus: int = 0
    start_time: int = 0
    end_time: int = 0
    region: str = "local"
    created_at: int = 0
    auto_renew: bool = False


@attrs.frozen
class AvailabilitySlot:
    """A window in which an instance type could be reserved.

    Attributes:
        instance_type: The instance type.
        start_time: The earliest start.
        end_time: The latest end.
        gpu_count: GPUs free in the whole window.
        cpus: CPU cores free in the whole window.
        region: Where.
    """

    instance_type: str
    start_time: int
    end_time: int
    gpu_count: int = 0
    cpus: int = 0
    region: str = "local"


@attrs.frozen
class SSHKeyRequest:
    """The body of ``POST /v1/ssh-keys``.

    Attributes:
        name: Display name.
        public_key: An OpenSSH public key line (``ssh-ed25519 AAAA... comment``).
    """

    name: str
    public_key: str


@attrs.frozen
class SSHKey:
    """A public key allowed to open SSH sessions on the organization's tasks.

    Attributes:
        key_id: Unique identifier (``sshkey_...``).
        name: Display name.
        public_key: The OpenSSH public key line.
        fingerprint: Its SHA256 fingerprint.
        created_at: Registration time.
        added_by: The name of the API key that registered it: revoking that key deletes
            it (``None`` for a key registered before vi-flow recorded it).
    """

    key_id: str
    name: str
    public_key: str
    fingerprint: str = ""
    created_at: int = 0
    added_by: str | None = None
