"""The bubblewrap sandbox every local task, and every SSH session into one, runs in.

A sandboxed command sees a fresh root: the system (``/usr``, ``/etc`` without its
secrets, the ``/bin`` and ``/lib`` links) and the server's own Python read-only, a private
``/tmp``, its own ``/proc`` in a new PID namespace (other processes are invisible), a
minimal ``/dev`` plus the GPUs (``/dev/nvidia*``), and, writable, only its task
directory (with ``logs/`` read-only: the server writes the logs) and its volumes, each at
the same path as on the host so paths in ``VI_FLOW_*`` variables stay true. The server's
home, other tasks, other organizations' volumes, ``state.db``, tokens and the SSH host key
are simply not there. Capabilities are dropped; the environment is built by the caller
as an allow-list (:func:`allowed_environment`), never inherited.

:func:`detect_sandbox` checks once, at start, that ``bwrap`` exists and can make its
namespaces here; where it cannot, :class:`Sandbox` says why and tasks run unsandboxed
(the server then refuses a second organization unless ``VI_FLOW_ALLOW_UNSANDBOXED=1``).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import orjson

from ....models.files import replace_file
from ...home import HomeError
from .._exits import from_shell_status

log = logging.getLogger("vi_flow.server")

__all__ = [
    "GATE",
    "JOB_SANDBOX_ENV",
    "NETWORKS",
    "TASK_NETWORK_ENV",
    "NetworkIsolationUnavailable",
    "Sandbox",
    "allowed_environment",
    "check_executable",
    "detect_sandbox",
    "environment_fd",
    "job_sandbox",
    "sandbox_child",
    "syscall_filter",
    "task_network",
]

#: ``0`` turns off the sandbox of Slurm and Ray jobs (they then run as the submitting
#: account sees fit, and organizations are not isolated from each other there).
JOB_SANDBOX_ENV = "VI_FLOW_JOB_SANDBOX"

#: How a local task's sandbox meets the network: ``host`` (the host's own network: the
#: internet, and every loopback port, to connect to or to listen on) or ``isolated`` (a
#: network namespace of its own: its own loopback, nothing else).
TASK_NETWORK_ENV = "VI_FLOW_TASK_NETWORK"
NETWORKS = ("host", "isolated")

_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_DIRS = ("/usr", "/etc", "/opt")
# Host secrets that a world-readable /etc would otherwise show to a task (run as root).
_ETC_SECRETS = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers")
_ETC_SECRET_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d", "/etc/munge", "/etc/slurm")
_ENV_KEPT = ("LANG", "LANGUAGE", "TZ")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def allowed_environment(base: Mapping[str, str], home: Path) -> dict[str, str]:
    """The environment a task or session starts from: ``PATH`` (the server's, so tools
    such as ``srun`` are found), ``HOME`` (its workspace), the locale and time zone of
    ``base`` — nothing else of the server's."""
    env = {k: v for k, v in base.items() if k in _ENV_KEPT or k.startswith("LC_")}
    env["PATH"] = base.get("PATH") or _PATH
    env["HOME"] = str(home)
    return env


def environment_fd(env: Mapping[str, str]) -> int:
    """A file (in memory) of bubblewrap arguments, for its ``--args``, that give the
    sandboxed command exactly ``env``: ``--clearenv``, then ``--setenv NAME VALUE`` each.

    A task's ``env`` is the user's: given to ``bwrap`` as its own environment, its
    ``LD_PRELOAD`` or ``LD_AUDIT`` would run the user's code in ``bwrap`` itself, on the
    host, as the server's user, before any namespace exists. ``bwrap`` runs with the
    server's allow-list instead, and applies this once it runs; nor do the values show in
    any command line. The caller closes the descriptor once ``bwrap`` has started.
    """
    data = b"".join(
        b"--setenv\0%s\0%s\0" % (os.fsencode(name), os.fsencode(value))
        for name, value in env.items()
    )
    fd = os.memfd_create("vi-flow-env", os.MFD_CLOEXEC)
    try:
        view = memoryview(b"--clearenv\0" + data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@attrs.frozen
class Sandbox:
    """How (and whether) local commands are sandboxed.

    Attributes:
        bwrap: The ``bwrap`` executable, ``None`` when commands run unsandboxed.
        reason: Why there is no sandbox (empty when there is one).
        fix: What an operator does to have one (said where tasks are refused for it).
        read_only: Host paths shown read-only at the same place (the server's Python;
            of a directory that holds the home, its other entries).
        hidden: Paths covered by an empty directory (the home, should it lie under a
            system directory such as ``/opt``).
        network: One of :data:`NETWORKS`.
        syscall_filter: A file of the seccomp program (:func:`syscall_filter`) that
            refuses the sandboxed command the kernel's keyrings, set-ID file modes and
            new user namespaces, or ``None``.
    """

    bwrap: str | None
    reason: str = ""
    read_only: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    network: str = "host"
    fix: str = "make bubblewrap work here (docs/production.md, 'Where there is no sandbox')"
    syscall_filter: Path | None = None

    @property
    def enabled(self) -> bool:
        """Whether commands run inside bubblewrap."""
        return self.bwrap is not None

    def prefix(
        self,
        root: Path,
        volumes: Iterable[Path],
        cwd: Path,
        info_fd: int | None = None,
        setenv: Mapping[str, str] | None = None,
        env_fd: int | None = None,
    ) -> list[str]:
        """The argv put before a command to run it in the sandbox of the task at ``root``;
        bubblewrap writes its ``--info-fd`` JSON to ``info_fd`` (see :func:`sandbox_child`),
        sets ``setenv`` over whatever environment the command was given, then reads the
        arguments in ``env_fd`` (:func:`environment_fd`: the command's whole environment,
        given to bubblewrap after it started). Unsandboxed, only ``setenv`` is applied
        (by ``env``; ``[]`` without it)."""
        if self.bwrap is None:
            return ["env", *(f"{k}={v}" for k, v in setenv.items())] if setenv else []
        args = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        opens: list[str] = []
        if self.syscall_filter is not None:
            # What namespaces do not separate (the kernel's keyrings, per user: QA AI,
            # one organization's task read a key another's had stored) or what a task
            # must not make (set-ID files, user namespaces): see syscall_filter. bwrap
            # takes the program on a descriptor: a shell opens the file on one no other uses.
            fd = next(n for n in range(3, 10) if n not in (info_fd, env_fd))
            opens = ["/bin/sh", "-c", f'exec "$@" {fd}<"$0"', str(self.syscall_filter)]
            args += ["--seccomp", str(fd)]
        if self.network == "isolated":
            args.append("--unshare-net")
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        args += ["--unshare-cgroup-try", "--die-with-parent"]
        if os.geteuid() == 0:
            args += ["--cap-drop", "ALL"]
        args += _system_binds()
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        # The kernel's settings are not the task's: uid 0 without capabilities may still
        # write /proc/sys (kernel.core_pattern would run a program as root on the host)
        # and trigger /proc/sysrq-trigger. They are shown read-only.
        for entry in _PROC_READ_ONLY:
            args += ["--ro-bind-try", entry, entry]
        # Order matters, each mount lies on the ones before: the read-only paths after the
        # private /tmp (an interpreter in a venv under /tmp stays visible), the hidden home
        # after them (a home under a read-only directory is still hidden).
        for path in self.read_only:
            args += ["--ro-bind-try", str(path), str(path)]
        for path in self.hidden:
            args += ["--tmpfs", str(path)]
        for device in sorted(glob.glob("/dev/nvidia*")):
            args += ["--dev-bind-try", device, device]
        args += ["--bind", str(root), str(root)]
        logs = root / "logs"
        if not logs.is_symlink():  # bwrap would bind what a link points to, on the host
            args += ["--ro-bind-try", str(logs), str(logs)]
        for volume in volumes:
            args += ["--bind", str(volume), str(volume)]
        for name, value in (setenv or {}).items():
            args += ["--setenv", name, value]
        if env_fd is not None:
            args += ["--args", str(env_fd)]
        # The sandbox's own root (where the home's path was made) is read-only too.
        args += ["--remount-ro", "/", "--chdir", str(cwd), "--"]
        return [*opens, *args]

    def shows(self, path: Path, root: Path, volumes: Iterable[Path]) -> bool:
        """Whether the sandbox of the task at ``root`` shows the host's ``path`` there (the
        path as written, links not followed: :func:`check_executable` walks them), or a
        directory on the way to what it shows (bubblewrap makes those)."""
        mine = (root, *volumes)
        if any(_under(path, top) for top in mine):
            return True
        tops = (*mine, *self.read_only, *(Path(system) for system in _SYSTEM_DIRS))
        if any(_under(top, path) for top in tops):
            return True
        if any(_under(path, hidden) for hidden in self.hidden):
            return False
        if any(_under(path, shown) for shown in self.read_only):
            return True
        if any(_under(path, Path(secret)) for secret in (*_ETC_SECRETS, *_ETC_SECRET_DIRS)):
            return False
        return any(_under(path, Path(system)) for system in (*_SYSTEM_DIRS, *_SYSTEM_LINKS))

    @staticmethod
    def exit_code(returncode: int) -> int:
        """The command's own status from bwrap's (which reports a signal N as 128 + N;
        :func:`~.._exits.from_shell_status` says which N)."""
        end = from_shell_status(returncode)
        return returncode if end.signal is None else -end.signal


#: What a task's command is started behind, in the sandbox (after its setup) or not: a
#: shell that waits for a line on its stdin, the read end of the provider's gate, then
#: becomes the command (same process, stdin ``/dev/null`` as before). The provider
#: writes that line once the task's ``running`` state is stored; should the pipe end
#: with nothing written (the start could not be recorded, the task was cancelled, the
#: server died) the command never runs: the shell exits 125.
GATE = ("/bin/sh", "-c", 'read -r _ || exit 125; exec "$@" <>/dev/null', "vi-flow")


def sandbox_child(info: int) -> int | None:
    """The pid of the sandbox's own init (its PID namespace's process 1, seen from the
    host), from what bubblewrap wrote to its ``--info-fd``, the read end ``info``, which
    is closed; None when it wrote nothing usable (it failed before its child existed).

    Once that process has ended, every process of the sandbox has: the kernel ends a PID
    namespace's processes before its process 1 exits. The command never holds the fd
    (bubblewrap closes it), so what is read is bubblewrap's alone. Never blocks: the read
    end is non-blocking, and bubblewrap wrote, if at all, when it started the child.
    """
    try:
        data = os.read(info, 1 << 16)
    except OSError:  # nothing was written (BlockingIOError), or it cannot be read
        data = b""
    finally:
        os.close(info)
    try:
        pid = orjson.loads(data).get("child-pid")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 1 else None


def _under(path: Path, top: Path) -> bool:
    return path == top or top in path.parents


def check_executable(
    command: str, cwd: Path, path: str, shown: Callable[[Path], bool] | None = None
) -> None:
    """Raise as ``exec`` would when ``command``, started in ``cwd`` with ``path`` as its
    ``PATH``, cannot run (the sandbox shows the system and the task directory at their
    host paths; blocking). A script whose ``#!`` interpreter is missing cannot run either.

    ``shown`` (a sandbox's :meth:`Sandbox.shows` for the task) says which host paths
    the command's world has: any other is missing, whatever the host holds there, and
    so is one a link leads out of it from. Checked on the host, a hidden path answered
    "Permission denied" where it was a file and "No such file" where nothing was: a
    task learnt what the host held (the home's files, other tasks' directories).

    Raises:
        FileNotFoundError: No such executable, or its interpreter is missing.
        PermissionError: ``command`` names a directory or a file that is not executable.
    """

    def seen(found: Path) -> Path | None:
        """Where ``found`` leads, or ``None`` where it is missing; in a sandbox, walked
        one name at a time as the kernel does, each link followed, and the host asked
        nothing about a name the sandbox does not show (:func:`_walk_shown`)."""
        if shown is None:
            return found if found.exists() else None
        return _walk_shown(found, shown)

    if "/" in command:
        found = seen(cwd / command)  # an absolute command stays itself
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)
        if not found.is_file() or not os.access(found, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), command)
        _check_interpreter(found, command, seen)
        return
    for entry in path.split(os.pathsep):
        found = seen(cwd / entry / command)  # a relative entry (or "") is the cwd's
        if found is not None and found.is_file() and os.access(found, os.X_OK):
            _check_interpreter(found, command, seen)
            return
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)


def _walk_shown(path: Path, shown: Callable[[Path], bool]) -> Path | None:
    """Resolve the absolute ``path`` as the kernel would in the sandbox: each name in
    turn, each link read and followed (at most :data:`_MAX_LINKS`), ``..`` taking the
    parent of what was resolved so far; ``None`` at a name that is missing or that the
    sandbox does not show. The host is asked (``lstat``) only about names it shows.

    Checked on the host as written, ``hidden/../usr/bin/true``, or a link in a volume to
    it, was walked by the host's kernel through ``hidden``: the task learnt whether that
    existed (other tasks' directories, the home) from how its start failed (reviews).
    """
    todo = list(path.parts[1:])
    at = Path("/")
    links = 0
    while todo:
        name = todo.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            at = at.parent
            continue
        step = at / name
        if not shown(step):
            return None
        try:
            mode = os.lstat(step).st_mode
        except OSError:
            return None
        if not stat.S_ISLNK(mode):
            at = step
            continue
        links += 1
        if links > _MAX_LINKS:
            return None
        try:
            target = os.readlink(step)
        except OSError:
            return None
        if os.path.isabs(target):
            at = Path("/")
        todo = list(Path(target).parts[1 if os.path.isabs(target) else 0 :]) + todo
    return at


def _check_interpreter(found: Path, command: str, seen: Callable[[Path], Path | None]) -> None:
    """Raise if ``found`` starts with a ``#!`` line whose interpreter is not there (the
    interpreter's path is not said: the file may be one the task cannot read)."""
    try:
        fd = os.open(found, os.O_RDONLY | os.O_NONBLOCK)  # never wait on a FIFO
    except OSError:
        return  # exec tells
    try:
        head = os.read(fd, 256)
    except OSError:
        return
    finally:
        os.close(fd)
    if not head.startswith(b"#!"):
        return
    words = head[2:].split(b"\n", 1)[0].split()
    if not words or not words[0].startswith(b"/"):
        return  # exec tells
    interpreter = Path(os.fsdecode(words[0]))
    shown = seen(interpreter)
    if shown is None or not (shown.is_file() and os.access(shown, os.X_OK)):
        message = f"{os.strerror(errno.ENOENT)} (the interpreter of its #! line)"
        raise FileNotFoundError(errno.ENOENT, message, command)


_PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        args += ["--ro-bind-try", path, path]
    for path in _SYSTEM_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _ETC_SECRETS:
        if os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    for path in _ETC_SECRET_DIRS:
        if os.path.isdir(path):
            args += ["--tmpfs", path]
    return args


def _python_paths() -> list[Path]:
    """The server's interpreter and environment, so ``sys.executable`` runs in a task:
    its prefixes, and each link on the way from ``sys.executable`` to the binary that lies
    outside them (a venv made by another venv's python, on Python 3.10, links to that
    python, not to the binary)."""
    prefixes = {Path(raw) for raw in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    links: list[Path] = []
    link = Path(sys.executable)
    for _ in range(_MAX_LINKS):
        if not link.is_symlink():
            break
        if not any(prefix == link or prefix in link.parents for prefix in prefixes):
            links.append(link)  # bound at its own path: the file it leads to
        try:
            target = Path(os.readlink(link))
        except OSError:
            break
        link = target if target.is_absolute() else link.parent / target
    return [*prefixes, *links]


_MAX_LINKS = 40  # as the kernel's own limit of links followed in one path


def _beside_hidden(path: Path, hidden: tuple[Path, ...]) -> list[Path]:
    """``path`` to show read-only; when it holds a hidden path (a home inside the server's
    venv), everything in it except the way to that path; nothing of a hidden path."""
    real = path.resolve()
    if real == Path("/") or any(real == top or top in real.parents for top in hidden):
        return []
    if not any(real in top.parents for top in hidden):
        return [path]
    if path.is_symlink():  # a link to a directory holding the home: skipped whole
        return []
    try:
        children = sorted(path.iterdir())
    except OSError:
        return []
    return [shown for child in children for shown in _beside_hidden(child, hidden)]


def _read_only(paths: Iterable[Path], hidden: tuple[Path, ...]) -> tuple[Path, ...]:
    return tuple(sorted({shown for path in paths for shown in _beside_hidden(path, hidden)}))


def _outermost(paths: Iterable[Path]) -> tuple[Path, ...]:
    """``paths`` resolved, less those inside another of them (hidden with it)."""
    real = {Path(path).resolve() for path in paths}
    return tuple(sorted(p for p in real if not any(top in p.parents for top in real)))


_TURN_ON = "turn the sandbox on"


def task_network(extra: Mapping[str, Any], env: Mapping[str, str] | None = None) -> str:
    """How tasks meet the network: ``extra["task_network"]``, else ``VI_FLOW_TASK_NETWORK``,
    else ``host``.

    Raises:
        ValueError: Not one of :data:`NETWORKS`, naming the value.
    """
    raw = extra.get("task_network") or (os.environ if env is None else env).get(TASK_NETWORK_ENV)
    value = str(raw or "host").strip().lower()
    if value not in NETWORKS:
        raise ValueError(f"{TASK_NETWORK_ENV} must be one of {', '.join(NETWORKS)}, not {raw!r}")
    return value


class NetworkIsolationUnavailable(HomeError):
    """``VI_FLOW_TASK_NETWORK=isolated`` was asked for and cannot be had here: the server
    refuses to start rather than run tasks on the host's network, or unsandboxed."""


def detect_sandbox(home: Path, extra: Mapping[str, Any]) -> Sandbox:
    """Find ``bwrap`` and check it can build a sandbox here (blocking; run in a thread).

    ``extra["sandbox"] = False`` turns it off (tests of the unsandboxed mode);
    ``extra["sandbox_read_only"]`` adds host paths shown read-only. A read-only path that
    holds the home (the server's venv, when the home was put inside it) is shown without
    the home: each of its entries but the one leading to the home. The network is
    :func:`task_network`'s.

    Raises:
        NetworkIsolationUnavailable: An isolated network was asked for, and there is no
            sandbox here, or bwrap cannot make a network namespace.
    """
    sandbox = _host_network_sandbox((home,), extra, filter_home=home)
    if task_network(extra) == "host":
        return sandbox
    isolated = attrs.evolve(sandbox, network="isolated")
    why = sandbox.reason if not sandbox.enabled else _refusal(isolated)
    if why:
        raise NetworkIsolationUnavailable(
            f"{TASK_NETWORK_ENV}=isolated needs a bubblewrap sandbox that makes a network"
            f" namespace, and there is none here: {why}"
        )
    return isolated


def _filter_file(home: Path) -> Path | None:
    """:func:`syscall_filter`'s program written in ``home``; ``None`` (with a warning
    when it could not be written) where there is none. Servers that share the directory
    (replicas, on a cluster's tasks directory) each write a file of their own and rename
    it there: the program is the same, and no reader sees half of it."""
    program = syscall_filter()
    if program is None:
        return None
    path = home / FILTER_FILE
    try:
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == program:
                return path
        # read by the nodes' accounts too; it holds nothing secret
        replace_file(path, program, mode=0o644)
    except OSError as exc:
        log.warning("tasks go unfiltered: %s could not be written (%s)", path, exc)
        return None
    return path


FILTER_FILE = "sandbox-syscalls.bpf"
"""The home's file of :func:`syscall_filter`'s program (it holds nothing secret)."""


@attrs.frozen
class _Calls:
    """An arch's calls the filter looks at, by number (see :func:`syscall_filter`)."""

    refused: tuple[int, ...]  # fail with EPERM, whatever their arguments
    absent: tuple[int, ...]  # fail with ENOSYS: their arguments lie in memory a filter
    # cannot read, and the C library then makes the older call, which it can
    modes: dict[int, int]  # call -> its argument holding a file mode
    clones: dict[int, int]  # call -> its argument holding clone flags


# keyrings: add_key, request_key, keyctl; io_uring: setup, enter, register (its queued
# opens carry a mode no filter sees); absent: clone3 and openat2
_IO_URING, _ABSENT = (425, 426, 427), (435, 437)
_FILTERED = {
    0xC000003E: _Calls(  # AUDIT_ARCH_X86_64 (its x32 calls carry bit 30)
        refused=(248, 249, 250, *_IO_URING),
        absent=_ABSENT,
        # open, creat, chmod, fchmod, mknod, openat, mknodat, fchmodat, fchmodat2
        modes={2: 2, 85: 1, 90: 1, 91: 1, 133: 1, 257: 3, 259: 2, 268: 2, 452: 2},
        clones={56: 0, 272: 0},  # clone, unshare
    ),
    0x40000003: _Calls(  # AUDIT_ARCH_I386
        refused=(286, 287, 288, *_IO_URING),
        absent=_ABSENT,
        modes={5: 2, 8: 1, 15: 1, 94: 1, 14: 1, 295: 3, 297: 2, 306: 2, 452: 2},
        clones={120: 0, 310: 0},
    ),
    0xC00000B7: _Calls(  # AUDIT_ARCH_AARCH64 (no open, creat, chmod or mknod)
        refused=(217, 218, 219, *_IO_URING),
        absent=_ABSENT,
        modes={52: 1, 53: 2, 56: 3, 33: 2, 452: 2},  # fchmod, fchmodat, openat, mknodat
        clones={220: 0, 97: 0},
    ),
}
_X32_BIT = 0x40000000
_SET_ID_BITS = 0o6000  # S_ISUID | S_ISGID
_CLONE_NEWUSER = 0x10000000

# classic BPF: load a word of struct seccomp_data, jump if equal / if any bit set, AND,
# return; the data: the call's number at 0, its arch at 4, argument i's low word at 16 + 8i
_LD, _JEQ, _JSET, _AND, _RET = 0x20, 0x15, 0x45, 0x54, 0x06
_ALLOW, _EPERM, _ENOSYS = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
_Op = tuple[int, int | str, int | str, int]  # (code, jump if true, jump if false, k)


def syscall_filter() -> bytes | None:
    """A seccomp program (classic BPF, ``struct sock_filter`` each) for sandboxed commands;
    ``None`` where the machine is none of the archs it knows. Any other call, or another
    arch, is let through. It refuses, as container runtimes do:

    * the kernel's keyring calls (``EPERM``): the keyrings are the kernel's per user, so
      tasks running as one user would see each other's keys;
    * a set-user-ID or set-group-ID bit in a file's mode (``chmod``, ``open``...:
      ``EPERM``): a task of a root server left set-UID root programs in its workspace,
      output and volumes, on the host's disk (QA AQ), a root shell for whoever can
      reach a copy of the home;
    * new user namespaces (``clone``, ``unshare``: ``EPERM``), in which a task of a
      server not run as root was root, mounts and all: more of the kernel to attack;
    * io_uring, whose queued calls no filter sees, and ``clone3`` and ``openat2``
      (``ENOSYS``: their flags and modes lie in memory; the C library falls back to
      ``clone`` and ``openat``).
    """
    import platform
    import struct

    if platform.machine() not in ("x86_64", "amd64", "aarch64", "arm64", "i386", "i686"):
        return None
    code: list[_Op | str] = [(_LD, 0, 0, 4)]  # A = the call's arch
    for arch, calls in _FILTERED.items():
        code.append((_JEQ, 0, f"not-{arch}", arch))
        code.append((_LD, 0, 0, 0))  # A = the call's number
        if arch == 0xC000003E:
            code.append((_AND, 0, 0, 0xFFFFFFFF ^ _X32_BIT))
        code += [(_JEQ, "eperm", 0, number) for number in calls.refused]
        code += [(_JEQ, "enosys", 0, number) for number in calls.absent]
        checks = [(number, arg, _SET_ID_BITS) for number, arg in calls.modes.items()]
        checks += [(number, arg, _CLONE_NEWUSER) for number, arg in calls.clones.items()]
        code += [(_JEQ, f"{arch}-{arg}-{bits}", 0, n) for n, arg, bits in checks]
        code.append((_RET, 0, 0, _ALLOW))
        for arg, bits in sorted({(arg, bits) for _, arg, bits in checks}):
            code += [f"{arch}-{arg}-{bits}", (_LD, 0, 0, 16 + 8 * arg)]
            code += [(_JSET, "eperm", 0, bits), (_RET, 0, 0, _ALLOW)]
        code.append(f"not-{arch}")
    code += [(_RET, 0, 0, _ALLOW), "eperm", (_RET, 0, 0, _EPERM), "enosys", (_RET, 0, 0, _ENOSYS)]
    return b"".join(struct.pack("=HBBI", *op) for op in _assembled(code))


def _assembled(code: list[_Op | str]) -> list[tuple[int, int, int, int]]:
    """``code`` with its labels (the strings) taken out and each jump to one made the
    count of instructions it skips (classic BPF jumps forward only, 255 at most)."""
    at: dict[str, int] = {}
    ops: list[_Op] = []
    for item in code:
        if isinstance(item, str):
            at[item] = len(ops)  # the instruction that follows the label
        else:
            ops.append(item)

    def skip(target: int | str, here: int) -> int:
        if isinstance(target, int):
            return target
        distance = at[target] - here - 1
        if not 0 <= distance <= 255:
            raise AssertionError(f"a jump to {target} of {distance} instructions")
        return distance

    return [(op, skip(jt, i), skip(jf, i), k) for i, (op, jt, jf, k) in enumerate(ops)]


def _host_network_sandbox(
    hidden: Iterable[Path], extra: Mapping[str, Any], *, filter_home: Path | None = None
) -> Sandbox:
    """The sandbox that hides ``hidden`` (the home; for cluster jobs, the server's task,
    volume and token directories too), or why there is none. With ``filter_home``, it
    applies :func:`syscall_filter` (its file written there) where bubblewrap and the
    kernel take it: one run checks both; should it fail, a run without the filter says
    whether there is a sandbox at all (and the server warns that tasks go unfiltered)."""
    if extra.get("sandbox") is False:
        return Sandbox(None, "turned off by the server settings (sandbox = false)", fix=_TURN_ON)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Sandbox(None, "bubblewrap (bwrap) is not installed", fix="install bubblewrap")
    tops = _outermost(hidden)
    extra_paths = [Path(p) for p in extra.get("sandbox_read_only", ())]
    read_only = _read_only([*_python_paths(), *extra_paths], tops)
    sandbox = Sandbox(bwrap, "", read_only, hidden=tops)
    program = _filter_file(filter_home) if filter_home is not None else None
    refused = ""
    if program is not None:
        filtered = attrs.evolve(sandbox, syscall_filter=program)
        if not (refused := _refusal(filtered)):
            return filtered
    if why := _refusal(sandbox):
        return Sandbox(None, why)
    if refused:
        log.warning(
            "tasks go unfiltered (keyrings, set-ID modes, user namespaces):"
            " bwrap refused the filter (%s)", refused,
        )  # fmt: skip
    return sandbox


def _refusal(sandbox: Sandbox) -> str:
    """Why ``sandbox`` cannot run a command here (``""`` when it can)."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        argv = [*sandbox.prefix(root, [], root), "/bin/sh", "-c", "true"]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap could not run: {exc}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip() or f"status {done.returncode}"
        return f"bwrap cannot create namespaces here: {detail}"
    return ""


def job_sandbox(hidden: Iterable[Path], filter_dir: Path | None = None) -> Sandbox:
    """The sandbox of cluster jobs (Slurm, Ray): bubblewrap, found by name on each node.

    A job's sandbox shows what a local task's does (the system, the server's Python where
    a node has it at the same path, its own task directory and volumes, a private
    ``/tmp``, its own PID namespace); ``hidden`` (the directories
    of every task and volume, the server's files) is covered should it lie under a
    system directory. It is used when ``bwrap`` works on the server's host (checked
    here, blocking: run in a thread), unless ``VI_FLOW_JOB_SANDBOX=0``; a node without
    ``bwrap`` then fails the job with a message saying so.

    With ``filter_dir`` (the cluster's tasks directory, which every node sees), jobs
    and their shells get the :func:`syscall_filter` of local tasks, from its file there.
    """
    if os.environ.get(JOB_SANDBOX_ENV, "1") == "0":
        return Sandbox(None, f"turned off ({JOB_SANDBOX_ENV}=0)", fix=_TURN_ON)
    tops = _outermost(hidden)
    for top in tops:  # bubblewrap cannot cover a path it would have to make in /opt
        with contextlib.suppress(OSError):
            top.mkdir(mode=0o700, parents=True, exist_ok=True)
    if filter_dir is not None:
        with contextlib.suppress(OSError):
            filter_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # a job uses its node's network: the local provider's network setting is not asked
    detected = _host_network_sandbox(tops, {}, filter_home=filter_dir)
    if not detected.enabled:
        return detected
    return attrs.evolve(detected, bwrap="bwrap")  # found by name on each node
