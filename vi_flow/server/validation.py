"""Checks on flow specs and run parameters beyond what the wire types enforce.

Every failure is ``422 VALIDATION_ERROR`` whose message starts with the field path, for
example ``blocks[1].id: duplicate block id 'fetch'``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol, TypeVar

from ..models._base import camel
from ..models.flows import FlowSpec
from ..models.limits import (
    MAX_BLOCKS,
    MAX_EMIT_INTERVAL,
    MAX_EMIT_LINES,
    MAX_ID_LENGTH,
    MAX_ITERATIONS,
    MAX_LLM_TEMPERATURE,
    MAX_LLM_TOKENS,
    MAX_NESTING,
    MAX_STEP_TIMEOUT,
    MAX_TAIL_LINES,
    LimitError,
    check_int,
    check_name,
    check_number,
    depth,
    shown,
)
from ..models.tasks import env_problem
from .errors import APIProblem
from .tasks.launch import check_env

__all__ = [
    "SETTING_LIMITS",
    "BlockCatalog",
    "check_block_values",
    "check_blocks",
    "check_chosen_id",
    "check_settings",
    "limited",
    "resolve_parameters",
    "step_id_of",
    "validate_flow_spec",
]

T = TypeVar("T")

_CHOSEN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_chosen_id(value: object, prefix: str, field: str) -> str | None:
    """A client-chosen id (``<prefix>_`` + up to 64 letters, digits, ``-``, ``_``) or ``None``.

    Raises:
        APIProblem: 422 naming ``field`` when the id does not have that shape.
    """
    if value is None or value == "":
        return None
    head = f"{prefix}_"
    if isinstance(value, str) and value.startswith(head) and _CHOSEN_ID.match(value[len(head) :]):
        return value
    raise APIProblem.validation(
        field,
        f"expected '{prefix}_' followed by 1 to 64 letters, digits, '-' or '_', got {shown(value)}",
    )


def validate_flow_spec(spec: FlowSpec, prefix: str = "") -> FlowSpec:
    """Check the name, block types and block ids of ``spec``; return it unchanged.

    Raises:
        APIProblem: 422 naming the first bad field.
    """
    limited(check_name, f"{prefix}name", spec.name)
    _check_count(f"{prefix}blocks", spec.blocks)
    _check_count(f"{prefix}inputs", spec.inputs)
    if spec.training_project is not None:
        limited(check_name, f"{prefix}trainingProject", spec.training_project)
    _check_depth(f"{prefix}settings", spec.settings)
    _check_depth(f"{prefix}tolerations", spec.tolerations)
    seen: dict[str, int] = {}  # step id -> the block that has it
    for i, block in enumerate(spec.blocks):
        if not block.block.strip():
            raise APIProblem.validation(f"{prefix}blocks[{i}].block", "required (the block type)")
        limited(check_name, f"{prefix}blocks[{i}].block", block.block)
        _check_depth(f"{prefix}blocks[{i}].settings", block.settings)
        _check_depth(f"{prefix}blocks[{i}].style", block.style)
        if block.id is not None:
            limited(check_name, f"{prefix}blocks[{i}].id", block.id, MAX_ID_LENGTH)
            if block.id in (".", ".."):  # QA AR: the step's trace, at .../steps/{id}/trace
                raise APIProblem.validation(
                    f"{prefix}blocks[{i}].id", f"{block.id!r} cannot name a step (a path segment)"
                )
        _check_step_id(spec, i, seen, prefix)
    _check_inputs(spec, prefix)
    return spec


def step_id_of(spec: FlowSpec, index: int) -> str:
    """The step id of block ``index``: its ``id``, else ``step<index + 1>``."""
    return spec.blocks[index].id or f"step{index + 1}"


def _check_step_id(spec: FlowSpec, i: int, seen: dict[str, int], prefix: str) -> None:
    """Block ``i``'s step id (its ``id``, else ``step<i + 1>``) is no earlier block's:
    two steps of one id would share their results, trace and overrides."""
    step_id = step_id_of(spec, i)
    earlier = seen.setdefault(step_id, i)
    if earlier == i:
        return
    if spec.blocks[i].id is None:
        problem = (
            f"this block's step id would be {step_id!r} (a block without an id is step<N>),"
            f" which is the id of blocks[{earlier}]: give this one an id"
        )
    elif spec.blocks[earlier].id is None:
        problem = (
            f"duplicate block id {step_id!r}: it is the step id of blocks[{earlier}], which"
            " has no id"
        )
    else:
        problem = f"duplicate block id {step_id!r}"
    raise APIProblem.validation(f"{prefix}blocks[{i}].id", problem)


def _check_inputs(spec: FlowSpec, prefix: str) -> None:
    names: set[str] = set()
    for i, item in enumerate(spec.inputs):
        limited(check_name, f"{prefix}inputs[{i}].name", item.name, MAX_ID_LENGTH)
        _check_depth(f"{prefix}inputs[{i}].default", item.default)
        if item.name in names:
            raise APIProblem.validation(
                f"{prefix}inputs[{i}].name", f"duplicate input {item.name!r}"
            )
        names.add(item.name)


def limited(check: Callable[..., T], *args: Any) -> T:
    """Run a check of :mod:`vi_flow.models.limits`; its ``LimitError`` becomes a 422."""
    try:
        return check(*args)
    except LimitError as exc:
        raise APIProblem.validation(exc.field, exc.problem) from None


def _check_depth(field: str, value: object) -> None:
    # The same limit as an execute request's fields: a stored spec is one the engine can
    # render and the store can write back (orjson stops at 254 levels).
    if depth(value) > MAX_NESTING:
        problem = f"objects and lists nest deeper than {MAX_NESTING} levels"
        raise APIProblem.validation(field, problem)


def _check_count(field: str, items: Collection[Any]) -> None:
    if len(items) > MAX_BLOCKS:
        raise APIProblem.validation(field, f"at most {MAX_BLOCKS} are allowed, got {len(items)}")


class BlockCatalog(Protocol):
    """The block types a server runs (the engine's ``BlockRegistry``)."""

    def known(self, name: str) -> bool:
        """Whether ``name`` is a block type."""

    def names(self) -> list[str]:
        """Every block type name."""

    def settings_of(self, name: str) -> Collection[str] | None:
        """The settings ``name`` reads, ``None`` when it does not say."""


def _closest(word: str, choices: Collection[str]) -> str:
    import difflib  # only for a misspelt name: not loaded at start

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_blocks(spec: FlowSpec, catalog: BlockCatalog, prefix: str = "") -> None:
    """Check that every block type exists and reads every setting it is given.

    A misspelled setting would otherwise be ignored silently at execute (a ``tmpl``
    instead of ``template`` gives empty output and exit 0), so it is refused here with
    the closest known name.

    Raises:
        APIProblem: 422 naming ``blocks[i].block`` or ``blocks[i].settings.<name>``.
    """
    for i, block in enumerate(spec.blocks):
        where = f"{prefix}blocks[{i}]"
        if not catalog.known(block.block):
            names = catalog.names()
            problem = f"unknown block type {block.block!r}{_closest(block.block, names)}"
            raise APIProblem.validation(f"{where}.block", f"{problem} (known: {', '.join(names)})")
        check_settings(where, block.block, block.settings, catalog.settings_of(block.block))
        check_block_values(where, block.block, block.settings)


_RANGES: dict[tuple[str, str], tuple[str, float, float]] = {
    ("emit", "count"): ("integer", 0, MAX_EMIT_LINES),
    ("emit", "interval"): ("number", 0, MAX_EMIT_INTERVAL),
    ("llm", "timeout"): ("number", 0.001, MAX_STEP_TIMEOUT),
    ("llm", "max_iterations"): ("integer", 1, MAX_ITERATIONS),
    ("llm", "temperature"): ("number", 0, MAX_LLM_TEMPERATURE),
    ("llm", "max_tokens"): ("integer", 1, MAX_LLM_TOKENS),
    ("tool", "timeout"): ("number", 0.001, MAX_STEP_TIMEOUT),
    ("task", "tail_lines"): ("integer", 0, MAX_TAIL_LINES),
}

SETTING_LIMITS: dict[tuple[str, str], tuple[str, float, float]] = {
    (block, spelling): limits
    for (block, name), limits in _RANGES.items()
    for spelling in (name, camel(name))  # a block reads either spelling
}
"""(block type, setting) -> the JSON type (``integer`` or ``number``) and the range a
stored flow may give it."""


TEMPLATE_TEXT = r"\{\{[\s\S]*\}\}"
"""A setting's text that holds a ``{{ placeholder }}`` (a JSON Schema pattern: found
anywhere in the text): rendered before its block reads it, and checked then (a whole
placeholder keeps its value's type)."""


def is_template(value: Any) -> bool:
    """Whether ``value`` is text holding a placeholder (see :data:`TEMPLATE_TEXT`),
    found in one pass (a regular expression would backtrack over many ``{{``)."""
    if not isinstance(value, str):
        return False
    start = value.find("{{")
    return start != -1 and value.find("}}", start + 2) != -1


def check_block_values(where: str, block: str, settings: Mapping[str, Any]) -> None:
    """Check the values of a ``block`` block's settings (a flow's own or an execution's
    ``blockOverrides``, which must not lift a limit the flow was stored under).

    Raises:
        APIProblem: 422 naming ``<where>.settings.<name>``.
    """
    for (kind, name), (number, low, high) in SETTING_LIMITS.items():
        if kind == block and name in settings and not is_template(settings[name]):
            check = check_int if number == "integer" else check_number
            limited(check, f"{where}.settings.{name}", settings[name], low, high)
    if block == "task":
        _check_task_settings(f"{where}.settings", settings)


def _check_task_settings(where: str, settings: Mapping[str, Any]) -> None:
    """What a ``task`` block's task would refuse, found when the flow is stored: its
    ``env`` (a mapping of variable names to text, numbers or booleans; values are
    secrets, never shown)
    and its ``name`` (unless it is a template, rendered at run time)."""
    env = settings.get("env")
    if env is not None:
        if problem := env_problem(env):
            field, why = problem
            raise APIProblem.validation(f"{where}.{field}", why)
        try:
            check_env({str(name): str(value) for name, value in env.items()})
        except APIProblem as exc:
            raise APIProblem(exc.status, exc.code, f"{where}.{exc.message}") from None
    name = settings.get("name")
    if name is not None and not (isinstance(name, str) and "{{" in name):
        limited(check_name, f"{where}.name", name)


def check_settings(
    where: str, block: str, settings: Mapping[str, Any], known: Collection[str] | None
) -> None:
    """Refuse a setting ``block`` does not read (``known``; ``None``: it does not say).

    Raises:
        APIProblem: 422 ``<where>.settings.<name>``, with the closest known name.
    """
    if known is None:
        return
    for name in settings:
        if name not in known:
            problem = f"unknown setting of a {block!r} block{_closest(name, known)}"
            if name == "settings" and where.startswith("blockOverrides."):
                # QA AR: the message's own path (.settings.<name>) invited the nesting
                problem += f"; {where} is the settings themselves: {where}.<name>, not nested"
            raise APIProblem.validation(f"{where}.settings.{name[:40]}", problem)


def resolve_parameters(spec: FlowSpec, given: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters: ``given`` plus defaults of optional inputs.

    Raises:
        APIProblem: 422 ``parameters.<name>: required`` for a missing required input.
    """
    resolved = dict(given)
    for item in spec.inputs:
        if item.name in resolved:
            continue
        if item.required:
            raise APIProblem.validation(f"parameters.{item.name}", "required input not given")
        resolved[item.name] = item.default
    return resolved
