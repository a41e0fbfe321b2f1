"""Executing flows: ``AsyncFlow``, ``AsyncJob``, ``AsyncRun``, their results and the tool-call loop.

``client.flow(flow_id)`` returns an :class:`AsyncFlow`; the sync ``Flow``, ``Job`` and
``Run`` in :mod:`vi_flow.sync.execution` wrap these over the portal.
"""

from __future__ import annotations

from ._flow import AsyncFlow
from ._request import ToolChoice, Version
from ._results import ExecuteResult, PausedResult
from ._run import AsyncJob, AsyncRun
from ._tools import AsyncToolHandler, SyncToolHandler, ToolHandler, ToolHandlerWarning

__all__ = [
    "AsyncFlow",
    "AsyncJob",
    "AsyncRun",
    "AsyncToolHandler",
    "ExecuteResult",
    "PausedResult",
    "SyncToolHandler",
    "ToolChoice",
    "ToolHandler",
    "ToolHandlerWarning",
    "Version",
]
