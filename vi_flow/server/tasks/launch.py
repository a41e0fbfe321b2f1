"""How a submitted :class:`~vi_flow.models.tasks.TaskConfig` becomes a launch.

The checks a task configuration must pass before it is recorded, the ``argv`` a command
runs as, the environment the service adds (task id, workspace, output directory, one
``VI_FLOW_VOLUME_<NAME>`` per mounted volume), where a volume's mount path appears in the
workspace, and the task directory prepared before the provider sees the task. Pure
functions; :class:`~vi_flow.server.tasks.service.TaskService` puts them together.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...models.limits import has_control_characters, is_unicode, long_part, shown
from ...models.tasks import TaskConfig
from ..errors import APIProblem
from ..providers._job_files import VARIABLE_NAME
from ..providers.base import MAX_ARG_STRLEN, LaunchSpec, Mount, Placement, TaskPaths

__all__ = [
    "build_spec",
    "check_config",
    "check_env",
    "command_argv",
    "prepare_task_dir",
    "task_env",
    "visible_path",
    "volume_env_name",
]

_ENV_NAME = re.compile(r"[^A-Z0-9]+")
# QA: each was accepted and the task failed as it started. Linux's ARG_MAX (2 MiB with the
# default stack) bounds a command line and its environment together, with the server's
# own variables; bubblewrap takes 9,000 arguments, three for each variable.
MAX_COMMAND_AND_ENV = 1024 * 1024
MAX_ENV_VARIABLES = 1000


def command_argv(config: TaskConfig) -> list[str]:
    """The task's command as an argv list (a string runs under ``/bin/sh -c``)."""
    if isinstance(config.command, list):
        return [str(part) for part in config.command]
    line = str(config.command or "")
    if line.startswith(("-", "+")):  # the line, not an option of sh's (QA BA: `sh -c -x`)
        return ["/bin/sh", "-c", "--", line]
    return ["/bin/sh", "-c", line]


def check_config(config: TaskConfig) -> None:
    """Reject a configuration no provider could run.

    Raises:
        APIProblem: 422 naming ``command``, ``maxRunTime`` or ``workingDir``.
    """
    command = config.command
    if command is None or (isinstance(command, str) and not command.strip()) or command == []:
        raise APIProblem.validation("command", "required")
    words = [command] if isinstance(command, str) else command
    for i, word in enumerate(words):
        if size := _past_arg_limit(word):
            field = "command" if isinstance(command, str) else f"command[{i}]"
            raise APIProblem.validation(
                field,
                f"{size:,} bytes: Linux passes at most {MAX_ARG_STRLEN - 1:,} in one argument;"
                " put it in a file (upload it) and run that",
            )
    if config.max_run_time is not None and config.max_run_time <= 0:
        raise APIProblem.validation(
            "maxRunTime", f"must be a positive number of seconds, got {config.max_run_time}"
        )
    if config.working_dir and ".." in Path(config.working_dir).parts:
        raise APIProblem.validation("workingDir", f"{config.working_dir!r} must not contain '..'")
    check_env(config.env)
    _check_total(words, config.env)


def _check_total(words: list[str], env: dict[str, str]) -> None:
    """Refuse a command and environment that no process can be started with together."""
    in_command = sum(len(str(word).encode(errors="surrogatepass")) + 1 for word in words)
    in_env = sum(
        len(name.encode()) + len(value.encode(errors="surrogatepass")) + 2
        for name, value in env.items()
    )
    if in_command + in_env > MAX_COMMAND_AND_ENV:
        raise APIProblem.validation(
            "env" if in_env > in_command else "command",
            f"the command ({in_command:,} bytes) and env ({in_env:,} bytes) together are"
            f" past the {MAX_COMMAND_AND_ENV:,} bytes a task can be started with; put the"
            " data in a file (upload it) and read it there",
        )


def _name_start(name: str) -> str:
    """A bad variable name for an error: its length, its first three characters and its
    first character that is not allowed (the first, when it is a digit)."""
    if not name:
        return "an empty name"
    bad = next(
        (i for i, c in enumerate(name) if not (c.isascii() and (c.isalnum() or c == "_"))), 0
    )
    start = shown(name[:3]) + ("..." if len(name) > 3 else "")
    where = f"character {bad + 1}: {shown(name[bad])}"
    return f"a name of {len(name)} characters starting {start} ({where})"


def check_env(env: dict[str, str]) -> None:
    """Refuse variables a task could not be given on every provider: a name a shell
    cannot set (the cluster providers hand the environment over in a file the job's
    shell reads; ``A-B`` failed the job there, and the server's start after it), or a
    value no process can hold.

    Raises:
        APIProblem: 422 naming ``env`` (a bad name, or too many) or ``env.<NAME>`` (a
            bad value).
    """
    if len(env) > MAX_ENV_VARIABLES:
        raise APIProblem.validation(
            "env", f"{len(env):,} variables: a task takes at most {MAX_ENV_VARIABLES:,}"
        )
    for name, value in env.items():
        if not VARIABLE_NAME.fullmatch(name):  # named by its start only: a secret given
            raise APIProblem.validation(  # without its NAME= may be in the name's place
                "env", f"{_name_start(name)} is not a variable name: letters, digits and '_',"
                " not starting with a digit",
            )  # fmt: skip
        if not _encodable(value):
            raise APIProblem.validation(f"env.{name[:64]}", "must not hold NUL or invalid UTF-8")
        if size := _past_arg_limit(f"{name}={value}"):
            raise APIProblem.validation(
                f"env.{name[:64]}",
                f"NAME=value is {size:,} bytes: Linux passes at most {MAX_ARG_STRLEN - 1:,} in one"
                " variable; put it in a file",
            )


def _past_arg_limit(text: str) -> int | None:
    """The size in bytes of ``text`` when Linux cannot pass it as one argument or
    variable (:data:`MAX_ARG_STRLEN`), else None (short texts are not encoded to tell)."""
    if len(text) < MAX_ARG_STRLEN // 4:
        return None
    size = len(text.encode(errors="surrogatepass"))
    return size if size >= MAX_ARG_STRLEN else None


def _encodable(text: str) -> bool:
    """Whether ``text`` can be handed to a process: UTF-8 without NUL."""
    return is_unicode(text) and "\x00" not in text


def volume_env_name(name: str) -> str:
    """``VI_FLOW_VOLUME_<NAME>``: the variable holding a mounted volume's path."""
    return "VI_FLOW_VOLUME_" + _ENV_NAME.sub("_", name.upper()).strip("_")


def visible_path(workdir: Path, mount_path: str) -> Path:
    """Where ``mount_path`` appears inside the task's workspace.

    Raises:
        APIProblem: 422 for the workspace itself (``""``, ``/``), a path with ``..``,
            a control character (a newline, NUL) or text that is not UTF-8.
    """
    relative = mount_path.strip().lstrip("/")
    if not relative:
        problem = "must name a folder in the workspace, not the workspace itself"
    elif ".." in relative.split("/"):
        problem = "must not go up with '..'"
    elif not _encodable(relative) or has_control_characters(relative):
        problem = "must not hold control characters (a newline, NUL) or invalid UTF-8"
    elif too_long := long_part(relative):
        problem = too_long
    else:
        return workdir / relative
    raise APIProblem.validation("volumes.mountPath", f"{shown(mount_path)} {problem}")


def task_env(
    config: TaskConfig, task_id: str, paths: TaskPaths, mounts: list[Mount]
) -> dict[str, str]:
    """The task's own environment plus the variables the service sets.

    ``PYTHONUNBUFFERED=1`` unless the task's env sets it: a Python program writes its
    output to a pipe or file in 8 KiB blocks, so its prints would reach the log (and a
    follower) only when a block fills or it exits. A task that wants buffering sets
    ``PYTHONUNBUFFERED`` to ``""``.
    """
    env = {"PYTHONUNBUFFERED": "1", **config.env}
    env.update(
        {
            "VI_FLOW_TASK_ID": task_id,
            "VI_FLOW_WORKSPACE": str(paths.workdir),
            "VI_FLOW_OUTPUT_DIR": str(paths.output_dir),
        }
    )
    for mount in mounts:
        env[volume_env_name(mount.name)] = str(mount.host_path)
    return env


def build_spec(
    task_id: str,
    org_id: str,
    config: TaskConfig,
    placement: Placement,
    env: dict[str, str],
    paths: TaskPaths,
    mounts: list[Mount],
) -> LaunchSpec:
    """The :class:`LaunchSpec` the provider gets for a task."""
    return LaunchSpec(
        task_id=task_id,
        organization_id=org_id,
        config=config,
        placement=placement,
        argv=command_argv(config),
        env=env,
        paths=paths,
        mounts=mounts,
        max_run_time=config.max_run_time,
        reservation_id=config.reservation_id,
    )


def prepare_task_dir(paths: TaskPaths) -> None:
    """Create the workspace, output and log directories and empty logs (blocking)."""
    for directory in (paths.workdir, paths.output_dir, paths.stdout.parent):
        directory.mkdir(parents=True, exist_ok=True)
    paths.stdout.touch()
    paths.stderr.touch()
