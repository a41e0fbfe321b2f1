"""The SSH client against a real asyncssh server: pinning, quoting, exec, log follows."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import attrs
import pytest

from vi_flow import HostKeyChangedError
from vi_flow.compute._follow import LogFollower
from vi_flow.compute.ssh import (
    build_remote_command,
    connect,
    interactive_shell,
    known_hosts_line,
    run_remote,
    ssh_command_line,
    write_known_hosts,
)

from .compute_kit import LocalSSHD, TCPProxy

pytestmark = pytest.mark.anyio


def test_build_remote_command_quotes_each_argument() -> None:
    assert build_remote_command(["echo", "; rm -rf ~"]) == "echo '; rm -rf ~'"
    assert build_remote_command("ls -la") == "ls -la"
    with pytest.raises(ValueError, match="empty"):
        build_remote_command([])
    with pytest.raises(ValueError, match="empty"):
        build_remote_command("  ")


async def test_injection_argument_stays_a_literal(test_sshd: LocalSSHD) -> None:
    (test_sshd.workspace / "keep").write_text("x")
    conn = await connect(test_sshd.target())
    async with conn:
        result = await run_remote(conn, ["printf", "%s", "; rm keep; touch pwned"])
    assert result.stdout == "; rm keep; touch pwned"
    assert result.exit_status == 0
    assert (test_sshd.workspace / "keep").exists()
    assert not (test_sshd.workspace / "pwned").exists()


async def test_exec_returns_output_and_exit_status(test_sshd: LocalSSHD) -> None:
    conn = await connect(test_sshd.target())
    async with conn:
        result = await run_remote(conn, "echo out; echo err >&2; exit 3")
        piped = await run_remote(conn, "cat", input=b"fed")
    assert (result.stdout, result.stderr, result.exit_status) == ("out\n", "err\n", 3)
    assert not result.ok
    assert str(result) == "out\n"
    assert piped.stdout == "fed"


async def test_aes_gcm_is_preferred(test_sshd: LocalSSHD) -> None:
    """The cheaper cipher for bulk log bytes, where the server offers it."""
    conn = await connect(test_sshd.target())
    async with conn:
        assert conn.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
        assert conn.get_extra_info("recv_cipher") == "aes128-gcm@openssh.com"


async def test_echo_goes_through_sys_stdout_so_redirect_stdout_captures_it(
    test_sshd: LocalSSHD,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    conn = await connect(test_sshd.target())
    async with conn:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            command = "printf 'caf\\303\\251 '; printf 'out\\n'; echo err >&2"
            result = await run_remote(conn, command, echo=True)
    assert out.getvalue() == result.stdout == "café out\n"
    assert err.getvalue() == "err\n"


async def test_wrong_host_key_is_refused(test_sshd: LocalSSHD) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    target = test_sshd.target()

    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await connect(attrs.evolve(target, host_key=other.strip()))


async def test_unregistered_client_key_is_refused(test_sshd: LocalSSHD, tmp_path: Path) -> None:

    stranger = tmp_path / "stranger"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(attrs.evolve(test_sshd.target(), key_path=stranger))


async def test_known_hosts_and_command_line(test_sshd: LocalSSHD) -> None:
    target = test_sshd.target()
    path = write_known_hosts(target)
    assert path.read_text() == known_hosts_line(target)
    assert path.read_text().startswith(f"[127.0.0.1]:{target.port} ssh-ed25519 ")
    assert os.stat(path).st_mode & 0o777 == 0o600
    rotated = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    changed = attrs.evolve(target, host_key=rotated.strip())
    with pytest.raises(HostKeyChangedError) as caught:
        write_known_hosts(changed)  # the API now publishes another key: never re-pinned
    pinned = asyncssh.import_public_key(target.host_key).get_fingerprint("sha256")
    assert caught.value.pinned == pinned and pinned in str(caught.value)
    assert caught.value.presented in str(caught.value) and str(path) in str(caught.value)
    assert path.read_text() == known_hosts_line(target)
    path.unlink()  # the documented way to accept a planned rotation
    assert write_known_hosts(changed).read_text() == known_hosts_line(changed)
    line = ssh_command_line(target)
    assert "StrictHostKeyChecking=yes" in line
    assert f"UserKnownHostsFile={path}" in line
    assert line.endswith("task@127.0.0.1")


@pytest.mark.skipif(not Path("/usr/bin/ssh").exists(), reason="no OpenSSH client")
async def test_openssh_command_line_works(test_sshd: LocalSSHD) -> None:
    target = test_sshd.target()
    write_known_hosts(target)
    argv = [*ssh_command_line(target).split(), "-o", "BatchMode=yes", "echo", "hello"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    assert out == b"hello\n"


@pytest.mark.skipif(not Path("/usr/bin/ssh").exists(), reason="no OpenSSH client")
@pytest.mark.parametrize("name", ['a b"c%d#e\\f', 'a b"c#e\\f'])  # a key with "%" is an -o
async def test_openssh_reaches_a_task_whose_files_lie_under_an_odd_path(
    test_sshd: LocalSSHD, tmp_path: Path, name: str
) -> None:
    # QA AJ: a home whose path held '%d' (OpenSSH expands it) or '"' (the config entry's
    # quoting broke, and with it every host of the user's ~/.ssh/config) left ssh unable
    # to verify the host key or to read its config at all.
    from vi_flow.cli._sshconfig import config_entry

    odd = tmp_path / name
    odd.mkdir()
    key = odd / "key"
    shutil.copy(test_sshd.target().key_path, key)
    target = attrs.evolve(test_sshd.target(), key_path=key, known_hosts_path=odd / "known")
    write_known_hosts(target)
    line = ssh_command_line(target)
    config = tmp_path / "config"
    config.write_text(config_entry(line, "odd") + "Host other\n    HostName 127.0.0.2\n")
    batch = ["-o", "BatchMode=yes"]
    for argv in (
        ["ssh", "-F", "/dev/null", *batch, *shlex.split(line)[1:]],
        ["ssh", "-F", str(config), *batch, "odd"],
    ):
        proc = await asyncio.create_subprocess_exec(
            *argv, "echo", "hello", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert (proc.returncode, out) == (0, b"hello\n"), (argv, err)
    other = subprocess.run(["ssh", "-G", "-F", str(config), "other"], capture_output=True)
    assert b"hostname 127.0.0.2" in other.stdout, other.stderr  # the file still reads


# Writes numbered lines; after lines 30,000 and 70,000 it waits for a gate file, so the
# test cuts the connection at a moment when more data can only come over a new one.
_WRITER = """
import os, sys, time
n, out, gates = int(sys.argv[1]), open(sys.argv[2], "w"), sys.argv[3]
for i in range(n):
    out.write(f"line {i:06d} " + "x" * 40 + "\\n")
    if i + 1 in (30_000, 70_000):
        out.flush()
        while not os.path.exists(os.path.join(gates, str(i + 1))):
            time.sleep(0.005)
out.write("no newline at the end"); out.close()
"""
CUT_AT = (30_000, 70_000)


async def test_follow_survives_two_cuts_exactly_once(test_sshd: LocalSSHD, proxy: TCPProxy) -> None:
    """100,000 numbered lines while the SSH connection is cut twice: each exactly once."""
    log = test_sshd.workspace / "stdout.log"
    gates = test_sshd.workspace / "gates"
    gates.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, "100000", str(log), str(gates)])
    target = test_sshd.target(proxy.port)

    async def is_terminal() -> dict[str, int] | None:
        return None if writer.poll() is None else {"stdout": log.stat().st_size}

    follower = LogFollower(
        lambda: connect(target),
        {"stdout": "stdout.log"},
        is_terminal=is_terminal,
        poll_interval=0.05,
    )
    got: list[str] = []
    async for stream, line in follower:
        assert stream == "stdout"
        got.append(line)
        if len(got) in CUT_AT:
            proxy.cut()
            (gates / str(len(got))).touch()
    writer.wait()
    assert proxy.cuts == 2
    assert follower.reconnects == 2
    expected = [f"line {i:06d} " + "x" * 40 for i in range(100_000)]
    assert got[:-1] == expected
    assert got[-1] == "no newline at the end"
    assert follower.offsets["stdout"] == log.stat().st_size


async def test_follow_both_streams_and_finished_task(test_sshd: LocalSSHD) -> None:
    (test_sshd.workspace / "out.log").write_text("o1\no2\n")
    (test_sshd.workspace / "err.log").write_text("e1\n")

    async def done() -> dict[str, int]:
        return {"stdout": 6, "stderr": 3}

    follower = LogFollower(
        lambda: connect(test_sshd.target()),
        {"stdout": "out.log", "stderr": "err.log"},
        is_terminal=done,
    )
    got = [pair async for pair in follower]
    assert sorted(got) == [("stderr", "e1"), ("stdout", "o1"), ("stdout", "o2")]


async def test_follow_resumes_from_offset_and_missing_file(test_sshd: LocalSSHD) -> None:
    (test_sshd.workspace / "out.log").write_text("skip\nkeep\n")

    async def done() -> dict[str, int]:
        return {"stdout": 10}

    follower = LogFollower(
        lambda: connect(test_sshd.target()),
        {"stdout": "out.log", "stderr": "missing.log"},
        is_terminal=done,
        offsets={"stdout": 5},
    )
    assert [pair async for pair in follower] == [("stdout", "keep")]


async def test_follow_gives_up_when_server_is_gone(test_sshd: LocalSSHD) -> None:
    from vi_flow._errors import APIConnectionError

    async def running() -> None:
        return None

    async def no_sleep(_: float) -> None:
        return None

    target = test_sshd.target(port=1)
    follower = LogFollower(
        lambda: connect(target),
        {"stdout": "x"},
        is_terminal=running,
        sleep=no_sleep,
        max_retries=2,
    )
    with pytest.raises(APIConnectionError, match="lost the SSH connection"):
        async for _ in follower:
            pass


async def test_follow_early_break_closes(test_sshd: LocalSSHD) -> None:
    (test_sshd.workspace / "out.log").write_text("a\nb\nc\n")

    async def running() -> None:
        return None

    follower = LogFollower(
        lambda: connect(test_sshd.target()), {"stdout": "out.log"}, is_terminal=running
    )
    agen = follower.__aiter__()
    first = await agen.__anext__()
    start = time.monotonic()
    await agen.aclose()
    assert first == ("stdout", "a")
    assert time.monotonic() - start < 1


async def test_a_slow_probe_holds_up_no_lines_and_is_cancelled_on_close(
    test_sshd: LocalSSHD,
) -> None:
    """The task-state probe runs beside the reads: lines already sent come at once."""
    (test_sshd.workspace / "out.log").write_text("a\nb\n")
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    follower = LogFollower(
        lambda: connect(test_sshd.target()), {"stdout": "out.log"}, is_terminal=slow
    )
    batches = follower.batches()
    start = time.monotonic()
    assert await batches.__anext__() == ("stdout", ["a", "b"])
    assert time.monotonic() - start < 10
    await batches.aclose()
    assert cancelled.is_set()


async def test_interactive_shell_on_a_pty(test_sshd: LocalSSHD) -> None:
    import termios

    master, slave = os.openpty()
    cooked = termios.tcgetattr(slave)
    try:
        conn = await connect(test_sshd.target())
        async with conn:
            shell = asyncio.ensure_future(
                interactive_shell(conn, "sh", stdin_fd=slave, stdout_fd=slave)
            )
            while termios.tcgetattr(slave) == cooked:  # wait for raw mode
                await asyncio.sleep(0.01)
            os.write(master, b"echo hi-from-shell; exit 4\n")
            status = await asyncio.wait_for(shell, 10)
        assert termios.tcgetattr(slave) == cooked  # the terminal is restored
        output = os.read(master, 65536)
    finally:
        os.close(master)
        os.close(slave)
    assert b"hi-from-shell" in output
    assert status == 4
