"""The idle server leaves the SSH implementation unloaded, yet its SSH port answers at once."""

from __future__ import annotations

import socket
from pathlib import Path

from .kit import run_file, script

LIST_FLOWS = "import vi_flow\nwith vi_flow.Client() as c:\n    print(len(c.flows.list().items))"


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_ssh_port_is_advertised_and_answers_though_asyncssh_loads_on_first_connection(
    home: Path,
) -> None:
    script(home, LIST_FLOWS)
    info = run_file(home)
    assert info is not None and info.ssh_port is not None
    # cryptography's native module comes with asyncssh: an idle server has not mapped it
    assert "cryptography" not in _maps(info.pid)
    with socket.create_connection(("127.0.0.1", info.ssh_port), timeout=30) as conn:
        banner = conn.makefile("rb").readline()
    assert banner.startswith(b"SSH-2.0-")
    assert "cryptography" in _maps(info.pid)
