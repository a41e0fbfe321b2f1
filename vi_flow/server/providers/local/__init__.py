"""The local provider: tasks as sandboxed process groups on this machine.

:mod:`.provider` holds :class:`LocalProvider` (the queue, the scheduling loop and the
task life cycle); :mod:`.process` runs and stops one process group, :mod:`.capacity`
accounts for free CPUs and GPUs, :mod:`.placement` resolves requests against the
machine, :mod:`.machine` detects it and :mod:`.reservations` keeps the reservation book.
"""

from __future__ import annotations

from .machine import GPUDevice, Machine, detect_machine
from .provider import KILL_WAIT, MAX_RUN_TIME_GRACE, LocalProvider, create

__all__ = [
    "KILL_WAIT",
    "MAX_RUN_TIME_GRACE",
    "GPUDevice",
    "LocalProvider",
    "Machine",
    "create",
    "detect_machine",
]
