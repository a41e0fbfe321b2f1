"""How the server reaches a Ray cluster: :class:`RaySettings` and the credentials error."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..base import ProviderError

if TYPE_CHECKING:
    from ...state import ServerSettings

__all__ = ["DEFAULT_URL", "RayCredentialsError", "RaySettings"]

DEFAULT_URL = "http://127.0.0.1:8265"


class RayCredentialsError(ProviderError):
    """The dashboard refused the server's token; the message names the token file."""

    status = 503
    code = "PROVIDER_UNAVAILABLE"


@attrs.frozen
class RaySettings:
    """How the server reaches the Ray dashboard and where task files live.

    Attributes:
        url: The dashboard URL (the Ray Jobs REST API), such as ``http://127.0.0.1:8265``.
        tasks_dir: Task directories (workspace, logs); every node that runs entry points
            must see it at the same path (one host in tests).
        volumes_dir: Volume directories, with the same requirement.
        token_file: A file holding the cluster's token when it runs with
            ``RAY_AUTH_MODE=token`` (sent as ``Authorization: Bearer``); None otherwise.
        poll_interval: Seconds between job state polls while jobs change.
        idle_poll_interval: The longest pause between polls: it doubles from
            ``poll_interval`` up to this while nothing changes.
        catalog_ttl: Seconds a node list is reused when checking a submission.
        timeout: Seconds for one HTTP request.
        server_home: The server's home, which no job sees (its sandbox hides it).
    """

    url: str
    tasks_dir: Path
    volumes_dir: Path
    token_file: Path | None = None
    poll_interval: float = 0.2
    idle_poll_interval: float = 3.0
    catalog_ttl: float = 5.0
    timeout: float = 10.0
    server_home: Path | None = None

    @classmethod
    def from_server_settings(cls, settings: ServerSettings) -> RaySettings:
        """Read ``settings.extra["ray"]``, then ``VI_FLOW_RAY_*`` env, then defaults.

        The URL falls back to ``RAY_API_SERVER_ADDRESS`` (what ``ray job submit`` reads)
        before the default ``http://127.0.0.1:8265``.
        """
        given: Mapping[str, Any] = settings.extra.get("ray") or {}
        env = os.environ

        def pick(key: str, env_name: str, default: Any) -> Any:
            return given.get(key) or env.get(env_name) or default

        home = Path(settings.home) / "ray"
        url = pick("url", "VI_FLOW_RAY_URL", env.get("RAY_API_SERVER_ADDRESS") or DEFAULT_URL)
        token_file = pick("token_file", "VI_FLOW_RAY_TOKEN_FILE", None)
        return cls(
            url=str(url).rstrip("/"),
            tasks_dir=Path(pick("tasks_dir", "VI_FLOW_RAY_TASKS_DIR", home / "tasks")),
            volumes_dir=Path(pick("volumes_dir", "VI_FLOW_RAY_VOLUMES_DIR", home / "volumes")),
            token_file=Path(token_file) if token_file else None,
            poll_interval=float(given.get("poll_interval", 0.2)),
            idle_poll_interval=float(given.get("idle_poll_interval", 3.0)),
            catalog_ttl=float(given.get("catalog_ttl", 5.0)),
            timeout=float(given.get("timeout", 10.0)),
            server_home=Path(settings.home),
        )
