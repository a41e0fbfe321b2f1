"""Driving the home's background server as users do: CLI commands and scripts in processes.

Every helper runs a real process (``vi-flow ...`` or ``python -c ...``) with the
default ``local`` base URL and the given home, so the processes share one background
server exactly as a user's terminals and scripts would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vi_flow.local import pid_alive
from vi_flow.models.server import LOCK_FILE, RUN_FILE, ServerInfo

BIN = Path(sys.executable).parent / "vi-flow"


def cli_command() -> list[str]:
    """The installed console script when it sits next to this Python, else ``-m``."""
    return [str(BIN)] if BIN.exists() else [sys.executable, "-m", "vi_flow.cli"]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell on ``home``, with the default background server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VI_FLOW_")}
    env["VI_FLOW_HOME"] = str(home)
    env["VI_FLOW_CONFIG_DIR"] = os.environ["VI_FLOW_CONFIG_DIR"]
    env.update(extra)
    return env


def cli(
    home: Path, *args: str, timeout: float = 60, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``vi-flow ARGS`` on ``home`` and return what it printed."""
    done = subprocess.run(
        [*cli_command(), *args],
        env=env_for(home, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"vi-flow {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return done


def cli_json(home: Path, *args: str, **env: str) -> Any:
    """Run ``vi-flow ARGS --json`` (before any ``--``) and decode its output."""
    at = args.index("--") if "--" in args else len(args)
    return json.loads(cli(home, *args[:at], "--json", *args[at:], **env).stdout)


def script(
    home: Path, code: str, *, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a Python script on ``home``; fail with its output if it fails."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env_for(home, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"script failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def run_file(home: Path) -> ServerInfo | None:
    """The home's run file, if any."""
    try:
        return ServerInfo.from_json((home / RUN_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def started_server(home: Path) -> ServerInfo:
    """Start the home's background server with ``vi-flow server start``; its run file."""
    cli(home, "server", "start")
    info = run_file(home)
    assert info is not None, "vi-flow server start wrote no run file"
    return info


@contextlib.contextmanager
def foreground_serve(
    home: Path, stderr: int = subprocess.DEVNULL, prefix: tuple[str, ...] = (), **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``vi-flow serve`` on ``home`` in the foreground, once it has published itself;
    stopped afterwards (SIGTERM, then SIGKILL) unless it has ended. Its log goes to
    ``stderr`` (nowhere by default). ``prefix`` runs it (it must ``exec`` the server: its
    pid is the one stopped)."""
    serve = subprocess.Popen(
        [*prefix, *cli_command(), "serve", "--port", "0"],
        env=env_for(home, **env),
        stderr=stderr,
    )
    try:
        wait_for(lambda: run_file(home), 30, "serve to publish itself")
        yield serve
    finally:
        if serve.poll() is None:
            serve.terminate()
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    return pid_alive(pid)


def server_pids(home: Path) -> list[int]:
    """The processes that hold ``home``'s database open: the servers of the home (its
    lock file where the database is PostgreSQL's, not a file of the home)."""
    db = str(home / (LOCK_FILE if os.environ.get("VI_FLOW_DATABASE") else "state.db"))
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == db for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop_server(home: Path) -> bool:
    """Stop the home's server by its pid (SIGTERM, then SIGKILL); True if one was running.

    A server in this very process (the in-process mode) is left to its clients.
    """
    info = run_file(home)
    if info is None or info.pid == os.getpid() or not alive(info.pid):
        return False
    os.kill(info.pid, signal.SIGTERM)
    try:
        wait_for(lambda: not alive(info.pid), 30, f"server {info.pid} to stop")
    except AssertionError:
        os.kill(info.pid, signal.SIGKILL)
        wait_for(lambda: not alive(info.pid), 10, f"server {info.pid} to die")
    return True
