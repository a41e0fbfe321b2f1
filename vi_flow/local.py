"""Finding the home's local server, or starting it: what ``base_url="local"`` means.

A home has at most one server (it holds the home's lock). It publishes itself in
``<home>/server.json``; :func:`find_server` reads that file and trusts it only when the
process lives and answers a random challenge with the proof only it can compute.
:func:`ensure_server` starts the background server when none answers: under the home's
start lock (so ten processes starting at once start one server), it runs
``python -m vi_flow.server --detach``, which returns once the server answers.
:func:`attach` is what a client calls: the background server by default, or a server
inside this process (``local_server = "in-process"``) when the home is free.

Everything here blocks; async callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import orjson

from . import __version__
from ._config import Settings
from ._errors import LocalServerError
from .models.homes import foreign_home
from .models.server import (
    HOME_SERVED,
    LOCK_FILE,
    LOG_DIR,
    LOG_FILE,
    RUN_FILE,
    START_LOCK_FILE,
    STDIO_FILE,
    STOPPED_FILE,
    ServerInfo,
    identity_proof,
)

__all__ = [
    "Attached",
    "admin_token",
    "attach",
    "call_server",
    "ensure_server",
    "find_server",
    "find_silent_server",
    "log_tail",
    "pid_alive",
    "start_server",
    "stopped_on_request",
]

#: How long a background server may take to answer after it was started.
START_TIMEOUT: Final = 60.0
#: How long the identity check waits for an answer; a live server answers in ms.
_PROBE_TIMEOUT: Final = 5.0


class Attached:
    """A client's hold on the home's server.

    Attributes:
        info: The server's run file.
        release: Lets an in-process server go (``None`` for any other server).
        held_alone: Whether this hold is the in-process server's only one, so that its
            release stops the server (``None`` for any other server).
    """

    __slots__ = ("_seen", "held_alone", "info", "release")

    def __init__(
        self,
        info: ServerInfo,
        release: Callable[[], None] | None = None,
        held_alone: Callable[[], bool] | None = None,
    ) -> None:
        self.info = info
        self.release = release
        self.held_alone = held_alone
        self._seen: tuple[int, int, int] | None = None  # the run file found to be info's

    def still_serving(self, home: Path) -> bool:
        """Whether the server attached still holds ``home``: its run file is still its
        own and its process lives (a stat, a signal 0 and its ``/proc`` state: no
        request). Checked before each call: a call to the port of a server that has gone
        would hand the key to whatever listens there now (QA: another local user bound
        the freed port and got the home's admin token), and a client that does not retry
        found the home's new server only by a retry."""
        if os.path.isabs(self.info.home):  # as the server resolved it: the cwd may change
            home = Path(self.info.home)
        try:
            status = os.stat(home / RUN_FILE)
        except OSError:  # gone: the server stopped
            return False
        seen = (status.st_ino, status.st_mtime_ns, status.st_size)
        if seen != self._seen:  # rewritten (its SSH endpoint), or another server's
            try:
                now = _read_run_file(home)
            except LocalServerError:
                return False
            mine = self.info
            if now is None or (now.pid, now.started_at, now.url) != (
                mine.pid, mine.started_at, mine.url,
            ):  # fmt: skip
                return False
            self._seen = seen
        return pid_alive(self.info.pid)  # killed: its run file stays behind


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie, where that can be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


#: Why a home cannot be this user's, whenever it is tried (a busy disk may pass).
_NOT_A_HOME = (errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ELOOP)
_SET_HOME = "set VI_FLOW_HOME to a directory of yours"


def _read_run_file(home: Path) -> ServerInfo | None:
    try:
        raw = (home / RUN_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        # QA BA: a home under a file, or another user's (`sudo -u svc` keeps HOME=/root),
        # is no passing fault: exit 1 and what to do, not 6 ("worth retrying")
        lasting = exc.errno in _NOT_A_HOME
        raise LocalServerError(
            f"cannot read {home / RUN_FILE}: {exc.strerror or exc}"
            + (f" ({_SET_HOME})" if lasting else ""),
            lasting=lasting,
        ) from None
    try:
        return ServerInfo.from_json(raw)
    except ValueError:
        return None  # half a file from a crash, or not ours: treated as no server


def call_server(
    info: ServerInfo,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: object = None,
    timeout: float | None = None,
) -> tuple[int, object]:
    """One plain HTTP call to the server of ``info``; the status and the decoded JSON
    (``timeout``: for connecting, and then for the answer; default :data:`_PROBE_TIMEOUT`).

    Raises:
        OSError: No answer (refused, reset, timed out).
        http.client.HTTPException: A broken answer.
    """
    host, _, port = info.url.split("//", 1)[1].split("/", 1)[0].rpartition(":")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else orjson.dumps(body)
    if data is not None:
        headers["Content-Type"] = "application/json"
    wait = _PROBE_TIMEOUT if timeout is None else timeout
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=wait)
    try:
        conn.request(method, f"/v1{path}", body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return resp.status, None


def _answers_as(info: ServerInfo, wait: float = _PROBE_TIMEOUT) -> bool | None:
    """Whether the server at ``info.url`` proves it owns ``info.secret``; ``None`` when it
    took the connection but gave no answer within ``wait`` s (stopped, or overloaded)."""
    challenge = secrets.token_hex(16)
    try:
        status, answer = call_server(info, "GET", f"/health?challenge={challenge}", timeout=wait)
    except TimeoutError:
        return None
    except (OSError, http.client.HTTPException, ValueError):
        return False
    proof = answer.get("proof") if status == 200 and isinstance(answer, dict) else None
    return isinstance(proof, str) and secrets.compare_digest(
        proof, identity_proof(info.secret, challenge)
    )


def find_server(home: Path) -> ServerInfo | None:
    """The home's running server, or ``None`` when none answers as the run file says.

    A run file whose process is gone, or whose port answers without the proof (another
    program took it), is not trusted.

    Raises:
        LocalServerError: The run file cannot be read (permissions), or the home belongs
            to another user (whose run file could name any server).
    """
    return _look(home, _PROBE_TIMEOUT)[0]


def find_silent_server(
    home: Path, wait: float = _PROBE_TIMEOUT
) -> tuple[ServerInfo | None, ServerInfo | None]:
    """As :func:`find_server` (waiting ``wait`` s for its answer); when none answers, also
    the server the run file names if it lives, holds the home and took the connection
    without answering (stopped with SIGSTOP, hung or overloaded): ``(None, that one)``."""
    found, silent = _look(home, wait)
    if found is not None or not silent or not _home_held(home):
        return found, None
    return None, _read_run_file(home)


def _look(home: Path, wait: float) -> tuple[ServerInfo | None, bool]:
    """As :func:`find_server` (waiting ``wait`` s for its answer); also whether the run
    file names a live process that took the connection but did not answer."""
    if (why := foreign_home(home)) is not None:
        raise LocalServerError(why, lasting=True)
    info = _read_run_file(home)
    if info is None or not pid_alive(info.pid) or not _names(info, home):
        return None, False
    answered = _answers_as(info, wait)
    return (info if answered else None), answered is None


def _names(info: ServerInfo, home: Path) -> bool:
    """Whether the run file's server owns ``home`` itself: a copy of a home (``cp -r``)
    holds its original's run file, whose server answers for the original (QA: flows made
    "in the copy" went to the original, and ``server stop`` there stopped it)."""
    try:
        return os.path.samefile(info.home, home)
    except (OSError, ValueError):  # the original is gone, or its path cannot be a file's
        return False


def _check_version(info: ServerInfo) -> ServerInfo:
    if info.version != __version__:
        raise LocalServerError(
            f"the server of home {info.home} (pid {info.pid}, {info.url}) runs vi-flow "
            f"{info.version}, but this is vi-flow {__version__}; restart it with "
            f"'VI_FLOW_HOME={info.home} vi-flow server stop' and run this again"
        )
    return info


def log_tail(home: Path, lines: int = 20) -> str:
    """The last lines of the background server's log and output, for error messages."""
    parts = []
    for name in (STDIO_FILE, LOG_FILE):
        try:
            text = (home / LOG_DIR / name).read_text(errors="replace")
        except OSError:
            continue
        if tail := text.splitlines()[-lines:]:
            parts.append(
                f"--- {home / LOG_DIR / name} (last {len(tail)} lines)\n" + "\n".join(tail)
            )
    return "\n".join(parts)


def _failure(message: str, home: Path) -> LocalServerError:
    """``message``, with the last lines of the server's log when there are any."""
    tail = log_tail(home)
    if not tail:
        return LocalServerError(message)
    return LocalServerError(f"{message}\n{tail}", log_file=home / LOG_DIR / LOG_FILE)


def _prepare(home: Path) -> None:
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        # QA AZ: a service account's HOME=/nonexistent gave "Permission denied" alone
        raise LocalServerError(
            f"cannot use {home} as the vi-flow home: {exc.strerror or exc} ({_SET_HOME})",
            lasting=True,
        ) from None


def _spawn(home: Path, idle_timeout: float) -> None:
    command = [sys.executable, "-m", "vi_flow.server", "--home", str(home), "--detach"]
    command += ["--idle-timeout", repr(idle_timeout)]
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            start_new_session=True,  # Ctrl-C in the caller's terminal never reaches it
            timeout=START_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _failure(
            f"the vi-flow server for {home} did not answer within {START_TIMEOUT:.0f} s", home
        ) from None
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip()
        if not why:  # killed before it could say why
            code = done.returncode
            why = f"killed by signal {-code}" if code < 0 else f"it exited with status {code}"
        raise _failure(f"could not start the vi-flow server for {home}: {why}", home)


_PUBLISH_WAIT = 10.0


def _silent_server(home: Path) -> LocalServerError | None:
    """The error for a home whose published server lives but does not answer (stopped
    with SIGSTOP, or overloaded): "use that server" would send the user to it."""
    info = _read_run_file(home)
    if info is None or not pid_alive(info.pid):
        return None
    return _not_answering(info, home, _PROBE_TIMEOUT)


def _not_answering(info: ServerInfo, home: Path, wait: float) -> LocalServerError:
    return LocalServerError(
        f"the server of home {home} (pid {info.pid}, {info.url}) holds the home but did "
        f"not answer within {wait:g} s: it may be stopped (SIGSTOP) or "
        f"overloaded; wait for it, or stop it with 'VI_FLOW_HOME={home} vi-flow server "
        f"stop --force' (or 'kill {info.pid}')"
    )


def _home_held(home: Path) -> bool:
    """Whether a process holds the home's server lock: a silent process the run file
    names may be another that took a dead server's pid (Linux: ``/proc/locks``; where
    that cannot be read, ``True``)."""
    try:
        lock = os.stat(home / LOCK_FILE)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        locks = Path("/proc/locks").read_text()
    except OSError:
        return True
    inode = f"{os.major(lock.st_dev):02x}:{os.minor(lock.st_dev):02x}:{lock.st_ino}"
    return any("FLOCK" in line and inode in line.split() for line in locks.splitlines())


def _published_soon(home: Path) -> ServerInfo | None:
    """The home's server, should one publish itself within :data:`_PUBLISH_WAIT` s."""
    deadline = time.monotonic() + _PUBLISH_WAIT
    while time.monotonic() < deadline:
        if info := find_server(home):
            return info
        time.sleep(0.1)
    return None


def ensure_server(home: Path, idle_timeout: float, wait: float = _PROBE_TIMEOUT) -> ServerInfo:
    """Find the home's server, or start the background server and wait until it answers.

    Args:
        home: The home.
        idle_timeout: Seconds without clients or work after which a server started here
            exits (0: never).
        wait: How long the home's published server may take to answer before it is
            reported as not answering (a stopped or hung server is not replaced).

    Raises:
        LocalServerError: The home is unusable, the server did not start (with the
            last lines of its log), or it runs another vi-flow version.
    """
    return start_server(home, idle_timeout, wait)[0]


def start_server(
    home: Path, idle_timeout: float, wait: float = _PROBE_TIMEOUT
) -> tuple[ServerInfo, bool]:
    """As :func:`ensure_server`; also whether this call started the server (of several
    processes starting it at once, one did)."""
    home = home.expanduser().resolve()
    began = time.time()
    found, silent = find_silent_server(home, wait)
    if found is not None:
        return _check_version(found), False
    if silent is not None:  # another server could not take the home from it anyway
        raise _not_answering(silent, home, wait)
    import filelock  # only on the way to starting a server: it costs a warm start ~10 ms

    _prepare(home)
    started = False
    try:
        with filelock.FileLock(home / START_LOCK_FILE, timeout=START_TIMEOUT, mode=0o600):
            if not (info := find_server(home)):  # another process may have started it
                try:
                    _spawn(home, idle_timeout)
                    info, started = find_server(home), True
                except LocalServerError as exc:
                    # a `vi-flow serve` that took the home just before, and has not yet
                    # published where it listens: use it once it does
                    if HOME_SERVED not in str(exc):
                        raise
                    if not (info := _published_soon(home)):
                        raise _silent_server(home) or exc from None
    except filelock.Timeout:
        raise _failure(
            f"another process has been starting the server of {home} for over "
            f"{START_TIMEOUT:.0f} s",
            home,
        ) from None
    except OSError as exc:
        raise LocalServerError(f"cannot lock the vi-flow home {home}: {exc}") from None
    if info is None and _stopped_since(home, began):
        # QA: a command racing 'vi-flow server stop' said the server it started "does
        # not answer", above a log that said it was stopped on request
        raise LocalServerError(
            f"the vi-flow server of {home} was stopped on request ('vi-flow server stop')"
            " as it started for this call; run it again to start another"
        )
    if info is None:
        raise _failure(f"the vi-flow server of {home} started but does not answer", home)
    return _check_version(info), started


def _stopped_since(home: Path, when: float) -> bool:
    """Whether a server of the home was stopped on request since ``when`` (epoch s)."""
    try:
        return os.stat(home / STOPPED_FILE).st_mtime >= when
    except OSError:
        return False


def _in_process(settings: Settings) -> Attached | None:
    """A server inside this process, or ``None`` when another one owns the home."""
    from .server import embedded
    from .server.home import HomeBusyError, HomeError

    try:
        server = embedded.acquire(settings.home)
    except HomeBusyError:
        return None
    except HomeError as exc:
        raise LocalServerError(str(exc)) from None
    return Attached(server.info, lambda: embedded.release(server), lambda: server.holders == 1)


def attach(settings: Settings) -> Attached:
    """The server a ``local`` client talks to (see the module docstring).

    Raises:
        LocalServerError: No server could be found or started.
    """
    if settings.local_server == "in-process" and (own := _in_process(settings)):
        return own
    # the client's own timeout, but a second at least: a busy server is not a hung one
    limits = (settings.timeout.read, settings.timeout.total)
    wait = min((t for t in limits if t is not None), default=_PROBE_TIMEOUT)
    wait = min(max(wait, 1.0), _PROBE_TIMEOUT)
    return Attached(ensure_server(settings.home, settings.server_idle_timeout, wait))


def stopped_on_request(home: Path, pid: int) -> bool:
    """Whether the home's server ``pid`` was stopped on request (``vi-flow server stop``)."""
    try:
        return bool(orjson.loads((home / STOPPED_FILE).read_bytes()).get("pid") == pid)
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return False


def admin_token(home: Path) -> str | None:
    """The home's admin token, if this user may read it."""
    with contextlib.suppress(OSError):
        return (home / "admin-token").read_text().strip() or None
    return None
