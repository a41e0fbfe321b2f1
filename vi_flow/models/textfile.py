"""Reading a text file a user gave (a task file, a flow spec, a key): errors name the file.

Shared by :meth:`~vi_flow.models.tasks.TaskConfig.from_yaml` and the CLI's spec files,
so that both say ``spec.yaml:2:1: not valid YAML: ...`` and ``key: not UTF-8 text``
the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["read_utf8", "yaml_problem"]


def read_utf8(path: Path) -> str:
    """The text of ``path`` (blocking).

    Raises:
        ValueError: It is not UTF-8 text; the message names the file and the byte.
        OSError: It cannot be read.
    """
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def yaml_problem(path: Path | str, exc: Any) -> str:
    """What a ``yaml.YAMLError`` from parsing ``path`` says, where it is known:
    ``path:LINE:COLUMN: not valid YAML: problem``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return f"{path}: not valid YAML: {exc}"
    problem = getattr(exc, "problem", None) or exc
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"
