"""Reading a text file a user gave (a task file, a flow spec, a key): errors name the file.

Shared by :meth:`~vi_flow.models.tasks.TaskConfig.from_yaml` and the CLI's spec files,
so that both say ``spec.yaml:2:1: not valid YAML: ...`` and ``key: not UTF-8 text``
the same way.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, BinaryIO

from .limits import MAX_REQUEST_BODY, shown

__all__ = ["MAX_TEXT_FILE", "load_yaml", "read_utf8", "read_utf8_stream", "yaml_problem"]

MAX_TEXT_FILE = MAX_REQUEST_BODY
"""The largest text file read (a spec, a task file, a key), in bytes: what is larger
could never be sent in one request. A file is read up to this much and no further, so
``/dev/zero`` or an endless pipe is refused instead of filling memory."""


def read_utf8(path: Path) -> str:
    """The text of ``path`` (blocking).

    Raises:
        ValueError: It holds more than :data:`MAX_TEXT_FILE` bytes, or is not UTF-8 text
            (the message names the file and the byte).
        OSError: It cannot be read.
    """
    with path.open("rb") as handle:
        return read_utf8_stream(handle, path)


def read_utf8_stream(stream: BinaryIO, name: Path | str) -> str:
    """The UTF-8 text of ``stream`` (a file, standard input) to its end, ``name`` in errors.

    Raises:
        ValueError: It holds more than :data:`MAX_TEXT_FILE` bytes (read no further), or
            is not UTF-8 text; the message names it.
        OSError: It cannot be read.
    """
    data = stream.read(MAX_TEXT_FILE + 1)
    if len(data) > MAX_TEXT_FILE:
        raise ValueError(f"{name}: larger than {MAX_TEXT_FILE // (1024 * 1024)} MiB; not read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def yaml_problem(path: Path | str, exc: Any) -> str:
    """What a ``yaml.YAMLError`` from parsing ``path`` says, where it is known:
    ``path:LINE:COLUMN: not valid YAML: problem``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return f"{path}: not valid YAML: {exc}"
    problem = getattr(exc, "problem", None) or exc
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"


def load_yaml(text: str) -> tuple[Any, Any]:
    """The data of one YAML document and its node tree (``None, None`` when empty).

    Aliases (``*name``) are refused: a spec never needs one, and they are how a small
    file becomes one that refers to itself (a recursive structure) or that expands to
    gigabytes when it is sent as JSON (the "billion laughs"). A document nested deeper
    than Python's recursion allows is refused too, and so is a mapping that gives one
    key twice (YAML would keep the last value, silently).

    Raises:
        yaml.YAMLError: Not valid YAML, an alias, or nested too deeply (with its mark
            where known; :func:`yaml_problem` words it).
    """
    import yaml

    loader = _loader_class()(text)
    try:
        root = loader.get_single_node()
        return (None if root is None else loader.construct_document(root)), root
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    finally:
        loader.dispose()


@functools.cache
def _loader_class() -> Any:
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                alias = self.peek_event()  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"aliases (*{alias.anchor}) are not supported: write the value out",
                    alias.start_mark,
                )
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            _refuse_duplicate_keys(self, node)
            return super().construct_mapping(node, deep)

    return NoAliases


def _refuse_duplicate_keys(loader: Any, node: Any) -> None:
    import yaml

    first_line: dict[Any, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            # '<<' merges on purpose (inline mappings: aliases are refused); a key the
            # mapping itself gives overrides a merged one, but one merged mapping may
            # not give a key twice (it would be merged, not constructed, unchecked)
            merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for part in merged:
                if isinstance(part, yaml.MappingNode):
                    _refuse_duplicate_keys(loader, part)
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            line = first_line.get(key)
        except TypeError:
            continue  # not hashable: the constructor refuses it in its own words
        if line is not None:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"duplicate key {shown(key_node.value)} (first on line {line})",
                key_node.start_mark,
            )
        first_line[key] = key_node.start_mark.line + 1
