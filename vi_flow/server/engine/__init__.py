"""The local server's flow engine: executor, blocks, event log, pauses and recovery.

:class:`Engine` executes flow versions block by block, records every event in an
append-only per-run SQLite log (:mod:`.eventlog`) before anyone sees it, pauses runs
durably for client-side tool calls and recovers runs a dead server left behind. The
routes in :mod:`vi_flow.server.routes.executions` expose it on the wire. Block types
live in :mod:`.blocks`; plugins add more through the ``vi_flow.blocks`` entry points.
"""

from __future__ import annotations

from .blocks import Block, BlockContext, BlockRegistry, Pause, Resume, StepDone, StepError
from .engine import Engine
from .eventlog import EventLog
from .request import ExecuteRequest, parse_request

__all__ = [
    "Block",
    "BlockContext",
    "BlockRegistry",
    "Engine",
    "EventLog",
    "ExecuteRequest",
    "Pause",
    "Resume",
    "StepDone",
    "StepError",
    "parse_request",
]
