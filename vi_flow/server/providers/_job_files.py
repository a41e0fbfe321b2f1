"""What a Slurm or Ray job finds in its task directory, made before it is submitted.

The directories and volume links (:func:`make_task_dirs`), on storage every node sees,
and the task's environment. Slurm keeps a job's environment in its state directory and
Ray's dashboard shows a job's ``runtime_env`` to anyone who can reach it, so both
providers put it in a mode-0600 file of ``export`` lines in the task directory
(:data:`ENV_FILE`) that the job sources and deletes. Blocking: run these in a thread.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
from collections.abc import Mapping
from pathlib import Path

from ..beneath import open_beneath
from .base import InvalidRequest, LaunchSpec

__all__ = [
    "ENV_FILE",
    "VARIABLE_NAME",
    "export_lines",
    "load_env",
    "make_task_dirs",
    "write_secret_file",
    "write_session_env",
]

#: The task's environment, mode 0600, in its directory until the job has read it.
ENV_FILE = ".vi-flow-env"
#: A name a POSIX shell can set: what the file's ``export`` lines (and the server, when a
#: task is submitted) accept.
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def write_secret_file(path: Path, env: Mapping[str, str]) -> None:
    """Write ``export NAME=value`` lines to ``path``, readable only by its owner.

    Blocking: call it off the event loop. The file is created with mode 0600 before any
    byte is written, so no other user ever sees the values. What was at ``path`` is
    removed first and the file made anew (``O_EXCL``): a task directory used again (a
    Ray task prepared once more) may hold a link its last run planted there, and the
    server must not write through it.

    Raises:
        InvalidRequest: A name a shell cannot set (the server refuses them when a task is
            submitted; a task stored before it did fails, rather than the server).
        FileExistsError: Something took ``path`` between the removal and the creation.
    """
    text = export_lines(env)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def export_lines(env: Mapping[str, str]) -> str:
    """``export NAME=value`` lines a shell sources to set ``env``.

    Raises:
        InvalidRequest: A name a shell cannot set.
    """
    for name in env:
        if not VARIABLE_NAME.fullmatch(name):
            raise InvalidRequest(f"env: {name[:64]!r} is not a variable name a shell can set")
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def write_session_env(root: Path, env: Mapping[str, str]) -> Path:
    """A new mode-0600 file of ``export`` lines in the ``logs`` directory of the task at
    ``root`` (a name of its own, made without following a link) for one SSH session to
    source inside the task's sandbox with :func:`load_env`; the session deletes it.

    ``logs`` is read-only in the sandbox: in the task's own directory, the running task
    swapped the file for a script of its own before the session read it (a review found
    its code run in 2 of 6 sessions, with the user's terminal).

    Raises:
        InvalidRequest: A name a shell cannot set.
        OSError: The file could not be made.
    """
    text = export_lines(env)
    path = root / "logs" / f"{ENV_FILE}-{secrets.token_hex(8)}"
    fd = open_beneath(root, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


def load_env(path: str, *, delete: bool = True) -> str:
    """A shell script that sources the environment file ``path`` (and deletes it, unless
    ``delete`` is false: the caller does), then runs its arguments with ``exec``
    (``sh -c SCRIPT NAME ARGV...``): run it *inside* the task's sandbox. Sourced on the
    node before the sandbox, a task's ``PATH`` chose the ``bwrap`` that ran, as root,
    and its ``LD_PRELOAD`` went into it.

    ``CUDA_VISIBLE_DEVICES`` stays what the cluster gave the job (unset when it gave
    none): the task's own env cannot claim other GPUs. What it was is kept in the
    positional parameters, which sourcing a file of ``export`` lines cannot change (a
    variable could: a task's own ``vf_gpus`` set it, and was lost).
    """
    quoted = shlex.quote(path)
    remove = f" rm -f {quoted};" if delete else ""
    return "\n".join(
        [
            'set -- "${CUDA_VISIBLE_DEVICES-}" "${CUDA_VISIBLE_DEVICES+1}" "$@"',
            f"if [ -f {quoted} ]; then . {quoted};{remove} fi",
            'if [ -n "$2" ]; then export CUDA_VISIBLE_DEVICES="$1";'
            " else unset CUDA_VISIBLE_DEVICES; fi",
            "shift 2",
            'exec "$@"',
        ]
    )


def make_task_dirs(spec: LaunchSpec) -> None:
    """Create the task's workspace (and the ``working_dir`` in it), output and log
    directories and its volume links."""
    paths = spec.paths
    for directory in (paths.workdir, paths.output_dir, paths.stdout.parent, paths.stderr.parent):
        directory.mkdir(parents=True, exist_ok=True)
    spec.command_dir.mkdir(parents=True, exist_ok=True)  # a new workspace: no link in it
    for mount in spec.mounts:
        visible = mount.visible_path
        if visible != mount.host_path and not visible.exists():
            visible.parent.mkdir(parents=True, exist_ok=True)
            visible.symlink_to(mount.host_path, target_is_directory=True)
