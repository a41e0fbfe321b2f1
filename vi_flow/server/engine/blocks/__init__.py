"""Flow block types: the built-ins and those plugins register under ``vi_flow.blocks``.

Built-ins: ``template``, ``tool``, ``llm``, ``task`` and the benchmark block ``emit``.
:class:`BlockRegistry` finds a block by type name, loading the entry point group
``vi_flow.blocks`` once, on first use of a name it does not know. A plugin can never
replace a built-in. See :mod:`.base` for the protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import attrs

from ....models._base import camel
from ....models.tasks import TaskConfig
from .base import Block, BlockContext, Pause, Resume, StepDone, StepError
from .emit import emit_block
from .llm import llm_block
from .task import task_block
from .template import template_block
from .tool import tool_block

__all__ = [
    "BUILTIN_BLOCKS",
    "BUILTIN_SETTINGS",
    "Block",
    "BlockContext",
    "BlockRegistry",
    "Pause",
    "Resume",
    "StepDone",
    "StepError",
]

ENTRY_POINT_GROUP = "vi_flow.blocks"

BUILTIN_BLOCKS: dict[str, Block] = {
    "template": template_block,
    "tool": tool_block,
    "llm": llm_block,
    "task": task_block,
    "emit": emit_block,
}
"""Block type name -> the built-in block."""


def _both_spellings(*names: str) -> frozenset[str]:
    # ``BlockContext.setting`` reads a name in snake_case or camelCase.
    return frozenset(names) | {camel(n) for n in names}


BUILTIN_SETTINGS: dict[str, frozenset[str]] = {
    "template": _both_spellings("template", "format"),
    "tool": _both_spellings("tool", "arguments", "calls", "timeout"),
    "llm": _both_spellings(
        "prompt", "system", "model", "temperature", "max_tokens", "max_iterations", "timeout"
    ),
    "task": _both_spellings(
        *(a.name for a in attrs.fields(TaskConfig)), "tail_lines", "allow_failure"
    ),
    "emit": _both_spellings("count", "interval", "line", "stream"),
}
"""Block type name -> the settings the built-in reads (its docstring lists them)."""

log = logging.getLogger("vi_flow.server.engine")


def _instantiate(obj: Any) -> Block:
    block = obj() if isinstance(obj, type) else obj
    if not callable(block):
        raise TypeError(f"{obj!r} is not a callable block")
    return block  # type: ignore[no-any-return]


class BlockRegistry:
    """Finds block implementations by type name (built-ins first, then plugins)."""

    def __init__(self) -> None:
        self._blocks: dict[str, Block] = dict(BUILTIN_BLOCKS)
        self._errors: dict[str, str] = {}
        self._loaded = False

    def _load_plugins(self) -> None:
        # Imported here: importlib.metadata is 0.8 MB of an idle server that needs no plugin.
        from importlib.metadata import entry_points

        self._loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._blocks:
                continue
            try:
                self._blocks[ep.name] = _instantiate(ep.load())
            except Exception as exc:  # a broken plugin must not break the server
                log.warning("block plugin %r (%s) failed to load: %r", ep.name, ep.value, exc)
                self._errors[ep.name] = f"{type(exc).__name__}: {exc}"

    def known(self, name: str) -> bool:
        """Whether ``name`` is a built-in or an installed plugin (even one that failed to load)."""
        if name not in self._blocks and not self._loaded:
            self._load_plugins()
        return name in self._blocks or name in self._errors

    def names(self) -> list[str]:
        """Every known block type name, sorted."""
        if not self._loaded:
            self._load_plugins()
        return sorted({*self._blocks, *self._errors})

    def settings_of(self, name: str) -> Collection[str] | None:
        """The settings block ``name`` reads, or ``None`` when it does not say.

        A plugin may declare them as a ``settings`` attribute (a collection of names);
        one that does not is not checked.
        """
        if name in BUILTIN_SETTINGS:
            return BUILTIN_SETTINGS[name]
        declared = getattr(self._blocks.get(name), "settings", None)
        if isinstance(declared, Collection) and not isinstance(declared, str):
            return frozenset(str(n) for n in declared)
        return None

    def get(self, name: str) -> Block:
        """Return the block for ``name``.

        Raises:
            StepError: No built-in or plugin block has that name (or it failed to load).
        """
        if name not in self._blocks and not self._loaded:
            self._load_plugins()
        block = self._blocks.get(name)
        if block is not None:
            return block
        if name in self._errors:
            raise StepError(
                f"block plugin {name!r} failed to load: {self._errors[name]}", "UNKNOWN_BLOCK"
            )
        known = ", ".join(sorted(self._blocks))
        raise StepError(f"unknown block type {name!r} (known: {known})", "UNKNOWN_BLOCK")
