"""The embedded SSH server: key auth, exec in the workspace, PTY shell, SFTP, log follows."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import stat
import struct
from pathlib import Path
from typing import Any

import anyio
import asyncssh
import pytest

from vi_flow.server.state import STORE_KEY
from vi_flow.server.tasks import sshd
from vi_flow.server.tasks.sftp import MAX_READ
from vi_flow.server.tasks.sshd import SSHLimits

from .conftest import TaskServer


async def _endpoint(server: TaskServer, key: asyncssh.SSHKey, **config: Any) -> dict[str, Any]:
    public = key.export_public_key().decode()
    await server.call("POST", "/ssh-keys", json={"name": "test", "publicKey": public})
    task = await server.submit(**config)
    await server.wait(task["taskId"], until={"running", "completed"})
    answer = await server.call("GET", f"/tasks/{task['taskId']}/ssh")
    assert answer.status == 200, answer.body
    return dict(answer.body)


def _connect(endpoint: dict[str, Any], key: asyncssh.SSHKey, user: str | None = None) -> Any:
    known = asyncssh.import_known_hosts(endpoint["knownHosts"])
    return asyncssh.connect(
        endpoint["host"],
        endpoint["port"],
        username=user or endpoint["user"],
        client_keys=[key],
        known_hosts=known,
        agent_path=None,
        config=None,
        preferred_auth="publickey",
    )


@pytest.mark.anyio
async def test_exec_runs_in_the_workspace_with_the_task_env(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    endpoint = await _endpoint(server, client_key, command="sleep 30", env={"MODEL": "llama"})
    assert endpoint["host"] == "127.0.0.1"
    prefix = endpoint["execPrefix"]  # the sandbox (a shell opens its seccomp program)
    assert prefix == [] or shutil.which("bwrap") in prefix[:5], prefix
    assert endpoint["knownHosts"].startswith(f"[127.0.0.1]:{endpoint['port']} ssh-ed25519 ")
    async with _connect(endpoint, client_key) as conn:
        result = await conn.run('pwd; echo "$MODEL $VI_FLOW_TASK_ID"; echo err >&2; exit 7')
        assert result.exit_status == 7
        assert result.stdout.splitlines() == [endpoint["workdir"], f"llama {endpoint['taskId']}"]
        assert result.stderr == "err\n"
        quoted = await conn.run("printf '%s' \"$0\"", check=False)
        assert quoted.exit_status == 0
        piped = await conn.run("wc -c", input="x" * 100_000)
        assert piped.stdout.strip() == "100000"
        big = await conn.run("seq 1 20000")
        assert big.stdout.splitlines()[-1] == "20000" and len(big.stdout.splitlines()) == 20000
        # QA AQ: said as Python's errno, "[Errno 7] Argument list too long"
        long = await conn.run("true " + "x" * 140_000)
        assert long.exit_status == 127 and "Errno" not in long.stderr, long.stderr
        assert "longer than the kernel takes in one argument (131,072 bytes)" in long.stderr


@pytest.mark.anyio
async def test_an_unknown_subsystem_is_refused_not_run_as_a_shell(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    # `ssh -s nosuchsubsystem` ran a shell that read no input and exited 0 (found by QA)
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    async with _connect(endpoint, client_key) as conn:
        result = await conn.run(subsystem="nosuchsubsystem")
        assert result.exit_status == 1 and result.stdout == ""
        assert "no subsystem 'nosuchsubsystem'" in result.stderr
        async with conn.start_sftp_client() as sftp:  # sftp is still served
            assert await sftp.exists("logs")
        with pytest.raises(asyncssh.ChannelOpenError) as forward:  # -L: refused as policy
            await conn.open_connection("127.0.0.1", endpoint["port"])
        assert forward.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED


@pytest.mark.anyio
async def test_unregistered_key_and_unknown_task_are_refused(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        async with _connect(endpoint, stranger):
            pass
    with pytest.raises(asyncssh.PermissionDenied):
        async with _connect(endpoint, client_key, user="task_does_not_exist"):
            pass


@pytest.mark.anyio
async def test_wrong_host_key_is_not_trusted(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    endpoint["knownHosts"] = f"[127.0.0.1]:{endpoint['port']} {other}"
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with _connect(endpoint, client_key):
            pass


@pytest.mark.anyio
async def test_pty_shell_works(server: TaskServer, client_key: asyncssh.SSHKey) -> None:
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    async with _connect(endpoint, client_key) as conn:
        process = await conn.create_process(term_type="xterm", term_size=(80, 24))
        # `tty` cannot name the terminal in the sandbox's private /dev/pts; `test -t` can see it.
        process.stdin.write("stty size; echo pty-$((40+2)); test -t 0 && echo tty-$((1+1))\n")
        output = await _read_until(process, "tty-2")
        assert "24 80" in output and "pty-42" in output
        process.change_terminal_size(100, 40)
        process.stdin.write("stty size; exit 5\n")
        output = await process.stdout.read()
        await process.wait()
    assert "40 100" in output
    assert process.exit_status == 5


async def _read_until(process: Any, marker: str) -> str:
    seen = ""
    while marker not in seen:
        chunk = await process.stdout.read(1024)
        assert chunk, f"stream ended before {marker!r}: {seen!r}"
        seen += chunk
    return seen


@pytest.mark.anyio
async def test_sftp_is_rooted_in_the_task_directory(
    server: TaskServer, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    source = tmp_path / "train.py"
    source.write_text("print('hi')\n")
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        await sftp.put(str(source), "/workspace/train.py")
        assert sorted(await sftp.listdir("/")) == [".", "..", "logs", "output", "workspace"]
        assert await sftp.realpath("/../../..") == "/"
        await sftp.put(str(source), "/../../escape.py")
    assert (Path(endpoint["workdir"]) / "train.py").read_text() == "print('hi')\n"
    assert (Path(endpoint["workdir"]).parent / "escape.py").exists()
    assert not (Path(endpoint["workdir"]).parents[2] / "escape.py").exists()


@pytest.mark.anyio
async def test_a_handle_of_a_log_cannot_change_its_attributes(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    # Found by QA: setstat on logs/stdout.log was refused, but the same attributes sent
    # on a read-only handle of it made the log nobody's, mode 600.
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    log, mine = Path(endpoint["stdoutPath"]), Path(endpoint["workdir"]) / "mine.txt"
    before = os.stat(log)
    changes = asyncssh.SFTPAttrs(permissions=0o600, uid=65534, gid=65534, atime=1, mtime=1)
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/logs/stdout.log", "rb") as handle:
            for change in (lambda: handle.setstat(changes), lambda: handle.chmod(0)):
                with pytest.raises(asyncssh.SFTPPermissionDenied, match="logs/ is read-only"):
                    await change()
        await (await sftp.open("/workspace/mine.txt", "wb")).close()
        async with sftp.open("/workspace/mine.txt", "rb") as handle:  # its own files: as before
            await handle.chmod(0o640)
    after = os.stat(log)
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_mtime) == (
        before.st_mode,
        before.st_uid,
        before.st_gid,
        before.st_mtime,
    )
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o640


@pytest.mark.anyio
async def test_logs_user_follows_log_files_by_offset_after_the_end(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    endpoint = await _endpoint(server, client_key, command="seq 1 5")
    await server.wait(endpoint["taskId"])
    async with _connect(endpoint, client_key, user=endpoint["logsUser"]) as conn:
        result = await conn.run(f"tail -c +5 {endpoint['stdoutPath']}")
    assert result.stdout == "3\n4\n5\n"


@pytest.mark.anyio
async def test_logs_user_gets_every_byte_of_long_lines_and_an_unfinished_last_line(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    """Reads are large and a full one is cut at a line's end, yet nothing is held back:
    a line longer than a read, and the last line without its newline, arrive whole."""
    script = "import sys; sys.stdout.write('a' * 600000 + '\\n' + 'b' * 70000 + '\\nend')"
    endpoint = await _endpoint(server, client_key, command=f'python3 -c "{script}"')
    await server.wait(endpoint["taskId"])
    async with _connect(endpoint, client_key, user=endpoint["logsUser"]) as conn:
        result = await conn.run(f"tail -c +1 {endpoint['stdoutPath']}")
    assert result.stdout == "a" * 600_000 + "\n" + "b" * 70_000 + "\nend"


@pytest.mark.anyio
async def test_a_dropped_connection_stops_its_command(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    async with _connect(endpoint, client_key) as conn:
        process = await conn.create_process("echo started; exec sleep 1234.5")
        assert (await process.stdout.readline()).strip() == "started"
        await _wait_for_pids("sleep 1234.5")
    for _ in range(300):
        if not _pids_of("sleep 1234.5"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the command outlived its SSH connection")


async def _wait_for_pids(command_line: str) -> None:
    for _ in range(300):
        if _pids_of(command_line):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{command_line!r} never started")


def _pids_of(command_line: str) -> list[int]:
    """Host pids running ``command_line`` (a sandboxed session's ``$$`` is its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if args == command_line:
            found.append(int(entry.name))
    return found


@pytest.mark.anyio
async def test_server_stop_closes_open_sessions(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    async with _connect(endpoint, client_key) as conn:
        process = await conn.create_process("echo started; exec sleep 1234.6")
        assert (await process.stdout.readline()).strip() == "started"
        await _wait_for_pids("sleep 1234.6")
        started = asyncio.get_running_loop().time()
        await server.stop()
        assert asyncio.get_running_loop().time() - started < 4
        await process.wait_closed()
    for _ in range(300):
        if not _pids_of("sleep 1234.6"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the command outlived the server")


@pytest.mark.anyio
async def test_one_sftp_read_answers_at_most_max_read_and_a_get_is_whole(
    server: TaskServer, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    # One read of 150 MB made the server hold ~800 MB (found by QA): a read answers at
    # most MAX_READ bytes, and a client asks again for the rest.
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    data = bytes(range(256)) * (3 * MAX_READ // 256 + 7)
    (Path(endpoint["workdir"]) / "big.bin").write_bytes(data)
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/workspace/big.bin", "rb") as handle:
            # one SSH_FXP_READ of the whole file, as a hostile client sends it (asyncssh's
            # own reads are blocks of its choice)
            raw, _ = await handle._handler.read(handle._handle, 0, len(data))
            assert raw == data[:MAX_READ]
        await sftp.get("/workspace/big.bin", str(tmp_path / "got.bin"))
    assert (tmp_path / "got.bin").read_bytes() == data


@pytest.mark.anyio
async def test_a_connection_holds_a_bounded_number_of_sftp_files(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    # One organization held 18,400 SFTP handles and every other one got 503 (found by QA).
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    share = SSHLimits.SFTP_FILES_PER_CONNECTION
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        handles = [await sftp.open("/logs/stdout.log", "rb") for _ in range(share)]
        with pytest.raises(asyncssh.SFTPFailure, match="too many open files"):
            await sftp.open("/logs/stdout.log", "rb")
        await handles.pop().close()
        handles.append(await sftp.open("/logs/stdout.log", "rb"))  # one closed: one more
        for handle in handles:
            await handle.close()


async def _cancel(server: TaskServer, endpoint: dict[str, Any]) -> None:
    await server.call("POST", f"/tasks/{endpoint['taskId']}/cancel", json={"force": True})
    await server.wait(endpoint["taskId"], until={"cancelled"})


@pytest.mark.anyio
async def test_a_connection_opened_while_its_task_ran_runs_nothing_after_it_ended(
    server: TaskServer, client_key: asyncssh.SSHKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each new channel of a connection made while the task ran got a fresh sandbox after
    # the task ended (a shell could still exit 0), and after its key was deleted (QA).
    monkeypatch.setattr(sshd, "_RECHECK_AFTER", 0.0)  # what the login read: stale at once
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        assert (await conn.run("echo in")).stdout == "in\n"
        assert "workspace" in await sftp.listdir("/")
        keys = (await server.call("GET", "/ssh-keys")).body["items"]
        await server.call("DELETE", f"/ssh-keys/{keys[0]['keyId']}")
        await asyncio.wait_for(conn.wait_closed(), 5)  # the key's logins end with it
        with pytest.raises((asyncssh.Error, OSError)):
            await sftp.listdir("/")
    await _cancel(server, endpoint)  # its CPU for the next task (two cores)
    other = asyncssh.generate_private_key("ssh-ed25519")
    endpoint = await _endpoint(server, other, command="sleep 30")
    async with _connect(endpoint, other) as conn:  # deleted elsewhere (another replica)
        assert (await conn.run("echo in")).stdout == "in\n"
        await server.app[STORE_KEY].run(lambda c: c.execute("DELETE FROM ssh_keys"))
        refused = await conn.run("echo still in", check=False)
        assert refused.exit_status == 1 and "no longer registered" in str(refused.stderr)
    await _cancel(server, endpoint)
    endpoint = await _endpoint(server, other, command="sleep 30")
    async with _connect(endpoint, other) as conn:
        await _cancel(server, endpoint)
        late = await conn.run("touch late.txt; echo ran", check=False)
        assert late.exit_status == 1 and "ran" not in str(late.stdout)
    assert not (Path(endpoint["workdir"]) / "late.txt").exists()


@pytest.mark.anyio
async def test_revoking_an_api_key_deletes_the_ssh_keys_it_registered_and_ends_their_logins(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    # A revoked member kept SSH into the organization's tasks with the key its CLI had
    # registered, and nothing told the admin which key that was (QA round 8).
    org = (await server.call("POST", "/organizations", json={"name": "team"})).body
    tokens = f"/organizations/{org['organizationId']}/tokens"
    leaving = (await server.call("POST", tokens, json={"name": "leaving"})).body["token"]
    staying = (await server.call("POST", tokens, json={"name": "staying"})).body["token"]
    theirs, ours = client_key, asyncssh.generate_private_key("ssh-ed25519")
    for token, key in ((leaving, theirs), (staying, ours)):
        public = key.export_public_key().decode()
        made = await server.call(
            "POST", "/ssh-keys", json={"name": "laptop", "publicKey": public}, token=token
        )
        assert made.status == 201, made.body
    keys = (await server.call("GET", "/ssh-keys", token=staying)).body["items"]
    assert sorted(k["addedBy"] for k in keys) == ["leaving", "staying"]
    task = await server.call("POST", "/tasks", json={"command": "sleep 30"}, token=staying)
    path = f"/tasks/{task.body['taskId']}"
    with anyio.fail_after(10):
        while (await server.call("GET", path, token=staying)).body["status"] != "running":
            await anyio.sleep(0.05)
    endpoint = (await server.call("GET", f"{path}/ssh", token=staying)).body
    async with _connect(endpoint, theirs) as conn, conn.start_sftp_client() as sftp:
        assert "workspace" in await sftp.listdir("/")
        assert (await server.call("DELETE", f"{tokens}/leaving")).status == 200
        await asyncio.wait_for(conn.wait_closed(), 5)
    with pytest.raises(asyncssh.PermissionDenied):
        async with _connect(endpoint, theirs):
            pass
    (kept,) = (await server.call("GET", "/ssh-keys", token=staying)).body["items"]
    assert kept["addedBy"] == "staying"
    async with _connect(endpoint, ours) as conn:
        assert (await conn.run("echo still")).stdout == "still\n"
    await server.call("POST", f"{path}/cancel", json={"force": True}, token=staying)


@pytest.mark.anyio
async def test_a_public_key_line_past_8_kib_is_refused(server: TaskServer) -> None:
    # A made-up 50,000-bit RSA key was taken; its deletion then told the other replicas
    # more than PostgreSQL's NOTIFY carries, and every delete of it was a 500 (review).
    def field(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    modulus = b"\x7f" + b"\xff" * 6249
    blob = field(b"ssh-rsa") + field(b"\x01\x00\x01") + field(modulus)
    line = "ssh-rsa " + base64.b64encode(blob).decode()
    answer = await server.call("POST", "/ssh-keys", json={"name": "huge", "publicKey": line})
    assert answer.status == 422, answer.body
    assert answer.body["error"]["message"].startswith("publicKey: the key is 8"), answer.body
    assert (await server.call("GET", "/ssh-keys")).body["items"] == []


@pytest.mark.anyio
async def test_an_absurd_terminal_size_is_clamped_not_the_end_of_the_connection(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    async with _connect(endpoint, client_key) as conn:
        shell = await conn.run("stty size", term_type="xterm", term_size=(100_000, 70_000))
        assert shell.stdout.split() == ["65535", "65535"]
        assert (await conn.run("echo alive")).stdout == "alive\n"  # the connection lives


@pytest.mark.anyio
async def test_connections_that_never_log_in_are_bounded_and_give_way(
    server: TaskServer, client_key: asyncssh.SSHKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 18,500 idle connections to the SSH port, no key needed, each held 120 s, spent the
    # open-file limit and the API answered 503 to everyone (found by QA). SSH holds at
    # most a quarter of the descriptors in connections; a login must finish in time.
    # With every place taken by connections that never log in, a new one took none:
    # anyone who could reach the port kept every login out (QA). The one waiting longest
    # now gives way.
    monkeypatch.setattr(sshd, "open_file_limit", lambda: 4 * 8)  # 8 connections
    monkeypatch.setattr(sshd, "LOGIN_TIMEOUT", 3.0)
    endpoint = await _endpoint(server, client_key, command="sleep 30")  # SSH starts here
    idle = [await asyncio.open_connection(endpoint["host"], endpoint["port"]) for _ in range(8)]
    try:
        for reader, _ in idle:  # each got the server's version line: connected, not closed
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SSH-2.0-")
        async with _connect(endpoint, client_key) as conn:  # in at once, all places taken
            assert (await conn.run("echo in")).stdout == "in\n"
        await asyncio.wait_for(idle[0][0].read(), 1.0)  # closed at once: the oldest gave way
        for reader, _ in idle[1:]:  # the rest: closed once their login took too long
            await asyncio.wait_for(reader.read(), 10)
    finally:
        for _, writer in idle:
            writer.close()


@pytest.mark.anyio
async def test_directories_being_read_count_as_open_files(
    server: TaskServer, client_key: asyncssh.SSHKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory read in part holds descriptors until closed; they were not counted, so
    # a client could open as many as it liked (found in review).
    monkeypatch.setattr(sshd.SSHLimits, "SFTP_FILES_PER_CONNECTION", 3)
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    for n in range(300):  # more than one read's worth of names: a read stops part way
        (Path(endpoint["workdir"]) / f"f{n}").touch()
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        raw = sftp._handler
        handles = [await raw.opendir(b"/workspace") for _ in range(3)]
        for handle in handles:
            await raw.readdir(handle)  # under way: its descriptors are held
        with pytest.raises(asyncssh.SFTPFailure, match="too many open files"):
            await sftp.open("/logs/stdout.log", "rb")
        await raw.close(handles.pop())
        await (await sftp.open("/logs/stdout.log", "rb")).close()


@pytest.mark.anyio
async def test_a_connection_holds_a_bounded_number_of_sessions(
    server: TaskServer, client_key: asyncssh.SSHKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each exec holds pipes and a sandbox: 5,000 channels on one connection spent more
    # descriptors than SSH's shares (found in review).
    monkeypatch.setattr(sshd.SSHLimits, "SESSIONS_PER_CONNECTION", 2)
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    async with _connect(endpoint, client_key) as conn:
        running = [await conn.create_process("echo up; sleep 30") for _ in range(2)]
        for process in running:
            assert await process.stdout.readline() == "up\n"
        third = await conn.run("echo three", check=False)
        assert third.exit_status == 1 and "too many sessions" in str(third.stderr)
        with pytest.raises(asyncssh.SFTPError, match="too many sessions"):
            async with conn.start_sftp_client() as sftp:
                await sftp.listdir("/")
        done = running.pop()
        done.close()
        await done.wait_closed()
        for _ in range(50):  # the server sees the channel closed and ends its session
            if (four := await conn.run("echo four", check=False)).exit_status == 0:
                break
            await asyncio.sleep(0.1)
        assert four.stdout == "four\n"
        for process in running:
            process.close()


@pytest.mark.anyio
async def test_one_organization_holds_at_most_half_of_the_sessions(
    server: TaskServer, client_key: asyncssh.SSHKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA: one organization's 64 `sleep` sessions left another's none ("too many sessions
    # on the server"), for as long as it liked
    monkeypatch.setattr(sshd, "open_file_limit", lambda: 64)  # 8 sessions in all, 4 each
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    other = await _other_endpoint(server, command="sleep 30")
    async with _connect(endpoint, client_key) as one, _connect(endpoint, client_key) as two:
        running = [await c.create_process("echo up; sleep 30") for c in (one, two) * 2]
        for process in running:
            assert await process.stdout.readline() == "up\n"
        fifth = await two.run("echo five", check=False)
        assert fifth.exit_status == 1 and "its share of the server's" in str(fifth.stderr)
        async with _connect(other[0], other[1]) as theirs:  # the other's half is there
            assert (await theirs.run("echo in")).stdout == "in\n"
        for process in running:
            process.close()


@pytest.mark.anyio
async def test_one_organization_holds_at_most_half_of_sftps_open_files(
    server: TaskServer, client_key: asyncssh.SSHKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA: one organization's SFTP connections held all of SFTP's open files, and another
    # organization could open none in its own task ("too many open files on the server")
    monkeypatch.setattr(sshd, "open_file_limit", lambda: 64)  # 16 SFTP files, 8 each
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    other = await _other_endpoint(server, command="sleep 30")
    async with _connect(endpoint, client_key) as one, one.start_sftp_client() as sftp:
        held = [await sftp.open("/logs/stdout.log", "rb") for _ in range(8)]
        with pytest.raises(asyncssh.SFTPFailure, match="its share of the server's"):
            await sftp.open("/logs/stdout.log", "rb")
        async with _connect(other[0], other[1]) as theirs, theirs.start_sftp_client() as mine:
            await (await mine.open("/logs/stdout.log", "rb")).close()  # their half is there
        await held.pop().close()
        held.append(await sftp.open("/logs/stdout.log", "rb"))  # one given back, one taken
        for handle in held:
            await handle.close()


async def _other_endpoint(server: TaskServer, **config: Any) -> tuple[dict[str, Any], Any]:
    """A running task of a second organization, its SSH endpoint and key."""
    org = (await server.call("POST", "/organizations", json={"name": "other"})).body
    path = f"/organizations/{org['organizationId']}/tokens"
    token = (await server.call("POST", path, json={"name": "t"})).body["token"]
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key().decode()
    added = await server.call("POST", "/ssh-keys", json={"name": "k", "publicKey": public},
                              token=token)  # fmt: skip
    assert added.status == 201, added.body
    task = (await server.call("POST", "/tasks", json=config, token=token)).body
    for _ in range(100):
        answer = await server.call("GET", f"/tasks/{task['taskId']}/ssh", token=token)
        state = await server.call("GET", f"/tasks/{task['taskId']}", token=token)
        if state.body["status"] == "running":
            return dict(answer.body), key
        await asyncio.sleep(0.1)
    raise AssertionError(f"task {task['taskId']} did not start")


@pytest.mark.anyio
async def test_one_organization_holds_at_most_half_of_the_connections(
    server: TaskServer, client_key: asyncssh.SSHKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA: one organization's 256 idle logged-in connections (kept alive by keepalives)
    # locked every other organization out of SSH
    monkeypatch.setattr(sshd, "open_file_limit", lambda: 4 * 8)  # 8 connections, 4 each
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    other = await _other_endpoint(server, command="sleep 30")
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(4):
            await stack.enter_async_context(_connect(endpoint, client_key))
        with pytest.raises((asyncssh.Error, OSError)):  # closed as it logs in
            async with _connect(endpoint, client_key) as fifth:
                await fifth.run("echo five")
        async with _connect(other[0], other[1]) as theirs:
            assert (await theirs.run("echo in")).stdout == "in\n"


@pytest.mark.anyio
async def test_an_sftp_session_ends_with_exit_status_0(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    # QA: without an exit status, `scp` reported every copy, done in full, as failed
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    async with _connect(endpoint, client_key) as conn:
        writer, reader, _ = await conn.open_session(subsystem="sftp", encoding=None)
        writer.write(struct.pack(">IBI", 5, 1, 3))  # SSH_FXP_INIT, version 3
        length = struct.unpack(">I", await reader.readexactly(4))[0]
        assert (await reader.readexactly(length))[:1] == b"\x02"  # SSH_FXP_VERSION
        writer.write_eof()  # done, as OpenSSH's sftp and scp end
        await asyncio.wait_for(writer.channel.wait_closed(), 10)
        assert writer.channel.get_exit_status() == 0
    await _cancel(server, endpoint)


@pytest.mark.anyio
async def test_an_ended_tasks_files_are_read_only_over_sftp(
    server: TaskServer, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    # QA: after the task ended, `sftp put` still replaced its output/model.bin
    endpoint = await _endpoint(server, client_key, command='echo trained > "$VI_FLOW_OUTPUT_DIR/m"')
    await server.wait(endpoint["taskId"], until={"completed"})
    forged = tmp_path / "forged"
    forged.write_text("tampered\n")
    async with _connect(endpoint, client_key) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/output/m") as file:
            assert await file.read() == "trained\n"  # reading is fine
        changes = [
            sftp.put(str(forged), "/output/m"),
            sftp.put(str(forged), "/output/new"),
            sftp.remove("/output/m"),
            sftp.rename("/output/m", "/output/n"),
            sftp.mkdir("/workspace/d"),
            sftp.chmod("/output/m", 0o777),
        ]
        for change in changes:
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="has ended"):
                await change
    output = Path(endpoint["workdir"]).parent / "output"
    assert sorted(p.name for p in output.iterdir()) == ["m"]
    assert (output / "m").read_text() == "trained\n"


@pytest.mark.anyio
async def test_a_nul_byte_in_a_command_fails_that_command_not_the_connection(
    server: TaskServer, client_key: asyncssh.SSHKey
) -> None:
    # QA: create_subprocess_exec's ValueError escaped to asyncssh, which closed the
    # connection with every session on it, and no exit status
    endpoint = await _endpoint(server, client_key, command="sleep 30")
    async with _connect(endpoint, client_key) as conn:
        refused = await conn.run("echo a\0b", check=False)
        assert refused.exit_status == 127 and "null byte" in str(refused.stderr)
        assert (await conn.run("echo still here")).stdout == "still here\n"
    await _cancel(server, endpoint)
