"""Work belongs to the server, not the process that asked; start, status, stop, logs, idle."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from vi_flow.models.server import LOG_DIR, LOG_FILE, RUN_FILE

from .kit import (
    alive,
    cli,
    cli_command,
    cli_json,
    env_for,
    foreground_serve,
    run_file,
    script,
    server_pids,
    wait_for,
)

SLOW = "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.5; done"
TEMPLATE_FLOW = {
    "name": "hello",
    "blocks": [{"block": "template", "id": "t", "settings": {"template": "hi {{ message }}"}}],
}


def _condition(home: Path, run_id: str) -> str:
    condition: str = cli_json(home, "runs", "get", run_id)["status"]["conditions"][-1]["condition"]
    return condition


def _task(home: Path, task_id: str) -> dict[str, object]:
    task: dict[str, object] = cli_json(home, "tasks", "status", task_id)
    return task


def test_a_task_started_by_a_command_that_exits_keeps_running(home: Path) -> None:
    started = cli_json(home, "tasks", "run", "--", "bash", "-c", SLOW)
    task_id = started["taskId"]
    time.sleep(1)  # the command has exited; its task must not die with it
    assert _task(home, task_id)["status"] in ("pending", "running")
    done = wait_for(lambda: (t := _task(home, task_id))["status"] == "completed" and t, 30)
    assert done["exitCode"] == 0
    logs = cli(home, "tasks", "logs", task_id).stdout
    assert logs.split() == [f"line{i}" for i in range(1, 7)]


def test_a_script_exits_while_its_task_and_async_run_go_on(home: Path) -> None:
    code = f"""
import json, vi_flow
with vi_flow.Client() as c:
    flow = c.flows.create({json.dumps(TEMPLATE_FLOW)})
    task = c.run({["bash", "-c", SLOW]!r})
    job = c.flow(flow.flow_id).execute_async(message="there")
    print(json.dumps({{"task": task.task_id, "run": job.execution_id}}))
"""
    ids = json.loads(script(home, code).stdout)
    # another terminal, next to it: lists must not disturb the script's work
    listed = cli_json(home, "tasks", "list")
    assert ids["task"] in [t["taskId"] for t in listed]
    wait_for(lambda: _condition(home, ids["run"]) not in ("Pending", "Running"), 30)
    assert _condition(home, ids["run"]) == "Succeeded"
    task = wait_for(lambda: (t := _task(home, ids["task"]))["status"] == "completed" and t, 30)
    assert task["exitCode"] == 0
    assert len(server_pids(home)) == 1


def test_cli_commands_beside_a_foreground_serve_never_kill_its_tasks(home: Path) -> None:
    serve = subprocess.Popen(
        [*cli_command(), "serve", "--port", "0"],
        env=env_for(home),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: run_file(home), 30, "serve to publish itself")
        task_id = cli_json(home, "tasks", "run", "--", "bash", "-c", SLOW)["taskId"]
        for _ in range(3):
            cli(home, "tasks", "list")
            cli(home, "flows", "list")
        assert server_pids(home) == [serve.pid]
        done = wait_for(lambda: (t := _task(home, task_id))["status"] == "completed" and t, 30)
        assert done["exitCode"] == 0
    finally:
        serve.terminate()
        serve.communicate(timeout=30)


def test_start_status_stop(home: Path) -> None:
    started = cli_json(home, "server", "start")
    assert started["running"] and started["started"]
    again = cli_json(home, "server", "start")
    assert again["pid"] == started["pid"] and not again["started"]
    status = cli_json(home, "server", "status")
    for key in ("url", "pid", "uptimeS", "version", "activeRuns", "activeTasks"):
        assert key in status, key
    assert status["pid"] == started["pid"] and status["mode"] == "background"
    stopped = cli_json(home, "server", "stop")
    assert stopped["stopped"] and not alive(started["pid"])
    assert not (home / RUN_FILE).exists()
    down = cli(home, "server", "status", "--json", check=False)
    assert down.returncode == 1 and json.loads(down.stdout)["running"] is False
    assert cli_json(home, "server", "stop")["stopped"] is False  # nothing to stop: fine


def test_stop_refuses_while_a_task_runs_and_force_cancels_it(home: Path) -> None:
    task_id = cli_json(home, "tasks", "run", "--", "sleep", "60")["taskId"]
    wait_for(lambda: _task(home, task_id)["status"] == "running", 30)
    info = run_file(home)
    assert info is not None
    refused = cli(home, "server", "stop", check=False)
    assert refused.returncode == 5 and "--force" in refused.stderr + refused.stdout
    # QA: the server's code was lost (text without it, JSON saying CONFLICT)
    assert refused.stderr.startswith("error: SERVER_BUSY: 1 task(s) and 0 run(s) are not")
    refused = cli(home, "--json", "server", "stop", check=False)
    error = json.loads(refused.stderr)["error"]
    assert (error["code"], error["exitCode"]) == ("SERVER_BUSY", 5)
    assert error["requestId"].startswith("req_")  # QA: null, where the server gave one
    assert error["message"].startswith("1 task(s) and 0 run(s) are not finished")
    assert alive(info.pid) and _task(home, task_id)["status"] == "running"
    cli(home, "server", "stop", "--force")
    assert not alive(info.pid)
    assert _task(home, task_id)["status"] == "cancelled"  # a new server shows how it ended


def test_a_forced_stop_ends_runs_cancelled_server_stopped(home: Path) -> None:
    # Force-stopped runs said "cancelled by the user" (found by QA).
    emit = {"block": "emit", "settings": {"count": 600, "interval": 0.05}}
    slow = {"name": "slow", "blocks": [emit]}
    code = f"""
import json, vi_flow
c = vi_flow.Client()
flow = c.flows.create({json.dumps(slow)})
first = c.flow(flow.flow_id).execute_async().execution_id
print(json.dumps({{"flow": flow.flow_id, "run": first}}), flush=True)
"""
    ids = json.loads(script(home, code).stdout)
    wait_for(lambda: _condition(home, ids["run"]) == "Running", 30)
    cli(home, "server", "stop", "--force")
    run = cli_json(home, "runs", "get", ids["run"])
    last = run["status"]["conditions"][-1]
    assert (last["condition"], last["reason"]) == ("Cancelled", "ServerStopped"), last
    assert "server was stopped" in last["message"]
    runs = cli_json(home, "runs", "list", "--flow", ids["flow"])
    assert [r["status"]["conditions"][-1]["condition"] for r in runs] == ["Cancelled"]


def test_a_follower_left_running_does_not_undo_a_stop(home: Path) -> None:
    task_id = cli_json(home, "tasks", "run", "--", "sleep", "60")["taskId"]
    wait_for(lambda: _task(home, task_id)["status"] == "running", 30)
    follower = subprocess.Popen(
        [*cli_command(), "tasks", "logs", "-f", task_id],
        env=env_for(home, VI_FLOW_LOG_TRANSPORT="http"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # following
        cli(home, "server", "stop", "--force")
        _, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
        follower.wait()
    # it saw the server stop, or (first) its task end, cancelled by the stop: SIGTERM
    assert "stopped on request" in err or follower.returncode == 128 + signal.SIGTERM, err
    time.sleep(1)
    assert server_pids(home) == [] and run_file(home) is None  # nobody started another
    assert _task(home, task_id)["status"] == "cancelled"  # a new command starts one


def test_a_restart_keeps_what_the_server_accepted(home: Path) -> None:
    ids = json.loads(
        script(
            home,
            f"import json, vi_flow\nc = vi_flow.Client()\n"
            f"f = c.flows.create({json.dumps(TEMPLATE_FLOW)})\n"
            f"r = c.flow(f.flow_id).execute(message='x')\nprint(json.dumps([f.flow_id, r.execution_id]))",
        ).stdout
    )
    cli(home, "server", "stop")
    assert ids[0] in cli(home, "flows", "list").stdout
    assert _condition(home, ids[1]) == "Succeeded"


def test_an_idle_background_server_exits_by_itself(home: Path) -> None:
    # the script says which server it used: one second after it, the server may be gone
    # with its run file (a loaded machine took that long to end the script)
    code = (
        "import os, pathlib, vi_flow, vi_flow.local\n"
        "with vi_flow.Client() as client:\n"
        "    client.flows.list()\n"
        "    print(vi_flow.local.find_server(pathlib.Path(os.environ['VI_FLOW_HOME'])).pid)"
    )
    pid = int(script(home, code, VI_FLOW_SERVER_IDLE_TIMEOUT="1").stdout.split()[-1])
    wait_for(lambda: not alive(pid), 30, "the idle server to exit")
    assert not (home / RUN_FILE).exists()
    assert "idle timeout" in (home / LOG_DIR / LOG_FILE).read_text()


def test_a_server_with_work_does_not_idle_out(home: Path) -> None:
    env = {"VI_FLOW_SERVER_IDLE_TIMEOUT": "1"}
    # the task runs well past the 1 s idle timeout and the 3 s looked at: a loaded
    # machine took the task's 4 s (and the CLI's start) before `tasks status` answered
    task_id = cli_json(home, "tasks", "run", "--", "sleep", "8", **env)["taskId"]
    info = run_file(home)
    assert info is not None
    time.sleep(3)
    assert alive(info.pid) and _task(home, task_id)["status"] == "running"
    wait_for(lambda: not alive(info.pid), 30, "the server to exit once the task ended")


def test_an_open_ssh_connection_keeps_an_idle_server_up(home: Path) -> None:
    """A client still reading over SSH (a long log follow, a shell) is a client too."""
    cli(home, "server", "start", VI_FLOW_SERVER_IDLE_TIMEOUT="1")
    info = run_file(home)
    assert info is not None and info.ssh_host and info.ssh_port
    with socket.create_connection((info.ssh_host, info.ssh_port), timeout=10) as conn:
        assert conn.recv(64).startswith(b"SSH-2.0-")  # the server's banner: it is connected
        time.sleep(4)
        assert alive(info.pid)
        assert cli_json(home, "server", "status")["connections"] >= 1
    wait_for(lambda: not alive(info.pid), 30, "the server to exit once the SSH client left")


def test_serve_in_the_foreground_never_idles_out(home: Path) -> None:
    with foreground_serve(home, VI_FLOW_SERVER_IDLE_TIMEOUT="1") as serve:
        time.sleep(3)
        assert serve.poll() is None


def test_the_server_log_has_one_line_per_request_and_no_secret(home: Path) -> None:
    cli(home, "flows", "list")
    token = (home / "admin-token").read_text().strip()
    done = cli(home, "flows", "get", "flow_missing", check=False)
    assert done.returncode == 4
    log = cli(home, "server", "logs", "-n", "200").stdout
    lines = [line for line in log.splitlines() if "GET /v1/flows/flow_missing" in line]
    assert len(lines) == 1 and " 404 " in lines[0] and "org_default" in lines[0]
    assert lines[0][:4].isdigit()  # starts with the time
    assert "req_" in lines[0]
    assert token not in (home / LOG_DIR / LOG_FILE).read_text()


def test_logs_follow_shows_new_requests(home: Path) -> None:
    cli(home, "server", "start")
    follow = subprocess.Popen(
        [*cli_command(), "server", "logs", "-f", "-n", "0"],
        env=env_for(home),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)
        cli(home, "flows", "get", "flow_followed", check=False)
        assert follow.stdout is not None
        line = follow.stdout.readline()
        while "flow_followed" not in line:
            assert line
            line = follow.stdout.readline()
    finally:
        follow.terminate()
        follow.communicate(timeout=10)


def test_ctrl_c_during_a_blocking_execute_leaves_the_run_going(home: Path) -> None:
    """The run belongs to the server: Ctrl-C stops waiting, not the run (documented)."""
    spec = {
        "name": "slow",
        "blocks": [
            {"block": "task", "id": "nap", "settings": {"command": "sleep 2; echo rested"}},
            {"block": "template", "id": "done", "settings": {"template": "done"}},
        ],
    }
    code = (
        "import json, vi_flow\n"
        f"c = vi_flow.Client()\nf = c.flows.create({spec!r})\nprint(f.flow_id, flush=True)\n"
        "c.flow(f.flow_id).execute()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env_for(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    flow_id = proc.stdout.readline().strip()
    listing = (
        f"import vi_flow\nprint(vi_flow.Client().runs.list(flow_id={flow_id!r}).items[0].run_id)"
    )
    run_id = wait_for(lambda: _first_run(home, listing), 30, "the run to exist")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    wait_for(lambda: _condition(home, run_id) not in ("Pending", "Running"), 30)
    assert _condition(home, run_id) == "Succeeded"


def _first_run(home: Path, listing: str) -> str | None:
    done = subprocess.run(
        [sys.executable, "-c", listing], env=env_for(home), capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else None


def test_an_in_process_cli_refuses_a_task_that_would_end_with_it(home: Path) -> None:
    # QA: with local_server = in-process, `tasks run` printed the task's id and "follow
    # it", and the task had already ended failed/ServerStopped with the command
    refused = cli(
        home, "tasks", "run", "--", "sleep", "3", check=False, VI_FLOW_LOCAL_SERVER="in-process"
    )
    assert refused.returncode == 2 and refused.stdout == ""
    assert "local_server = in-process" in refused.stderr and "--follow" in refused.stderr
    submitted = cli(
        home, "tasks", "submit", "sleep 3", check=False, VI_FLOW_LOCAL_SERVER="in-process"
    )
    assert submitted.returncode == 2 and "--wait" in submitted.stderr  # QA: submit as well
    followed = cli(
        home, "tasks", "run", "--follow", "--", "echo", "here", VI_FLOW_LOCAL_SERVER="in-process"
    )
    assert followed.stdout.splitlines()[1:] == ["here"]
    listed = cli_json(home, "tasks", "list", VI_FLOW_LOCAL_SERVER="in-process")
    assert [t["status"] for t in listed] == ["completed"]  # the refused one was never made
    # a background server serving the home: the in-process setting does not apply
    cli(home, "server", "start")
    started = cli(home, "tasks", "run", "--", "true", VI_FLOW_LOCAL_SERVER="in-process")
    assert started.stdout.startswith("task_")


def test_a_time_copied_from_a_table_gives_since_the_same_moment_in_any_zone(home: Path) -> None:
    # QA: tables printed UTC without saying so, and --since reads a time without a zone
    # as local: in New York, `--since <the task's created time>` printed nothing
    task_id = cli_json(home, "tasks", "run", "--", "echo", "one")["taskId"]
    wait_for(lambda: _task(home, task_id)["status"] == "completed", 30)
    shown = cli(home, "tasks", "status", task_id, TZ="America/New_York").stdout
    [created] = [line.split(None, 1)[1].strip() for line in shown.splitlines() if "created" in line]
    assert created.endswith("Z"), created
    for zone in ("America/New_York", "Asia/Tokyo"):
        since = cli(home, "tasks", "logs", task_id, "--since", created, TZ=zone)
        assert since.stdout == "one\n", (zone, since.stderr)


def test_the_global_json_reaches_server_logs_and_the_demo_says_it_has_none(home: Path) -> None:
    # QA: `vi-flow --json server logs` and `vi-flow --json demo` printed plain text
    cli(home, "server", "start")
    for args in (("--json", "server", "logs", "-n", "3"), ("server", "logs", "-n", "3", "--json")):
        printed = cli(home, *args).stdout.splitlines()
        assert len(printed) == 3 and all(json.loads(line)["line"] for line in printed)
    demo = cli(home, "--json", "demo", check=False)
    assert demo.returncode == 2 and json.loads(demo.stderr)["error"]["code"] == "USAGE_ERROR"


def test_a_time_without_a_zone_is_local_for_reservations_start_as_for_since(home: Path) -> None:
    # QA: `reservations create --start` read a time without a zone as UTC, `logs --since`
    # as local; one typed time meant two moments. Both are local now; a Z is UTC in both.
    def start(when: str) -> int:
        made = cli_json(
            home, "reservations", "create", "--cpus", "1", "--start", when, TZ="Asia/Tokyo"
        )
        return int(made["startTime"])

    utc = int(datetime(2030, 1, 2, 15, tzinfo=timezone.utc).timestamp() * 1000)
    assert start("2030-01-02T15:00Z") == utc
    assert start("2030-01-02T15:00") == utc - 9 * 3600 * 1000  # 15:00 in Tokyo is 06:00Z
