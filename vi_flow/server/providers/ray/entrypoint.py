"""The shell entry point a vi_flow task runs as on Ray, and the files it shares with us.

Ray's Jobs API shows a job's ``entrypoint``, ``runtime_env`` and ``metadata`` to anyone who
can reach the dashboard, so none of them carries the task's environment. It goes into a
mode-0600 file in the task directory (:data:`ENV_FILE`) that doubles as the task's *start
token*: the entry point claims it with an atomic ``mv`` before it runs anything, and a
cancel revokes it with an atomic unlink. Exactly one of the two wins, so a job cancelled
while Ray still has it PENDING (Ray cannot stop those: its stop answers ``true`` and the
job starts later) finds no token when it starts and exits without running the command.

The entry point then writes :data:`STARTED_FILE` (the ``CUDA_VISIBLE_DEVICES`` Ray gave
it; its mtime is when the command began), sources and deletes the environment, runs the
command with stdout/stderr appended to the task's log files, and writes the command's
exit status to :data:`EXIT_FILE` (Ray's record keeps only a sentence about it), as the
shell reports it (signal N as 128 + N), also when Ray stops the job with SIGTERM. Blocking
helpers here run in threads.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
from collections.abc import Sequence
from pathlib import Path

import attrs

from .._job_files import ENV_FILE, load_env, make_task_dirs, write_secret_file
from ..base import LaunchSpec, TaskPaths

__all__ = [
    "CLAIMED_FILE",
    "ENV_FILE",
    "EXIT_FILE",
    "STARTED_FILE",
    "Started",
    "entrypoint",
    "forget_secrets",
    "prepare",
    "read_exit_code",
    "read_started",
    "revoke",
]

# ENV_FILE (from .._job_files) holds the environment until the entry point claims it.
#: The claimed environment, deleted as soon as the entry point has read it.
CLAIMED_FILE = ".vi-flow-env.claimed"
#: Written when the command starts: the GPUs Ray assigned.
STARTED_FILE = ".vi-flow-started"
#: The command's exit status, written when it ends.
EXIT_FILE = ".vi-flow-exit"
#: What the entry point exits with when the token was revoked (never a command's status
#: here: the provider stops watching a cancelled job's outcome).
REVOKED_EXIT = 0


#: ``vf_mark FILE TEXT``: write a marker the server reads. The task may have left a link
#: or anything else at that name in its directory (it can write there, and this shell
#: runs outside the sandbox): it is removed, and the file made anew (``set -C``: never
#: through a link). The task's processes are gone by then (its PID namespace ended).
_MARK = 'vf_mark() { rm -rf -- "$1" && ( set -C && printf \'%s\\n\' "$2" > "$1" ); }'

#: What the task's environment starts from (then its own, loaded in the sandbox): the
#: node's ``PATH``, locale and time zone, the GPUs Ray gave the job; ``HOME`` is added.
_ALLOWED_ENV = " ".join(
    [f'${{{name}+"{name}=${name}"}}' for name in ("PATH", "LANG", "LANGUAGE", "TZ")]
    + ['${CUDA_VISIBLE_DEVICES+"CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"}', "PYTHONUNBUFFERED=1"]
)


def entrypoint(spec: LaunchSpec, sandbox: Sequence[str] = ()) -> str:
    """The ``/bin/sh`` command line Ray runs for ``spec`` (every path quoted).

    Args:
        spec: The task.
        sandbox: The bubblewrap argv (ending in ``--``) the command runs behind; a node
            without ``bwrap`` then fails the task saying so. Empty: no sandbox.
    """
    paths = spec.paths
    root = paths.root

    def q(path: Path | str) -> str:
        return shlex.quote(str(path))

    token, claimed = q(root / ENV_FILE), q(root / CLAIMED_FILE)
    run = ["/bin/sh", "-c", load_env(str(root / CLAIMED_FILE)), "vi-flow-task", *spec.argv]
    lines = [
        _MARK,
        # Ray stops a job with SIGTERM to every process of it: the command dies of it,
        # this shell notes it and lives on to record the command's status.
        "trap 'stopped=1' TERM",
        f"cd {q(spec.command_dir)} || exit 127",
        f"mv {token} {claimed} 2>/dev/null || "
        f"{{ echo 'vi_flow: task {spec.task_id} was cancelled before it started' >&2; "
        f"exit {REVOKED_EXIT}; }}",
        f'vf_mark {q(root / STARTED_FILE)} "${{CUDA_VISIBLE_DEVICES-}}"',
        '[ -z "${stopped-}" ] || exit 143',
        *_sandbox_check(sandbox, q(paths.stderr)),
        # the environment is loaded inside the sandbox: loaded here, the task's PATH
        # would choose the bwrap that runs (as the node's user), its LD_PRELOAD go in it
        # and the job's own environment (Ray's, and whoever started it: RAY_ADDRESS,
        # their HOME, their keys) stays out: the task starts from an allow-list
        f"env -i {_ALLOWED_ENV} HOME={q(paths.workdir)} {shlex.join([*sandbox, *run])}"
        f" >> {q(paths.stdout)} 2>> {q(paths.stderr)} < /dev/null",
        "rc=$?",
        f'vf_mark {q(root / EXIT_FILE)} "$rc"',
        'exit "$rc"',
    ]
    return "\n".join(lines)


def _sandbox_check(sandbox: Sequence[str], stderr: str) -> list[str]:
    if not sandbox:
        return []
    message = (
        "vi_flow: bwrap (bubblewrap) is not installed on $(hostname);"
        " this server runs every job in a sandbox"
    )
    return [f'command -v bwrap >/dev/null || {{ echo "{message}" >> {stderr}; exit 127; }}']


def prepare(spec: LaunchSpec) -> None:
    """Make the task's directories, mounts and start token; clear markers of a past run."""
    paths = spec.paths
    make_task_dirs(spec)
    for name in (STARTED_FILE, EXIT_FILE, CLAIMED_FILE):
        (paths.root / name).unlink(missing_ok=True)
    write_secret_file(paths.root / ENV_FILE, spec.env)


def revoke(paths: TaskPaths) -> bool:
    """Take the start token away; True when the command had not started (and now never
    will), False when the entry point had already claimed it."""
    try:
        (paths.root / ENV_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


def forget_secrets(paths: TaskPaths) -> None:
    """Delete whatever is left of the environment once the job has ended."""
    for name in (ENV_FILE, CLAIMED_FILE):
        with contextlib.suppress(FileNotFoundError):
            (paths.root / name).unlink()


@attrs.frozen
class Started:
    """What the entry point recorded when the command started.

    Attributes:
        time: Epoch seconds (the marker's mtime).
        gpu_ids: The device indices in ``CUDA_VISIBLE_DEVICES`` (empty without GPUs).
    """

    time: float
    gpu_ids: tuple[int, ...]


#: The most of a marker read: a status, or a list of GPU indices.
_MARKER_BYTES = 4096


def _read_marker(path: Path) -> tuple[float, str] | None:
    """A marker's mtime and text; None when there is none, or when what is there is not a
    plain file (the task can write in its directory: a link to ``/dev/zero``, a FIFO or a
    device is never opened through, nor read without end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # missing, or a link
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return st.st_mtime, os.read(fd, _MARKER_BYTES).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)


def read_started(paths: TaskPaths) -> Started | None:
    """The start marker, or None while the command has not started."""
    found = _read_marker(paths.root / STARTED_FILE)
    if found is None:
        return None
    stamp, text = found
    ids = tuple(int(part) for part in text.split(",") if part.strip().isdigit())
    return Started(stamp, ids)


def read_exit_code(paths: TaskPaths) -> int | None:
    """The command's exit status, or None when it did not end by itself."""
    found = _read_marker(paths.root / EXIT_FILE)
    text = "" if found is None else found[1]
    return int(text) if text.lstrip("-").isdigit() and len(text) < 12 else None
