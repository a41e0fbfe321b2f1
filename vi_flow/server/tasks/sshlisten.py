"""The embedded SSH server's listening socket, with ``asyncssh`` loaded on first need.

The server binds its SSH port at start-up (so the port is known and advertised at once),
but the SSH implementation (:mod:`.sshd`: ``asyncssh`` and ``cryptography``, about a
fifth of an idle server's memory) and the host key are loaded only when they are first
needed: the first connection to the port, or the first request for a task's SSH endpoint
(which names the host key). A connection that arrives meanwhile waits in the listen
backlog and is served once the server is up. Where the listen address resolves to several
addresses, the server starts at once on all of them, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sshd import SessionResolver

__all__ = ["TaskSSHServer"]

log = logging.getLogger("vi_flow.server.sshd")  # the name server log lines show, kept stable

_BACKLOG = 100


class TaskSSHServer:
    """The embedded SSH server.

    Args:
        home: The server home; the host key lives in ``<home>/ssh/``.
        resolver: The task service's SSH part (sessions and authorized keys).
        host: The address to bind (loopback).
        port: The port; 0 picks a free one.
    """

    def __init__(
        self, home: Path, resolver: SessionResolver, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.home = Path(home)
        self.host = host
        self.port = port
        self._resolver = resolver
        self._sock: socket.socket | None = None
        self._ready: asyncio.Future[str] | None = None
        self._acceptor: Any = None
        self._connections: set[Any] = set()
        self.host_key_line = ""

    async def start(self) -> None:
        """Listen on the port; the SSH implementation loads on first need.

        Raises:
            OSError: The address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        if len({info[4] for info in infos}) > 1:
            await self.ready()  # several addresses: asyncssh binds them all, now
            return
        family, address = infos[0][0], infos[0][4]
        self._sock = socket.create_server(address, family=family, backlog=_BACKLOG)
        self._sock.setblocking(False)
        self.port = int(self._sock.getsockname()[1])
        loop.add_reader(self._sock.fileno(), self._first_connection)
        log.info("ssh server listening on %s:%d", self.host, self.port)

    def _first_connection(self) -> None:
        if self._sock is not None:  # once: the listener stays readable until accepted
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        task = asyncio.ensure_future(self.ready())
        task.add_done_callback(_log_failure)

    async def ready(self) -> str:
        """Load the SSH implementation and host key (once) and serve; the host key line.

        Raises:
            OSError: The host key cannot be read or written, or the port bound.
        """
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._serve())
        return await asyncio.shield(self._ready)

    async def _serve(self) -> str:
        sock = self._sock
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
        try:
            sshd, key = await asyncio.to_thread(_load, self.home / "ssh")
            where = sock if sock is not None else (self.host, self.port)
            self._acceptor = await sshd.listen(self._resolver, self._connections, key, where)
        except BaseException:
            self._close_socket()
            raise
        self._sock = None  # the acceptor owns it now
        if sock is None:
            self.port = int(self._acceptor.sockets[0].getsockname()[1])
            log.info("ssh server listening on %s:%d", self.host, self.port)
        self.host_key_line = key.export_public_key("openssh").decode().strip()
        return self.host_key_line

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    @property
    def connection_count(self) -> int:
        """SSH connections open now (shells, log follows, SFTP): clients, for the idle exit."""
        return len(self._connections)

    def drop_logins(self, org_id: str, fingerprint: str) -> None:
        """Close the connections that logged in to ``org_id``'s tasks with the key of
        that SHA256 ``fingerprint``: it was deleted."""
        if self._acceptor is None:  # never served: no connection to close
            return
        from . import sshd

        closed = sshd.drop_logins(self._connections, org_id, fingerprint)
        if closed:
            log.info("ssh: closed %d connection(s) of a deleted key", closed)

    async def close(self) -> None:
        """Stop listening, close open connections (their commands are killed) and wait."""
        self._close_socket()
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
            with contextlib.suppress(BaseException):
                await self._ready
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is None:
            return
        acceptor.close()
        connections = list(self._connections)
        for conn in connections:
            conn.close()
        waits = [asyncio.ensure_future(conn.wait_closed()) for conn in connections]
        waits.append(asyncio.ensure_future(acceptor.wait_closed()))
        _done, pending = await asyncio.wait(waits, timeout=_CLOSE_WAIT)
        for future in pending:
            future.cancel()


_CLOSE_WAIT = 5.0


def _load(directory: Path) -> tuple[Any, Any]:
    """Import the SSH implementation and load (or create) the host key; blocking."""
    from . import sshd

    return sshd, sshd.load_host_key(directory)


def _log_failure(task: asyncio.Future[str]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("ssh server failed to start: %s", task.exception())
