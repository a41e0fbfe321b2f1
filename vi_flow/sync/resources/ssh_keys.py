"""Sync ``client.ssh_keys``: each method is one typed line over the portal to :mod:`vi_flow.resources.ssh_keys`."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from ...models.tasks import (
    SSHKey,
)

if TYPE_CHECKING:
    from ..._portal import Portal
    from ...resources.ssh_keys import AsyncSSHKeys, KeyPair

__all__ = ["SSHKeys"]


class SSHKeys:
    """Manage SSH keys (blocking): ``client.ssh_keys``."""

    def __init__(self, ssh_keys: AsyncSSHKeys, portal: Portal) -> None:
        self._async = ssh_keys
        self._portal = portal

    def create(self, name: str, public_key: str) -> SSHKey:
        """Register a public key."""
        return self._portal.call(self._async.create, name, public_key)

    def list(self) -> builtins.list[SSHKey]:
        """List registered keys."""
        return self._portal.call(self._async.list)

    def get(self, key_id: str) -> SSHKey:
        """Get one registered key."""
        return self._portal.call(self._async.get, key_id)

    def delete(self, key_id: str) -> None:
        """Unregister a key."""
        self._portal.call(self._async.delete, key_id)

    def ensure_default(self) -> tuple[KeyPair, SSHKey]:
        """Create (once) and register the default key pair."""
        return self._portal.call(self._async.ensure_default)
