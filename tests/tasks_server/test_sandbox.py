"""A task, and an SSH session into it, sees its own files and nothing else of the host.

Each test tries an escape for real (the ones issue 11 lists) and asserts it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncssh
import pytest

from tests import keyrings
from vi_flow.models.tasks import ENV_REDACTED, TaskConfig
from vi_flow.server.providers.local.sandbox import (
    NetworkIsolationUnavailable,
    detect_sandbox,
    job_sandbox,
    sandbox_child,
    task_network,
)
from vi_flow.server.state import ServerSettings

from .conftest import TaskServer

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

CANARY = "server-canary-4f1d2c"

# Tries every secret of the host; prints LEAK for each one it could read.
_PROBE = r"""
for p in "$VI_FLOW_WORKSPACE/../../../admin-token" {home}/admin-token {home}/state.db \
         {home}/ssh/ssh_host_ed25519_key {home}/tasks/{other}/workspace/secret.txt \
         {other_volume}/secret.txt /etc/shadow; do
  if cat "$p" >/dev/null 2>&1; then echo "LEAK $p"; fi
done
ls {home}/tasks 2>/dev/null | grep -vx "$VI_FLOW_TASK_ID" | sed 's/^/LEAK task /'
echo x > {home}/planted 2>/dev/null  # at most into its private /tmp: checked on the host
env | grep -q {canary} && echo "LEAK server env"
grep -l {secret} /proc/[0-9]*/environ 2>/dev/null | sed 's/^/LEAK environ /'
ps -eo args 2>/dev/null | grep -c . | sed 's/^/processes /'
echo probed
"""


async def _other_org(server: TaskServer) -> str:
    org = await server.call("POST", "/organizations", json={"name": "other"})
    assert org.status == 201, org.body
    token = await server.call(
        "POST", f"/organizations/{org.body['organizationId']}/tokens", json={"name": "t"}
    )
    return str(token.body["token"])


async def _victim(server: TaskServer) -> tuple[str, Path]:
    """Organization B's task (holding a secret file and env value) and volume."""
    other = await _other_org(server)
    volume = await server.call("POST", "/volumes", json={"name": "theirs"}, token=other)
    assert volume.status == 201, volume.body
    task = await server.call(
        "POST",
        "/tasks",
        json={
            "command": "echo b-secret > secret.txt; echo b-secret > $VI_FLOW_VOLUME_DATA/secret.txt;"
            " sleep 30",
            "env": {"HF_TOKEN": "b-secret-token"},
            "volumes": [{"volumeId": volume.body["volumeId"], "mountPath": "data"}],
        },
        token=other,
    )
    assert task.status == 201, task.body
    with anyio.fail_after(8):
        while (await server.call("GET", f"/tasks/{task.body['taskId']}", token=other)).body[
            "status"
        ] != "running":
            await asyncio.sleep(0.02)
    volume_path = server.home / "volumes" / volume.body["volumeId"]
    return task.body["taskId"], volume_path


def _probe(server: TaskServer, other: str, volume: Path) -> str:
    return _PROBE.format(
        home=server.home,
        other=other,
        other_volume=volume,
        canary=CANARY,
        secret="b-secret-token",
    )


async def _logs(server: TaskServer, task_id: str) -> str:
    answer = await server.call("GET", f"/tasks/{task_id}/logs", params={"tail": "200"})
    return "\n".join(answer.body["lines"])


@pytest.fixture
async def sandboxed(start_server: Any, monkeypatch: pytest.MonkeyPatch) -> TaskServer:
    monkeypatch.setenv("SERVER_SECRET", CANARY)  # the server's own environment
    server: TaskServer = await start_server(local_cpus=4, local_gpus=[])
    return server


@pytest.mark.anyio
async def test_a_task_reaches_nothing_of_the_server_or_another_org(sandboxed: TaskServer) -> None:
    other, volume = await _victim(sandboxed)
    task = await sandboxed.submit(command=_probe(sandboxed, other, volume))
    done = await sandboxed.wait(task["taskId"], within=20)
    out = await _logs(sandboxed, task["taskId"])
    assert "probed" in out, (done, out)
    assert [line for line in out.splitlines() if "LEAK" in line] == []
    assert not (sandboxed.home / "planted").exists()
    processes = next(line for line in out.splitlines() if line.startswith("processes"))
    assert int(processes.split()[1]) <= 8, out  # its own PID namespace


@pytest.mark.anyio
async def test_an_ssh_session_reaches_nothing_either(
    sandboxed: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    other, volume = await _victim(sandboxed)
    endpoint = await _login_endpoint(sandboxed, client_key, "sleep 30")
    async with _connect(endpoint, client_key) as conn:
        result = await conn.run(_probe(sandboxed, other, volume))
        assert "probed" in result.stdout, result.stderr
        assert [line for line in result.stdout.splitlines() if "LEAK" in line] == []
        pwd = await conn.run("pwd; touch made-here && echo ok")
        assert pwd.stdout.split() == [endpoint["workdir"], "ok"]


# LD_DEBUG makes the dynamic loader of every process started with it print what it
# loads, naming the program: a harmless LD_PRELOAD, that shows who was given the env.
_LOADER_ENV = {"LD_DEBUG": "files", "QA_GIVEN": "a b'c", "vf_gpus": "mine"}


def _loaded_outside(text: str) -> list[str]:
    """The loader's lines about a program that runs outside the sandbox (bwrap, srun)."""
    return [line for line in text.splitlines() if "bwrap" in line or "srun" in line]


@pytest.mark.anyio
async def test_a_tasks_env_reaches_its_command_and_never_the_sandbox_itself(
    sandboxed: TaskServer,
) -> None:
    # A task's LD_PRELOAD given to bwrap ran the user's code on the host, as the server's
    # user, before any namespace (QA: it read the admin token and another org's files).
    task = await sandboxed.submit(
        command='echo "given=$QA_GIVEN pwd=$PWD"', env=_LOADER_ENV, name="loader"
    )
    done = await sandboxed.wait(task["taskId"], within=20)
    answer = await sandboxed.call(
        "GET", f"/tasks/{task['taskId']}/logs", params={"tail": "2000", "stream": "both"}
    )
    out = "\n".join(answer.body["lines"])
    assert done["status"] == "completed", (done, out)
    assert f"given=a b'c pwd={sandboxed.home}/tasks/{task['taskId']}/workspace" in out
    assert "transferring control: /bin/sh" in out, out  # the command's own loader saw it
    assert _loaded_outside(out) == [], out


@pytest.mark.anyio
async def test_an_ssh_sessions_task_env_is_set_inside_the_sandbox_only(
    sandboxed: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    public = client_key.export_public_key().decode()
    await sandboxed.call("POST", "/ssh-keys", json={"name": "k", "publicKey": public})
    task = await sandboxed.submit(command="sleep 30", env=_LOADER_ENV)
    await sandboxed.wait(task["taskId"], until={"running"})
    endpoint = (await sandboxed.call("GET", f"/tasks/{task['taskId']}/ssh")).body
    # the file the env comes in cannot be swapped from inside (a review: the running
    # task replaced it with a script of its own before the session read it)
    swap = 'for f in ../logs/.vi-flow-env-*; do (echo x > "$f") 2>/dev/null && echo SWAPPED; done'
    async with _connect(endpoint, client_key) as conn:
        here = "ls -a ../logs | grep -c vi-flow-env"
        result = await conn.run(f'echo "given=$QA_GIVEN vf=$vf_gpus"; {here}; {swap}; echo done')
    assert "given=a b'c vf=mine\n1\ndone\n" in result.stdout, result  # there, not swapped
    assert "transferring control: /bin/sh" in str(result.stderr)
    assert _loaded_outside(str(result.stderr)) == [], result.stderr
    logs = Path(endpoint["workdir"]).parent / "logs"
    assert [p.name for p in logs.iterdir() if "env" in p.name] == []  # gone with the session


def _connect(endpoint: dict[str, Any], key: asyncssh.SSHKey, user: str | None = None) -> Any:
    return asyncssh.connect(
        endpoint["host"],
        endpoint["port"],
        username=user or endpoint["user"],
        client_keys=[key],
        known_hosts=asyncssh.import_known_hosts(endpoint["knownHosts"]),
        agent_path=None,
        config=None,
    )


# Writes a kernel setting back with the value it has (harmless if it succeeds).
_SYSCTL = (
    "for s in vm/overcommit_ratio kernel/core_pattern; do v=$(cat /proc/sys/$s);"
    " if (printf '%s\\n' \"$v\" > /proc/sys/$s) 2>/dev/null; then echo WRITABLE $s;"
    " else echo refused $s; fi; done;"
    " [ -w /proc/sysrq-trigger ] && echo WRITABLE sysrq || echo refused sysrq"
)


@pytest.mark.anyio
async def test_a_task_cannot_change_the_kernels_settings(sandboxed: TaskServer) -> None:
    # uid 0 without capabilities could still write /proc/sys: kernel.core_pattern would
    # have the kernel run a program of the task as root on the host (found by QA).
    task = await sandboxed.submit(command=_SYSCTL)
    await sandboxed.wait(task["taskId"], within=20)
    out = await _logs(sandboxed, task["taskId"])
    assert "refused vm/overcommit_ratio" in out and "refused sysrq" in out, out
    assert "WRITABLE" not in out, out


@pytest.mark.anyio
async def test_without_a_sandbox_a_second_organization_gets_no_tasks(
    start_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("VI_FLOW_ALLOW_UNSANDBOXED", raising=False)
    server: TaskServer = await start_server(local_cpus=2, local_gpus=[], sandbox=False)
    assert "tasks are NOT sandboxed" in caplog.text
    alone = await server.submit(command="true")  # one organization: its own risk
    await server.wait(alone["taskId"])
    other = await _other_org(server)
    refused = await server.call("POST", "/tasks", json={"command": "true"}, token=other)
    assert refused.status == 503 and refused.body["error"]["code"] == "SANDBOX_UNAVAILABLE"
    message = refused.body["error"]["message"]
    assert "VI_FLOW_ALLOW_UNSANDBOXED" in message and "turn the sandbox on" in message
    monkeypatch.setenv("VI_FLOW_ALLOW_UNSANDBOXED", "1")
    accepted = await server.call("POST", "/tasks", json={"command": "true"}, token=other)
    assert accepted.status == 201, accepted.body


async def _login_endpoint(server: TaskServer, key: asyncssh.SSHKey, command: str) -> dict[str, Any]:
    public = key.export_public_key().decode()
    await server.call("POST", "/ssh-keys", json={"name": "k", "publicKey": public})
    task = await server.submit(command=command)
    await server.wait(task["taskId"], until={"running"})
    return dict((await server.call("GET", f"/tasks/{task['taskId']}/ssh")).body)


@pytest.mark.anyio
async def test_logs_logins_run_only_the_log_reader(
    sandboxed: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    endpoint = await _login_endpoint(sandboxed, client_key, "echo hello; sleep 30")
    await sandboxed.until_logged(endpoint["taskId"], "hello")
    async with _connect(endpoint, client_key, endpoint["logsUser"]) as conn:
        for command in (
            f"cat {sandboxed.home}/admin-token",
            f"tail -c +1 -- {sandboxed.home}/admin-token",
            f"tail -c +1 -- {endpoint['stdoutPath']}; cat /etc/passwd",
            "env",
        ):
            refused = await conn.run(command)
            assert refused.exit_status == 1 and refused.stdout == "", command
            assert "runs no commands" in refused.stderr
        shell = await conn.run()
        assert shell.exit_status == 1 and "runs no commands" in shell.stderr
        log = await conn.run(f"tail -c +1 -- {endpoint['stdoutPath']}")
        assert log.stdout == "hello\n"
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="cannot use SFTP"):
            async with conn.start_sftp_client() as sftp:
                await sftp.listdir("/")


@pytest.mark.anyio
async def test_a_login_to_a_task_that_is_not_running_is_refused(
    sandboxed: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    endpoint = await _login_endpoint(sandboxed, client_key, "sleep 30")
    await sandboxed.call("POST", f"/tasks/{endpoint['taskId']}/cancel", json={"force": True})
    await sandboxed.wait(endpoint["taskId"])
    async with _connect(endpoint, client_key) as conn:
        refused = await conn.run("echo ran on the host")
        assert refused.exit_status == 1 and refused.stdout == ""
        assert f"task {endpoint['taskId']} is cancelled, not running" in refused.stderr
    # the command it suggests is one the CLI has
    suggested = str(refused.stderr).split("`")[1].split()
    assert suggested == ["vi-flow", "tasks", "logs", endpoint["taskId"]]
    from click.testing import CliRunner

    from vi_flow.cli._root import cli

    assert CliRunner().invoke(cli, [*suggested[1:-1], "--help"]).exit_code == 0


@pytest.mark.anyio
async def test_a_session_ends_with_its_task(
    sandboxed: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    # A session kept running in the task's directory after a cancel, while the task's
    # CPUs (and GPUs) went to the next task.
    endpoint = await _login_endpoint(sandboxed, client_key, "sleep 60")
    beats = Path(endpoint["stdoutPath"]).parent.parent / "output" / "beats"
    async with _connect(endpoint, client_key) as conn:
        session = asyncio.ensure_future(
            conn.run('while :; do echo beat >> "$VI_FLOW_OUTPUT_DIR/beats"; sleep 0.1; done')
        )
        with anyio.fail_after(10):
            while not beats.exists():
                await asyncio.sleep(0.05)
        await sandboxed.call("POST", f"/tasks/{endpoint['taskId']}/cancel", json={"force": True})
        with anyio.fail_after(10):
            ended = await session
    assert ended.exit_status != 0 and "no longer runs; session closed" in ended.stderr
    size = beats.stat().st_size
    await asyncio.sleep(0.5)
    assert beats.stat().st_size == size  # nothing of the session runs on


@pytest.mark.anyio
async def test_sftp_never_follows_a_link_out_of_the_task(
    sandboxed: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    (sandboxed.home / "outside.txt").write_text("server secret\n")
    endpoint = await _login_endpoint(
        sandboxed,
        client_key,
        "ln -s ../../../admin-token token; ln -s ../../.. up; ln -s ../../../outside.txt o;"
        " echo ready; sleep 30",
    )
    await sandboxed.until_logged(endpoint["taskId"], "ready")
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        for path in ("/workspace/token", "/workspace/up/admin-token", "/workspace/o"):
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="outside the task"):
                async with sftp.open(path) as handle:
                    await handle.read()
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.listdir("/workspace/up")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            async with sftp.open("/workspace/up/planted", "w") as handle:
                await handle.write("x")
        await sftp.symlink("../../../admin-token", "/workspace/mine")  # kept in the root
        with pytest.raises(asyncssh.SFTPError):
            async with sftp.open("/workspace/mine") as handle:
                await handle.read()
        assert (await sftp.lstat("/workspace/token")).type == asyncssh.FILEXFER_TYPE_SYMLINK
    assert not (sandboxed.home / "planted").exists()


@pytest.mark.anyio
async def test_sftp_cannot_touch_the_logs_directory(
    sandboxed: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    # Moved away and replaced by a link to the home, logs/ was bound into the next
    # session's sandbox (the admin token readable there); hard-linked, a log was writable.
    endpoint = await _login_endpoint(sandboxed, client_key, "echo genuine; sleep 30")
    await sandboxed.until_logged(endpoint["taskId"], "genuine")
    logs = Path(endpoint["stdoutPath"]).parent
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: sftp.rename("/logs", "/logs.moved"),
            lambda: sftp.posix_rename("/workspace", "/logs"),
            lambda: sftp.symlink("../..", "/logs/up"),
            lambda: sftp.remove("/logs/stdout.log"),
            lambda: sftp.link("/logs/stdout.log", "/workspace/out.log"),
            lambda: sftp.mkdir("/logs/x"),
            lambda: sftp.rmdir("/logs"),
            lambda: sftp.chmod("/logs/stdout.log", 0o666),
        ]
        for attempt in attempts:
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="logs/ is read-only"):
                await attempt()
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="logs/ is read-only"):
            async with sftp.open("/logs/stdout.log", "a") as handle:
                await handle.write("FORGED\n")
        async with sftp.open("/logs/stdout.log") as handle:  # reading stays allowed
            assert "genuine" in await handle.read()
        shell = await conn.run(f"cat {sandboxed.home}/admin-token; ls {logs}")
        assert "stdout.log" in shell.stdout and "vf_" not in shell.stdout
    assert logs.is_dir() and not logs.is_symlink()
    assert not (logs.parent / "workspace" / "out.log").exists()


@pytest.mark.anyio
async def test_a_volume_mounted_through_a_planted_link_is_refused(sandboxed: TaskServer) -> None:
    # The server made the mount's directories and link through links the task planted:
    # as root, anywhere on the host (a site-packages entry ran the task's code outside).
    outside = sandboxed.home.parent / "outside"
    outside.mkdir()
    await sandboxed.call("POST", "/volumes", json={"name": "vol"})
    task = await sandboxed.submit(
        command=f"ln -s {outside} v; ln -s / root; mkdir -p real; echo ready; sleep 30"
    )
    await sandboxed.until_logged(task["taskId"], "ready")
    mount = f"/tasks/{task['taskId']}/volumes"
    for path in ("/v/pwned", "/v/new/deeper", f"/root{outside}/via-root"):
        answer = await sandboxed.call("POST", mount, json={"volumeId": "vol", "mountPath": path})
        assert answer.status == 422, answer.body
        assert "goes through a link" in answer.body["error"]["message"]
    assert list(outside.iterdir()) == []
    fine = await sandboxed.call("POST", mount, json={"volumeId": "vol", "mountPath": "/real/v"})
    assert fine.status == 200, fine.body  # a real directory of the workspace still works
    assert (Path(task["workdir"]) / "real" / "v").is_symlink()


@pytest.mark.anyio
async def test_sftp_refuses_a_fifo_instead_of_blocking_the_server(
    sandboxed: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    # Opening a FIFO the task made blocked the server's event loop, for every
    # organization, until the task opened its other end (found by QA).
    endpoint = await _login_endpoint(sandboxed, client_key, "mkfifo ff; echo ready; sleep 30")
    await sandboxed.until_logged(endpoint["taskId"], "ready")
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        for mode in ("rb", "wb", "ab"):
            with anyio.fail_after(5), pytest.raises(asyncssh.SFTPPermissionDenied) as info:
                async with sftp.open("/workspace/ff", mode):
                    pass
            assert "not a regular file" in str(info.value)
        with anyio.fail_after(5):
            assert (await sandboxed.call("GET", "/health")).status == 200
        async with sftp.open("/workspace/plain.txt", "w") as handle:  # files still work
            await handle.write("ok")
        async with sftp.open("/workspace/plain.txt") as handle:
            assert await handle.read() == "ok"


# Swaps ``d`` between a directory of its own and a link to the server's home, forever.
_SWAPPER = (
    "while :; do rm -rf d; mkdir d; echo mine > d/admin-token; rm -rf d; ln -s ../../.. d;"
    " done & echo ready; wait"
)


@pytest.mark.anyio
async def test_sftp_never_follows_a_link_swapped_in_while_it_resolves(
    sandboxed: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    endpoint = await _login_endpoint(sandboxed, client_key, _SWAPPER)
    await sandboxed.until_logged(endpoint["taskId"], "ready")
    outcomes: dict[str, int] = {}
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        for i in range(400):
            try:
                async with sftp.open("/workspace/d/admin-token") as handle:
                    read = await handle.read()
                if read not in (
                    "",
                    "mine\n",
                ):  # never print what it read: it may be the admin token
                    pytest.fail("SFTP followed a link out of the task directory")
                outcomes["read its own file"] = outcomes.get("read its own file", 0) + 1
            except asyncssh.SFTPError as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
            with contextlib.suppress(asyncssh.SFTPError):
                async with sftp.open(f"/workspace/d/planted-{i}", "w") as handle:
                    await handle.write("x")
    assert not list(sandboxed.home.glob("planted-*"))
    assert outcomes.get("SFTPPermissionDenied", 0) > 0, outcomes  # the link was met, refused


# Swaps an output file for a link to the server's admin token, and an output directory
# for a link to the server's home, over and over (each swap one atomic rename).
_OUTPUT_SWAPPER = (
    'cd "$VI_FLOW_OUTPUT_DIR"; echo mine > r; echo ready;'
    " while :; do ln -s {home}/admin-token t1; mv -T t1 a; ln -f r t2; mv -T t2 a;"
    " rm -rf d; mkdir d; echo mine > d/admin-token; rm -rf d; ln -s {home} d; done"
)


@pytest.mark.anyio
async def test_an_output_swapped_for_a_link_while_it_is_fetched_is_never_read_through(
    sandboxed: TaskServer,
) -> None:
    token = (sandboxed.home / "admin-token").read_bytes().strip()
    task = await sandboxed.submit(command=_OUTPUT_SWAPPER.format(home=sandboxed.home))
    outputs = f"/tasks/{task['taskId']}/outputs"
    await sandboxed.until_logged(task["taskId"], "ready")
    statuses: dict[int, int] = {}
    for _ in range(150):
        for path in (f"{outputs}/a", f"{outputs}/d/admin-token", outputs):
            answer = await sandboxed.call("GET", path)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            if token in answer.raw:  # never print it
                pytest.fail(f"GET {path} answered with the server's admin token")
            if answer.status == 200 and path != outputs:  # empty: caught mid `echo mine >`
                assert answer.raw in (b"mine\n", b"")
            elif path == outputs:
                listed = {item["path"] for item in answer.body["items"]}
                assert listed <= {"r", "a", "t2", "d/admin-token"}, listed  # never a link
    assert set(statuses) <= {200, 404}, statuses  # no 500 from a file changing underfoot
    assert statuses.get(200, 0) > 150, statuses  # the outputs were served between swaps
    await sandboxed.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})


@pytest.mark.anyio
async def test_a_canary_secret_appears_in_no_answer_log_or_other_task(
    sandboxed: TaskServer, caplog: pytest.LogCaptureFixture
) -> None:
    canary = "canary-hf-token-9b7e"
    task = await sandboxed.submit(command="sleep 30", env={"HF_TOKEN": canary})
    await sandboxed.wait(task["taskId"], until={"running"})
    answers = [
        await sandboxed.call("GET", "/tasks"),
        await sandboxed.call("GET", f"/tasks/{task['taskId']}"),
        await sandboxed.call("GET", f"/tasks/{task['taskId']}/ssh"),
        await sandboxed.call("GET", f"/tasks/{task['taskId']}/logs"),
    ]
    for answer in answers:
        assert canary not in repr(answer.body)
    assert answers[1].body["config"]["env"] == {"HF_TOKEN": ENV_REDACTED}  # names only
    config = TaskConfig(command="x", env={"HF_TOKEN": canary})
    assert canary not in repr(config) and "HF_TOKEN" in repr(config)
    spy = await sandboxed.submit(
        command="ps -eo args; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; env"
    )
    await sandboxed.wait(spy["taskId"])
    assert canary not in await _logs(sandboxed, spy["taskId"])
    assert canary not in caplog.text
    home = sandboxed.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    in_home = () if os.environ.get("VI_FLOW_DATABASE") else ("state.db",)  # not on PostgreSQL
    for name in (*in_home, "admin-token", "ssh/ssh_host_ed25519_key"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    await sandboxed.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})


def test_the_home_is_hidden_even_under_a_read_only_system_directory(tmp_path: Path) -> None:
    home = tmp_path / "opt" / "vi-flow"  # as if the home were /opt/vi-flow, bound read-only
    root = home / "tasks" / "task_x"
    (root / "workspace").mkdir(parents=True)
    (home / "admin-token").write_text("secret")
    (tmp_path / "opt" / "tool").write_text("a tool\n")
    sandbox = detect_sandbox(home, {"sandbox_read_only": [str(tmp_path / "opt")]})
    assert sandbox.enabled, sandbox.reason
    argv = sandbox.prefix(root, [], root / "workspace")
    hide = next(i for i in range(len(argv)) if argv[i : i + 2] == ["--tmpfs", str(home)])
    assert hide < argv.index(str(root))  # hidden before the task's own directory is shown
    shown = subprocess.run([*argv, "cat", str(tmp_path / "opt" / "tool")], check=False)
    assert shown.returncode == 0
    hidden = subprocess.run([*argv, "cat", str(home / "admin-token")], check=False)
    assert hidden.returncode != 0


def test_an_interpreter_under_tmp_stays_visible_in_the_private_tmp(tmp_path: Path) -> None:
    """CI checks the project out under /tmp: its venv's python must run in a task."""
    venv = tmp_path / "checkout" / ".nox" / "tests"  # tmp_path lies under /tmp here
    home = tmp_path / "home"
    sandbox = detect_sandbox(home, {"sandbox_read_only": [str(venv)]})
    assert sandbox.enabled, sandbox.reason
    root = home / "tasks" / "task_x"
    argv = sandbox.prefix(root, [], root / "workspace")
    private_tmp = next(i for i in range(len(argv)) if argv[i : i + 2] == ["--tmpfs", "/tmp"])
    assert private_tmp < argv.index(str(venv))  # mounted on top of the private /tmp


# Run by the venv's own python (the server's interpreter): a task's python in the sandbox.
_IN_VENV = """
import json, subprocess, sys
from pathlib import Path
from vi_flow.server.providers.local.sandbox import detect_sandbox
home = Path(sys.argv[1])
root = home / "tasks" / "task_x"
sandbox = detect_sandbox(home, {})
argv = sandbox.prefix(root, [], root / "workspace")
probe = "import os, sys; print(os.listdir(sys.argv[1]), os.path.exists(sys.argv[2]))"
done = subprocess.run([*argv, sys.executable, "-c", probe, str(home), str(home / "admin-token")],
                      capture_output=True, text=True)
print(json.dumps([sandbox.reason, done.returncode, done.stdout, done.stderr]))
"""


def _task_of_venv(venv: Path, home: Path) -> tuple[str, int, str, str]:
    """Run ``_IN_VENV`` with ``venv``'s python: the sandbox's reason, and the task's exit
    status, stdout and stderr."""
    paths = [str(Path(__file__).resolve().parents[2]), *sys.path]  # vi_flow and its deps
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    ran = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _IN_VENV, str(home)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    reason, code, out, err = json.loads(ran.stdout)
    return reason, code, out, err


def test_a_home_inside_the_servers_venv_leaves_the_interpreter_visible(tmp_path: Path) -> None:
    """The server's venv holds the home: its python runs in a task, the home stays hidden."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    home = venv / "var" / "vi-flow"
    (home / "tasks" / "task_x" / "workspace").mkdir(parents=True)
    (home / "admin-token").write_text("secret")
    reason, code, out, err = _task_of_venv(venv, home)
    assert (reason, code) == ("", 0), err
    assert out.split() == ["['tasks']", "False"]  # of the home, only the task's own path


def test_an_interpreter_reached_through_a_link_outside_its_prefixes_runs_in_a_task(
    tmp_path: Path,
) -> None:
    """A venv whose python links to another venv's python (what Python 3.10's venv makes
    from a venv): every link on the way is shown, not only the prefixes."""
    hop = tmp_path / "other-venv" / "bin"  # under /tmp: the task's /tmp is private
    hop.mkdir(parents=True)
    (hop / "python").symlink_to(os.path.realpath(sys.executable))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to(hop / "python")
    home = tmp_path / "home"
    (home / "tasks" / "task_x" / "workspace").mkdir(parents=True)
    reason, code, out, err = _task_of_venv(venv, home)
    assert (reason, code) == ("", 0), err
    assert out.split() == ["['tasks']", "False"]


# A cluster job's sandbox, built by the server's own python (its venv holds the home).
_JOB_IN_VENV = """
import json, subprocess, sys
from pathlib import Path
from vi_flow.server.providers.local.sandbox import job_sandbox
home = Path(sys.argv[1])
jobs = home / "slurm"
root = jobs / "tasks" / "task_x"
sandbox = job_sandbox([jobs / "tasks", jobs / "volumes", jobs, home])
argv = sandbox.prefix(root, [], root / "workspace")
probe = "import os, sys; print(os.path.exists(sys.argv[1]))"
done = subprocess.run([*argv, sys.executable, "-c", probe, str(home / "admin-token")],
                      capture_output=True, text=True)
print(json.dumps([sandbox.reason, done.returncode, done.stdout, done.stderr]))
"""


def test_a_cluster_job_hides_a_home_inside_the_servers_venv(tmp_path: Path) -> None:
    # QA: a Slurm job's sandbox hid the task, volume and token directories but not the
    # home: inside the server's venv (or under /opt), shown read-only, any
    # organization's job read admin-token and state.db. And before the first volume,
    # bubblewrap could not make <home>/slurm/volumes there: every job failed, status 1.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    home = venv / "var" / "vi-flow"
    (home / "slurm" / "tasks" / "task_x" / "workspace").mkdir(parents=True)
    (home / "admin-token").write_text("secret")
    paths = [str(Path(__file__).resolve().parents[2]), *sys.path]
    ran = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _JOB_IN_VENV, str(home)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
    )  # fmt: skip
    reason, code, out, err = json.loads(ran.stdout)
    assert (reason, code) == ("", 0), err
    assert out.strip() == "False"  # the job ran, and found no admin-token


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["slurm", "ray"])
async def test_the_cluster_providers_hide_the_servers_home_from_their_jobs(
    tmp_path: Path, kind: str
) -> None:
    from vi_flow.server.providers.ray.provider import RayProvider
    from vi_flow.server.providers.ray.settings import RaySettings
    from vi_flow.server.providers.slurm.provider import SlurmProvider
    from vi_flow.server.providers.slurm.settings import SlurmSettings

    settings = ServerSettings(home=tmp_path / "home")
    provider: Any = (
        SlurmProvider(SlurmSettings.from_server_settings(settings))
        if kind == "slurm"
        else RayProvider(RaySettings.from_server_settings(settings))
    )
    await provider._check_sandbox()
    assert provider.sandbox.enabled, provider.sandbox.reason
    assert (tmp_path / "home").resolve() in provider.sandbox.hidden


# Waits, in its own sandbox, for a volume that is mounted after it started.
_WAITER = (
    'while [ ! -f "$VI_FLOW_WORKSPACE/volumes/late/hello" ]; do sleep 0.05; done;'
    ' cat "$VI_FLOW_WORKSPACE/volumes/late/hello"; echo written > "$VI_FLOW_WORKSPACE/volumes/late/back";'
    ' grep " [^ ]*/volumes/vol_[^ ]* rw," /proc/self/mountinfo | cut -d" " -f6'
)


@pytest.mark.anyio
@pytest.mark.skipif(os.geteuid() != 0, reason="only a root server can mount into a running sandbox")
async def test_a_volume_mounted_later_reaches_the_running_task(sandboxed: TaskServer) -> None:
    volume = await sandboxed.call("POST", "/volumes", json={"name": "late"})
    assert volume.status == 201, volume.body
    host = sandboxed.home / "volumes" / volume.body["volumeId"]
    (host / "hello").write_text("from the volume\n")
    task = await sandboxed.submit(command=_WAITER)
    await sandboxed.wait(task["taskId"], until={"running"})
    await asyncio.sleep(0.3)  # it runs, in a sandbox made without the volume
    mounted = await sandboxed.call(
        "POST", f"/tasks/{task['taskId']}/volumes", json={"volumeId": "late"}
    )
    assert mounted.status == 200, mounted.body
    done = await sandboxed.wait(task["taskId"], within=10)
    assert done["status"] == "completed", await _logs(sandboxed, task["taskId"])
    logs = await _logs(sandboxed, task["taskId"])
    assert "from the volume" in logs
    # as every mount of the sandbox (QA AQ: a volume mounted later had neither)
    assert {"nosuid", "nodev"} <= set(logs.splitlines()[-1].split(",")), logs
    assert (host / "back").read_text() == "written\n"
    assert (host / "hello").exists()
    mounts = await asyncio.to_thread(Path("/proc/self/mountinfo").read_text)
    assert str(host) not in mounts  # mounted in the task's namespace only, never on the host


def _host_processes_with(argv: bytes) -> list[int]:
    """Host pids whose command line is ``argv`` (NUL-separated, as /proc shows it)."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and Path(f"/proc/{entry}/cmdline").read_bytes() == argv:
                found.append(int(entry))
    return found


@pytest.mark.anyio
async def test_a_sandboxed_task_ends_once_nothing_of_it_runs_and_keeps_no_fd(
    sandboxed: TaskServer,
) -> None:
    # the shell exits at once, leaving two sleeps behind in its sandbox: the task is
    # reported ended only once they are gone (its sandbox's init has ended, as bubblewrap
    # told on its --info-fd), and the server keeps no descriptor of any task
    warm = await sandboxed.submit(command="true")  # the client's connection is open after it
    await sandboxed.wait(warm["taskId"], within=20)
    fds = len(os.listdir("/proc/self/fd"))
    marker = b"sleep\x00301.25\x00"
    tasks = [
        await sandboxed.submit(command="sleep 301.25 & sleep 301.25 & echo up") for _ in range(3)
    ]
    for task in tasks:
        assert (await sandboxed.wait(task["taskId"], within=20))["status"] == "completed"
        assert "up" in await _logs(sandboxed, task["taskId"])
    assert _host_processes_with(marker) == []
    assert len(os.listdir("/proc/self/fd")) <= fds


def test_sandbox_child_is_the_init_of_the_sandbox_and_anything_else_is_none(
    tmp_path: Path,
) -> None:
    sandbox = detect_sandbox(tmp_path, {})
    root = tmp_path / "task"
    (root / "workspace").mkdir(parents=True)
    read, write = os.pipe()
    os.set_blocking(read, False)
    prefix = sandbox.prefix(root, [], root / "workspace", write)
    with subprocess.Popen(
        [*prefix, "/bin/sh", "-c", "echo $$"], stdout=subprocess.PIPE, pass_fds=[write],
        start_new_session=True,
    ) as process:  # fmt: skip
        os.close(write)
        out, _ = process.communicate(timeout=20)
    assert out.strip() == b"2"  # the command is the second process of its own namespace
    init = sandbox_child(read)
    assert init is not None and init != process.pid
    with contextlib.suppress(OSError):  # gone, or a zombie of the task's group
        stat = Path(f"/proc/{init}/stat").read_bytes()
        assert stat[stat.rfind(b")") + 2 :].split()[2] == str(process.pid).encode()
    for junk in (b"", b"not json", b'{"child-pid": true}', b'{"child-pid": 1}', b"[1]"):
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.write(write, junk)
        os.close(write)
        assert sandbox_child(read) is None
    read, write = os.pipe()  # nothing written, the writer still open: no wait
    os.set_blocking(read, False)
    assert sandbox_child(read) is None
    os.close(write)


@pytest.mark.anyio
@pytest.mark.parametrize("sandbox", [True, False])
async def test_an_ssh_session_sees_only_its_tasks_gpus(
    start_server: Any, client_key: asyncssh.SSHKey, sandbox: bool
) -> None:
    # A shell into a CPU-only task had CUDA_VISIBLE_DEVICES unset (every GPU of the
    # machine) or set by the task's env, while its processes had it empty (QA round 10).
    a100 = {"type": "a100", "memory_gb": 80}
    server: TaskServer = await start_server(local_cpus=4, local_gpus=[a100, a100], sandbox=sandbox)
    public = client_key.export_public_key().decode()
    await server.call("POST", "/ssh-keys", json={"name": "k", "publicKey": public})
    cpu = await server.submit(command="sleep 30", env={"CUDA_VISIBLE_DEVICES": "0,1"})
    plain = await server.submit(command="sleep 30")
    gpu = await server.submit(command="sleep 30", gpu="a100")
    for task, expected in ((cpu, "[]"), (plain, "[]"), (gpu, "[0]")):
        await server.wait(task["taskId"], until={"running"})
        endpoint = (await server.call("GET", f"/tasks/{task['taskId']}/ssh")).body
        async with _connect(endpoint, client_key) as conn:
            seen = await conn.run('echo "[$CUDA_VISIBLE_DEVICES]"')
        assert seen.stdout.strip() == expected, (task["taskId"], seen.stdout)


# Connects to a port the test listens on (on the host), then listens on its own port.
_NETWORK_PROBE = """
import socket, time
try:
    socket.create_connection(("127.0.0.1", {host}), timeout=2).close()
    print("reached the host", flush=True)
except OSError:
    print("no host", flush=True)
own = socket.create_server(("127.0.0.1", {own}))
socket.create_connection(("127.0.0.1", {own}), timeout=2).close()
print("listening", flush=True)
time.sleep(30)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.anyio
@pytest.mark.parametrize("network", ["host", "isolated"])
async def test_an_isolated_task_network_keeps_the_hosts_loopback_away(
    start_server: Any, network: str
) -> None:
    # On the host's network a task can listen on a free loopback port: the port of a
    # replica while it restarts, or of a loopback LLM endpoint that is down, and so be
    # sent other organizations' keys and prompts (QA round 10). VI_FLOW_TASK_NETWORK=
    # isolated gives each task a network of its own.
    server: TaskServer = await start_server(local_cpus=2, local_gpus=[], task_network=network)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        own = _free_port()
        probe = _NETWORK_PROBE.format(host=listener.getsockname()[1], own=own)
        task = await server.submit(command=f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)}")
        with anyio.fail_after(20):
            while "listening" not in (out := await _logs(server, task["taskId"])):
                assert (await server.call("GET", f"/tasks/{task['taskId']}")).body["status"] in (
                    "pending",
                    "running",
                ), out
                await asyncio.sleep(0.1)
    isolated = network == "isolated"
    assert ("no host" if isolated else "reached the host") in out
    try:
        socket.create_connection(("127.0.0.1", own), timeout=2).close()
        reached_task = True
    except ConnectionRefusedError:
        reached_task = False
    assert reached_task is not isolated  # its own loopback worked for it either way
    await server.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})


def test_a_task_network_setting_other_than_host_or_isolated_is_refused() -> None:
    with pytest.raises(ValueError, match="VI_FLOW_TASK_NETWORK must be one of host, isolated"):
        task_network({}, {"VI_FLOW_TASK_NETWORK": "none"})
    assert task_network({}, {"VI_FLOW_TASK_NETWORK": " Isolated "}) == "isolated"
    assert task_network({}, {}) == "host"


def test_an_isolated_network_without_a_sandbox_stops_the_server_not_the_isolation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review: with no sandbox (or one that cannot make a network namespace) tasks ran
    # unsandboxed, on the host's network, under "isolated"; and the setting reached the
    # Slurm and Ray jobs' sandbox, which use their node's network.
    off = {"sandbox": False, "task_network": "isolated"}
    with pytest.raises(NetworkIsolationUnavailable, match="sandbox = false"):
        detect_sandbox(tmp_path, off)
    monkeypatch.setenv("VI_FLOW_TASK_NETWORK", "isolated")
    assert job_sandbox([tmp_path]).network == "host"


@pytest.mark.parametrize("given", ["1", None])
def test_an_env_file_keeps_the_clusters_gpus_and_the_tasks_own_names(
    tmp_path: Path, given: str | None
) -> None:
    # What a Slurm or Ray job, and a shell, run before the command: the cluster's GPUs
    # stay, whatever the file says; a variable of the task's named as the script's own
    # bookkeeping was (vf_gpus) arrives as it is (a review: it was lost, and set the GPUs).
    from vi_flow.server.providers._job_files import load_env, write_secret_file

    env_file = tmp_path / "env"
    write_secret_file(env_file, {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "vf_gpus": "G", "A": "x y"})
    env = {"PATH": os.environ["PATH"]}
    if given is not None:
        env["CUDA_VISIBLE_DEVICES"] = given
    show = 'echo "${CUDA_VISIBLE_DEVICES-unset}|$vf_gpus|$A|$#|$1"'
    done = subprocess.run(
        ["/bin/sh", "-c", load_env(str(env_file)), "name", "/bin/sh", "-c", show, "sh", "arg"],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert done.stdout == f"{given or 'unset'}|G|x y|1|arg\n"
    assert not env_file.exists()  # sourced, then deleted


def test_a_jobs_env_file_is_not_written_through_a_link_its_last_run_planted(
    tmp_path: Path,
) -> None:
    # QA AI: the env file was opened O_TRUNC without O_NOFOLLOW; a Ray task prepared
    # again finds what its last run left in its directory, and a link there to a file of
    # the server's had the server overwrite that file with the task's secrets.
    from vi_flow.server.providers._job_files import write_secret_file

    victim = tmp_path / "server-file"
    victim.write_text("the server's own\n")
    env_file = tmp_path / "task" / ".vi-flow-env"
    env_file.parent.mkdir()
    env_file.symlink_to(victim)
    write_secret_file(env_file, {"API_KEY": "s3cret"})
    assert victim.read_text() == "the server's own\n"
    assert not env_file.is_symlink()
    assert env_file.read_text() == "export API_KEY=s3cret\n"
    assert env_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.anyio
async def test_a_command_the_sandbox_hides_fails_as_missing_whatever_the_host_holds(
    sandboxed: TaskServer,
) -> None:
    # Found by a review: the start's check looked at the host, so a task named as its
    # command a file in the hidden home ("Permission denied": it is there) or a path with
    # nothing at it ("No such file"), and learnt what the host held.
    home = sandboxed.home
    link = "ln -s {0} there && printf '#!{0}\\n' > script && chmod +x script"
    made = await sandboxed.submit(command=link.format(home / "admin-token"))
    assert (await sandboxed.wait(made["taskId"]))["status"] == "completed"
    workspace = f"{home}/tasks/{made['taskId']}/workspace"
    messages = []
    for command in (
        [str(home / "admin-token")],
        [str(home / "no-such-file")],
        [f"{workspace}/there"],  # a link out of the task
        [f"{workspace}/script"],  # a #! interpreter in the hidden home
        ["admin-token"],  # found through PATH
    ):
        env = {"PATH": f"{home}:/usr/bin:/bin"} if command == ["admin-token"] else {}
        task = await sandboxed.submit(command=command, env=env)
        done = await sandboxed.wait(task["taskId"])
        assert done["status"] == "failed" and done["reason"] == "StartFailed", done
        messages.append(done["message"].replace(command[0], "<command>"))
    assert all("No such file or directory" in m for m in messages), messages
    assert not any("Permission denied" in m for m in messages), messages
    # and past a hidden directory with `..`: the host's kernel walking the path told
    # whether that directory exists (the review of the first version)
    # (and through a link, in a volume the task sees, to such a path: the third review)
    other = await sandboxed.submit(command="true")  # its directory exists, hidden here
    await sandboxed.wait(other["taskId"])
    volume = (await sandboxed.call("POST", "/volumes", json={"name": "links"})).body["volumeId"]
    mount = [{"volumeId": volume, "mountPath": "links"}]
    ends: dict[str, list[tuple[str, str, str]]] = {"path": [], "link": []}
    for n, hidden in enumerate((home / "tasks" / other["taskId"], home / "tasks" / "task_no")):
        climb = str(hidden) + "/.." * (len(hidden.parts) - 1) + "/usr/bin/true"
        link = home / "volumes" / volume / f"climb{n}"
        link.symlink_to(climb)
        for kind, command in (("path", climb), ("link", str(link))):
            task = await sandboxed.submit(command=[command], volumes=mount)
            done = await sandboxed.wait(task["taskId"])
            said = done["message"].replace(command, "<c>")
            ends[kind].append((done["status"], done["reason"], said))
    assert ends["path"][0] == ends["path"][1] and ends["link"][0] == ends["link"][1], ends


@pytest.mark.anyio
@keyrings.x86_64_only
async def test_tasks_and_sessions_reach_no_keyring(
    sandboxed: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    """QA AI: the kernel's keyrings are per user, not per namespace: every task of every
    organization runs as the server's user, so one's task read what another's had stored
    in the user keyring (Kerberos caches, keyctl). The sandbox refuses the keyring calls."""
    with keyrings.stored_key() as name:
        task = await sandboxed.submit(command=keyrings.probe(name))
        await sandboxed.wait(task["taskId"], within=20)
        out = await _logs(sandboxed, task["taskId"])
        assert keyrings.refused(out), out
        endpoint = await _login_endpoint(sandboxed, client_key, "sleep 30")
        async with _connect(endpoint, client_key) as conn:
            session = (await conn.run(keyrings.probe(name))).stdout
        assert keyrings.refused(session), session


# Tries to make set-ID files where the host keeps them (the workspace, the output, a
# volume) by each way a program does (chmod, fchmod, open with a mode, install -m), and a
# user namespace; plain modes and threads must still work. Prints a line for each try.
_SET_ID_PROBE = """{python} -c '
import ctypes, os, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def tried(what, call):
    try:
        call()
        print(what, "MADE")
    except OSError as exc:
        print(what, exc.strerror)
for place in sys.argv[1:]:
    os.chdir(place)
    open("plain", "w").close()
    os.chmod("plain", 0o750)
    print("plain", oct(os.stat("plain").st_mode & 0o7777))
    tried("chmod-uid", lambda: os.chmod("plain", 0o4755))
    tried("chmod-gid", lambda: os.chmod("plain", 0o2755))
    fd = os.open("plain", os.O_RDONLY)
    tried("fchmod", lambda: os.fchmod(fd, 0o6755))
    tried("open", lambda: os.close(os.open("made", os.O_CREAT | os.O_WRONLY, 0o4755)))
    done = subprocess.run(["install", "-m", "4755", "/bin/sh", "shell"], capture_output=True)
    print("install", "MADE" if done.returncode == 0 else "refused")
print("userns", "MADE" if libc.unshare(0x10000000) == 0 else os.strerror(ctypes.get_errno()))
threading.Thread(target=print, args=("thread ran",)).start()
' "$VI_FLOW_WORKSPACE" "$VI_FLOW_OUTPUT_DIR" "$VI_FLOW_WORKSPACE/volumes/kept"
"""


def _set_id_files(*roots: Path) -> list[Path]:
    return [
        path
        for root in roots
        for path in root.rglob("*")
        if not path.is_symlink() and path.stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    ]


@pytest.mark.anyio
async def test_a_task_leaves_no_set_id_file_on_the_host_and_makes_no_user_namespace(
    sandboxed: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    """QA AQ: a task of a root server left set-UID root programs in its workspace, output
    and volumes, on the host's disk (harmless in the nosuid sandbox, a root shell in a copy
    of the home anywhere else); under a server not run as root it could make user
    namespaces, root in them. The sandbox refuses set-ID modes and new user namespaces;
    plain modes, processes and threads work as before, in tasks and SSH sessions alike."""
    volume = (await sandboxed.call("POST", "/volumes", json={"name": "kept"})).body["volumeId"]
    mount = [{"volumeId": volume, "mountPath": "volumes/kept"}]
    task = await sandboxed.submit(
        command=_SET_ID_PROBE.format(python=sys.executable), volumes=mount
    )
    done = await sandboxed.wait(task["taskId"], within=30)
    out = await _logs(sandboxed, task["taskId"])
    assert done["status"] == "completed", out
    assert out.count("plain 0o750") == 3 and "thread ran" in out, out
    for attempt in ("chmod-uid", "chmod-gid", "fchmod", "open"):
        assert out.count(f"{attempt} Operation not permitted") == 3, out
    assert out.count("install refused") == 3 and "MADE" not in out, out
    assert "userns Operation not permitted" in out, out
    task_dir = sandboxed.home / "tasks" / task["taskId"]
    assert _set_id_files(task_dir, sandboxed.home / "volumes" / volume) == []
    endpoint = await _login_endpoint(sandboxed, client_key, "sleep 30")
    async with _connect(endpoint, client_key) as conn:
        session = await conn.run(
            'cd "$VI_FLOW_WORKSPACE" && touch s && chmod u+s s; echo "status $?"; stat -c "mode %a" s'
        )
    assert "status 1" in session.stdout and "mode 644" in session.stdout, session
    # QA AT: SFTP writes from the server's process, outside the sandbox and its filter
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        await sftp.chmod("/workspace/s", 0o750)  # a plain mode: as before
        tries = {
            "chmod": lambda: sftp.chmod("/workspace/s", 0o6755),
            "open": lambda: sftp.open(
                "/workspace/new", "w", asyncssh.SFTPAttrs(permissions=0o4755)
            ),
            "mkdir": lambda: sftp.mkdir("/workspace/d", asyncssh.SFTPAttrs(permissions=0o2775)),
            "chown": lambda: sftp.chown("/workspace/s", 1234, 1234),
        }
        for what, attempt in tries.items():
            with pytest.raises(asyncssh.SFTPPermissionDenied) as refused:
                await attempt()
            assert what == "chown" or "set-user-ID and set-group-ID" in str(refused.value)
        async with sftp.open("/workspace/s", "r+") as handle:
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await handle.chmod(0o4755)
    workspace = sandboxed.home / "tasks" / endpoint["taskId"] / "workspace"
    assert (workspace / "s").stat().st_mode & 0o7777 == 0o750
    assert (workspace / "s").stat().st_uid == os.getuid()
    assert not (workspace / "new").exists() and not (workspace / "d").exists()
    assert _set_id_files(sandboxed.home / "tasks") == []
