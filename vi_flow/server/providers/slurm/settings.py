"""How the server reaches Slurm: :class:`SlurmSettings` and the credentials error."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..base import ProviderError

if TYPE_CHECKING:
    from ...state import ServerSettings

__all__ = ["SlurmCredentialsError", "SlurmSettings"]


class SlurmCredentialsError(ProviderError):
    """Slurm refused the server's token; the message names the token file to renew."""

    status = 503
    code = "PROVIDER_UNAVAILABLE"


@attrs.frozen
class SlurmSettings:
    """How the server reaches Slurm and where task files live.

    Attributes:
        url: The ``slurmrestd`` base URL.
        user: The Slurm user the token belongs to; jobs run as this user.
        token_file: File holding the JWT from ``scontrol token`` (mode 0600).
        tasks_dir: Task directories (workspace, logs); every node must see it.
        volumes_dir: Volume directories; every node must see it.
        partition: The partition for jobs, or None for the cluster default.
        slurm_conf: ``SLURM_CONF`` for ``srun`` in shells, when not the system default.
        poll_interval: Seconds between job state polls while jobs change.
        idle_poll_interval: The longest pause between polls: it doubles from
            ``poll_interval`` up to this while nothing changes.
        catalog_ttl: Seconds a node list is reused when checking a submission.
        max_retries: Retries of transient REST failures (connection refused, busy).
        server_home: The server's home, which no job sees (its sandbox hides it).
    """

    url: str
    user: str
    token_file: Path
    tasks_dir: Path
    volumes_dir: Path
    partition: str | None = None
    slurm_conf: str | None = None
    poll_interval: float = 0.2
    idle_poll_interval: float = 3.0
    catalog_ttl: float = 5.0
    max_retries: int = 2
    server_home: Path | None = None

    @classmethod
    def from_server_settings(cls, settings: ServerSettings) -> SlurmSettings:
        """Read ``settings.extra["slurm"]``, then ``VI_FLOW_SLURM_*`` env, then defaults."""
        given: Mapping[str, Any] = settings.extra.get("slurm") or {}
        env = os.environ

        def pick(key: str, env_name: str, default: Any) -> Any:
            return given.get(key) or env.get(env_name) or default

        home = Path(settings.home) / "slurm"
        return cls(
            url=pick("url", "VI_FLOW_SLURM_URL", "http://127.0.0.1:6820"),
            user=pick("user", "VI_FLOW_SLURM_USER", getpass.getuser()),
            token_file=Path(pick("token_file", "VI_FLOW_SLURM_TOKEN_FILE", home / "token")),
            tasks_dir=Path(pick("tasks_dir", "VI_FLOW_SLURM_TASKS_DIR", home / "tasks")),
            volumes_dir=Path(pick("volumes_dir", "VI_FLOW_SLURM_VOLUMES_DIR", home / "volumes")),
            partition=pick("partition", "VI_FLOW_SLURM_PARTITION", None),
            slurm_conf=pick("slurm_conf", "SLURM_CONF", None),
            poll_interval=float(given.get("poll_interval", 0.2)),
            idle_poll_interval=float(given.get("idle_poll_interval", 3.0)),
            catalog_ttl=float(given.get("catalog_ttl", 5.0)),
            max_retries=int(given.get("max_retries", 2)),
            server_home=Path(settings.home),
        )
