"""Helpers for the compute tests: a small real SSH server and a cuttable TCP proxy for the compute client tests.

``test_sshd`` runs an asyncssh server on 127.0.0.1 that executes commands as local
subprocesses in a workspace directory (like the local server's sshd does in a task) and
serves SFTP chrooted to it. ``TCPProxy`` sits between client and server so a test can cut
every live connection, as a flaky network would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import attrs
import pytest

from vi_flow.compute.ssh import SSHTarget


@attrs.define
class LocalSSHD:
    port: int
    host_key: str
    workspace: Path
    client_key: Path
    known_hosts: Path

    def target(self, port: int | None = None) -> SSHTarget:
        return SSHTarget(
            host="127.0.0.1",
            port=port or self.port,
            username="task",
            host_key=self.host_key,
            key_path=self.client_key,
            known_hosts_path=self.known_hosts,
        )


_HANDLERS: set[asyncio.Task[Any]] = set()


async def _handle(process: asyncssh.SSHServerProcess[bytes], workspace: Path) -> None:
    task = asyncio.current_task()
    assert task is not None
    _HANDLERS.add(task)
    try:
        await _dispatch(process, workspace)
    finally:
        _HANDLERS.discard(task)


async def _dispatch(process: asyncssh.SSHServerProcess[bytes], workspace: Path) -> None:
    if process.term_type:
        await _handle_pty(process, workspace)
        return
    proc = await asyncio.create_subprocess_shell(
        process.command or "exec /bin/sh",
        cwd=workspace,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    feeder = asyncio.ensure_future(_feed(process.stdin, proc.stdin))
    try:
        await asyncio.gather(
            _drain(proc.stdout, process.stdout), _drain(proc.stderr, process.stderr)
        )
        process.exit(await proc.wait())
    except (OSError, asyncssh.Error):
        pass
    finally:
        feeder.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        await _reap(proc)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait (bounded) for a killed child, even when cancelled meanwhile: a helper must not leak.

    Polls ``returncode`` rather than awaiting ``proc.wait()``: that also waits for the
    pipes to close, and a pipe whose reader was paused (nobody drained it) never does.
    """
    for _ in range(100):
        if proc.returncode is not None:
            break
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)
    proc._transport.close()  # type: ignore[attr-defined]


async def _feed(source: asyncssh.SSHReader[bytes], sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (OSError, asyncssh.Error):
        pass
    finally:
        sink.close()


async def _drain(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
    while data := await source.read(65536):
        sink.write(data)
        await sink.drain()


async def _handle_pty(process: asyncssh.SSHServerProcess[bytes], workspace: Path) -> None:
    master, slave = os.openpty()
    proc = await asyncio.create_subprocess_shell(
        process.command or "exec /bin/sh -i",
        cwd=workspace,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    loop = asyncio.get_running_loop()

    def on_output() -> None:
        try:
            data = os.read(master, 65536)
        except OSError:
            data = b""
        if data:
            process.stdout.write(data)
        else:
            loop.remove_reader(master)

    loop.add_reader(master, on_output)
    feeder = asyncio.ensure_future(_feed_fd(process.stdin, master))
    try:
        status = await proc.wait()
        await asyncio.sleep(0.05)
        process.exit(status)
    finally:
        feeder.cancel()
        loop.remove_reader(master)
        os.close(master)


async def _feed_fd(source: asyncssh.SSHReader[bytes], fd: int) -> None:
    while data := await source.read(65536):
        os.write(fd, data)


_CONNECTIONS: set[asyncssh.SSHServerConnection] = set()


class _Server(asyncssh.SSHServer):
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        _CONNECTIONS.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        _CONNECTIONS.difference_update(c for c in list(_CONNECTIONS) if c.is_closed())

    def begin_auth(self, username: str) -> bool:
        return True


def _make_key(path: Path) -> asyncssh.SSHKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    os.chmod(path, 0o600)
    return key


@pytest.fixture
async def test_sshd(tmp_path: Path) -> AsyncIterator[LocalSSHD]:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = _make_key(tmp_path / "id_ed25519")
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())

    def on_process(process: asyncssh.SSHServerProcess[bytes]) -> Any:
        return _handle(process, workspace)

    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=authorized,
        server_factory=_Server,
        process_factory=on_process,
        encoding=None,
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(workspace).encode()),
        allow_scp=False,
    )
    port = server.sockets[0].getsockname()[1]
    yield LocalSSHD(
        port=port,
        host_key=host_key.export_public_key().decode().strip(),
        workspace=workspace,
        client_key=tmp_path / "id_ed25519",
        known_hosts=tmp_path / "known_hosts",
    )
    # Stop the handlers first: a `tail -F` whose client was cut keeps its channel open,
    # and the listener's wait_closed() waits for every channel.
    for task in list(_HANDLERS):
        task.cancel()
    if _HANDLERS:
        await asyncio.wait(set(_HANDLERS), timeout=10)
    # A connection whose far end was cut by the proxy may never see its close: end the
    # server side of every connection, or the listener's wait_closed() waits forever.
    for conn in list(_CONNECTIONS):
        conn.abort()
    _CONNECTIONS.clear()
    server.close()
    await asyncio.wait_for(server.wait_closed(), 10)


class TCPProxy:
    """Forward 127.0.0.1:<port> to a target port; ``cut()`` drops every live connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            self._writers.discard(writer)

    def cut(self) -> None:
        self.cuts += 1
        self._drop()

    def _drop(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self._drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def proxy(test_sshd: LocalSSHD) -> AsyncIterator[TCPProxy]:
    p = TCPProxy(test_sshd.port)
    await p.start()
    yield p
    await p.close()
