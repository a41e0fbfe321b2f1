"""Host keys are pinned per server, not per SSH port: a key change across restarts is caught.

The home's local server picks a new SSH port at every start; the pin is the home's own
(``known_hosts-local-<host>``), so a restarted server with another host key is refused
with ``HostKeyChangedError``, and one with the same key just gets its line rewritten for
the new port.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh
import pytest

import vi_flow
from vi_flow import HostKeyChangedError
from vi_flow.compute.ssh import SSHTarget, known_hosts_file, write_known_hosts
from vi_flow.resources.ssh_keys import client_ssh_dir

pytestmark = pytest.mark.anyio


def _key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


async def _shell_and_port(client: vi_flow.AsyncClient) -> tuple[str, int]:
    task = await client.run("sleep 60", wait=True)
    try:
        endpoint = await client.tasks.ssh_endpoint(task.task_id)
        assert (endpoint.provider, endpoint.commands_refused) == ("local", None)
        return str(await client.shell(task.task_id, "echo in-task")).strip(), endpoint.port
    finally:
        await client.cancel(task.task_id)


async def test_a_changed_host_key_across_a_local_restart_is_refused() -> None:
    home = Path(os.environ["VI_FLOW_HOME"])
    async with vi_flow.AsyncClient() as first:
        assert (await _shell_and_port(first))[0] == "in-task"
    pins = sorted(client_ssh_dir(home).glob("known_hosts-*"))
    assert [p.name for p in pins] == ["known_hosts-local-127.0.0.1"]
    async with vi_flow.AsyncClient() as same_key:  # a new server, a new port, the same key
        out, port = await _shell_and_port(same_key)
    assert out == "in-task"
    assert pins[0].read_text().startswith(f"[127.0.0.1]:{port} ssh-ed25519 ")
    key_file = home / "ssh" / "ssh_host_ed25519_key"
    key_file.unlink()  # the next server makes a new host key
    async with vi_flow.AsyncClient() as rotated:
        with pytest.raises(HostKeyChangedError) as caught:
            await _shell_and_port(rotated)
    assert str(pins[0]) in str(caught.value)
    pins[0].unlink()  # the documented way to accept a planned rotation
    async with vi_flow.AsyncClient() as accepted:
        assert (await _shell_and_port(accepted))[0] == "in-task"


def test_the_pin_file_names_the_server_and_host_not_the_port(tmp_path: Path) -> None:
    assert known_hosts_file(tmp_path, "local", "127.0.0.1").name == "known_hosts-local-127.0.0.1"
    remote = known_hosts_file(tmp_path, "vf.example.com:8443", "::1")
    assert remote.parent == tmp_path and remote.name == "known_hosts-vf.example.com_8443-__1"
    key = _key()
    pin = known_hosts_file(tmp_path, "local", "127.0.0.1")
    write_known_hosts(SSHTarget("127.0.0.1", 2222, "t", key, tmp_path / "k", pin))
    write_known_hosts(SSHTarget("127.0.0.1", 3333, "t", key, tmp_path / "k", pin))
    assert pin.read_text() == f"[127.0.0.1]:3333 {key}\n"  # what the user's ssh reads
    with pytest.raises(HostKeyChangedError):
        write_known_hosts(SSHTarget("127.0.0.1", 4444, "t", _key(), tmp_path / "k", pin))
    assert pin.read_text() == f"[127.0.0.1]:3333 {key}\n"
