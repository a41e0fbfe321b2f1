"""``client.ssh_keys``: register public keys for task SSH, and the user's default key pair.

The client's SSH state lives in the home, in :func:`client_ssh_dir` (``<home>/client/ssh``,
mode 0700), so that a ``VI_FLOW_HOME`` holds everything of it and nothing is written
elsewhere; ``<home>/ssh`` is the server's, for its host key. There the default key pair is
``id_ed25519`` (private key) and ``id_ed25519.pub``, and the pinned known-hosts files sit
beside them, every file mode 0600 and written by :func:`write_private_file`.
:meth:`AsyncSSHKeys.ensure_default` creates the pair once (off the event loop; the file is
created atomically so two processes never end up with different keys) and registers its
public half with the server, which accepts only registered keys.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import attrs

from .._http import path
from ..models import Page
from ..models.limits import is_private_key
from ..models.tasks import SSHKey, SSHKeyRequest
from ._base import AsyncResource

if TYPE_CHECKING:
    from .._http import HTTPCore

__all__ = [
    "DEFAULT_KEY_NAME",
    "AsyncSSHKeys",
    "KeyPair",
    "client_ssh_dir",
    "load_or_create_key_pair",
    "write_private_file",
]

DEFAULT_KEY_NAME = "vi-flow-default"


@attrs.frozen
class KeyPair:
    """A private key file and its OpenSSH public key line.

    Attributes:
        private_path: The private key file (mode 0600).
        public_key: The public key line (``ssh-ed25519 AAAA... comment``).
    """

    private_path: Path
    public_key: str


def client_ssh_dir(home: Path) -> Path:
    """Return the directory of the client's SSH key pair and known-hosts files in ``home``."""
    return home / "client" / "ssh"


def write_private_file(target: Path, data: bytes, *, replace: bool = True) -> None:
    """Write ``target`` atomically with mode 0600, its directory created with mode 0700.

    The data goes to a temporary file of its own first, so concurrent writers never
    share one (a fixed ``.tmp`` name made parallel shells fail), and a reader sees the
    old file or the new one, never half of one. Blocking: call it in a worker thread.

    Args:
        target: The file to write.
        data: Its whole content.
        replace: Replace an existing file; when ``False`` an existing file is kept (an
            atomic create-if-absent, so racing processes agree on one key).
    """
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkstemp picks a fresh name in the target's directory (so os.replace and os.link stay
    # on one file system) and creates the file with mode 0600.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if replace:
            os.replace(tmp, target)
            return
        with contextlib.suppress(FileExistsError):
            os.link(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # gone already when it replaced the target


def load_or_create_key_pair(directory: Path) -> KeyPair:
    """Return the ed25519 key pair in ``directory``, creating it first if needed.

    Blocking (file I/O, key generation): call it in a worker thread.
    """
    import asyncssh

    private = directory / "id_ed25519"
    if not private.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="vi-flow")
        write_private_file(private, key.export_private_key("openssh"), replace=False)
    key = asyncssh.read_private_key(str(private))
    public = key.export_public_key("openssh").decode().strip()
    pub_path = directory / "id_ed25519.pub"
    if not pub_path.exists() or pub_path.read_text(encoding="utf-8").strip() != public:
        write_private_file(pub_path, f"{public}\n".encode())
    return KeyPair(private_path=private, public_key=public)


class AsyncSSHKeys(AsyncResource):
    """Manage SSH keys: ``client.ssh_keys``."""

    def __init__(self, http: HTTPCore, home: Path) -> None:
        super().__init__(http)
        self._home = home
        self._lock = anyio.Lock()
        self._default: tuple[KeyPair, SSHKey] | None = None

    async def create(self, name: str, public_key: str) -> SSHKey:
        """Register a public key (an already registered key answers the existing entry).

        Raises:
            ValueError: ``public_key`` is a private key (it is not sent).
            UnprocessableEntityError: ``public_key`` is not an OpenSSH public key.
        """
        if is_private_key(public_key):
            raise ValueError("public_key is a private key: give the public key (the .pub file)")
        body = SSHKeyRequest(name=name, public_key=public_key)
        return await self._http.request("POST", "/ssh-keys", json=body, cast=SSHKey)

    async def list(self) -> list[SSHKey]:
        """List the organization's registered keys."""
        page = await self._http.request("GET", "/ssh-keys", cast=Page[SSHKey])
        return page.items

    async def get(self, key_id: str) -> SSHKey:
        """Get one registered key."""
        return await self._http.request("GET", path("/ssh-keys/{}", key_id), cast=SSHKey)

    async def delete(self, key_id: str) -> None:
        """Unregister a key; it can no longer open sessions."""
        await self._http.request("DELETE", path("/ssh-keys/{}", key_id))
        if self._default is not None and self._default[1].key_id == key_id:
            self._default = None

    async def ensure_default(self) -> tuple[KeyPair, SSHKey]:
        """Create (once) the user's default key pair and make sure it is registered.

        Returns:
            The local key pair and its registration.
        """
        async with self._lock:
            if self._default is None:
                directory = client_ssh_dir(self._home)
                pair = await anyio.to_thread.run_sync(load_or_create_key_pair, directory)
                key = await self.create(DEFAULT_KEY_NAME, pair.public_key)
                self._default = (pair, key)
            return self._default
