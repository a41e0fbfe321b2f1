"""The embedded SSH server through which task shells, commands, log follows and uploads go.

An ``asyncssh`` server (:func:`listen`) on the socket :mod:`.sshlisten` bound at start-up,
imported only when SSH is first needed. Its ed25519 host key is generated once
under ``<home>/ssh/`` and published with each task's SSH endpoint, so clients pin it.
Authentication is by public key only: the login names a task (``<task_id>`` runs inside
the task, ``<task_id>+logs`` on the log host) and the key must be registered for that
task's organization. ``exec`` runs ``/bin/sh -c <command>`` in the task workspace with
the task's environment (behind the provider's exec prefix: the local sandbox, ``srun``)
and an allow-listed environment, never the server's; without a command a shell starts, on
a PTY when one was requested. A login to a task that is not running, or that its
provider cannot enter (Ray), is answered with the reason and exit status 1. A ``+logs``
login runs no command at all: the server itself follows the one log file the client's
``tail -c +N -F -- <log>`` names, opened without following symbolic links. The SFTP
subsystem (:mod:`.sftp`) is rooted in the task directory and walks every path from it
without following a symbolic link. Auth decisions are logged without key material.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import functools
import logging
import os
import shlex
import shutil
import signal
import socket
import struct
import termios
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from ..limits import open_file_limit
from ..providers._job_files import load_env, write_session_env
from ..providers.base import InvalidRequest
from ..providers.local.sandbox import allowed_environment
from .logfile import LogReader
from .logwatch import LogChanges
from .sftp import TaskSFTPServer
from .ssh import SessionContext

__all__ = ["SessionResolver", "listen", "load_host_key"]

log = logging.getLogger("vi_flow.server.sshd")  # the name server log lines show, kept stable

HOST_KEY_FILE = "ssh_host_ed25519_key"
_CHUNK = 64 * 1024
_PTY_DRAIN = 0.5
_CLOSE_WAIT = 5.0
_TASK_POLL = 1.0  # how often a command session checks that its task still runs
_LOG_POLL_MIN, _LOG_POLL_MAX = 0.002, 0.2  # after news, then doubling while quiet
_CLIENT_ENV = ("TERM", "LANG", "LANGUAGE", "COLUMNS", "LINES")
LOGIN_TIMEOUT = 30.0
"""Seconds a connection may take to log in (asyncssh's own: 120): an idle one holds a
descriptor, as an HTTP connection without its request head does."""
_TERM_MAX = 0xFFFF  # a terminal size field is 16 bits
_RECHECK_AFTER = 1.0  # seconds a login's reads of its task and key stand for new channels


class SSHLimits:
    """What SSH may hold of the process's descriptors: a quarter for its connections (those
    still logging in too) and a quarter for SFTP's open files, at most
    :data:`SFTP_FILES_PER_CONNECTION` a connection. The HTTP API keeps the other half:
    one organization, or anyone who can reach the port, must not take it away from all.
    Sessions (commands, shells, SFTP) hold about four descriptors each: at most a
    sixteenth of the limit of them at once, :data:`SESSIONS_PER_CONNECTION` a connection.

    Within those, no organization holds more than half of the connections, of the
    sessions or of SFTP's open files, so another's always has room; and when every
    connection is taken, a new one takes the place of the connection that has waited
    longest to log in (one that never logs in, left open by anyone who can reach the
    port, cannot keep the others out).

    Args:
        open_file_limit: The process's soft limit (``RLIMIT_NOFILE``).
    """

    SFTP_FILES_PER_CONNECTION = 256
    SESSIONS_PER_CONNECTION = 32
    """Commands, shells and SFTP sessions open at once on one connection (each holds
    descriptors: pipes or a terminal, a sandbox, SFTP's root)."""

    def __init__(self, open_file_limit: int) -> None:
        self.connections = max(8, open_file_limit // 4)
        self.sftp_files = max(8, open_file_limit // 4)
        self.sftp_open = 0
        """SFTP files open now, every connection's."""
        self.sessions = max(8, open_file_limit // 16)  # ~4 descriptors each: a quarter
        self.sessions_open = 0
        """Sessions open now, every connection's."""
        self.connections_of: collections.Counter[str] = collections.Counter()
        """Logged-in connections open now, by organization."""
        self.sessions_of: collections.Counter[str] = collections.Counter()
        """Sessions open now, by organization."""
        self.sftp_of: collections.Counter[str] = collections.Counter()
        """SFTP files open now, by organization."""
        self.logging_in: dict[asyncssh.SSHServerConnection, None] = {}
        """Connections not logged in yet, the longest waiting first."""

    @property
    def connections_per_org(self) -> int:
        """The most logged-in connections one organization may hold."""
        return max(1, self.connections // 2)

    @property
    def sessions_per_org(self) -> int:
        """The most sessions one organization may hold open."""
        return max(1, self.sessions // 2)

    @property
    def sftp_files_per_org(self) -> int:
        """The most SFTP files one organization may hold open."""
        return max(1, self.sftp_files // 2)


class SessionResolver(Protocol):
    """What the SSH server asks the task service's SSH part (:class:`.ssh.SSHAccess`)."""

    async def session(self, username: str) -> SessionContext | None:
        """The session a login maps to, ``None`` for an unknown one."""

    async def authorized_keys(self, org_id: str) -> list[str]:
        """Public key lines allowed for the organization."""


def load_host_key(directory: Path) -> asyncssh.SSHKey:
    """Read the host key from ``directory``, generating it (mode 0600) the first time.

    Blocking (key generation, file I/O): call it in a thread.
    """
    path = directory / HOST_KEY_FILE
    if path.exists():
        return asyncssh.read_private_key(str(path))
    directory.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="vi-flow-local-server")
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key("openssh"))
    tmp.replace(path)
    return key


class _Server(asyncssh.SSHServer):
    """One connection: remembers the task session chosen by the login name."""

    def __init__(
        self,
        resolver: SessionResolver,
        registry: set[asyncssh.SSHServerConnection],
        limits: SSHLimits,
    ) -> None:
        self._resolver = resolver
        self._registry = registry
        self._conn: asyncssh.SSHServerConnection | None = None
        self._accepted: tuple[str, bytes] | None = None
        self._fingerprint = ""  # the accepted key's SHA256 fingerprint
        self._checked_at = -_RECHECK_AFTER  # when the task and the key were last read
        self.context: SessionContext | None = None
        self.limits = limits
        self.sftp_open = 0
        """SFTP files this connection has open."""
        self.sessions = 0
        """Commands, shells and SFTP sessions this connection has open."""
        self._org = ""  # the organization it logged in to (its sessions count for it)
        self._counted = False  # whether it counts in limits.connections_of

    @property
    def org(self) -> str:
        """The organization this connection logged in to (``""`` before it did)."""
        return self._org

    def session_refusal(self) -> str | None:
        """Why this connection may not open one more session now, if it may not."""
        limits = self.limits
        cap = limits.SESSIONS_PER_CONNECTION
        if self.sessions >= cap:
            return f"too many sessions on one connection (at most {cap} at once)"
        if limits.sessions_of[self._org] >= limits.sessions_per_org:
            return (
                f"your organization has {limits.sessions_per_org} sessions open, its share of"
                " the server's; end one, or try again later"
            )
        if limits.sessions_open >= limits.sessions:
            return "too many sessions on the server; try again later"
        return None

    def session_began(self) -> None:
        """Count one more session of this connection's (and the server's)."""
        self.sessions += 1
        self.limits.sessions_open += 1
        self.limits.sessions_of[self._org] += 1

    def session_ended(self) -> None:
        """Count one session ended."""
        self.sessions -= 1
        self.limits.sessions_open -= 1
        self.limits.sessions_of[self._org] -= 1

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        limits = self.limits
        if len(self._registry) >= limits.connections:
            if not limits.logging_in:
                log.warning("ssh: refused a connection: %d are open", len(self._registry))
                conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections")
                return
            oldest = next(iter(limits.logging_in))  # gives way: it has had its chance
            del limits.logging_in[oldest]
            self._registry.discard(oldest)
            log.warning("ssh: %d connections are open; closed the one waiting longest to log in",
                        len(self._registry) + 1)  # fmt: skip
            oldest.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections")
        self._registry.add(conn)
        limits.logging_in[conn] = None

    def auth_completed(self) -> None:
        conn, limits = self._conn, self.limits
        assert conn is not None and self.context is not None  # it logged in to a task
        limits.logging_in.pop(conn, None)
        org = self.context.organization_id
        if limits.connections_of[org] >= limits.connections_per_org:
            log.warning("ssh: refused a login to %s: its organization holds %d connections",
                        self.context.task_id, limits.connections_of[org])  # fmt: skip
            conn.disconnect(
                asyncssh.DISC_TOO_MANY_CONNECTIONS,
                f"your organization has {limits.connections_per_org} SSH connections open, its"
                " share of the server's; close one, or try again later",
            )
            return
        self._org, self._counted = org, True
        limits.connections_of[org] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._registry.discard(self._conn)
            self.limits.logging_in.pop(self._conn, None)
        if self._counted:  # its sessions may end after it: their organization stays
            self.limits.connections_of[self._org] -= 1
            self._counted = False

    async def begin_auth(self, username: str) -> bool:
        self._accepted = None  # a new login name: its organization's keys, read afresh
        self.context = await self._resolver.session(username)
        return True

    def password_auth_supported(self) -> bool:
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        # No forwarding from a task's session (asyncssh would answer "Connection refused",
        # which reads as if nothing listened there).
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "port forwarding is not allowed here"
        )

    def unix_connection_requested(self, dest_path: str) -> bool:
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "socket forwarding is not allowed here"
        )

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        context = self.context
        if context is None:
            log.info("ssh: refused login %r (unknown task)", username)
            return False
        wanted = key.public_data
        if (username, wanted) == self._accepted:
            # asyncssh asks twice, without and then with the signature (which it checks
            # itself): the same key on the same login needs no second database read.
            return True
        if await self._registered(context.organization_id, wanted):
            self._accepted = (username, wanted)
            self._fingerprint = key.get_fingerprint("sha256")
            self._checked_at = time.monotonic()
            return True
        log.info("ssh: refused login %r (key not registered for its organization)", username)
        return False

    async def _registered(self, org_id: str, wanted: bytes) -> bool:
        """Whether the public key ``wanted`` is one of ``org_id``'s (one database read)."""
        for line in await self._resolver.authorized_keys(org_id):
            with contextlib.suppress(asyncssh.KeyImportError, ValueError):
                if asyncssh.import_public_key(line).public_data == wanted:
                    return True
        return False

    def logged_in_with(self, org_id: str, fingerprint: str) -> bool:
        """Whether this connection logged in to a task of ``org_id`` with the key of that
        SHA256 fingerprint."""
        context = self.context
        return (
            self._accepted is not None
            and self._fingerprint == fingerprint
            and context is not None
            and context.organization_id == org_id
        )

    async def current(self) -> SessionContext | None:
        """The login's session as it is now, ``None`` when its task is gone or the key it
        logged in with is no longer registered. Each new channel asks: a connection
        outlives the task that was running at its login, and a key deleted since. What
        was read within :data:`_RECHECK_AFTER` s (the login itself) is not read again."""
        if self._accepted is None:
            return None
        if time.monotonic() - self._checked_at < _RECHECK_AFTER:
            return self.context
        username, wanted = self._accepted
        context = await self._resolver.session(username)
        if context is None or not await self._registered(context.organization_id, wanted):
            return None
        self.context, self._checked_at = context, time.monotonic()
        return context


def drop_logins(
    connections: set[asyncssh.SSHServerConnection], org_id: str, fingerprint: str
) -> int:
    """Close each connection that logged in to ``org_id`` with the key of that SHA256
    ``fingerprint``; how many."""
    closed = 0
    for conn in list(connections):
        owner = conn.get_owner()
        if isinstance(owner, _Server) and owner.logged_in_with(org_id, fingerprint):
            conn.disconnect(asyncssh.DISC_BY_APPLICATION, "the SSH key of this login was deleted")
            closed += 1
    return closed


def _context_of(channel: Any) -> SessionContext:
    owner = channel.get_connection().get_owner()
    context = owner.context if isinstance(owner, _Server) else None
    if context is None:  # authentication guarantees it; keep mypy and paranoia happy
        raise asyncssh.DisconnectError(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "no task")
    return context


def _argv(command: str | None, pty: bool, shell: str) -> list[str]:
    """What the session runs inside the task (behind its exec prefix)."""
    if command is not None:
        return ["/bin/sh", "-c", command]
    return [shell, "-i"] if pty else [shell]


def _environment(
    context: SessionContext, client_env: dict[str, str], *, with_task: bool = True
) -> dict[str, str]:
    """An allow-list: never the server's environment; of the client's, only the terminal
    and locale (``LD_PRELOAD`` and friends would reach ``srun`` on the server host); the
    task's own ``env`` unless ``with_task`` is false."""
    env = allowed_environment(os.environ, context.workdir)
    env.update({k: v for k, v in client_env.items() if k in _CLIENT_ENV or k.startswith("LC_")})
    if with_task:
        env.update(context.env)
    env.setdefault("TERM", "xterm")
    return env


def _behind_prefix(
    context: SessionContext, inner: list[str], pty: bool, client_env: dict[str, str]
) -> tuple[list[str], dict[str, str], Path | None]:
    """``inner`` behind the session's exec prefix, the environment to start it with, and
    the file that carries the task's ``env`` past the prefix (blocking).

    The task's ``env`` is its user's: given to the prefix's own process (``bwrap`` on
    the host, ``srun`` on the server's host), its ``LD_PRELOAD`` or ``PATH`` would run
    the user's code there, outside the sandbox. The prefix starts with the allow-list;
    the task's variables are set inside it, from a file in the task's ``logs`` directory
    (read-only there) that the session deletes when it ends.
    """
    prefix = context.prefix(pty)
    if not prefix or not context.env:
        return [*prefix, *inner], _environment(context, client_env), None
    given = write_session_env(context.root, context.env)
    load = ["/bin/sh", "-c", load_env(str(given), delete=False), "vi-flow-session"]
    return (
        [*prefix, *load, *inner],
        _environment(context, client_env, with_task=False),
        given,
    )


def _cwd(context: SessionContext) -> Path:
    return context.workdir if context.workdir.is_dir() else context.root


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _pump_in(
    process: asyncssh.SSHServerProcess[bytes],
    writer: Any,
    on_resize: Callable[[tuple[int, int, int, int]], None] | None = None,
) -> None:
    """SSH stdin -> the child's stdin, closing it at EOF; PTY resizes go to ``on_resize``."""
    try:
        while True:
            try:
                data = await process.stdin.read(_CHUNK)
            except asyncssh.TerminalSizeChanged as change:
                if on_resize is not None:
                    on_resize((change.width, change.height, change.pixwidth, change.pixheight))
                continue
            except asyncssh.BreakReceived:
                continue
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (OSError, asyncssh.Error):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


async def _pump_out(reader: asyncio.StreamReader, target: Any) -> None:
    """The child's output -> an SSH stream, until EOF (or EIO from a closed PTY)."""
    try:
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                return
            target.write(data)
            await target.drain()
    except (OSError, asyncssh.Error):
        return


async def _supervise(
    process: asyncssh.SSHServerProcess[bytes],
    child: asyncio.subprocess.Process,
    outputs: Awaitable[Any],
    ended: Callable[[], Awaitable[str]],
) -> int:
    """Wait for the child and its output; kill it when the client goes away or the task
    ends (``ended()`` returns, saying how: a session ends with its task's sandbox)."""
    finished = asyncio.ensure_future(_finish(child, outputs))
    closed = asyncio.ensure_future(process.wait_closed())
    over = asyncio.ensure_future(ended())
    try:
        await asyncio.wait({finished, closed, over}, return_when=asyncio.FIRST_COMPLETED)
        if finished.done():
            return finished.result()
        _kill_group(child.pid)
        await child.wait()
        if over.done() and not closed.done():
            with contextlib.suppress(OSError, asyncssh.Error):
                process.stderr.write(f"\r\nvi-flow: {over.result()}; session closed\r\n".encode())
        return -9
    finally:
        for future in (finished, closed, over):
            future.cancel()
        if child.returncode is None:
            _kill_group(child.pid)
            await child.wait()


async def _finish(child: asyncio.subprocess.Process, outputs: Awaitable[Any]) -> int:
    await outputs
    return await child.wait()


async def _run_pipes(
    process: asyncssh.SSHServerProcess[bytes],
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    ended: Callable[[], Awaitable[str]],
) -> int:
    child = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert child.stdout is not None and child.stderr is not None
    feeder = asyncio.create_task(_pump_in(process, child.stdin))
    outputs = asyncio.gather(
        _pump_out(child.stdout, process.stdout), _pump_out(child.stderr, process.stderr)
    )
    try:
        return await _supervise(process, child, outputs, ended)
    finally:
        feeder.cancel()
        outputs.cancel()
        # and its pipes: a session cut short (the client gone, the child killed) left
        # them open for the garbage collector, which warns (ResourceWarning, CI on 3.10)
        transport = getattr(child, "_transport", None)  # asyncio's, on every version
        if transport is not None:
            transport.close()


def _make_controlling_tty() -> None:  # runs in the child between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_size(fd: int, size: tuple[int, int, int, int]) -> None:
    """Set the PTY's size, each field clamped to what a terminal size holds (a client's
    65536 made ``struct.pack`` raise and asyncssh drop the whole connection)."""
    cols, rows, width, height = (min(max(n, 0), _TERM_MAX) for n in size)
    if cols and rows:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, width, height))


async def _pty_output(reader: asyncio.StreamReader, target: Any, child: Any) -> None:
    """Copy PTY output until EIO; once the shell exited, stop shortly after it goes quiet
    (background jobs may keep the PTY open)."""
    pump = asyncio.ensure_future(_pump_out(reader, target))
    exited = asyncio.ensure_future(child.wait())
    try:
        await asyncio.wait({pump, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not pump.done():
            await asyncio.wait({pump}, timeout=_PTY_DRAIN)
    finally:
        pump.cancel()
        exited.cancel()


async def _run_pty(
    process: asyncssh.SSHServerProcess[bytes],
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    ended: Callable[[], Awaitable[str]],
) -> int:
    master, slave = os.openpty()
    _set_size(master, process.term_size)
    loop = asyncio.get_running_loop()
    try:
        child = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_make_controlling_tty,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(master, "rb", buffering=0)
    )
    writer = _FDWriter(master)
    feeder = asyncio.create_task(_pump_in(process, writer, lambda size: _set_size(master, size)))
    try:
        output = _pty_output(reader, process.stdout, child)
        return await _supervise(process, child, output, ended)
    finally:
        feeder.cancel()
        transport.close()


class _FDWriter:
    """A writer over a non-blocking PTY master: ``drain`` does the writing."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = b""

    def write(self, data: bytes) -> None:
        self._pending += data

    async def drain(self) -> None:
        while self._pending:
            try:
                written = os.write(self._fd, self._pending)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            self._pending = self._pending[written:]

    def close(self) -> None:
        """The PTY master is closed with its read side."""


def _log_request(context: SessionContext, command: str | None) -> tuple[Path, int, bool] | None:
    """``(log, offset, follow)`` for ``[exec] tail -c +N [-s S] [-F] [--] <log>``, where
    ``<log>`` is one of the task's logs; ``None`` for anything else."""
    try:
        words = shlex.split(command or "")
    except ValueError:
        return None
    if words[:1] == ["exec"]:
        words = words[1:]
    if len(words) < 4 or words[:2] != ["tail", "-c"] or Path(words[-1]) not in context.logs:
        return None
    start, options = words[2], words[3:-1]
    if options[-1:] == ["--"]:
        options = options[:-1]
    follow = options[-1:] == ["-F"]
    if follow:
        options = options[:-1]
    if options[:1] == ["-s"] and len(options) == 2:
        options = []
    if options or start[:1] != "+" or not start[1:].isdigit():
        return None
    return Path(words[-1]), max(int(start[1:]) - 1, 0), follow


async def _follow_log(
    process: asyncssh.SSHServerProcess[bytes], root: Path, path: Path, offset: int, follow: bool
) -> int:
    """Send the log from ``offset`` on as ``tail -c +N [-F]`` would: large reads and writes
    (:data:`.logfile.READ_SIZE`); at its end, wait for the next write (inotify,
    :mod:`.logwatch`) or a poll that starts short after news and doubles while the log
    stays quiet, so a live follow lags little and an idle one costs little."""
    reader, changes = LogReader(root, path), LogChanges()
    poll = _LOG_POLL_MIN
    try:
        while True:
            changes.clear()  # before the read: a write after it still wakes the wait
            # final=True: the bytes as they are, an unfinished last line too (the client
            # splits lines); only a full read is cut at a line's end.
            offset, data = await asyncio.to_thread(reader.read, offset, final=True)
            if not data and not follow:
                return 0
            if not data:
                if not changes.arm(reader.fileno()):  # newly watched: read once more
                    await changes.wait(poll)
                    poll = min(poll * 2, _LOG_POLL_MAX)
                continue
            poll = _LOG_POLL_MIN
            offset += len(data)
            try:
                process.stdout.write(data)
                await process.stdout.drain()
            except (OSError, asyncssh.Error):  # the client went away (BrokenPipeError)
                return 1
    except OSError as exc:
        with contextlib.suppress(OSError, asyncssh.Error):  # the client may be gone too
            message = f"vi-flow: cannot read {path.name}: {exc.strerror or exc}\n"
            process.stderr.write(message.encode())
        return 1
    except asyncssh.Error:
        return 1
    finally:
        changes.close()
        # In a thread (it waits for a read still running there); shielded, so a
        # cancelled follow still closes its file.
        await asyncio.shield(asyncio.to_thread(reader.close))


async def _serve_logs(process: asyncssh.SSHServerProcess[bytes], context: SessionContext) -> int:
    """The fixed log reader of a ``+logs`` login."""
    request = _log_request(context, process.command)
    if request is None:
        names = " or ".join(str(p) for p in context.logs)
        process.stderr.write(
            f"vi-flow: a {context.task_id}+logs login runs no commands; it only follows the "
            f"task's logs (tail -c +N [-F] -- {names})\n".encode()
        )
        return 1
    follow = asyncio.ensure_future(_follow_log(process, context.root, *request))
    closed = asyncio.ensure_future(process.wait_closed())
    try:
        await asyncio.wait({follow, closed}, return_when=asyncio.FIRST_COMPLETED)
        return follow.result() if follow.done() else 0
    finally:
        follow.cancel()
        closed.cancel()


async def _task_ended(resolver: SessionResolver, task_id: str) -> str:
    """Return (saying so) once ``task_id`` no longer runs: checked every :data:`_TASK_POLL`."""
    while True:
        await asyncio.sleep(_TASK_POLL)
        context = await resolver.session(task_id)
        if context is None:
            return f"task {task_id} is gone"
        if context.refusal is not None:
            return f"task {task_id} no longer runs"


async def _handle_process(
    process: asyncssh.SSHServerProcess[bytes], shell: str, resolver: SessionResolver
) -> None:
    owner = process.channel.get_connection().get_owner()
    assert isinstance(owner, _Server)  # the server factory made it
    try:
        context = await owner.current()
    except Exception:  # the database away: refuse this session, keep the connection's others
        log.exception("ssh: cannot look up the session of a new channel")
        process.stderr.write(b"vi-flow: cannot look up this login's task now; try again\n")
        process.exit(1)
        return
    if context is None:
        process.stderr.write(
            b"vi-flow: this login's task is gone, or its SSH key is no longer registered\n"
        )
        process.exit(1)
        return
    if (busy := owner.session_refusal()) is not None:
        process.stderr.write(f"vi-flow: {busy}\n".encode())
        process.exit(1)
        return
    owner.session_began()
    try:
        await _run_session(process, context, shell, resolver)
    finally:
        owner.session_ended()


async def _run_session(
    process: asyncssh.SSHServerProcess[bytes],
    context: SessionContext,
    shell: str,
    resolver: SessionResolver,
) -> None:
    if context.is_logs:
        process.exit(await _serve_logs(process, context))
        return
    if context.refusal is not None:
        process.stderr.write(f"vi-flow: {context.refusal}\n".encode())
        process.exit(1)
        return
    if process.subsystem is not None:  # sftp has its own handler; no other is served
        process.stderr.write(
            f"vi-flow: no subsystem {process.subsystem!r} here (sftp is)\n".encode()
        )
        process.exit(1)
        return
    pty = process.get_terminal_type() is not None
    try:
        argv, env, given = await asyncio.to_thread(
            _behind_prefix, context, _argv(process.command, pty, shell), pty, dict(process.env)
        )
    except (OSError, InvalidRequest) as exc:
        process.stderr.write(f"vi-flow: cannot give the session its task's env: {exc}\n".encode())
        process.exit(127)
        return
    cwd = await asyncio.to_thread(_cwd, context)
    try:
        runner = _run_pty if pty else _run_pipes
        ended = functools.partial(_task_ended, resolver, context.task_id)
        code = await runner(process, argv, cwd, env, ended)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the command or its env
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        if isinstance(exc, OSError) and exc.errno == errno.E2BIG:  # QA AQ: said as an errno
            why = "the command (or its environment) is longer than the kernel takes in one"
            why += f" argument ({_ONE_ARGUMENT:,} bytes): put it in a script and run that"
        process.stderr.write(f"vi-flow: cannot run {argv[0]!r}: {why}\n".encode())
        code = 127
    finally:
        # Read inside, where it cannot be deleted or swapped. At once, not in a thread:
        # this also runs when the session is collected unfinished (its client gone), in
        # the garbage collector, which may have been started by the default executor's
        # submit itself; a second submit there waited for ever on its lock, and the
        # server with it (test_shell_command_into_head_exits_quietly's hang).
        if given is not None:
            with contextlib.suppress(OSError):
                given.unlink(missing_ok=True)
    process.exit(code if code >= 0 else 128 - code)


_ONE_ARGUMENT = 32 * 4096  # Linux's MAX_ARG_STRLEN: a shell's -c takes no longer command


def _sftp_server(channel: asyncssh.SSHServerChannel[bytes]) -> TaskSFTPServer:
    """SFTP for one session: its task directory, paths walked without following links,
    its open files counted against the connection's and the server's share."""
    context = _context_of(channel)
    owner = channel.get_connection().get_owner()
    assert isinstance(owner, _Server)  # _context_of found its context
    refusal = f"a {context.task_id}+logs login cannot use SFTP" if context.is_logs else ""
    if refusal or (refusal := owner.session_refusal() or ""):
        return TaskSFTPServer(channel, context.root, refusal)  # holds no descriptor
    ended = f"task {context.task_id} has ended: its files can be read, not changed"
    read_only = ended if context.ended else ""
    return TaskSFTPServer(channel, context.root, files=_SFTPFiles(owner), read_only=read_only)


class _SFTPFiles:
    """Counts one SFTP session (and its open files) against its connection's share and
    the server's."""

    def __init__(self, owner: _Server) -> None:
        self._owner = owner
        owner.session_began()

    def take(self) -> None:
        """Count one more open file.

        Raises:
            asyncssh.SFTPFailure: The connection or the server has its share open.
        """
        owner, limits = self._owner, self._owner.limits
        if owner.sftp_open >= limits.SFTP_FILES_PER_CONNECTION:
            raise asyncssh.SFTPFailure(
                f"too many open files: a connection may hold {limits.SFTP_FILES_PER_CONNECTION}"
            )
        if limits.sftp_open >= limits.sftp_files:
            raise asyncssh.SFTPFailure("too many open files on the server; try again later")
        org = owner.org
        if limits.sftp_of[org] >= limits.sftp_files_per_org:
            raise asyncssh.SFTPFailure(
                f"too many open files: your organization has {limits.sftp_files_per_org} open"
                " over SFTP, its share of the server's"
            )
        owner.sftp_open += 1
        limits.sftp_open += 1
        limits.sftp_of[org] += 1

    def give_back(self) -> None:
        """One file was closed."""
        owner, limits = self._owner, self._owner.limits
        owner.sftp_open -= 1
        limits.sftp_open -= 1
        limits.sftp_of[owner.org] -= 1
        if limits.sftp_of[owner.org] <= 0:
            del limits.sftp_of[owner.org]

    def ended(self) -> None:
        """The SFTP session ended."""
        self._owner.session_ended()


async def listen(
    resolver: SessionResolver,
    registry: set[asyncssh.SSHServerConnection],
    key: asyncssh.SSHKey,
    where: socket.socket | tuple[str, int],
) -> asyncssh.SSHAcceptor:
    """Serve SSH on the listening socket ``where`` (or bind ``(host, port)``).

    Each connection joins ``registry`` while it is open.
    """
    shell = await asyncio.to_thread(shutil.which, "bash") or "/bin/sh"
    limits = SSHLimits(open_file_limit())
    bind: dict[str, Any] = (
        {"sock": where}
        if isinstance(where, socket.socket)
        else {"host": where[0], "port": where[1]}
    )
    return await asyncssh.listen(
        server_factory=lambda: _Server(resolver, registry, limits),
        server_host_keys=[key],
        process_factory=functools.partial(_handle_process, shell=shell, resolver=resolver),
        encoding=None,
        sftp_factory=_sftp_server,
        allow_scp=False,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_pty=True,
        line_editor=False,
        keepalive_interval=30,
        login_timeout=LOGIN_TIMEOUT,
        **bind,
    )
