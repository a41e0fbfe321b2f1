"""The CLI in a real terminal: ``execute --stream`` driven inside tmux, as a user sees it.

A private tmux server (its own socket under the test's tmp dir) runs the command in a
120x40 window; the test reads the screen with ``capture-pane`` while the run goes on,
then presses Ctrl-C like a user would.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

SLOW_FLOW = """\
name: slow
blocks:
  - {block: template, id: greet, settings: {template: "hello {{ message }}"}}
  - block: task
    id: nap
    settings: {command: "echo napping; sleep 30"}
"""


class Terminal:
    """One tmux window on a private server; ``screen()`` is what a user sees now."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
        self.env = env

    def tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True, text=True, env=self.env, timeout=10, check=True,
        )  # fmt: skip
        return out.stdout

    def start(self, command: str) -> None:
        self.tmux("new-session", "-d", "-x", "120", "-y", "40", "bash", "--norc", "-c", command)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J")

    def wait_for(self, seen: Callable[[str], bool], timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if seen(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"the terminal never showed what was expected:\n{text}")
            time.sleep(0.1)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "VI_FLOW_HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TERM": "xterm-256color",
    }
    env.pop("NO_COLOR", None)
    env.pop("TMUX", None)
    term = Terminal(tmp_path / "tmux.sock", env)
    try:
        yield term
    finally:
        subprocess.run(
            ["tmux", "-S", str(term.socket), "kill-server"], capture_output=True, timeout=10
        )


def _cli() -> str:
    return shlex.join([sys.executable, "-m", "vi_flow.cli"])


def _create_flow(terminal: Terminal, tmp_path: Path) -> str:
    spec = tmp_path / "slow.yaml"
    spec.write_text(SLOW_FLOW)
    created = subprocess.run(
        [sys.executable, "-m", "vi_flow.cli", "flows", "create", "-f", str(spec)],
        capture_output=True, text=True, env=terminal.env, timeout=60, check=True,
    )  # fmt: skip
    return created.stdout.strip()


def test_live_view_then_ctrl_c_in_tmux(terminal: Terminal, tmp_path: Path) -> None:
    """The live table shows each step's state as it changes; Ctrl-C cancels the run."""
    flow_id = _create_flow(terminal, tmp_path)
    done = tmp_path / "exit_code"
    command = f"{_cli()} execute {flow_id} -m world --stream; echo $? > {done}; sleep 60"
    terminal.start(command)

    live = terminal.wait_for(lambda s: "running" in s and "napping" in s)
    rows = {line.split()[1]: line for line in live.splitlines() if line.startswith("│")}
    assert "STEP" in live and flow_id in live
    assert "done" in rows["greet"] and "hello world" in rows["greet"]  # finished, previewed
    assert "running" in rows["nap"]  # the task step is live...
    assert "nap | napping" in live  # ...and its log lines show under the table
    assert "step nap (task) started" not in live  # a table, not plain lines

    terminal.tmux("send-keys", "C-c")
    deadline = time.monotonic() + 30
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done.read_text().strip() == "130"
    after = terminal.screen()
    assert "cancelled" in after
    assert "Traceback" not in after
