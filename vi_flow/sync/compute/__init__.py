"""GPU tasks, blocking: the ``Task`` handle, ``Compute`` (the seed's methods), ``Platform``,
``Client`` (the seed's smaller facade) and the seed's ``TypedDict`` shapes.

Each mirrors its async twin in :mod:`vi_flow.compute`; no logic lives here.
"""

from __future__ import annotations

from ...compute._dicts import CatalogEntry, GPUInstanceDict, InstanceRequirements, TaskDict
from ._facade import Compute
from ._platform import Platform, RawAPI, RemoteOperations
from ._simple import Client, ClientFacade
from ._task import Task

__all__ = [
    "CatalogEntry",
    "Client",
    "ClientFacade",
    "Compute",
    "GPUInstanceDict",
    "InstanceRequirements",
    "Platform",
    "RawAPI",
    "RemoteOperations",
    "Task",
    "TaskDict",
]
