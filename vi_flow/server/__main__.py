"""``python -m vi_flow.server --home DIR --detach``: the home's background server.

Clients (and ``vi-flow server start``) run this to start the server a home's processes
share. With ``--detach`` the process forks: the child becomes the server, with its output
in ``<home>/logs/server.stderr`` and its log in ``<home>/logs/server.log``; the parent
waits until the child answers on its port and has written the run file, then exits 0 —
or exits 1 and prints why the child failed. So the caller needs no polling, leaves no
zombie and holds no handle on the server.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from ..models.server import LOG_DIR, LOG_FILE, STDIO_FILE
from .home import HomeError, prepare_home

__all__ = ["main"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vi_flow.server")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--idle-timeout", type=float, default=600.0)
    parser.add_argument("--detach", action="store_true")
    return parser.parse_args(argv)


def _redirect_output(log_dir: Path) -> None:
    fd = os.open(log_dir / STDIO_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


def _wait_for_child(read_end: int) -> int:
    """The parent's part: relay the child's word on start-up and exit with it."""
    with os.fdopen(read_end, "rb") as pipe:
        word = pipe.read().decode("utf-8", "replace")
    if word.startswith("ok"):
        return 0
    sys.stderr.write(word or "the vi-flow server exited during start-up\n")
    return 1


def _serve(home: Path, idle_timeout: float, tell: int | None) -> int:
    from .logs import close_logging, configure_logging
    from .serve import run_server
    from .state import ServerSettings

    untold = [tell] if tell is not None else []

    def say(word: str) -> None:  # once: the parent waits for this word, then exits
        while untold:
            fd = untold.pop()
            os.write(fd, word.encode())
            os.close(fd)

    try:
        settings = ServerSettings(home=home, mode="background", idle_timeout=idle_timeout)
    except ValueError as exc:  # a bad VI_FLOW_QUOTA_* or the like: one line naming it
        say(f"{exc}\n")
        return 1
    log_file = home / LOG_DIR / LOG_FILE
    try:
        configure_logging(file=log_file)
    except ValueError as exc:  # a bad VI_FLOW_LOG
        say(f"{exc}\n")
        return 1
    except OSError as exc:  # an unwritable or immutable log file: one line, as for the rest
        say(f"cannot write the server log {log_file}: {exc.strerror or exc}\n")
        return 1
    try:
        run_server(settings, ready=lambda _port: say("ok\n"))
    except HomeError as exc:
        say(f"{exc}\n")
        return 1
    except Exception:
        say(traceback.format_exc())
        raise
    finally:
        # the lines still queued for the file (the last ones: why it stopped) are written
        # before the process exits; os._exit would drop them with the writer's thread
        close_logging()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the background server; see the module docstring."""
    args = _parse(argv)
    home = args.home.expanduser().resolve()
    try:
        prepare_home(home)
        (home / LOG_DIR).mkdir(mode=0o700, exist_ok=True)
    except (HomeError, OSError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    if not args.detach:
        return _serve(home, args.idle_timeout, None)
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        return _wait_for_child(read_end)
    os.close(read_end)
    os.chdir(home)  # never hold the caller's working directory
    _redirect_output(home / LOG_DIR)
    try:
        code = _serve(home, args.idle_timeout, write_end)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)  # the child never returns into the parent's code


if __name__ == "__main__":
    sys.exit(main())
