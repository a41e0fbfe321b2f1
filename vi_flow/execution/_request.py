"""The execute request as the execution handles use it: the one model in ``vi_flow.models``.

:class:`~vi_flow.models.execution.ExecuteRequest` holds the fields, the limits and the
checks for the client and the server alike; ``ExecuteRequest.build`` raises
``ValueError`` or ``TypeError`` naming the bad value, and nothing is sent.
"""

from __future__ import annotations

from ..models.execution import (
    MAX_ATTACHMENTS,
    MAX_TOOLS,
    ExecuteRequest,
    ExecutionJob,
    ToolChoice,
    Version,
    check_version,
)

__all__ = [
    "MAX_ATTACHMENTS",
    "MAX_TOOLS",
    "ExecuteRequest",
    "ExecutionJob",
    "ToolChoice",
    "Version",
    "check_version",
]
