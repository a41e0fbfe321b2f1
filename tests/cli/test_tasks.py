"""``tasks``, ``volumes``, ``instances``, ``reservations`` and ``ssh-keys`` on the local server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import asyncssh

from vi_flow.cli._state import CliState

from .conftest import Invoker, write


def _run(vf: Invoker, *args: str) -> str:
    result = vf("tasks", "run", *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_logs_follow_exits_with_the_task_code(vf: Invoker) -> None:
    task_id = _run(vf, "--name", "three", "echo one; echo two >&2; exit 3")
    followed = vf("tasks", "logs", "-f", task_id)
    assert followed.exit_code == 3, followed.stderr
    assert followed.stdout == "one\n"
    both = vf("tasks", "logs", task_id, "--both")
    assert both.stdout.splitlines() == ["one", "two"]
    errors = vf("tasks", "logs", task_id, "--stderr", "--json")
    assert json.loads(errors.stdout)["lines"] == ["two"]
    status = json.loads(vf("tasks", "status", task_id, "--json").stdout)
    assert (status["status"], status["exitCode"]) == ("failed", 3)


def test_a_followed_progress_bar_is_written_as_the_task_wrote_it(vf: Invoker) -> None:
    # The follow hands out a progress bar's line in pieces as it redraws (each ending
    # with its "\r"); the CLI writes no newline after a piece, so the bar redraws in place
    # on a terminal, and a pipe gets exactly the task's bytes.
    script = "printf 'go\\n\\r 0%%'; sleep 0.6; printf '\\r 50%%'; sleep 0.6; printf '\\r100%%\\n'"
    task_id = _run(vf, script)
    followed = vf("tasks", "logs", "-f", task_id)
    assert (followed.exit_code, followed.stdout) == (0, "go\n\r 0%\r 50%\r100%\n")


_PIECES = r"""
import json, sys, time
out = sys.stdout
for i in range(30):  # a fast bar: its unfinished line passes 256 KiB between two reads
    out.write("".join(f"\r{i:02d}-{j:05d} |" + "#" * 30 for j in range(100)))
    out.flush()
    time.sleep(0.03)
out.write("\n" + json.dumps({"blob": "y" * 700_000}) + "\n")  # one line over 256 KiB
out.write("step 1 done\r\r\nlast\n")  # a whole line that ends with a \r
"""


def test_a_followed_log_reaches_a_pipe_as_text_whatever_its_pieces(vf: Invoker) -> None:
    # QA AC: the CLI wrote a newline after each 256 KiB piece of a long line (a fast bar,
    # a JSON line of 700 KB), and none after a whole line ending with \r ("\r\r\n")
    task_id = _run(vf, "--", sys.executable, "-c", _PIECES)
    followed = vf("tasks", "logs", "-f", task_id)
    assert followed.exit_code == 0, followed.stderr
    bar = "".join(f"\r{i:02d}-{j:05d} |" + "#" * 30 for i in range(30) for j in range(100))
    blob = json.dumps({"blob": "y" * 700_000})
    written = bar + "\n" + blob + "\n" + "step 1 done\r\nlast\n"  # one \r of "\r\r\n" ends it
    assert followed.stdout_bytes.decode() == written  # (.stdout makes "\r\n" "\n")
    records = [
        json.loads(r) for r in vf("tasks", "logs", "-f", task_id, "--json").stdout.splitlines()
    ]
    pieces = [r for r in records if r.get("piece")]
    assert pieces and all(r["piece"] is True for r in pieces)  # the blob's pieces at least
    assert "".join(r["line"] + ("" if r.get("piece") else "\n") for r in records[:-1]) == written


def test_log_lines_keep_their_colours_but_no_other_escapes_on_a_terminal(vf: Invoker) -> None:
    # A task is untrusted: its log reached the terminal as written, so an OSC 52 in it
    # wrote the user's clipboard (and others retitle the window or move the cursor).
    written = "a\x1b[31mred\x1b[0m\x1b]52;c;aGk=\x07 b\rc\tt"
    task_id = _run(vf, "printf 'a\\033[31mred\\033[0m\\033]52;c;aGk=\\007 b\\rc\\tt\\n'")
    safe = "a\x1b[31mred\x1b[0m\\x1b]52;c;aGk=\\x07 b\rc\tt\x1b[0m\n"  # and a reset
    for follow in (("-f",), ()):  # -f first: it waits for the end
        piped = vf("tasks", "logs", task_id, *follow)  # data: exactly as written
        assert (piped.exit_code, piped.stdout) == (0, written + "\n"), piped.stderr
        coloured = vf("--color", "always", "tasks", "logs", task_id, *follow)
        assert coloured.stdout == safe, coloured.stderr
        with mock.patch.object(CliState, "interactive", True):
            plain = vf("--color", "never", "tasks", "logs", task_id, *follow)
        assert plain.stdout == "ared\\x1b]52;c;aGk=\\x07 b\rc\tt\n", plain.stderr


def test_json_on_a_terminal_writes_c1_controls_out(vf: Invoker) -> None:
    # QA: JSON escapes C0 controls but not C1 ones: a task's U+009B (CSI) reached the
    # terminal as it was under --json, while the plain view wrote it out
    task_id = _run(vf, "printf 'a\\302\\23331mred\\n'")
    assert vf("tasks", "logs", "-f", task_id).stdout == "a\x9b31mred\n"  # piped: exact
    with mock.patch.object(CliState, "interactive", True):
        shown = vf("tasks", "logs", task_id, "--json")
    assert json.loads(shown.stdout)["lines"] == ["a\x9b31mred"]  # the same value...
    assert "\x9b" not in shown.stdout and "\\u009b" in shown.stdout  # ...written out


def test_since_long_ago_is_every_line(vf: Invoker) -> None:
    # QA: a duration past what a timedelta holds was OverflowError (exit 1), and year 1
    # "year 0 is out of range" (naming neither the option nor the value)
    task_id = _run(vf, "echo one; echo two")
    assert vf("tasks", "logs", "-f", task_id).exit_code == 0
    for since in ("9999999999999999999999d", "0001-01-01", "1h"):
        shown = vf("tasks", "logs", task_id, "--since", since)
        assert (shown.exit_code, shown.stdout) == (0, "one\ntwo\n"), (since, shown.stderr)


def test_run_argv_follow_and_json(vf: Invoker) -> None:
    code = "import os; print('task', os.environ['GREETING'])"
    result = vf("tasks", "run", "--follow", "-e", "GREETING=hi", "--", sys.executable, "-c", code)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("task_") and lines[1] == "task hi"
    ndjson = vf("tasks", "logs", "-f", lines[0], "--json")
    records = [json.loads(line) for line in ndjson.stdout.splitlines()]
    assert records[0]["line"] == "task hi"
    assert records[-1]["status"] == "completed" and records[-1]["exitCode"] == 0
    args = ("--follow", "--json", "-e", "GREETING=yo", "--", sys.executable, "-c", code)
    followed = vf("tasks", "run", *args)
    rows = [json.loads(line) for line in followed.stdout.splitlines()]  # NDJSON throughout
    assert rows[0]["taskId"].startswith("task_") and rows[1]["line"] == "task yo"
    assert rows[-1]["exitCode"] == 0


def test_run_follow_shows_the_task_s_stderr_on_stderr(vf: Invoker) -> None:
    # QA: only stdout was followed, so a script's logging (stderr) never appeared
    code = "import logging, sys; print('out'); logging.warning('to stderr'); sys.stdout.flush()"
    shown = vf("tasks", "run", "--follow", "--", sys.executable, "-c", code)
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.splitlines()[1:] == ["out"] and "WARNING:root:to stderr\n" in shown.stderr
    rows = vf("tasks", "run", "--follow", "--json", "--", sys.executable, "-c", code).stdout
    lines = [
        (row["stream"], row["line"]) for row in map(json.loads, rows.splitlines()) if "line" in row
    ]
    assert sorted(lines) == [("stderr", "WARNING:root:to stderr"), ("stdout", "out")]


def test_a_followed_task_that_fails_says_why_on_stderr(vf: Invoker) -> None:
    # Found by QA: a command that never started, or died saying why on stderr, printed
    # only its task id; the reason was in the task's message and its stderr log.
    missing = vf("tasks", "run", "--follow", "--", "/no/such/prog")
    assert missing.exit_code == 127
    assert "/no/such/prog" in missing.stderr, missing.stderr
    code = "import sys; print('working'); sys.exit('boom: the disk is full')"
    died = vf("tasks", "run", "--follow", "--", sys.executable, "-c", code)
    assert died.exit_code == 1 and "working" in died.stdout
    assert "boom: the disk is full\n" in died.stderr, died.stderr  # followed there
    as_json = vf("tasks", "logs", "-f", missing.stdout.split()[0], "--json")
    last = json.loads(as_json.stdout.splitlines()[-1])
    assert last["exitCode"] == 127 and last["reason"] and last["message"], last
    both = vf("tasks", "logs", "--stderr", "--both", missing.stdout.split()[0])
    assert both.exit_code == 2 and "--stderr or --both" in both.stderr


def test_run_from_file_list_status_cancel(vf: Invoker, tmp_path: Path) -> None:
    spec = write(tmp_path / "task.yaml", "name: sleeper\ncommand: sleep 30\n")
    task_id = _run(vf, "-f", str(spec))
    listed = json.loads(vf("tasks", "list", "--json").stdout)
    assert task_id in [t["taskId"] for t in listed]
    table = vf("tasks", "list", "--status", "running", "--status", "pending")
    assert task_id in table.stdout and "sleeper" in table.stdout
    assert "sleeper" in vf("tasks", "status").stdout
    cancelled = vf("tasks", "cancel", task_id)
    assert cancelled.stdout.strip() == f"{task_id}: cancelled"
    assert vf("tasks", "status", "task_missing").exit_code == 4


def test_a_bad_task_file_is_a_usage_error_naming_the_file(vf: Invoker, tmp_path: Path) -> None:
    cases = {
        "unclosed.yaml": ("name: [unclosed\n", "unclosed.yaml:2:1: not valid YAML"),
        "twice.yaml": (  # YAML keeps the last value, silently
            "command: echo a\nname: n\ncommand: echo b\n",
            "twice.yaml:3:1: not valid YAML: duplicate key 'command' (first on line 1)",
        ),
        "env.yaml": ("command: [echo, hi]\nenv: [1, 2]\n", "env.yaml: env must be a mapping"),
        "volumes.yaml": ("command: x\nvolumes: data\n", "volumes must be a list"),
        "envodd.yaml": ("command: x\nenv: {A: 1, B: null}\n", "env.B must be text, a number"),
        "bigint.yaml": ("command: x\ncpus: 99999999999999999999999999\n", "cpus: integer out of"),
    }
    for name, (text, said) in cases.items():
        bad = vf("tasks", "run", "-f", str(write(tmp_path / name, text)))
        assert bad.exit_code == 2, (name, bad.stderr)
        assert said in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe")
    bad = vf("tasks", "run", "-f", str(binary))
    assert bad.exit_code == 2 and "binary.yaml: not UTF-8" in bad.stderr, bad.stderr
    # a word of an argv that is not UTF-8 reaches Python as a lone surrogate
    bad = vf("tasks", "run", "--", "echo", "\udcff")
    assert bad.exit_code == 2 and "command[1]: text that is not valid Unicode" in bad.stderr
    assert json.loads(vf("tasks", "list", "--json").stdout) == []


def test_bad_gpu_request_is_one_line(vf: Invoker) -> None:
    result = vf("tasks", "run", "--gpu", "h100:9", "true")
    assert result.exit_code == 2  # a bad argument, as the exit-code table says
    assert result.stderr.startswith("error: VALIDATION_ERROR: gpu:")
    assert "Traceback" not in result.stderr


def test_json_errors_are_json_on_stderr_with_the_same_exit_code(vf: Invoker) -> None:
    for args in (
        ("--json", "tasks", "run", "--gpu", "h100:9", "true"),  # the global --json
        ("tasks", "status", "task_missing", "--json"),  # a command's --json
    ):
        result = vf(*args)
        error = json.loads(result.stderr)["error"]
        assert error["exitCode"] == result.exit_code in (2, 4)
        assert error["code"] in ("VALIDATION_ERROR", "TASK_NOT_FOUND")
        assert error["message"] and error["requestId"].startswith("req_")
        assert result.stdout == ""


def test_run_needs_a_command(vf: Invoker) -> None:
    assert vf("tasks", "run").exit_code == 2


def test_submit_wait_and_shell(vf: Invoker) -> None:
    submitted = vf("tasks", "submit", "--wait", "echo done")
    assert submitted.exit_code == 0
    task_id = _run(vf, "sleep 30")
    shell = vf("tasks", "shell", task_id, "-c", "exit 7")
    assert shell.exit_code == 7
    printed = vf("tasks", "ssh", task_id, "--print")
    assert printed.exit_code == 0 and "ssh" in printed.stdout
    vf("tasks", "cancel", task_id, "--force")


def test_a_shell_into_a_pending_task_says_it_waits_for_it(vf: Invoker) -> None:
    # QA: the command waited (up to 600 s) for a task queued behind others, saying nothing
    every_cpu = str(os.cpu_count() or 1)
    _run(vf, "--cpus", every_cpu, "sleep 2")  # holds every CPU for 2 s
    queued = _run(vf, "--cpus", "1", "sleep 30")
    shell = vf("tasks", "shell", queued, "-c", "echo in")
    assert (shell.exit_code, shell.stdout) == (0, "in\n"), shell.stderr
    assert f"task {queued} is pending (WaitingForCapacity): waiting for it" in shell.stderr
    vf("tasks", "cancel", queued, "--force")


def test_volumes(vf: Invoker) -> None:
    created = vf("volumes", "create", "--name", "data", "--size-gb", "2")
    assert created.exit_code == 0
    volume_id = created.stdout.strip()
    listed = json.loads(vf("volumes", "list", "--json").stdout)
    assert [v["name"] for v in listed] == ["data"]
    task_id = _run(vf, "sleep 30")
    assert vf("volumes", "mount", "data", task_id).exit_code == 0
    busy = vf("volumes", "delete", volume_id, "--yes")
    assert busy.exit_code == 5
    assert "CONFLICT" in busy.stderr
    vf("tasks", "cancel", task_id, "--force")
    assert vf("volumes", "delete", "data", "--yes").exit_code == 0
    bad = vf("volumes", "create", "--name", "../x")
    assert bad.exit_code == 2 and "name:" in bad.stderr


def test_instances_and_reservations(vf: Invoker) -> None:
    found = json.loads(vf("instances", "find", "--json").stdout)
    assert "cpu" in [i["instanceType"] for i in found]
    assert "INSTANCE" in vf("instances", "find").stdout
    created = vf("reservations", "create", "--cpus", "1", "--hours", "0.5", "--name", "hold")
    assert created.exit_code == 0, created.stderr
    reservation_id = created.stdout.strip()
    assert reservation_id in vf("reservations", "list").stdout
    active = vf("reservations", "list", "--status", "active", "-s", "SCHEDULED")
    assert active.exit_code == 0 and reservation_id in active.stdout, active.stderr
    assert reservation_id not in vf("reservations", "list", "--status", "cancelled").stdout
    bad_status = vf("reservations", "list", "--status", "bogus")
    assert bad_status.exit_code == 2 and "'bogus' is not one of" in bad_status.stderr
    got = json.loads(vf("reservations", "get", reservation_id, "--json").stdout)
    assert got["name"] == "hold"
    assert "cancelled" in vf("reservations", "cancel", reservation_id).stdout
    listed = vf("reservations", "list", "--status", "cancelled", "--json")
    assert [r["reservationId"] for r in json.loads(listed.stdout)] == [reservation_id]
    bad = vf("reservations", "create", "--cpus", "1", "--start", "tomorrow")
    assert bad.exit_code == 2 and "'--start'" in bad.stderr


def test_ssh_keys(vf: Invoker, tmp_path: Path) -> None:
    added = vf("ssh-keys", "add", "--default")
    assert added.exit_code == 0, added.stderr
    key_id = added.stdout.split()[0]
    assert key_id in vf("ssh-keys", "list").stdout
    bad = vf("ssh-keys", "add", str(write(tmp_path / "k.pub", "not a key\n")))
    assert bad.exit_code == 2 and "publicKey" in bad.stderr
    private = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    refused = vf("ssh-keys", "add", str(write(tmp_path / "id_ed25519", private)))
    assert refused.exit_code == 2 and "is a private key" in refused.stderr  # never sent
    assert "id_ed25519.pub" in refused.stderr and "PRIVATE" not in refused.stderr
    assert [key["keyId"] for key in json.loads(vf("ssh-keys", "list", "--json").stdout)] == [key_id]
    assert vf("ssh-keys", "delete", key_id).exit_code == 0
    assert json.loads(vf("ssh-keys", "list", "--json").stdout) == []


def test_upload_honours_gitignore(vf: Invoker, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "skip").mkdir(parents=True)
    write(project / "main.py", "print('hi')\n")
    write(project / "skip" / "big.bin", "x" * 100)
    write(project / ".gitignore", "skip/\n")
    task_id = _run(vf, "sleep 30")
    uploaded = vf("tasks", "upload", task_id, str(project), "--json")
    assert uploaded.exit_code == 0, uploaded.stderr
    assert json.loads(uploaded.stdout)["files"] == 2
    # the shell's output goes straight to the process's fds, so check with exit codes
    assert vf("tasks", "shell", task_id, "-c", "test -f main.py && test ! -e skip").exit_code == 0
    vf("tasks", "cancel", task_id, "--force")


def test_empty_values_are_refused_not_taken_for_none(vf: Invoker, tmp_path: Path) -> None:
    spec = write(tmp_path / "spec.yaml", "name: x\nblocks: []\n")
    made = vf("flows", "create", "-f", str(spec), "--id", "")
    assert made.exit_code == 2 and "flow_id must be a non-empty string" in made.stderr
    gpu = vf("tasks", "run", "--gpu", "", "--", "true")
    assert gpu.exit_code == 2 and "invalid GPU request ''" in gpu.stderr
    assert json.loads(vf("tasks", "list", "--json").stdout) == []
    assert json.loads(vf("flows", "list", "--json").stdout) == []
    assert vf("reservations", "list", "--limit", "1").exit_code == 0


def test_an_endless_file_is_refused_at_the_bound_not_read_to_the_end(
    vf_offline: Invoker, tmp_path: Path
) -> None:
    # /dev/zero never ends: read whole, it filled memory at 1.4 GB/s until the OOM killer
    for args in (
        ["flows", "create", "-f", "/dev/zero"],
        ["tasks", "run", "-f", "/dev/zero"],
        ["ssh-keys", "add", "/dev/zero"],
    ):
        result = vf_offline(*args)
        assert result.exit_code == 2, (args, result.stderr)
        assert "/dev/zero: larger than 64 MiB; not read" in result.stderr, result.stderr
    # nor does a pipe from a program that writes for ever (a real process, a real pipe)
    env = {**os.environ, "VI_FLOW_HOME": str(tmp_path / "piped")}
    with subprocess.Popen(["yes", "name: x"], stdout=subprocess.PIPE) as endless:
        try:
            assert endless.stdout is not None
            refused = subprocess.run(
                [sys.executable, "-m", "vi_flow.cli", "flows", "create", "-f", "-"],
                stdin=endless.stdout, capture_output=True, text=True, env=env, timeout=60,
            )  # fmt: skip
        finally:
            endless.kill()
    assert refused.returncode == 2, refused.stderr
    assert "<stdin>: larger than 64 MiB; not read" in refused.stderr
    assert not (tmp_path / "piped" / "server.json").exists()  # refused before any server


def test_a_file_that_is_not_text_is_named(vf: Invoker, tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe")
    for args in (["flows", "create", "-f", str(binary)], ["ssh-keys", "add", str(binary)]):
        result = vf(*args)
        assert result.exit_code == 2, result.stderr
        assert f"{binary}: not UTF-8 text" in result.stderr and "Traceback" not in result.stderr


def test_the_status_choices_are_the_models_statuses() -> None:
    # written out in the CLI, which imports no models to start
    from vi_flow.cli import reservations, tasks
    from vi_flow.models.tasks import ReservationStatus, TaskStatus

    assert [s.value for s in TaskStatus] == tasks.STATUSES
    assert [s.value for s in ReservationStatus] == reservations.STATUSES
