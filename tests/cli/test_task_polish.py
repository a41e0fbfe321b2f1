"""``tasks status --watch``, stdin through ``tasks shell -c``, ``vi-flow ssh --config``,
and ``runs watch`` of a finished run: against the embedded local server (and real ssh)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Invoker, write
from .test_subprocess import _cli, served

__all__ = ["served"]


def _run(vf: Invoker, *args: str) -> str:
    result = vf("tasks", "run", *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_status_watch_prints_each_change_and_exits_with_the_task_code(vf: Invoker) -> None:
    task_id = _run(vf, "sleep 0.5; exit 3")
    watched = vf("tasks", "status", task_id, "--watch", "--interval", "0.05")
    assert watched.exit_code == 3
    first = watched.stdout.splitlines()[0]
    assert first.endswith((f"{task_id}  pending", f"{task_id}  running"))
    assert watched.stdout.splitlines()[-1].endswith(f"{task_id}  failed (exit code 3)")
    as_json = vf("tasks", "status", task_id, "-w", "--json")
    assert as_json.exit_code == 3
    assert [json.loads(line)["status"] for line in as_json.stdout.splitlines()] == ["failed"]
    assert vf("tasks", "status", "--watch").exit_code == 2  # needs a task


def test_shell_command_reads_piped_stdin(vf: Invoker) -> None:
    task_id = _run(vf, "sleep 30")
    try:
        counted = vf("tasks", "shell", task_id, "-c", "wc -l", input="a\nb\nc\n")
        assert counted.exit_code == 0, counted.stderr
        assert counted.stdout.strip() == "3"
        ignored = vf("tasks", "shell", task_id, "-n", "-c", "wc -l", input="a\nb\n")
        assert ignored.stdout.strip() == "0"
        upper = vf("tasks", "shell", task_id, "-c", "tr a-z A-Z; exit 4", input="quiet\n")
        assert (upper.stdout, upper.exit_code) == ("QUIET\n", 4)
    finally:
        vf("tasks", "cancel", task_id, "--force")


def test_ssh_config_entry_is_printed_written_once_and_works(vf: Invoker, tmp_path: Path) -> None:
    task_id = _run(vf, "sleep 30")
    try:
        printed = vf("ssh", task_id, "--config", "--alias", "box")
        assert printed.exit_code == 0, printed.stderr
        entry = printed.stdout
        assert entry.startswith("Host box\n") and f"    User {task_id}\n" in entry
        assert "StrictHostKeyChecking yes" in entry and "IdentityFile " in entry
        (tmp_path / "ssh").mkdir()
        config = write(tmp_path / "ssh" / "config", "Host other\n    HostName example.org\n")
        for _ in range(2):  # written again: replaced, not added
            wrote = vf("tasks", "ssh", task_id, "--config-file", str(config), "--alias", "box")
            assert wrote.exit_code == 0, wrote.stderr
            assert wrote.stdout.strip().endswith(f"connect: ssh -F {config} box")  # as it works
        text = config.read_text()
        assert text.endswith("Host other\n    HostName example.org\n")
        assert text.count("Host box") == 1
        assert config.stat().st_mode & 0o777 == 0o600
        if shutil.which("ssh"):
            out = subprocess.run(
                ["ssh", "-F", str(config), "box", "echo", "hello", "from", "box"],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert out.stdout == "hello from box\n", out.stderr
        bad = vf("ssh", task_id, "--config", "--alias", "no spaces")
        assert bad.exit_code == 2 and "--alias" in bad.stderr
    finally:
        vf("tasks", "cancel", task_id, "--force")


def test_ssh_config_entry_wins_over_the_file_and_never_shares_an_alias(
    vf: Invoker, tmp_path: Path
) -> None:
    # QA: the entry was appended, and ssh takes the first value it reads: a user's own
    # `Host box` (or a global `User`) sent `ssh box` to the old host with the task's key
    task_id = _run(vf, "sleep 30")
    try:
        (tmp_path / "ssh").mkdir()
        own = "User alice\nHost box\n    HostName old.example\n    ProxyJump hop\n"
        config = write(tmp_path / "ssh" / "config", own)
        refused = vf("ssh", task_id, "--config-file", str(config), "--alias", "box")
        assert (
            refused.exit_code == 1 and "(line 2)" in refused.stderr and "--alias" in refused.stderr
        )
        assert config.read_text() == own  # nothing changed
        (tmp_path / "dotfiles").mkdir()
        dotfile = write(tmp_path / "dotfiles" / "ssh_config", "User alice\nPort 2222\n")
        config.unlink()
        config.symlink_to(dotfile)  # a config kept elsewhere, linked: written there
        wrote = vf("ssh", task_id, "--config-file", str(config), "--alias", "box2")
        assert wrote.exit_code == 0, wrote.stderr
        assert config.is_symlink() and dotfile.read_text().endswith("User alice\nPort 2222\n")
        if shutil.which("ssh"):

            def resolved(host: str) -> dict[str, str]:
                out = subprocess.run(
                    ["ssh", "-G", "-F", str(config), host],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                )
                return dict(line.split(" ", 1) for line in out.stdout.splitlines())  # fmt: skip

            mine, other = resolved("box2"), resolved("elsewhere")
            assert (mine["user"], mine["hostname"]) == (task_id, "127.0.0.1")
            assert mine["port"] != "2222"
            assert (other["user"], other["port"]) == ("alice", "2222")  # still global
    finally:
        vf("tasks", "cancel", task_id, "--force")


def test_runs_watch_of_a_finished_run_prints_its_events_and_ends(
    vf: Invoker, tmp_path: Path
) -> None:
    spec = write(tmp_path / "s.yaml", "name: g\nblocks:\n  - block: template\n    id: hello\n"
                 "    settings: {template: 'Hello, {{ message }}!'}\n")  # fmt: skip
    flow_id = vf("flows", "create", "-f", str(spec)).stdout.strip()
    assert vf("execute", flow_id, "-m", "hi").stdout == "Hello, hi!\n"
    run_id = json.loads(vf("runs", "list", "--json").stdout)[0]["runId"]
    watched = vf("runs", "watch", run_id)
    assert watched.exit_code == 0
    lines = watched.stdout.splitlines()
    assert lines[0].startswith(f"run {run_id} started")
    assert lines[-1].startswith(f"run {run_id} Succeeded") and lines[-1].endswith("Hello, hi!")


@pytest.mark.parametrize("args", [("--config-file", "/proc/forbidden/config")])
def test_ssh_config_file_that_cannot_be_written_is_an_error(
    vf: Invoker, args: tuple[str, ...]
) -> None:
    task_id = _run(vf, "sleep 30")
    try:
        result = vf("ssh", task_id, *args)
        assert result.exit_code == 1 and "/proc/forbidden" in result.stderr
    finally:
        vf("tasks", "cancel", task_id, "--force")


def test_piped_stdin_streams_through_as_the_command_runs(
    served: tuple[str, str, subprocess.Popen[str]],
) -> None:
    """``head -1`` gets the first line at once and ends the command; vi-flow does not wait
    for the writer (it would for minutes), and the writer then stops on its broken pipe."""
    base, token, _ = served
    env = {**os.environ, "VI_FLOW_BASE_URL": base, "VI_FLOW_API_KEY": token}
    started = subprocess.run(
        [*_cli(), "tasks", "run", "--", "sleep", "60"], capture_output=True, text=True, env=env
    )
    task_id = started.stdout.strip()
    # Writes a line every 0.1 s for 2 minutes, and stops at once when nobody reads.
    writer = "import time\nfor i in range(1200): print('line', i, flush=True); time.sleep(0.1)"
    pipeline = (
        f"{sys.executable} -c {shlex.quote(writer)} 2>/dev/null"
        f" | {' '.join(_cli())} tasks shell {task_id} -c 'head -1'"
    )
    began = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", pipeline], stdout=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run([*_cli(), "tasks", "cancel", task_id, "--force"], env=env, check=False)
    assert out == "line 0\n"
    assert time.monotonic() - began < 60


def test_runs_watch_after_the_end_of_a_failed_run_still_exits_1(
    vf: Invoker, tmp_path: Path
) -> None:
    spec = write(tmp_path / "f.yaml", "name: f\nblocks:\n  - block: template\n    id: bad\n"
                 "    settings: {template: '{{ steps.nope.output }}'}\n")  # fmt: skip
    flow_id = vf("flows", "create", "-f", str(spec)).stdout.strip()
    assert vf("execute", flow_id).exit_code == 1
    run_id = json.loads(vf("runs", "list", "--json").stdout)[0]["runId"]
    assert vf("runs", "watch", run_id).exit_code == 1
    late = vf("runs", "watch", run_id, "--after", "99999")
    assert late.exit_code == 1 and "Failed" in late.stderr, late.stderr
