"""What slurmrestd says about jobs, nodes and reservations, and what we submit to it.

Plain records decoded from the REST answers, the batch script and body of a job
submission (its secrets go in the file of :mod:`.._job_files`). This module is the one
adapter between REST versions: v0.0.37/38 (Debian's Slurm 22.05) and v0.0.40+ (current
Slurm) differ in numbers (``{"set", "number"}`` objects), job states and node flags
(lists), exit codes (an object naming the signal) and the submission's environment,
script and GPU fields; :meth:`JobSubmission.body` and the ``from_rest`` readers take
both. :mod:`.rest` owns the wire; this module owns the shapes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

import attrs
from typing_extensions import Self

from .._exits import FATAL_SIGNALS, Exit, from_wait_status
from .._job_files import load_env

__all__ = [
    "BASE_ENV",
    "LAUNCH_FAILURES",
    "LEGACY_VERSIONS",
    "JobSubmission",
    "SlurmJob",
    "SlurmNode",
    "SlurmReservation",
    "decode_wait_status",
    "exit_of",
    "job_status",
    "parse_gpu_indices",
    "parse_gres",
    "rest_int",
]

#: What every job starts with (a REST job inherits nothing from the submitter). Logs are
#: followed live, so Python writes unbuffered as it would on a terminal.
BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
}


def decode_wait_status(raw: int | None) -> tuple[int | None, int | None]:
    """Split Slurm's ``exit_code`` (a raw ``waitpid`` status) into (exit code, signal).

    Args:
        raw: The job's ``exit_code`` as Slurm reports it: ``exit 3`` reads 768, a job
            killed by SIGTERM reads 15.

    Returns:
        ``(exit_code, None)`` for a normal exit, ``(None, signal)`` for a signal.
    """
    end = from_wait_status(raw)
    return end.exit_code, end.signal


def exit_of(value: Any) -> Exit:
    """A job's end from its ``exit_code``, in either REST shape.

    v0.0.37/38 send the raw ``waitpid`` status (an int); v0.0.39+ send
    ``{"status": ["SIGNALED"], "return_code": {...}, "signal": {"id": {...}}}``.
    """
    if not isinstance(value, dict):
        return from_wait_status(rest_int(value))
    status = {str(s).upper() for s in value.get("status") or ()}
    if status & {"SIGNALED", "CORE_DUMPED"}:
        number = rest_int((value.get("signal") or {}).get("id"))
        if number:
            return Exit(signal=number)
    code = rest_int(value.get("return_code"))
    return Exit() if code is None or status & {"PENDING", "INVALID"} else Exit(exit_code=code)


#: REST versions whose shapes are the old ones (plain numbers, a mapping environment).
LEGACY_VERSIONS = frozenset({"v0.0.37", "v0.0.38"})

#: ``state_reason`` values of a job that ended because it could not start on its node.
LAUNCH_FAILURES = frozenset({"JobLaunchFailure", "launch_failed_requeued_held", "Prolog"})


_STATUS_BY_STATE = {
    "PENDING": "pending",
    "REQUEUED": "pending",
    "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending",
    "CONFIGURING": "pending",
    "RESIZING": "pending",
    "SUSPENDED": "pending",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "COMPLETED": "completed",
    "CANCELLED": "cancelled",
}


def job_status(state: str) -> str:
    """Map a Slurm job state to ``pending``, ``running``, ``completed``, ``failed``, ``cancelled``.

    Every terminal state that is neither a success nor a cancel (FAILED, TIMEOUT,
    NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, DEADLINE, PREEMPTED, ...) is ``failed``.
    """
    return _STATUS_BY_STATE.get(state.upper(), "failed")


def parse_gres(text: str | None) -> dict[str, int]:
    """Read GPU counts by type from a Slurm gres string.

    Args:
        text: Such as ``"gpu:h100:4"``, ``"gpu:h100:2(IDX:0-1),gpu:a100:1(S:0)"`` or
            ``"gpu:4"`` (an untyped GPU is reported as type ``"gpu"``).

    Returns:
        ``{"h100": 4}``; empty when there are no GPUs.
    """
    counts: dict[str, int] = {}
    for item in re.split(r",(?![^(]*\))", text or ""):
        parts = item.split("(", 1)[0].strip().split(":")
        if parts[0] != "gpu" or len(parts) < 2 or not parts[-1].isdigit():
            continue
        kind = parts[1] if len(parts) == 3 else "gpu"
        counts[kind] = counts.get(kind, 0) + int(parts[-1])
    return counts


def parse_gpu_indices(details: Any) -> tuple[int, ...]:
    """GPU indices from a job's ``gres_detail`` (``["gpu:h100:2(IDX:0-1)"]`` -> ``(0, 1)``)."""
    found: list[int] = []
    for detail in details or ():
        match = re.search(r"\(IDX:([0-9,\-]+)\)", str(detail))
        for part in match.group(1).split(",") if match else ():
            low, _, high = part.partition("-")
            if low.isdigit():
                found.extend(range(int(low), int(high or low) + 1))
    return tuple(found)


def rest_int(value: Any) -> int | None:
    """An int from a plain number or a v0.0.39+ ``{"set", "infinite", "number"}`` object."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _state(value: Any) -> str:
    if isinstance(value, list):
        return str(value[0]) if value else "UNKNOWN"
    return str(value or "UNKNOWN")


def _launch_failed(data: Mapping[str, Any], end: Exit) -> bool:
    """A launch failure's ``exit_code`` is a Slurm error number, never a process's end:
    a raw wait status is a signal below 256 or an exit code times 256, and v0.0.39+
    name the signal or give a code of 0-255."""
    if str(data.get("state_reason") or "") not in LAUNCH_FAILURES:
        return False
    if isinstance(data.get("exit_code"), dict) and end.signal is not None:
        return False  # v0.0.39+ said SIGNALED
    raw = _raw_exit(data.get("exit_code"))
    return raw is None or (raw >= 256 and raw & 0xFF != 0)


def _number(value: int) -> dict[str, Any]:
    """A v0.0.39+ ``*_no_val`` number."""
    return {"set": True, "infinite": False, "number": value}


def _raw_exit(value: Any) -> int | None:
    return rest_int(value.get("return_code") if isinstance(value, dict) else value)


def _node_flags(data: Mapping[str, Any]) -> tuple[str, ...]:
    """v0.0.37/38 send ``state_flags``; v0.0.39+ put the flags after the base ``state``."""
    if "state_flags" in data:
        return tuple(str(f) for f in data.get("state_flags") or ())
    state = data.get("state")
    return tuple(str(f) for f in state[1:]) if isinstance(state, list) else ()


def _time(value: Any) -> float | None:
    seconds = rest_int(value)
    return float(seconds) if seconds else None


#: A node without bubblewrap fails the job, saying so, rather than run it unsandboxed.
_SANDBOX_CHECK = (
    "if ! command -v bwrap >/dev/null; then",
    '  echo "vi-flow: bwrap (bubblewrap) is not installed on $(hostname); this server runs'
    ' every job in a sandbox" >&2; exit 127',
    "fi",
)
#: Slurm ends a job (scancel, its time limit) with SIGTERM to every process of it, then
#: SIGKILL after KillWait. The batch shell died of the TERM at once, bwrap
#: (--die-with-parent) with it, and the sandbox before the task's own handler could save
#: a checkpoint (QA AU). So the shell and bwrap ignore TERM, and the command gets it back
#: at its default (``env --default-signal``, coreutils 8.31+) inside the sandbox: Slurm's
#: TERM reaches the task alone, and its SIGKILL everything, the sandbox still tied to the
#: batch shell (letting it outlive the shell had it escape its job on a cluster that
#: tracks processes by their parents: QA AW). A node whose env cannot do it keeps the
#: old way. The same for the other signals a job is sent to act on (``scancel --signal``,
#: ``USR1`` to save a checkpoint): without the sandbox the command was the batch step's
#: only process and got them alone; with it, ``USR1`` killed the shell, and the task.
#: ``scancel --batch`` signals the batch shell alone: held, it reaches no one (forwarding
#: it would give a job-wide signal to the command twice); docs/production.md says so.
_HELD_SIGNALS = ("HUP", "INT", "QUIT", "TERM", "USR1", "USR2")
_DEFAULTS = f"env --default-signal={','.join(_HELD_SIGNALS)}"
_SIGNALS_HELD = (
    "reset=()",
    f"if {_DEFAULTS} true 2>/dev/null; then",
    f"  reset=({_DEFAULTS}); trap '' {' '.join(_HELD_SIGNALS)}",
    "fi",
)
#: bwrap reports a command killed by signal N as status 128 + N: die of that signal, so
#: Slurm reports the signal as it would without the sandbox. Only a signal that ends a
#: process: after ``exit 147`` the batch shell sent itself SIGSTOP (19), and the job
#: stayed running, stopped, for good (QA AA). Bash ignores SIGQUIT itself, whatever
#: its trap: the kill program, in its place, dies of it (QA AY: "exited with status 131").
_SANDBOX_EXIT = (
    "status=$?",
    f"trap - {' '.join(_HELD_SIGNALS)}",
    f"case $((status - 128)) in {'|'.join(map(str, sorted(FATAL_SIGNALS)))})",
    "  kill -$((status - 128)) $$",
    '  if killer=$(type -P kill); then exec "$killer" -$((status - 128)) $$; fi ;;',
    "esac",
    'exit "$status"',
)


@attrs.frozen
class JobSubmission:
    """What to run as one Slurm batch job.

    Attributes:
        name: The job name (shows in ``squeue``).
        command: A shell command line, run by ``bash -c`` in ``working_dir``, when
            ``argv`` is empty.
        argv: The command as its words, each its own word of the script: not one
            ``bash -c`` argument, which Linux bounds at 128 KiB (``E2BIG``).
        working_dir: The job's working directory (must exist on the node).
        home: The job's ``HOME`` (the task's workspace); ``working_dir`` when empty.
        stdout_path: File for the job's standard output.
        stderr_path: File for standard error (the same path merges both).
        cpus: CPUs for the one task.
        memory_mb: Memory for the job, in MiB.
        gpu_type: GPU type for ``gres`` (``"h100"``), or None for any type.
        gpu_count: GPUs to allocate (0 for none).
        env: Environment of the job: never secrets, Slurm stores it in its state dir.
        secret_file: A mode-0600 file of ``export`` lines (see :mod:`.._job_files`)
            that the job sources and deletes before running ``command``.
        time_limit_s: Wall-clock limit; Slurm rounds it up to whole minutes.
        partition: The partition, or None for the cluster's default.
        reservation: A reservation to run in, or None.
        sandbox: The bubblewrap argv (ending in ``--``) the command runs behind, so the
            job sees only its own task directory and volumes; empty for none.
    """

    name: str
    command: str
    working_dir: str
    stdout_path: str
    stderr_path: str
    argv: tuple[str, ...] = ()
    home: str = ""
    cpus: int = 1
    memory_mb: int = 512
    gpu_type: str | None = None
    gpu_count: int = 0
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    secret_file: str | None = None
    time_limit_s: float | None = None
    partition: str | None = None
    reservation: str | None = None
    sandbox: tuple[str, ...] = ()

    def script(self) -> str:
        """The batch script: in the command's sandbox (if any), load and delete the
        secret file, then run the command. Nothing of the task's reaches the script
        before the sandbox: its environment would choose the ``bwrap`` run as root."""
        lines = ["#!/bin/bash", f"cd {shlex.quote(self.working_dir)} || exit 127"]
        run = list(self.argv) or ["/bin/bash", "-c", self.command]
        if self.secret_file:
            run = ["/bin/bash", "-c", load_env(self.secret_file), "vi-flow-task", *run]
        if not self.sandbox:
            lines.append(f"exec {shlex.join(run)}")
            return "\n".join(lines) + "\n"
        command = f'{shlex.join(self.sandbox)} "${{reset[@]}}" {shlex.join(run)}'
        lines += [*_SANDBOX_CHECK, *_SIGNALS_HELD, command, *_SANDBOX_EXIT]
        return "\n".join(lines) + "\n"

    def body(self, version: str = "v0.0.38") -> dict[str, Any]:
        """The ``POST /job/submit`` body in the shape of REST ``version``.

        v0.0.37/38 take the environment as a mapping, plain numbers and ``gres``;
        v0.0.40+ take ``K=V`` strings, ``{"set", "number"}`` objects, ``tres_per_node``
        and the script inside ``job`` (v0.0.40 also at the top, where it began).
        """
        legacy = version in LEGACY_VERSIONS
        # HOME: the workspace, as a local or Ray task's (caches go there, ~ works)
        env = {**BASE_ENV, "HOME": self.home or self.working_dir, **self.env}
        job: dict[str, Any] = {
            "name": self.name,
            "cpus_per_task": self.cpus,
            "memory_per_node": self.memory_mb if legacy else _number(self.memory_mb),
            "current_working_directory": self.working_dir,
            "standard_output": self.stdout_path,
            "standard_error": self.stderr_path,
            "environment": env if legacy else [f"{k}={v}" for k, v in env.items()],
            # A requeued job (a node failure, a preemption; Slurm's default) would run
            # again without its secrets, which the first start deleted, its first log
            # overwritten: it ends (NodeFailure, Preempted) and vi_flow says so.
            "requeue": False,
        }
        if self.gpu_count:
            gres = f"gpu:{self.gpu_type}:" if self.gpu_type else "gpu:"
            key, prefix = ("gres", "") if legacy else ("tres_per_node", "gres/")
            job[key] = f"{prefix}{gres}{self.gpu_count}"
        if self.time_limit_s is not None:
            minutes = max(1, -(-int(self.time_limit_s) // 60))
            job["time_limit"] = minutes if legacy else _number(minutes)
        if self.partition:
            job["partition"] = self.partition
        if self.reservation:
            job["reservation"] = self.reservation
        if legacy:
            return {"script": self.script(), "job": job}
        job["script"] = self.script()
        return {"script": self.script(), "job": job} if version == "v0.0.40" else {"job": job}


@attrs.frozen
class SlurmJob:
    """A job as Slurm reports it.

    Attributes:
        job_id: The Slurm job id.
        name: The job name.
        state: Slurm's state (``"RUNNING"``, ``"TIMEOUT"``, ...).
        status: The state in vi_flow's words (see :func:`job_status`).
        reason: Slurm's ``state_reason`` (``"Resources"``, ``"NonZeroExitCode"``, ...).
        exit_code: The process exit code, when it exited normally.
        signal: The signal that ended it, when one did.
        node: The node it runs on, or None while pending.
        gpu_ids: GPU indices allocated on the node (what ``CUDA_VISIBLE_DEVICES`` shows).
        stdout_path: Its ``standard_output`` path as submitted (``%j`` expanded).
        stderr_path: Its ``standard_error`` path (``%j`` expanded).
        submit_time: Epoch seconds, or None.
        start_time: Epoch seconds, or None.
        end_time: Epoch seconds, or None while it is not over.
        raw_exit: Slurm's ``exit_code`` figure as sent (for a launch failure, Slurm's
            error number, such as 4021).
        launch_failed: It never started on its node (``JobLaunchFailure`` with a Slurm
            error number; Slurm 22.05 gives the same reason to a batch script killed by
            a signal, which is not one).
    """

    job_id: int
    name: str
    state: str
    status: str
    reason: str
    exit_code: int | None
    signal: int | None
    node: str | None
    gpu_ids: tuple[int, ...]
    stdout_path: str
    stderr_path: str
    submit_time: float | None
    start_time: float | None
    end_time: float | None
    raw_exit: int | None = None
    launch_failed: bool = False

    @classmethod
    def from_rest(cls, data: Mapping[str, Any]) -> Self:
        """Build from one item of ``GET /job/{id}``'s ``jobs`` list (any known version)."""
        job_id = rest_int(data.get("job_id")) or 0
        state = _state(data.get("job_state")).upper()
        status = job_status(state)
        end = exit_of(data.get("exit_code"))
        exit_code, signal = end.exit_code, end.signal
        if status == "cancelled" and exit_code == 0:
            exit_code = None  # a job cancelled while pending never exited
        terminal = status in ("completed", "failed", "cancelled")
        raw = _raw_exit(data.get("exit_code"))
        launch_failed = terminal and _launch_failed(data, end)
        if launch_failed:
            exit_code, signal = None, None  # the raw figure is Slurm's error, not a status

        def path(key: str) -> str:
            return str(data.get(key) or "").replace("%j", str(job_id))

        return cls(
            job_id=job_id,
            name=str(data.get("name") or ""),
            state=state,
            status=status,
            reason=str(data.get("state_reason") or ""),
            exit_code=exit_code if terminal else None,
            signal=signal if terminal else None,
            node=str(data.get("nodes") or data.get("batch_host") or "") or None,
            gpu_ids=parse_gpu_indices(data.get("gres_detail")),
            stdout_path=path("standard_output"),
            stderr_path=path("standard_error"),
            submit_time=_time(data.get("submit_time")),
            start_time=_time(data.get("start_time")) if status != "pending" else None,
            end_time=_time(data.get("end_time")) if terminal else None,
            raw_exit=raw,
            launch_failed=launch_failed,
        )


@attrs.frozen
class SlurmNode:
    """A compute node and its resources.

    Attributes:
        name: The node name.
        state: Its base state, lower case (``"idle"``, ``"mixed"``, ``"down"``, ...).
        flags: State flags such as ``"DRAIN"``.
        cpus: CPUs configured.
        idle_cpus: CPUs free now.
        memory_mb: Memory configured (``RealMemory``), MiB.
        free_memory_mb: Memory not allocated to jobs, MiB.
        gpus: GPUs by type (``{"h100": 4}``).
        gpus_used: GPUs by type allocated to jobs now.
        partitions: Partitions the node is in.
        reason: Why it is down or drained, when it is.
    """

    name: str
    state: str
    flags: tuple[str, ...]
    cpus: int
    idle_cpus: int
    memory_mb: int
    free_memory_mb: int
    gpus: Mapping[str, int]
    gpus_used: Mapping[str, int]
    partitions: tuple[str, ...]
    reason: str

    @property
    def available(self) -> bool:
        """Whether the node can take jobs (up and not draining)."""
        flags = {f.upper() for f in self.flags}
        usable = self.state in ("idle", "mixed", "allocated", "completing")
        return usable and not flags & {"DRAIN", "DRAINED", "DRAINING", "NOT_RESPONDING"}

    @classmethod
    def from_rest(cls, data: Mapping[str, Any]) -> Self:
        """Build from one item of ``GET /nodes``' ``nodes`` list."""
        memory = rest_int(data.get("real_memory")) or 0
        return cls(
            name=str(data.get("name") or ""),
            state=_state(data.get("state")).lower(),
            flags=_node_flags(data),
            cpus=rest_int(data.get("cpus")) or 0,
            idle_cpus=rest_int(data.get("idle_cpus")) or 0,
            memory_mb=memory,
            free_memory_mb=max(0, memory - (rest_int(data.get("alloc_memory")) or 0)),
            gpus=parse_gres(data.get("gres")),
            gpus_used=parse_gres(data.get("gres_used")),
            partitions=tuple(str(p) for p in data.get("partitions") or ()),
            reason=str(data.get("reason") or ""),
        )


@attrs.frozen
class SlurmReservation:
    """A Slurm reservation (``scontrol create reservation``).

    Attributes:
        name: The reservation name.
        start_time: Epoch seconds.
        end_time: Epoch seconds.
        nodes: The node list expression (``"vm"``, ``"gpu[01-04]"``).
        node_count: How many nodes it holds.
        users: Users allowed in it (comma separated, as Slurm stores them).
        flags: Slurm's reservation flags.
        tres: Resources held (``"cpu=2"``).
    """

    name: str
    start_time: float | None
    end_time: float | None
    nodes: str
    node_count: int
    users: str
    flags: tuple[str, ...]
    tres: str

    @classmethod
    def from_rest(cls, data: Mapping[str, Any]) -> Self:
        """Build from one item of ``GET /reservations``' ``reservations`` list."""
        return cls(
            name=str(data.get("name") or ""),
            start_time=_time(data.get("start_time")),
            end_time=_time(data.get("end_time")),
            nodes=str(data.get("node_list") or ""),
            node_count=rest_int(data.get("node_count")) or 0,
            users=str(data.get("users") or ""),
            flags=tuple(str(f) for f in data.get("flags") or ()),
            tres=str(data.get("tres") or ""),
        )
