"""The Ray provider: tasks as jobs of a Ray cluster, over the dashboard's Jobs REST API.

:mod:`.provider` holds :class:`RayProvider`; :mod:`.api` is the HTTP client (no ``ray``
import: the server does not need Ray installed), :mod:`.entrypoint` the shell entry
point a task runs as, :mod:`.catalog` what the cluster's nodes offer, :mod:`.settings`
the ``VI_FLOW_RAY_*`` settings.
"""

from __future__ import annotations

from .provider import RayProvider, create
from .settings import RayCredentialsError, RaySettings

__all__ = ["RayCredentialsError", "RayProvider", "RaySettings", "create"]
