"""One meaning for how a task ended, and why one waits, on every compute provider.

Every provider (local, Slurm, Ray) reports a task's end with the same three figures:

* ``exit_code``: the code the process passed to ``exit()``, 0-255; ``None`` when it did
  not exit by itself (killed by a signal, or it never started);
* ``signal``: the number of the signal that ended the process, when one did;
* ``reason``: one name from :data:`END_REASONS`.

A pending task's ``reason`` is one name from :data:`PENDING_REASONS` (the engine's own
words, mapped) and ``raw_reason`` keeps the engine's words unmapped. The helpers here
turn each engine's raw figures into these: :func:`from_returncode` (Python's
``returncode``, negative for a signal), :func:`from_shell_status` (a shell's or the
sandbox's ``$?``, which reports signal N as 128 + N), :func:`from_wait_status` (a raw
``waitpid`` status, as Slurm stores it), :func:`end_reason` and :func:`describe` for the
sentence, and :func:`slurm_pending_reason` / :data:`SLURM_END_STATES` for Slurm's states.
docs/tasks.md ("How a task ended") shows the same tables.
"""

from __future__ import annotations

import signal as _signal

import attrs

__all__ = [
    "END_REASONS",
    "FATAL_SIGNALS",
    "PENDING_REASONS",
    "SLURM_END_STATES",
    "Exit",
    "describe",
    "end_reason",
    "from_returncode",
    "from_shell_status",
    "from_wait_status",
    "signal_name",
    "slurm_pending_reason",
]

#: Why a task ended (``status`` is ``completed``, ``failed`` or ``cancelled``).
END_REASONS: dict[str, str] = {
    "Completed": "the process exited with code 0",
    "NonZeroExit": "the process exited with a code other than 0 (exit_code says which)",
    "Killed": "a signal vi_flow did not send ended the process (signal says which)",
    "Cancelled": "vi_flow stopped it on request (cancel, or its run was stopped)",
    "CancelledOutsideViFlow": "the engine's own tools stopped it (scancel, ray job stop)",
    "TimeLimit": "it ran past max_run_time (or the engine's own time limit)",
    "OutOfMemory": "the engine killed it for exceeding its memory",
    "LaunchFailed": "it could not start on its node (the message says why)",
    "NodeFailure": "its node failed or could not boot",
    "Preempted": "the engine preempted it for other work",
    "StartFailed": "its command could not be started (not found, not executable)",
    "SubmitFailed": "the engine refused it when it was resubmitted after a restart",
    "StartTimeout": "the engine could not start it in time",
    "EngineFailed": "the engine failed it without running the command (message says why)",
    "JobLost": "the engine no longer knows its job (purged, or the cluster reset)",
    "ServerRestarted": "the server restarted while it ran; its exit status is unknown",
    "ServerStopped": "the server stopped while it ran",
    "ReplicaLost": "the replica on whose host it was queued stopped first (local provider)",
    "Requeued": "Slurm requeued it (a node failure, a preemption): ended, not run twice",
    "ReservationEnded": "the reservation it waited for ended before it could start",
}

#: Why a task is still ``pending``.
PENDING_REASONS: dict[str, str] = {
    "Queued": "accepted by the engine, which has not yet said why it waits",
    "WaitingForCapacity": "waiting for CPUs, GPUs or memory to free up (local, Ray)",
    "Resources": "Slurm: waiting for CPUs, GPUs or memory to free up",
    "Priority": "Slurm: jobs of higher priority go first",
    "PartitionDown": "Slurm: the partition is down or inactive",
    "ReqNodeNotAvail": "Slurm: the nodes it needs are down, drained or reserved",
    "Dependency": "Slurm: waiting for another job",
    "Held": "Slurm: held by a user or an administrator",
    "Reservation": "Slurm: waiting for its reservation to start",
    "Limit": "Slurm: a partition, QOS or account limit holds it back",
    "BeginTime": "Slurm: its start time has not come",
    "Other": "the engine's reason has no name here (raw_reason has its words)",
}

#: Slurm's terminal job states that name their own reason (others: from the exit).
SLURM_END_STATES: dict[str, tuple[str, str]] = {
    "TIMEOUT": ("TimeLimit", "reached its Slurm time limit"),
    "DEADLINE": ("TimeLimit", "missed its Slurm deadline"),
    "OUT_OF_MEMORY": ("OutOfMemory", "ran out of memory"),
    "NODE_FAIL": ("NodeFailure", "lost its node"),
    "BOOT_FAIL": ("NodeFailure", "could not boot its node"),
    "PREEMPTED": ("Preempted", "was preempted"),
}

_SLURM_PENDING: dict[str, str] = {
    "None": "Queued",
    "Resources": "Resources",
    "Priority": "Priority",
    "PartitionDown": "PartitionDown",
    "PartitionInactive": "PartitionDown",
    "ReqNodeNotAvail": "ReqNodeNotAvail",
    "NodeDown": "ReqNodeNotAvail",
    "Dependency": "Dependency",
    "DependencyNeverSatisfied": "Dependency",
    "JobHeldUser": "Held",
    "JobHeldAdmin": "Held",
    "launch_failed_requeued_held": "Held",  # its launches failed; an admin must release it
    "Reservation": "Reservation",
    "BeginTime": "BeginTime",
}
_SLURM_LIMIT_PREFIXES = ("Partition", "QOS", "Assoc", "Max", "AccountNotAllowed")


@attrs.frozen
class Exit:
    """How a process ended.

    Attributes:
        exit_code: Its ``exit()`` code, 0-255, or None when it did not exit by itself.
        signal: The signal that ended it, or None.
    """

    exit_code: int | None = None
    signal: int | None = None


def from_returncode(code: int | None) -> Exit:
    """From Python's ``returncode``: ``-N`` is signal N, anything else an exit code."""
    if code is None:
        return Exit()
    return Exit(signal=-code) if code < 0 else Exit(exit_code=code & 0xFF)


#: The signals whose default action ends a process, on Linux: all of 1-64 but those
#: that stop it (``SIGSTOP``, ``SIGTSTP``, ``SIGTTIN``, ``SIGTTOU``), continue it
#: (``SIGCONT``) or are ignored (``SIGCHLD``, ``SIGURG``, ``SIGWINCH``). No process
#: ends by one of those, so a status of 128 plus one of them is an exit code.
FATAL_SIGNALS = frozenset(range(1, 65)) - {17, 18, 19, 20, 21, 22, 23, 28}


def from_shell_status(status: int | None) -> Exit:
    """From a shell's (or bubblewrap's) ``$?``, which reports signal N as 128 + N.

    A process that itself exits with 128 + N, N in :data:`FATAL_SIGNALS`, reads as that
    signal too: a shell cannot tell the two apart. ``exit 147`` (128 + ``SIGSTOP``) is
    exit code 147: no process ends stopped.
    """
    if status is not None and status - 128 in FATAL_SIGNALS:
        return Exit(signal=status - 128)
    return from_returncode(status)


def from_wait_status(raw: int | None) -> Exit:
    """From a raw ``waitpid`` status (Slurm's ``exit_code``: ``exit 3`` is 768, SIGTERM 15)."""
    if raw is None:
        return Exit()
    if raw & 0x7F:
        return Exit(signal=raw & 0x7F)
    return Exit(exit_code=(raw >> 8) & 0xFF)


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 64`` for a number without a name."""
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe(end: Exit) -> str:
    """``exited with status 3``, ``killed by SIGKILL (signal 9)`` or ``exit status unknown``."""
    if end.signal is not None:
        return f"killed by {signal_name(end.signal)} (signal {end.signal})"
    if end.exit_code is not None:
        return f"exited with status {end.exit_code}"
    return "exit status unknown"


def end_reason(end: Exit) -> str:
    """The reason for an end nobody asked for: ``Completed``, ``NonZeroExit`` or ``Killed``."""
    if end.signal is not None:
        return "Killed"
    return "Completed" if end.exit_code == 0 else "NonZeroExit"


def slurm_pending_reason(raw: str) -> str:
    """Map Slurm's ``state_reason`` of a pending job to a :data:`PENDING_REASONS` name.

    ``"ReqNodeNotAvail, UnavailableNodes:vm"`` reads as ``ReqNodeNotAvail``; the limits
    (``QOSMaxCpuPerUserLimit``, ``AssocGrpGRES``, ...) as ``Limit``.
    """
    head = raw.split(",", 1)[0].strip()
    if not head:
        return "Queued"
    if head in _SLURM_PENDING:
        return _SLURM_PENDING[head]
    if head.startswith(_SLURM_LIMIT_PREFIXES):
        return "Limit"
    return "Other"
