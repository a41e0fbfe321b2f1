"""The SSH server's ``+logs`` login against a resolver of our own: what it reads, how often."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from vi_flow.server.tasks.ssh import SessionContext
from vi_flow.server.tasks.sshd import listen, load_host_key

pytestmark = pytest.mark.anyio


class _Resolver:
    """One task, ``task_a`` of ``org_a``, whose logs are under ``root``; counts key reads."""

    def __init__(self, root: Path, key: asyncssh.SSHKey) -> None:
        self.root = root
        self.key_line = key.export_public_key().decode()
        self.key_reads: list[str] = []

    async def session(self, username: str) -> SessionContext | None:
        if username != "task_a+logs":
            return None
        logs = (self.root / "logs" / "stdout.log",)
        return SessionContext("task_a", "org_a", self.root, self.root, {}, [], logs)

    async def authorized_keys(self, org_id: str) -> list[str]:
        self.key_reads.append(org_id)
        return [self.key_line]


async def test_a_login_reads_its_organizations_keys_once(
    tmp_path: Path, client_key: asyncssh.SSHKey
) -> None:
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "stdout.log"
    log.write_bytes(b"one\ntwo\n")
    resolver = _Resolver(tmp_path, client_key)
    host_key = load_host_key(tmp_path / "ssh")
    acceptor = await listen(resolver, set(), host_key, ("127.0.0.1", 0))
    try:
        known = asyncssh.import_known_hosts(
            f"[127.0.0.1]:{acceptor.get_port()} {host_key.export_public_key().decode()}"
        )
        async with asyncssh.connect(
            "127.0.0.1",
            acceptor.get_port(),
            username="task_a+logs",
            client_keys=[client_key],
            known_hosts=known,
            agent_path=None,
            config=None,
            preferred_auth="publickey",
        ) as conn:
            result = await conn.run(f"tail -c +5 -- {log}")
        assert result.stdout == "two\n"
        assert resolver.key_reads == ["org_a"]  # not once more for the signed request
    finally:
        acceptor.close()
        await acceptor.wait_closed()
