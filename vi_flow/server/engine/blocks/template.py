"""The ``template`` block: render text or JSON from the message, parameters and outputs.

Settings (rendered by the engine before the block runs, see
:mod:`vi_flow.server.engine.render`):

- ``template``: a string (``"Hello {{ message }}"``) or any JSON value whose strings
  are templates; the rendered value is the step's output. Without it the output is
  the message (or the previous step's output when there is no message).
- ``format``: ``"json"`` parses the rendered string as JSON; a parse failure fails
  the step naming the text.
"""

from __future__ import annotations

from typing import Any

import orjson

from .base import BlockContext, StepError

__all__ = ["template_block"]


async def template_block(ctx: BlockContext) -> Any:
    """Return the rendered ``template`` setting (parsed when ``format`` is ``json``)."""
    if "template" not in ctx.settings:
        return ctx.message if ctx.message is not None else ctx.previous
    value = ctx.settings["template"]
    if ctx.setting("format") != "json" or not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise StepError(
            f"template step {ctx.step_id!r} rendered invalid JSON ({exc}): {value[:200]!r}",
            "TEMPLATE_ERROR",
        ) from exc
