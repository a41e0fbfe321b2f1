"""GPU tasks on the client side: the ``AsyncTask`` handle, SSH, log follows, code upload.

``AsyncClient`` inherits :class:`ComputeMethods` (the seed's ``run``, ``submit``,
``logs``, ``shell``... methods); :class:`AsyncTask` is the handle they return;
:mod:`vi_flow.compute.ssh` holds the pinned SSH connection, quoting and shells.
"""

from __future__ import annotations

from ._facade import ComputeMethods, ModelArtifacts
from ._follow import LogFollower
from ._task import AsyncTask, StatusView
from ._upload import IgnoreRules, UploadError, UploadResult
from .ssh import ShellResult, SSHTarget

__all__ = [
    "AsyncTask",
    "ComputeMethods",
    "IgnoreRules",
    "LogFollower",
    "ModelArtifacts",
    "SSHTarget",
    "ShellResult",
    "StatusView",
    "UploadError",
    "UploadResult",
]
