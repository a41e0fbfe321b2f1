"""The task feature: GPU/CPU tasks, their volumes, SSH access, logs and outputs.

:class:`~.service.TaskService` holds the feature's parts and owns the task life cycle;
the routes (:mod:`vi_flow.server.routes.tasks`) register it on the application under
:data:`TASKS_KEY`. The parts, one module each:

- :mod:`.records`: the SQLite tables; reading tasks; the events that wake waiters;
- :mod:`.volumes`: volumes and mounting them into tasks;
- :mod:`.ssh`: registered SSH keys and what an SSH login maps to;
- :mod:`.outputs`: task logs (tail, follow) and output files;
- :mod:`.launch`: the pure steps from a task config to a provider's launch spec;
- :mod:`.files`: blocking file helpers (log tails, reads by offset, safe paths);
- :mod:`.sshd`: the embedded SSH server that task shells and log follows go through.
"""

from __future__ import annotations

from .outputs import FOLLOW_POLL
from .records import SCHEMA
from .service import DEFAULT_GRACE, TASKS_KEY, TaskService
from .ssh import SessionContext

__all__ = ["DEFAULT_GRACE", "FOLLOW_POLL", "SCHEMA", "TASKS_KEY", "SessionContext", "TaskService"]
