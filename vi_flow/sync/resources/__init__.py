"""The blocking resource namespaces (``client.flows``, ``client.tasks``...), one per async twin."""

from __future__ import annotations

from .flows import Flows
from .instances import Instances
from .reservations import Reservations
from .runs import Runs
from .ssh_keys import SSHKeys
from .tasks import Tasks
from .tokens import Tokens
from .volumes import Volumes

__all__ = ["Flows", "Instances", "Reservations", "Runs", "SSHKeys", "Tasks", "Tokens", "Volumes"]
