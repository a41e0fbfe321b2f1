"""The Slurm provider: tasks as batch jobs of a cluster, over ``slurmrestd``.

:mod:`.provider` holds :class:`SlurmProvider`; :mod:`.rest` is the REST client,
:mod:`.jobs` the records it reads and the submissions it sends, :mod:`.catalog` what the
cluster's nodes offer, :mod:`.settings` the ``VI_FLOW_SLURM_*`` settings.
"""

from __future__ import annotations

from .provider import SlurmProvider, create
from .settings import SlurmCredentialsError, SlurmSettings

__all__ = ["SlurmCredentialsError", "SlurmProvider", "SlurmSettings", "create"]
