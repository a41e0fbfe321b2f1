"""GPU tasks on the client side: the ``AsyncTask`` handle, SSH, log follows, code upload.

:class:`AsyncCompute` holds the seed's ``run``, ``submit``, ``logs``, ``shell``...
methods (``AsyncClient`` offers them by the same names); :class:`AsyncTask` is the
handle they return;
:mod:`vi_flow.compute.ssh` holds the pinned SSH connection, quoting and shells.
"""

from __future__ import annotations

from ._dicts import (
    CatalogEntry,
    GPUInstanceDict,
    InstanceRequirements,
    TaskDict,
    catalog_entry,
    gpu_instance_dict,
    task_dict,
)
from ._facade import AsyncCompute, ModelArtifacts
from ._follow import LogFollower
from ._simple import AsyncClientFacade
from ._task import AsyncTask, StatusView
from ._upload import IgnoreRules, UploadError, UploadResult
from .ssh import ShellResult, SSHTarget

__all__ = [
    "AsyncClientFacade",
    "AsyncCompute",
    "AsyncTask",
    "CatalogEntry",
    "GPUInstanceDict",
    "IgnoreRules",
    "InstanceRequirements",
    "LogFollower",
    "ModelArtifacts",
    "SSHTarget",
    "ShellResult",
    "StatusView",
    "TaskDict",
    "UploadError",
    "UploadResult",
    "catalog_entry",
    "gpu_instance_dict",
    "task_dict",
]
