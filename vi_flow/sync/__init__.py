"""The blocking API: thin typed wrappers that run the async core on a portal thread.

``vi_flow.Client`` is the entry point. The package mirrors the async tree file for file:
``_client``, ``_pagination``, ``resources/``, ``execution/``, ``compute/``; each blocking
method is one typed line over the portal to its async twin. Its names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .execution import Flow as Flow
    from .execution import Job as Job
    from .execution import PausedResult as PausedResult
    from .execution import Run as Run

__all__ = ["Flow", "Job", "PausedResult", "Run"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'vi_flow.sync' has no attribute {name!r}")
    value = getattr(importlib.import_module(".execution", __name__), name)
    globals()[name] = value
    return value
