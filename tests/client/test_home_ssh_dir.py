"""The client's SSH state stays in the home: ``<home>/client/ssh``, never the config dir."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import vi_flow
from vi_flow.compute.ssh import SSHTarget, write_known_hosts
from vi_flow.resources.ssh_keys import client_ssh_dir, load_or_create_key_pair

pytestmark = pytest.mark.anyio

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture
async def client() -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as c:
        yield c


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _written_under(directory: Path) -> list[Path]:
    return list(directory.rglob("*")) if directory.exists() else []


async def test_shells_keep_key_and_known_hosts_in_the_home(client: vi_flow.AsyncClient) -> None:
    home, config = Path(os.environ["VI_FLOW_HOME"]), Path(os.environ["VI_FLOW_CONFIG_DIR"])
    task = await client.run("sleep 60", wait=True)
    try:
        results: list[str] = []

        async def one(i: int) -> None:
            results.append(str(await client.shell(task.task_id, f"echo shell-{i}")).strip())

        # Twenty shells at once write the same known-hosts file concurrently.
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
        assert sorted(results) == sorted(f"shell-{i}" for i in range(20))
    finally:
        await client.cancel(task.task_id)
    ssh_dir = client_ssh_dir(home)
    assert ssh_dir == home / "client" / "ssh"
    names = _files(ssh_dir)
    assert names[:2] == ["id_ed25519", "id_ed25519.pub"]
    assert [n for n in names[2:] if not n.startswith("known_hosts-")] == []  # no temp files
    assert len(names) == 3
    assert _mode(ssh_dir) == 0o700
    assert {_mode(ssh_dir / n) for n in names} == {0o600}
    assert _written_under(config) == []


async def test_default_key_is_in_the_home(client: vi_flow.AsyncClient) -> None:
    key_id = await client.ensure_default_ssh_key()
    private = Path(os.environ["VI_FLOW_HOME"]) / "client" / "ssh" / "id_ed25519"
    assert _mode(private) == 0o600
    assert key_id in [k["id"] for k in await client.list_ssh_keys()]
    assert _written_under(Path(os.environ["VI_FLOW_CONFIG_DIR"])) == []


async def test_concurrent_known_hosts_writes_all_succeed(tmp_path: Path) -> None:
    known = tmp_path / "ssh" / "known_hosts-127.0.0.1-2222"
    target = SSHTarget("127.0.0.1", 2222, "t", HOST_KEY, tmp_path / "key", known)
    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(anyio.to_thread.run_sync, write_known_hosts, target)
    assert known.read_text() == f"[127.0.0.1]:2222 {HOST_KEY}\n"
    assert _files(known.parent) == [known.name]


def test_key_pair_is_kept_and_its_public_half_rewritten(tmp_path: Path) -> None:
    first = load_or_create_key_pair(tmp_path / "ssh")
    private = first.private_path.read_bytes()
    (tmp_path / "ssh" / "id_ed25519.pub").unlink()
    again = load_or_create_key_pair(tmp_path / "ssh")
    assert again == first and first.private_path.read_bytes() == private
    assert (tmp_path / "ssh" / "id_ed25519.pub").read_text() == first.public_key + "\n"
    assert _mode(tmp_path / "ssh" / "id_ed25519.pub") == 0o600
