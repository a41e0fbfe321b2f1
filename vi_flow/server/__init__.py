"""The local vi_flow server: a real aiohttp application over SQLite.

:func:`create_app` builds the application, :func:`run_server` serves it until SIGTERM
or Ctrl-C (``vi-flow serve``), and :mod:`vi_flow.server.embedded` runs it in-process
for clients configured with the ``local`` base URL.
"""

from __future__ import annotations

from .app import create_app
from .serve import run_server
from .state import ServerSettings

__all__ = ["ServerSettings", "create_app", "run_server"]
