"""Executing flows: ``AsyncFlow``, ``AsyncJob``, ``AsyncRun``, their results and the tool-call loop.

``client.flow(flow_id)`` returns an :class:`AsyncFlow`; the sync ``Flow``, ``Job`` and
``Run`` in :mod:`vi_flow.sync.execution` wrap these over the portal.
"""

from __future__ import annotations

from ..models.execution import ToolChoice, Version
from ._flow import AsyncFlow
from ._options import ExecuteOptions, RunInputs, SyncExecuteOptions
from ._results import ExecuteResult, PausedResult
from ._run import AsyncJob, AsyncRun
from ._tools import AsyncToolHandler, SyncToolHandler, ToolHandler, ToolHandlerWarning

__all__ = [
    "AsyncFlow",
    "AsyncJob",
    "AsyncRun",
    "AsyncToolHandler",
    "ExecuteOptions",
    "ExecuteResult",
    "PausedResult",
    "RunInputs",
    "SyncExecuteOptions",
    "SyncToolHandler",
    "ToolChoice",
    "ToolHandler",
    "ToolHandlerWarning",
    "Version",
]
