"""The demo's "Try next" commands work as printed, pasted in a fresh shell where it ran.

A fresh shell has no ``VI_FLOW_HOME`` and, when the demo ran in a virtual environment
(``nox -s demo``), no ``vi-flow`` on its ``PATH``: each printed line must carry both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vi_flow.cli import demo
from vi_flow.cli._root import COMMANDS

from .conftest import REPO
from .test_subprocess import _cli

VENV_BIN = Path(sys.executable).parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # an unreaped zombie has exited all the same
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _stop_home_server(home: Path) -> None:
    """Stop the background server a command left running on ``home``, if any."""
    run_file = home / "server.json"
    if not run_file.exists():
        return
    pid = int(json.loads(run_file.read_text())["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the home's server {pid} ignored SIGTERM for 30 s")


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """The demo's home; a space in its name checks that the printed lines quote it."""
    home = tmp_path / "demo home"
    try:
        yield home
    finally:
        _stop_home_server(home)


def _fresh_shell_env() -> dict[str, str]:
    """This environment without VI_FLOW_* (the config dir stays private) nor the venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VI_FLOW_") or k == "VI_FLOW_CONFIG_DIR"
    }
    env.pop("VIRTUAL_ENV", None)
    paths = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in paths if p and Path(p) != VENV_BIN)
    return env


def _try_next(stdout: str) -> list[str]:
    after = stdout.split("Try next", 1)[1].splitlines()[1:]
    return [line.strip() for line in after if line.startswith("  ")]


def _in_fresh_shell(line: str) -> str:
    out = subprocess.run(
        ["bash", "-c", line],
        cwd=REPO, env=_fresh_shell_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, f"{line}\n{out.stderr}{out.stdout}"
    return out.stdout


@pytest.mark.timeout(240)
def test_try_next_lines_work_in_a_fresh_shell(home: Path) -> None:
    out = subprocess.run(
        [*_cli(), "demo", "--home", str(home)],
        cwd=REPO, env=_fresh_shell_env(), capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    assistant, trainer = re.findall(r"created flow (flow_\w+)", out.stdout)
    train_run = re.findall(r"runs watch (run_\w+)", out.stdout)[0]
    lines = _try_next(out.stdout)
    assert len(lines) == 6, lines
    for line in lines:
        assert line.startswith(f"VI_FLOW_HOME={shlex.quote(str(home))} "), line
        command = shlex.split(line, comments=True)[1]
        assert command.endswith("/vi-flow") or command.endswith("python"), line  # by path
    outputs = {}
    for line in lines:
        if " server status" in line and "server" not in COMMANDS:
            continue  # `vi-flow server` is not there yet: nothing to run
        outputs[line] = _in_fresh_shell(line)

    def output_of(part: str) -> str:
        return next(text for line, text in outputs.items() if part in line)

    assert assistant in output_of(" flows list") and trainer in output_of(" flows list")
    assert f"{train_run}/train" in output_of(" tasks list")
    assert f"run {train_run} Succeeded" in output_of(f" runs watch {train_run}")
    assert "Lima: sunny, 24 °C" in output_of(f" execute {assistant} ")
    assert "epoch 12/12" in output_of(f" execute {trainer} ")


def test_vi_flow_is_called_by_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    assert demo._vi_flow_command() == "venv/bin/python -m vi_flow.cli"
    (bin_dir / "vi-flow").touch()
    assert demo._vi_flow_command() == "venv/bin/vi-flow"
    monkeypatch.chdir(bin_dir)
    assert demo._vi_flow_command() == "./vi-flow"
    monkeypatch.chdir(REPO)
    assert demo._vi_flow_command() == str(bin_dir / "vi-flow")


def test_python_m_vi_flow_cli_runs() -> None:
    """The fallback when no console script sits next to the interpreter."""
    out = subprocess.run(
        [sys.executable, "-m", "vi_flow.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "vi-flow" in out.stdout
