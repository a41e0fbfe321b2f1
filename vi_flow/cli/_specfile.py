"""Reading flow spec files (YAML or JSON) and pointing at the line of a bad field.

The server validates specs and names the bad field (``blocks[1].block: required``);
:func:`line_of` finds that field in the file so the CLI can say ``spec.yaml:7``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click

from ..models.textfile import load_yaml, read_utf8, read_utf8_stream, yaml_problem

__all__ = ["STDIN", "SpecFile", "load_spec_file", "read_text_file"]

_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


class SpecFile:
    """A parsed spec file: the data and the YAML node tree for line lookups.

    Attributes:
        path: Where it was read from.
        data: The parsed mapping.
    """

    def __init__(self, path: Path, data: dict[str, Any], root: Any) -> None:
        self.path = path
        self.data = data
        self._root = root

    def line_of(self, field: str) -> int | None:
        """Return the 1-based line of a field path like ``spec.blocks[0].block``, if present."""
        node = self._root
        line: int | None = None
        parts = [m.group(1) or m.group(2) for m in _PATH_PART.finditer(field)]
        if parts and parts[0] == "spec" and "spec" not in self.data:
            parts = parts[1:]
        for part in parts:
            node, found = _child(node, part)
            if node is None:
                break
            line = found
        return line

    def describe(self, field: str, problem: str) -> str:
        """Return ``path:line: field: problem`` (without the line when it is not found)."""
        line = self.line_of(field)
        where = f"{self.path}:{line}" if line else str(self.path)
        return f"{where}: {field}: {problem}"


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _child(node: Any, part: str) -> tuple[Any, int | None]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value in (part, _snake(part)):
                return value, key.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
        item = node.value[int(part)]
        return item, item.start_mark.line + 1
    return None, None


STDIN = Path("<stdin>")
"""How a file given as ``-`` (standard input) is named in messages."""


def read_text_file(path: Path, param_hint: str) -> str:
    """The UTF-8 text of the file ``path`` a user gave (``-``: standard input).

    Raises:
        click.BadParameter: It cannot be read, or is not UTF-8 text (names the file).
    """
    try:
        if path == Path("-"):
            return _stdin_text()
        return read_utf8(path)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from None
    except OSError as exc:
        message = f"{path}: cannot be read: {exc.strerror or exc}"
        raise click.BadParameter(message, param_hint=param_hint) from None


def _stdin_text() -> str:
    return read_utf8_stream(sys.stdin.buffer, STDIN)


def load_spec_file(path: Path) -> SpecFile:
    """Read a YAML (or JSON) flow spec file.

    Raises:
        click.BadParameter: The file is not valid YAML (names the line and column) or is not
            a mapping.
    """
    import yaml

    text = read_text_file(path, "'-f'")
    if path == Path("-"):
        path = STDIN
    try:
        data, root = load_yaml(text)
    except yaml.YAMLError as exc:
        raise click.BadParameter(yaml_problem(path, exc), param_hint="'-f'") from None
    if not isinstance(data, dict):
        raise click.BadParameter(
            f"{path}:1: a flow spec must be a mapping with 'name' and 'blocks', got "
            + ("nothing (the file is empty)" if data is None else f"a {type(data).__name__}"),
            param_hint="'-f'",
        )
    return SpecFile(path, data, root)
