"""The ``emit`` block: a built-in load generator for benchmarks and tests.

It streams ``count`` ``log`` events (``line`` is a template where ``{i}`` is the
1-based event number; default ``"event {i}"``) on ``stream`` (``stdout``), optionally
sleeping ``interval`` seconds between events, and outputs ``{"count": count}``. It
exists so a benchmark can make one run of 200,000 events and a test can hold a run
open; it does nothing a real flow needs. ``count`` is at most
:data:`~vi_flow.models.limits.MAX_EMIT_LINES` and all lines together at most
:data:`~vi_flow.models.limits.MAX_EMIT_TEXT` characters: a line is a template, so a
few bytes of request could otherwise ask for gigabytes of events.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ....models.limits import MAX_EMIT_INTERVAL, MAX_EMIT_LINES, MAX_EMIT_TEXT, shown
from .base import BlockContext, StepError

__all__ = ["emit_block"]

_YIELD_EVERY = 2048  # one stored row per batch (eventlog._CHUNK_EVENTS)


def _check_size(ctx: BlockContext, count: int, line: str) -> None:
    # The longest line: each "{i}" replaced by the largest number, count's own digits.
    longest = len(line) + line.count("{i}") * (len(str(count)) - 3)
    if count * longest > MAX_EMIT_TEXT:
        problem = (
            f"{count} lines of up to {longest} characters would be {count * longest}"
            f" characters, over the limit of {MAX_EMIT_TEXT} per step"
        )
        raise StepError(f"emit step {ctx.step_id!r}: {problem}", "INVALID_SETTINGS")


async def emit_block(ctx: BlockContext) -> Any:
    """Append ``count`` log events for this step, then output the count."""
    count = ctx.setting("count", 1)
    interval = ctx.setting("interval", 0)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_EMIT_LINES:
        problem = f"count must be an int from 0 to {MAX_EMIT_LINES}, got {shown(count)}"
        raise StepError(f"emit step {ctx.step_id!r}: {problem}", "INVALID_SETTINGS")
    if (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not 0 <= interval <= MAX_EMIT_INTERVAL
    ):
        problem = f"interval must be 0 to {MAX_EMIT_INTERVAL} seconds, got {shown(interval)}"
        raise StepError(f"emit step {ctx.step_id!r}: {problem}", "INVALID_SETTINGS")
    line = str(ctx.setting("line", "event {i}"))
    stream = str(ctx.setting("stream", "stdout"))
    _check_size(ctx, count, line)
    if interval:
        for i in range(1, count + 1):
            await ctx.emit_log(stream, line.replace("{i}", str(i)))
            await asyncio.sleep(interval)
        return {"count": count}
    head, numbered, tail = line.partition("{i}")
    for start in range(1, count + 1, _YIELD_EVERY):
        numbers = range(start, min(start + _YIELD_EVERY, count + 1))
        if "{i}" in tail:
            batch = [line.replace("{i}", str(i)) for i in numbers]
        elif numbered:
            batch = [f"{head}{i}{tail}" for i in numbers]
        else:
            batch = [line] * len(numbers)
        await ctx.logs(batch, stream)
        await asyncio.sleep(0)  # let the writer and the readers run
    return {"count": count}
