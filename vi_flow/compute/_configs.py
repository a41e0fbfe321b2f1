"""Turn the arguments of ``run``/``submit`` into a :class:`TaskConfig`, and other small translations.

``run`` accepts a ``TaskConfig``, a YAML file (a ``Path``, or a string ending in
``.yaml``/``.yml`` that names an existing file), an argv list or a command line, plus
keyword overrides; ``mounts`` in the seed's form (``{"/data": "volume://datasets"}``)
become volume specs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import attrs

from ..models.limits import shown
from ..models.tasks import TaskConfig, VolumeSpec, parse_gpu
from ._dicts import InstanceRequirements

__all__ = [
    "INSTANCE_REQUIREMENT_KEYS",
    "build_config",
    "flag",
    "mapping_of",
    "mounts_to_volumes",
    "normalize_instance_request",
    "to_millis",
]

_FIELDS = frozenset(a.name for a in attrs.fields(TaskConfig))
_VOLUME_SCHEME = "volume://"
INSTANCE_REQUIREMENT_KEYS = frozenset(InstanceRequirements.__annotations__)


def _is_yaml_path(task: str | Path) -> bool:
    """Whether ``task`` names a task file: a ``Path``, or one word ending in .yaml/.yml.

    Raises:
        ValueError: It looks like a task file that does not exist (it is not run as a
            command: ``run("train.yaml")`` with a typo must not start a shell).
    """
    if isinstance(task, Path):
        return True
    if not task.endswith((".yaml", ".yml")) or len(task.split()) != 1:
        return False
    if not os.path.isfile(task):
        raise ValueError(
            f"task file {task!r} does not exist (looked in {os.getcwd()}); to run it as a "
            f"command instead, pass a list such as [{task!r}]"
        )
    return True


async def _base_config(task: TaskConfig | str | Path | list[str]) -> TaskConfig:
    if isinstance(task, TaskConfig):
        return task
    if isinstance(task, (str, Path)) and await anyio.to_thread.run_sync(_is_yaml_path, task):
        return await anyio.to_thread.run_sync(TaskConfig.from_yaml, task)
    if isinstance(task, list):
        return TaskConfig(command=[str(a) for a in task])
    if isinstance(task, str):
        return TaskConfig(command=task)
    raise TypeError(f"task must be a TaskConfig, a YAML path, a command or argv, got {task!r}")


def flag(value: object, name: str) -> bool:
    """``value``, a seed method's yes/no argument.

    Raises:
        TypeError: ``value`` is not a bool (``"no"`` would count as yes).
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {shown(value)}")
    return value


def mapping_of(value: object, name: str, shape: str) -> dict[str, Any]:
    """``value`` (a mapping, or ``None`` for none) as a dict.

    Raises:
        TypeError: ``value`` is neither, naming ``name`` and the ``shape`` it should have.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict such as {shape}, got {shown(value)}")
    return dict(value)


def mounts_to_volumes(mounts: str | Mapping[str, str] | None) -> list[VolumeSpec]:
    """Read the seed's ``mounts``: ``{"/data": "volume://datasets"}`` or one source string.

    A single string is mounted at ``/data``. Only ``volume://NAME`` sources exist here.

    Raises:
        ValueError: A source that is not ``volume://NAME``.
    """
    if mounts is None:
        return []
    if isinstance(mounts, str):
        pairs = {"/data": mounts}
    else:
        pairs = mapping_of(mounts, "mounts", "{'/data': 'volume://NAME'} (or one such string)")
    specs = []
    for target, source in pairs.items():
        if (
            not isinstance(source, str)
            or not source.startswith(_VOLUME_SCHEME)
            or len(source) == len(_VOLUME_SCHEME)
        ):
            raise ValueError(
                f"mount source {source!r} for {target!r} is not supported: "
                "use 'volume://NAME' (create it with create_volume(), or `vi-flow volumes create`)"
            )
        specs.append(VolumeSpec(mount_path=target, volume_id=source[len(_VOLUME_SCHEME) :]))
    return specs


async def build_config(
    task: TaskConfig | str | Path | list[str],
    *,
    mounts: str | Mapping[str, str] | None = None,
    **overrides: Any,
) -> TaskConfig:
    """Build the config ``run`` submits; ``None`` overrides are ignored.

    Raises:
        TypeError: An override that is not a ``TaskConfig`` field.
        ValueError: Bad GPU shorthand or mount source (checked before any request).
    """
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise TypeError(f"unknown task option(s): {', '.join(unknown)}")
    config = await _base_config(task)
    changes = {k: v for k, v in overrides.items() if v is not None}
    volumes = mounts_to_volumes(mounts)
    if volumes:
        changes["volumes"] = [*config.volumes, *volumes]
    config = attrs.evolve(config, **changes) if changes else config
    if config.gpu is not None:  # "" too: a shorthand that names nothing is a mistake
        parse_gpu(config.gpu)
    return config


def normalize_instance_request(
    gpu_count: int, gpu_type: str | None = None
) -> tuple[str, int, str | None]:
    """Map a GPU count to an instance type and a number of instances.

    Counts of 1, 2, 4 and 8 map to one ``"a100"``, ``"2xa100"``, ``"4xa100"``, ``"8xa100"``;
    other counts round up to the next of those (with a warning), and counts above 8 use
    several ``8x`` instances.

    Returns:
        ``(instance_type, num_instances, warning or None)``.

    Raises:
        TypeError: ``gpu_count`` is not a whole number.
        ValueError: ``gpu_count`` below 1, or a ``gpu_type`` with a count in it.
    """
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int):
        raise TypeError(f"gpu_count must be a whole number, got {shown(gpu_count)}")
    if gpu_count < 1:
        raise ValueError(f"gpu_count must be at least 1, got {gpu_count}")
    if gpu_type is not None and (
        not isinstance(gpu_type, str) or ":" in gpu_type or re.match(r"\s*\d+\s*x", gpu_type)
    ):
        raise ValueError(
            f"gpu_type must be a GPU model such as 'a100' (the count is gpu_count),"
            f" got {shown(gpu_type)}"
        )
    name = (gpu_type or "gpu").lower()
    if gpu_count > 8:
        instances = -(-gpu_count // 8)
        warning = None
        if gpu_count % 8:
            warning = f"{gpu_count} GPUs rounded up to {instances} x 8 = {instances * 8}"
        return f"8x{name}", instances, warning
    size = next(n for n in (1, 2, 4, 8) if n >= gpu_count)
    warning = None if size == gpu_count else f"{gpu_count} GPUs rounded up to {size}"
    return (name if size == 1 else f"{size}x{name}"), 1, warning


def to_millis(value: int | float | datetime | None, field: str = "time") -> int | None:
    """Milliseconds since the epoch from ms (a number), a datetime, or ``None``.

    Raises:
        TypeError: Anything else, naming ``field``.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{field} must be ms since the epoch or a datetime, got {shown(value)}")
    return int(value)
