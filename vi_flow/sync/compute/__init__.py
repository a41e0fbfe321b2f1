"""GPU tasks, blocking: the ``Task`` handle, ``Compute`` (the seed's methods), ``Platform``.

Each mirrors its async twin in :mod:`vi_flow.compute`; no logic lives here.
"""

from __future__ import annotations

from ._facade import Compute
from ._platform import Platform, RawAPI, RemoteOperations
from ._task import Task

__all__ = ["Compute", "Platform", "RawAPI", "RemoteOperations", "Task"]
