"""The CLI exits with a task's own code, and 128 + N for a task a signal N ended."""

from __future__ import annotations

from .conftest import Invoker


def _run(vf: Invoker, command: str) -> str:
    result = vf("tasks", "run", command)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_watch_exits_like_a_shell_would_and_get_shows_the_signal(vf: Invoker) -> None:
    three, killed = _run(vf, "exit 3"), _run(vf, "kill -9 $$")
    assert vf("tasks", "status", three, "--watch", "--interval", "0.05").exit_code == 3
    assert vf("tasks", "status", killed, "--watch", "--interval", "0.05").exit_code == 128 + 9
    shown = vf("tasks", "get", killed)
    assert shown.exit_code == 0, shown.stderr
    rows = dict(line.split("\t", 1) for line in shown.stdout.splitlines() if "\t" in line)
    assert (rows.get("signal"), rows.get("reason")) == ("9", "Killed"), shown.stdout


def test_a_shell_command_a_signal_ended_exits_128_plus_n(vf: Invoker) -> None:
    task_id = _run(vf, "sleep 60")
    try:
        assert vf("tasks", "shell", task_id, "-c", "kill -TERM $$").exit_code == 128 + 15
        assert vf("tasks", "shell", task_id, "-c", "exit 4").exit_code == 4
    finally:
        vf("tasks", "cancel", task_id, "--force")
