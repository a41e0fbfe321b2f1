"""``client.ssh_keys``: register public keys for task SSH, and the user's default key pair.

The default key pair lives at ``<config dir>/ssh/id_ed25519`` (private key, mode 0600)
and ``id_ed25519.pub``. :meth:`AsyncSSHKeys.ensure_default` creates it once (off the event
loop; the file is created atomically so two processes never end up with different keys)
and registers its public half with the server, which accepts only registered keys.
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
from ..models.tasks import SSHKey, SSHKeyRequest
from ._base import AsyncResource

if TYPE_CHECKING:
    from .._client import AsyncClient

__all__ = ["DEFAULT_KEY_NAME", "AsyncSSHKeys", "KeyPair", "load_or_create_key_pair"]

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


def load_or_create_key_pair(directory: Path) -> KeyPair:
    """Return the ed25519 key pair in ``directory``, creating it first if needed.

    Blocking (file I/O, key generation): call it in a worker thread.
    """
    import asyncssh

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = directory / "id_ed25519"
    if not private.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="vi-flow")
        _create_exclusive(private, key.export_private_key("openssh"))
    key = asyncssh.read_private_key(str(private))
    public = key.export_public_key("openssh").decode().strip()
    pub_path = directory / "id_ed25519.pub"
    if not pub_path.exists() or pub_path.read_text(encoding="utf-8").strip() != public:
        pub_path.write_text(public + "\n", encoding="utf-8")
    return KeyPair(private_path=private, public_key=public)


def _create_exclusive(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".id_ed25519.")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, target)  # atomic create-if-absent: a racing process keeps its key
    finally:
        os.unlink(tmp)


class AsyncSSHKeys(AsyncResource):
    """Manage SSH keys: ``client.ssh_keys``."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self._lock = anyio.Lock()
        self._default: tuple[KeyPair, SSHKey] | None = None

    async def create(self, name: str, public_key: str) -> SSHKey:
        """Register a public key (an already registered key answers the existing entry).

        Raises:
            UnprocessableEntityError: ``public_key`` is not an OpenSSH public key.
        """
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
                directory = self._client._settings.config_dir / "ssh"
                pair = await anyio.to_thread.run_sync(load_or_create_key_pair, directory)
                key = await self.create(DEFAULT_KEY_NAME, pair.public_key)
                self._default = (pair, key)
            return self._default
