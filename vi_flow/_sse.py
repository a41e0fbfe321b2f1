"""Server-Sent Events: an incremental byte-level decoder and a resumable event stream.

:class:`SSEDecoder` follows the WHATWG event-stream rules (CR, LF and CRLF line ends,
even split across chunks; comments; multi-line ``data`` joined with LF; ``id`` without
NUL; ``retry``; ``event`` defaulting to ``message``; a leading BOM). It is fed the raw
chunks of ``resp.content.iter_any()`` and never uses aiohttp's line reader, which fails
on long lines; it scans with ``bytes`` methods, never byte by byte, and keeps ``data``
as bytes so JSON goes straight to orjson.

:class:`ResumableEventStream` turns one or more SSE connections into one sequence of
:mod:`vi_flow.models.events` objects: when a connection drops it reconnects with
``Last-Event-ID`` and drops events it has already yielded, so nothing is lost or
repeated; when a connection ends cleanly before ``flow_completed`` it asks whether the
run is still going and reconnects if so.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import NamedTuple

import aiohttp

from ._errors import APIConnectionError
from .models.events import EVENT_TYPES, FlowCompleted, StreamEvent, ToolCallsRequired, parse_event

__all__ = [
    "ResumableEventStream",
    "SSEDecoder",
    "ServerSentEvent",
    "iter_sse",
]

log = logging.getLogger("vi_flow")

_BOM = b"\xef\xbb\xbf"
_DATA = b"data: "

#: Errors that mean "the connection broke while reading", worth a reconnect.
STREAM_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientPayloadError,
    aiohttp.ClientConnectionError,
    asyncio.TimeoutError,
    ConnectionError,
    APIConnectionError,
)


class ServerSentEvent(NamedTuple):
    """One dispatched SSE event.

    Attributes:
        event: The ``event:`` name (``"message"`` when none was given).
        data: The ``data:`` lines joined with LF, as raw bytes.
        id: The last event id seen on the stream (``None`` before any ``id:`` field).
        retry: The last ``retry:`` value in milliseconds, if the stream sent one.
    """

    event: str
    data: bytes
    id: str | None
    retry: int | None

    @property
    def text(self) -> str:
        """``data`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.data.decode("utf-8", "replace")


class SSEDecoder:
    """Decodes an event stream fed in arbitrary byte chunks.

    Example::

        decoder = SSEDecoder()
        async for chunk in resp.content.iter_any():
            for event in decoder.feed(chunk):
                ...
    """

    __slots__ = ("_data", "_event", "_head", "_last_id", "_pending", "_retry", "_skip_lf")

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # pieces of a line whose end has not arrived yet
        self._skip_lf = False  # the last chunk ended with CR: a leading LF finishes a CRLF
        self._head: bytes | None = b""  # bytes kept back until the BOM check is done
        self._data: list[bytes] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str | None:
        """The last ``id:`` value seen, or ``None``."""
        return self._last_id

    @property
    def retry(self) -> int | None:
        """The last ``retry:`` value in milliseconds, or ``None``."""
        return self._retry

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume one chunk; return the events it completed, in order."""
        if self._head is not None:
            chunk = self._strip_bom(chunk)
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 10:
                chunk = chunk[1:]
        if not chunk:
            return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._pending.append(chunk)  # the middle of a long line: no copying
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending.clear()
        out: list[ServerSentEvent] = []
        pos = 0
        if not self._data and not self._event and b"\r" not in chunk:
            pos = self._frames(chunk, out)
            rest = len(chunk) - pos
            if 0 < rest <= _MAX_HELD and chunk.find(b"\n\n", pos) < 0:
                # An unfinished frame: keep it raw so the next chunk takes the fast path.
                self._pending.append(chunk[pos:])
                return out
        if pos < len(chunk):
            self._lines(self._split(chunk[pos:] if pos else chunk), out)
        return out

    def _strip_bom(self, chunk: bytes) -> bytes:
        head = self._head + chunk if self._head else chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = None
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _frames(self, buf: bytes, out: list[ServerSentEvent]) -> int:
        """Decode the canonical frames at the start of ``buf``; return where they end.

        A frame of the shape every vi_flow server sends (``id: <digits>``, ``event:``,
        one ``data:`` line, blank line) decodes here in one regex step; anything else
        stops this fast path and goes through the general line rules.
        """
        pos = 0
        last_id, retry, names = self._last_id, self._retry, _NAMES
        for match in _FRAME.finditer(buf):
            if match.start() != pos:
                break
            event_id, name, data = match.groups()
            if event_id is not None:
                last_id = event_id.decode()
            event = (names.get(name) or name.decode("utf-8", "replace")) if name else "message"
            out.append(_new(ServerSentEvent, (event, data, last_id, retry)))
            pos = match.end()
        self._last_id = last_id
        return pos

    def _split(self, chunk: bytes) -> list[bytes]:
        """Return the complete lines of ``chunk``; keep an unfinished last line pending."""
        if b"\r" in chunk:
            lines = chunk.splitlines(keepends=True)
            tail = lines.pop() if lines[-1][-1] not in (10, 13) else b""
            # Only a CR that ends the chunk may be the first half of a CRLF.
            self._skip_lf = chunk[-1] == 13
            lines = [_strip_eol(line) for line in lines]
        else:
            lines = chunk.split(b"\n")
            tail = lines.pop()
        if tail:
            self._pending.append(tail)
        return lines

    def _lines(self, lines: list[bytes], out: list[ServerSentEvent]) -> None:
        # The hot loop of every stream: one pass, state in locals, the common
        # "data: " prefix tested first. Written out flat on purpose.
        data, event, last_id = self._data, self._event, self._last_id
        for line in lines:
            if line.startswith(_DATA):
                data.append(line[6:])
                continue
            if not line:
                if data:
                    joined = data[0] if len(data) == 1 else b"\n".join(data)
                    out.append(ServerSentEvent(event or "message", joined, last_id, self._retry))
                    data = []
                event = ""
                continue
            colon = line.find(b":")
            if colon == 0:
                continue  # a comment, such as a heartbeat
            if colon < 0:
                name, value = line, b""
            else:
                name, value = line[:colon], line[colon + 1 :]
                if value[:1] == b" ":
                    value = value[1:]
            if name == b"id":
                if b"\0" not in value:
                    last_id = value.decode("utf-8", "replace")
            elif name == b"event":
                event = _NAMES.get(value) or value.decode("utf-8", "replace")
            elif name == b"data":
                data.append(value)
            elif name == b"retry" and value.isdigit():
                self._retry = int(value)
        self._data, self._event, self._last_id = data, event, last_id


_MAX_HELD = 1 << 16
_new = tuple.__new__
_NAMES = {name.encode(): name for name in EVENT_TYPES}
_FRAME = re.compile(rb"(?:id: ([0-9]+)\n)?(?:event: ([^\n]*)\n)?data: ([^\n]*)\n\n")


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1]


async def iter_sse(resp: aiohttp.ClientResponse) -> AsyncIterator[ServerSentEvent]:
    """Yield the events of one SSE response until its body ends."""
    decoder = SSEDecoder()
    async for chunk in resp.content.iter_any():
        for event in decoder.feed(chunk):
            yield event


# --------------------------------------------------------------------------- resumable stream

Connect = Callable[["ResumableEventStream"], AbstractAsyncContextManager[aiohttp.ClientResponse]]
StillRunning = Callable[["ResumableEventStream"], Awaitable[bool]]
Sleep = Callable[[float], Awaitable[None]]
OnToolCalls = Callable[[ToolCallsRequired], Awaitable[None]]


class ResumableEventStream:
    """One run's events over as many SSE connections as it takes.

    ``connect(stream)`` opens a connection; it reads :attr:`execution_id` and
    :attr:`last_event_id` to resume (send ``Last-Event-ID``). After a dropped connection
    the stream waits (exponential backoff through ``sleep``, or the server's ``retry:``)
    and reconnects; events whose id it has already yielded are skipped. A connection that
    ends cleanly before ``flow_completed`` calls ``still_running(stream)``: when it says
    yes the stream reconnects; when the run is over, one more connection (only after one
    that brought news) replays what the server still has, then the stream ends. A
    failing ``still_running`` (the server is restarting) counts as a failed attempt. Consecutive failed connections are
    bounded by ``max_reconnects``; any event received resets the count.

    Args:
        connect: Opens one SSE response (an async context manager).
        still_running: Whether the run may still produce events.
        sleep: How to wait between attempts (the client's injectable sleep).
        execution_id: The run, when already known.
        last_event_id: Resume after this event id.
        max_reconnects: Consecutive reconnects allowed without receiving an event.
        backoff: First delay in seconds; doubles per failed attempt.
        max_backoff: The longest delay.
        on_tool_calls: Awaited with each ``ToolCallsRequired`` before it is yielded
            (the tool-call loop answers the calls there, on a side request).
    """

    def __init__(
        self,
        connect: Connect,
        *,
        still_running: StillRunning,
        sleep: Sleep,
        execution_id: str | None = None,
        last_event_id: int | None = None,
        max_reconnects: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        on_tool_calls: OnToolCalls | None = None,
    ) -> None:
        self._connect = connect
        self._still_running = still_running
        self._sleep = sleep
        self.execution_id = execution_id
        self.last_event_id = last_event_id
        self.max_reconnects = max_reconnects
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.reconnects = 0
        self.finished = False
        self._retry_ms: int | None = None
        self._on_tool_calls = on_tool_calls

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        failures = 0
        while not self.finished:
            progressed = False
            error: BaseException | None = None
            try:
                async with self._connect(self) as resp:
                    self._learn_execution_id(resp)
                    decoder = SSEDecoder()
                    hook = self._on_tool_calls
                    async for chunk in resp.content.iter_any():
                        for event in self._parse(decoder.feed(chunk)):
                            progressed = True
                            if hook is not None and type(event) is ToolCallsRequired:
                                await _not_a_drop(hook(event))
                            if type(event) is FlowCompleted:
                                self.finished = True
                                yield event
                                return
                            yield event
                        self._retry_ms = decoder.retry
            except _HookError as wrapped:
                raise wrapped.error from wrapped.error.__cause__
            except STREAM_ERRORS as exc:
                error = exc
            failures = 0 if progressed else failures + 1
            if error is None:
                try:
                    if not await self._resume_after_eof(progressed):
                        return
                except STREAM_ERRORS as exc:  # the server is away: try to reconnect
                    error = exc
            await self._before_reconnect(failures, error)

    def _parse(self, batch: list[ServerSentEvent]) -> list[StreamEvent]:
        """Parse a chunk's events, dropping those already yielded before a reconnect."""
        events: list[StreamEvent] = []
        last = self.last_event_id
        for name, data, sse_id, _ in batch:
            event_id = _int_id(sse_id)
            if event_id is not None:
                if last is not None and event_id <= last:
                    continue
                last = event_id
            events.append(parse_event(name, data, event_id))
        self.last_event_id = last
        if self.execution_id is None and events:
            self.execution_id = events[0].execution_id or None
        return events

    def _learn_execution_id(self, resp: aiohttp.ClientResponse) -> None:
        if self.execution_id is None:
            self.execution_id = resp.headers.get("X-Execution-Id") or None

    async def _resume_after_eof(self, progressed: bool) -> bool:
        """Whether to reconnect after a clean end before ``flow_completed``.

        Yes while the run is still going; once it is over, one more connection (after
        one that brought news) replays whatever the server has left, then no more.
        """
        if self.execution_id is None:
            return False
        return await self._still_running(self) or progressed

    async def _before_reconnect(self, failures: int, error: BaseException | None) -> None:
        if error is not None and self.execution_id is None:
            raise APIConnectionError(
                f"the event stream broke before its run was known: {error!r}"
            ) from error
        if failures > self.max_reconnects:
            raise APIConnectionError(
                f"the event stream of run {self.execution_id} broke {failures} times in a row"
                f" without news (last error: {error!r})"
            ) from error
        self.reconnects += 1
        delay = self._delay(failures)
        log.info(
            "run %s: event stream ended (%r); reconnecting in %.2fs",
            self.execution_id,
            error,
            delay,
        )
        await self._sleep(delay)

    def _delay(self, failures: int) -> float:
        if failures == 0:
            return 0.0
        base = self._retry_ms / 1000 if self._retry_ms is not None else self.backoff
        return float(min(base * 2 ** (failures - 1), self.max_backoff))


class _HookError(Exception):
    """Carries an error of the tool-call hook past the reconnect handler."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


async def _not_a_drop(hook: Awaitable[None]) -> None:
    # A failed side request is the caller's error, not a dropped stream to reconnect.
    try:
        await hook
    except STREAM_ERRORS as exc:
        raise _HookError(exc) from exc


def _int_id(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
