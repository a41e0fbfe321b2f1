"""``vi-flow server start|status|stop|logs``: the home's local server.

Every command with the default ``local`` base URL talks to one server per home, started
in the background on first use. These commands manage it. They read the home's run file
and admin token themselves, so they work whatever the server's version.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ._failures import EXIT_CONFLICT, EXIT_FAILURE, EXIT_TRANSIENT, CommandFailed
from ._lazy import LazyGroup
from ._output import duration, emit_json, emit_ndjson, json_option, kv_table, wants_json
from ._params import FiniteFloat, HomeDir, int_range
from ._state import state

__all__ = ["server"]

#: How long ``stop`` waits for the server to exit after asking it to, before SIGTERM.
_STOP_WAIT = 60.0
_STOP_ANSWER = 600.0  # for the stop request's answer (--force cancels all work first)
_HOME_KEY = "vi_flow.server_home"


@click.group(cls=LazyGroup)
@click.option(
    "--home",
    type=HomeDir(),
    help="The home whose server to manage (default: VI_FLOW_HOME, the config, or the "
    "user data dir).",
)
@click.pass_context
def server(ctx: click.Context, home: Path | None) -> None:
    """Start, inspect, stop and read the logs of the home's local server."""
    ctx.meta[_HOME_KEY] = home


def _home() -> Path:
    from .. import config

    remote = state().base_url or os.environ.get("VI_FLOW_BASE_URL")
    if remote and remote.rstrip("/") != config.LOCAL:  # it would be ignored without a word
        raise click.UsageError(
            f"vi-flow server manages the local server of a home; --base-url "
            f"{config.shown_url(remote)} names another (its state: GET /v1/server with an admin"
            " key, or vi-flow server status on its host)"
        )
    given: Path | None = click.get_current_context().meta.get(_HOME_KEY)
    if given is None and os.environ.get("VI_FLOW_HOME"):
        given = config.default_home()  # the config file is not read: it may be the trouble
    try:
        home = given or config.resolve_settings().home
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return home.expanduser().resolve()


@server.command("start")
@click.option(
    "--idle-timeout",
    type=FiniteFloat(min=0),
    help="Seconds without clients or work before it exits (0: never; default: the "
    "server_idle_timeout setting, 600).",
)
@json_option
def start(idle_timeout: float | None, as_json: bool) -> None:
    """Start the home's server in the background (or say which one already runs)."""
    from .. import config, local

    home = _home()
    if idle_timeout is None:
        idle_timeout = config.resolve_settings().server_idle_timeout
    info, started = local.start_server(home, idle_timeout)
    if wants_json(as_json):
        emit_json({"running": True, "started": started, **_brief(info)})
        return
    verb = "started" if started else "already running"
    _line(f"vi-flow server {verb}: {info.url} (pid {info.pid}, home {home})")


def _brief(info: Any) -> dict[str, Any]:
    return {
        "url": info.url,
        "pid": info.pid,
        "version": info.version,
        "mode": info.mode,
        "home": info.home,
        "ssh": f"{info.ssh_host}:{info.ssh_port}" if info.ssh_port else None,
    }


def _status_of(info: Any, home: Path) -> dict[str, Any]:
    from .. import local

    try:
        code, body = local.call_server(info, "GET", "/server", token=local.admin_token(home))
    except OSError as exc:
        raise CommandFailed(f"the server at {info.url} does not answer: {exc}") from None
    if code != 200 or not isinstance(body, dict):
        raise CommandFailed(
            f"the server at {info.url} answered {_answer(code, body)} to GET /v1/server"
        )
    return body


def _answer(code: int, body: Any) -> str:
    """``503 (DATABASE_GONE: the server's ...)``: a status and the server's own error."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not error.get("message"):
        return str(code)
    return f"{code} ({error.get('code')}: {error['message']})"


@server.command("status")
@json_option
def status(as_json: bool) -> None:
    """Show the home's server: URL, pid, uptime, version, and the work it holds.

    Exits 1 when no server runs for the home, 6 when its server holds the home but does
    not answer (stopped with SIGSTOP, hung or overloaded).
    """
    from .. import local

    home = _home()
    info, silent = local.find_silent_server(home)
    if silent is not None:
        data = {"running": True, "answering": False, **_brief(silent)}
        _say(as_json, data, _not_answering(silent, home))
        raise SystemExit(EXIT_TRANSIENT)
    if info is None:
        if wants_json(as_json):
            emit_json({"running": False, "home": str(home)})
        else:
            _line(f"no vi-flow server runs for home {home}")
        raise SystemExit(EXIT_FAILURE)
    data = {"running": True, **_brief(info), **_status_of(info, home)}
    if wants_json(as_json):
        emit_json(data)
        return
    kv_table(
        [
            ("url", data["url"]),
            ("pid", data["pid"]),
            ("version", data["version"]),
            ("mode", data["mode"]),
            ("uptime", duration(data["uptimeS"] * 1000)),
            ("home", data["home"]),
            ("ssh", data["ssh"] or "-"),
            ("runs in flight", data["activeRuns"]),
            ("tasks in flight", data["activeTasks"]),
            ("reservations", data["activeReservations"]),
            ("idle timeout", f"{data['idleTimeoutS']:g} s" if data["idleTimeoutS"] else "never"),
            *_replica_rows(data),
        ]
    )


def _replica_rows(data: dict[str, Any]) -> list[tuple[str, Any]]:
    """The replica lines, for a server that shares its database with others."""
    replicas = data.get("replicas") or []
    if len(replicas) < 2:
        return []
    return [("replica", data.get("replica") or "-"), ("replicas", ", ".join(replicas))]


@server.command("stop")
@click.option("--force", is_flag=True, help="Cancel runs and tasks still in flight, then stop.")
@json_option
def stop(force: bool, as_json: bool) -> None:
    """Stop the home's server, once no run or task is in flight (or --force).

    Without --force it refuses (exit 5) while runs or tasks are in flight; with --force
    it cancels them cleanly first. Stopping a server that is not running succeeds. A
    server that does not answer is refused (exit 6); --force ends it by signal.
    """
    from .. import local

    home = _home()
    info, silent = local.find_silent_server(home)
    if silent is not None:
        if not force:
            raise CommandFailed(
                _not_answering(silent, home),
                exit_code=EXIT_TRANSIENT,
                hint="vi-flow server stop --force ends it without asking (SIGTERM, then SIGKILL)",
            )
        _end_silent(silent.pid)
        _say(
            as_json,
            {"stopped": True, "pid": silent.pid, "home": str(home)},
            f"vi-flow server {silent.pid} stopped (home {home}; it did not answer: ended by signal)",
        )
        return
    if info is None:
        _say(as_json, {"stopped": False, "home": str(home)}, f"no vi-flow server runs for {home}")
        return
    try:  # cancelling thousands of runs first takes a while: wait for the answer
        code, body = local.call_server(
            info,
            "POST",
            "/server/shutdown",
            token=local.admin_token(home),
            body={"force": force},
            timeout=_STOP_ANSWER,
        )
    except OSError as exc:
        raise CommandFailed(
            f"the server at {info.url} gave no answer to the stop request: {exc}",
            exit_code=EXIT_TRANSIENT,
            hint="vi-flow server status tells whether it still runs",
        ) from exc
    if code == 409 and isinstance(body, dict):
        error = body.get("error", {})
        message = error.get("message", "the server refused to stop")
        refusal = str(error.get("code") or "CONFLICT")  # SERVER_BUSY, SERVER_IN_PROCESS
        hint = "vi-flow server stop --force cancels them" if refusal == "SERVER_BUSY" else None
        request_id = error.get("requestId")
        said = f" (request id {request_id})" if request_id else ""
        shown = message if wants_json(as_json) else f"{refusal}: {message}{said}"  # as others
        raise CommandFailed(
            shown, exit_code=EXIT_CONFLICT, hint=hint, code=refusal, request_id=request_id
        )
    if code != 202:
        raise CommandFailed(
            f"the server at {info.url} answered {_answer(code, body)} to the stop request"
        )
    _wait_gone(info.pid)
    _say(
        as_json,
        {"stopped": True, "pid": info.pid, "home": str(home)},
        f"vi-flow server {info.pid} stopped (home {home})",
    )


def _not_answering(info: Any, home: Path) -> str:
    return (
        f"the server of home {home} (pid {info.pid}, {info.url}) holds the home but does not"
        " answer: it may be stopped (SIGSTOP), hung or overloaded"
    )


def _end_silent(pid: int) -> None:
    """End a server that does not answer: SIGTERM (and SIGCONT, should it be stopped),
    SIGKILL if it is still there after :data:`_STOP_WAIT` s. A server killed loses no
    accepted work: the next one recovers it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)
    if not _gone_within(pid, _STOP_WAIT):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _gone_within(pid, _STOP_WAIT)


def _wait_gone(pid: int) -> None:
    while not _gone_within(pid, _STOP_WAIT):
        os.kill(pid, signal.SIGTERM)  # it accepted the stop but hangs: be firmer


def _gone_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` has ended, waiting ``seconds`` at most."""
    from .. import local

    deadline = time.monotonic() + seconds
    while local.pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _say(as_json: bool, data: dict[str, Any], text: str) -> None:
    if wants_json(as_json):
        emit_json(data)
    else:
        _line(text)


def _line(text: str) -> None:
    """Print one line as it is: never cut (a home's path pastes whole, and ``grep`` finds
    it under ``COLUMNS=80``), and never read as markup (a path may hold ``[red]``)."""
    state().console.print(text, soft_wrap=True, markup=False, highlight=False)


@server.command("logs")
@click.option("-n", "--lines", default=50, show_default=True, type=int_range(0))
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@json_option
def logs(lines: int, follow: bool, as_json: bool) -> None:
    """Print the background server's log (HOME/logs/server.log); --json: NDJSON,
    {"line": ...} for each."""
    from ..models.server import LOG_DIR, LOG_FILE

    path = _home() / LOG_DIR / LOG_FILE
    show = _as_ndjson if wants_json(as_json) else _as_text  # QA: --json was ignored
    try:
        if not path.exists() and not follow:
            raise CommandFailed(f"no server log yet at {path}", exit_code=EXIT_FAILURE)
        _print_tail(path, lines, show)
        if follow:
            _follow(path, show)
    except PermissionError as exc:  # another user's home
        raise CommandFailed(
            f"cannot read the server log {path}: {exc.strerror}", exit_code=EXIT_FAILURE
        ) from None


def _as_text(line: str) -> None:
    click.echo(line)


def _as_ndjson(line: str) -> None:
    emit_ndjson({"line": line})


def _print_tail(path: Path, lines: int, show: Callable[[str], None]) -> None:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    for line in text.splitlines()[-lines:] if lines else []:
        show(line)


def _follow(path: Path, show: Callable[[str], None]) -> None:
    """Print what is appended to ``path``, across rotations, until Ctrl-C."""
    handle, inode = _open_at_end(path)
    while True:
        chunk = handle.readline() if handle else ""
        if chunk:
            show(chunk.removesuffix("\n"))
            continue
        time.sleep(0.2)
        try:
            rotated = path.stat().st_ino != inode
        except FileNotFoundError:
            continue
        if rotated:  # the log rolled over: read the new file from its start
            if handle:
                handle.close()
            handle, inode = open(path, errors="replace"), path.stat().st_ino  # noqa: SIM115


def _open_at_end(path: Path) -> tuple[Any, int | None]:
    try:
        handle = open(path, errors="replace")  # noqa: SIM115 - held for the whole follow
    except FileNotFoundError:
        return None, None
    handle.seek(0, os.SEEK_END)
    return handle, os.fstat(handle.fileno()).st_ino
