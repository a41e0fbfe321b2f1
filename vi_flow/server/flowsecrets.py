"""A ``task`` block's ``env`` values are write-only, in flows as in tasks.

A task's environment values reach its processes and the database, nothing else
(``GET /v1/tasks`` answers each as ``"<redacted>"``). A flow's ``task`` block carries the
same ``env`` in its settings, so every answer that shows a flow spec (a flow, a run's
``spec.flow``, a traced step's input) shows those values as ``"<redacted>"`` too
(:func:`shown_spec`, :func:`shown_settings`). A spec sent back as it was read keeps its
values: :func:`kept_env` fills each ``"<redacted>"`` from the stored spec's block of
the same id.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..models.flows import Flow, FlowBlock, FlowSpec
from ..models.runs import Run
from ..models.tasks import ENV_REDACTED
from .errors import APIProblem

__all__ = ["holds_redacted", "kept_env", "shown_flow", "shown_run", "shown_settings", "shown_spec"]

_TASK = "task"


def _env(block: FlowBlock) -> dict[str, Any] | None:
    env = block.settings.get("env") if block.block == _TASK else None
    return env if isinstance(env, dict) and env else None


def shown_settings(block: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` of a ``block`` as answers show them: a task's env values redacted
    (an env of another shape, which the task would refuse, as a whole)."""
    env = settings.get("env") if block == _TASK else None
    if env is None or env == {}:
        return settings
    if not isinstance(env, dict):
        return {**settings, "env": ENV_REDACTED}
    return {**settings, "env": dict.fromkeys(env, ENV_REDACTED)}


def shown_spec(spec: FlowSpec) -> FlowSpec:
    """``spec`` as answers show it (the same object when it holds no env value)."""
    if not any(b.block == _TASK and b.settings.get("env") for b in spec.blocks):
        return spec
    blocks = [
        attrs.evolve(block, settings=shown_settings(block.block, block.settings))
        for block in spec.blocks
    ]
    return attrs.evolve(spec, blocks=blocks)


def shown_flow(flow: Flow) -> Flow:
    """``flow`` as answers show it."""
    spec = shown_spec(flow.spec)
    return flow if spec is flow.spec else attrs.evolve(flow, spec=spec)


def shown_run(run: Run) -> Run:
    """``run`` as answers show it (its ``spec.flow``)."""
    spec = shown_spec(run.spec.flow)
    return (
        run if spec is run.spec.flow else attrs.evolve(run, spec=attrs.evolve(run.spec, flow=spec))
    )


def holds_redacted(spec: FlowSpec) -> bool:
    """Whether a ``task`` block of ``spec`` has an env value ``"<redacted>"``."""
    return any(ENV_REDACTED in env.values() for b in spec.blocks if (env := _env(b)))


def kept_env(spec: FlowSpec, stored: FlowSpec | None, prefix: str = "") -> FlowSpec:
    """``spec`` with each ``"<redacted>"`` env value taken from ``stored`` (the block of
    the same id, else at the same place), as a spec read and sent back means.

    Raises:
        APIProblem: 422 naming the value, when ``stored`` has none to keep.
    """
    if not holds_redacted(spec):
        return spec
    before = {} if stored is None else {b.id: b for b in stored.blocks if b.id is not None}
    blocks = []
    for index, block in enumerate(spec.blocks):
        env = _env(block)
        if env is None or ENV_REDACTED not in env.values():
            blocks.append(block)
            continue
        old = before.get(block.id) if block.id is not None else None
        if old is None and stored is not None and block.id is None and index < len(stored.blocks):
            old = stored.blocks[index]
        old_env = (_env(old) if old is not None else None) or {}
        kept = {}
        for name, value in env.items():
            if value == ENV_REDACTED:
                if not isinstance(old_env.get(name), str) or old_env[name] == ENV_REDACTED:
                    raise APIProblem.validation(
                        f"{prefix}blocks[{index}].settings.env.{name}",
                        f"{ENV_REDACTED!r} stands for the value stored before, and there is"
                        " none: give the value",
                    )
                value = old_env[name]
            kept[name] = value
        blocks.append(attrs.evolve(block, settings={**block.settings, "env": kept}))
    return attrs.evolve(spec, blocks=blocks)
