"""Reading a backend's JSON answers without holding up the event loop.

The Slurm and Ray clients both get answers that can be long on a big cluster (node
lists, job lists). :func:`parse_json` parses a long answer in a worker thread and
:func:`build_records` turns a long list into records there; short ones stay on the loop,
where a thread would cost more than it saves. (orjson keeps the GIL while it parses,
about 5 ms a MB, so the loop still waits for the parse itself; it runs between the read,
the parse and the records being built.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import orjson

__all__ = ["PARSE_IN_THREAD_FROM", "RECORDS_IN_THREAD_FROM", "build_records", "parse_json"]

#: Answers of at least this many bytes are parsed in a thread.
PARSE_IN_THREAD_FROM = 64 * 1024
#: Lists of at least this many items become records in a thread.
RECORDS_IN_THREAD_FROM = 200

T = TypeVar("T")


async def parse_json(raw: bytes) -> Any:
    """The JSON value in ``raw``: ``{}`` when empty, None when it is not JSON."""
    if len(raw) >= PARSE_IN_THREAD_FROM:
        return await anyio.to_thread.run_sync(_loads, raw)
    return _loads(raw)


async def build_records(build: Callable[[Any], T], items: list[Any]) -> list[T]:
    """``build(item)`` for each item, in a thread for a long list."""
    if len(items) >= RECORDS_IN_THREAD_FROM:
        return await anyio.to_thread.run_sync(lambda: [build(item) for item in items])
    return [build(item) for item in items]


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return None
