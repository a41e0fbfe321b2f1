"""Executing flows, blocking: ``Flow``, ``Run``, ``Job`` and ``PausedResult``.

They wrap their async twins in :mod:`vi_flow.execution`, living on the sync client's
portal thread; streams iterate here too, and ``break`` closes them.
"""

from __future__ import annotations

from ._flow import Flow
from ._results import PausedResult
from ._run import Job, Run

__all__ = ["Flow", "Job", "PausedResult", "Run"]
