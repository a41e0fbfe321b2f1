"""Compute providers: which backend runs tasks, chosen by ``ServerSettings.provider``.

Every provider implements :class:`~vi_flow.server.providers.base.ComputeProvider` and is
a sub-package named after it (``local/``, ``slurm/``, ``ray/``; each has ``provider.py``
and its parts) that exposes ``create(settings) -> ComputeProvider``; :func:`create_provider`
imports the one named in the settings only when it is used. What several providers
share stays here: :mod:`.base` (the interface), :mod:`._polling` (the skeleton of the
Slurm and Ray providers), :mod:`._gpu_catalog` (GPU sizing and cluster placement) and
:mod:`._job_files` (what a Slurm or Ray job finds in its task directory).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .base import (
    CapacityError,
    ComputeProvider,
    InvalidRequest,
    ProviderError,
    ProviderUnavailable,
    UnsupportedOperation,
)

if TYPE_CHECKING:
    from ..state import ServerSettings

__all__ = [
    "PROVIDERS",
    "CapacityError",
    "ComputeProvider",
    "InvalidRequest",
    "ProviderError",
    "ProviderUnavailable",
    "UnsupportedOperation",
    "create_provider",
]

PROVIDERS: dict[str, str] = {
    "local": "vi_flow.server.providers.local",
    "slurm": "vi_flow.server.providers.slurm",
    "ray": "vi_flow.server.providers.ray",
}
"""Provider name -> package exposing ``create(settings) -> ComputeProvider``."""


def create_provider(settings: ServerSettings) -> ComputeProvider:
    """Build the provider named by ``settings.provider``.

    Raises:
        ValueError: Unknown provider name (the message lists the known ones).
    """
    module_name = PROVIDERS.get(settings.provider)
    if module_name is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown compute provider {settings.provider!r}; known: {known}")
    module = importlib.import_module(module_name)
    provider: ComputeProvider = module.create(settings)
    return provider
