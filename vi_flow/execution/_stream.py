"""``ResumableEventStream``: one run's events over as many SSE connections as it takes.

It turns one or more SSE connections into one sequence of :mod:`vi_flow.models.events`
objects: when a connection drops it reconnects with ``Last-Event-ID`` and drops events it
has already yielded, so nothing is lost or repeated; when a connection ends cleanly
before ``flow_completed`` it asks whether the run is still going and reconnects if so.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp

from .._errors import APIConnectionError, APIResponseValidationError, APITimeoutError
from .._hop import Awaiter, now
from .._sse import (
    EVENT_NAMES,
    STREAM_ERRORS,
    RawFrame,
    ServerSentEvent,
    SSEDecoder,
    gave_up,
    read_chunks,
    silence_limit,
)
from ..models.events import (
    DEFERRED_WIRE,
    LAZY_PREFIX,
    FlowCompleted,
    StreamEvent,
    ToolCallsRequired,
    deferred_event,
    deferred_steps,
    parse_event,
)

__all__ = ["ResumableEventStream", "event_batches", "silence_limit"]

log = logging.getLogger("vi_flow")

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
    yes the stream reconnects; when the run is over, one more connection replays what
    the server still has (and another after each that brought news), then the stream
    ends. A failing ``still_running`` (the server is restarting) counts as a failed
    attempt. Consecutive failed connections are bounded by ``max_reconnects``; any event
    received resets the count.

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
        self._replayed = False  # a connection was made after the run was seen over
        self._retry_ms: int | None = None
        self._on_tool_calls = on_tool_calls

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        events = self._events()
        _STREAMS[events] = self
        return events

    def batches(self, hop: Awaiter = now) -> AsyncGenerator[list[StreamEvent], None]:
        """The same events, a list per chunk read (the tool-call hook may split one).

        For :meth:`Portal.drive <vi_flow._portal.Portal.drive>`: with its ``hop``, every
        await of the stream (connecting, each chunk read, the tool-call hook, the checks
        and waits between connections) runs through ``hop``, so that the sync client
        parses and builds the events in its caller's thread. A ``ToolCallsRequired``
        always starts a list, and its hook runs only when the list before it has been
        taken.
        """
        return self._batches(hop)

    async def _events(self) -> AsyncIterator[StreamEvent]:
        batches = self._batches()
        try:
            async for batch in batches:
                for event in batch:  # the hot loop: one yield per event
                    yield event
        finally:
            await batches.aclose()

    async def _batches(self, hop: Awaiter = now) -> AsyncGenerator[list[StreamEvent], None]:
        failures = 0
        while not self.finished:
            progressed = False
            error: BaseException | None = None
            heard: float | None = None  # when this connection's last bytes came
            limit: float | None = None  # the server's own bound on its silence
            try:
                async with _hopped_context(self._connect(self), hop) as resp:
                    self._learn_execution_id(resp)
                    heard, limit = time.monotonic(), silence_limit(resp.headers)
                    decoder = SSEDecoder()
                    hook = self._on_tool_calls
                    async for chunk in _hopped_chunks(resp, hop):
                        heard = time.monotonic()
                        for piece in _pieces(chunk):
                            batch = self._parse(*decoder.feed_raw(piece), decoder.id_before)
                            self._retry_ms = decoder.retry
                            if not batch:
                                continue
                            progressed = True
                            end = batch.pop() if type(batch[-1]) is FlowCompleted else None
                            parts = _at_tool_calls(batch) if hook is not None else (batch,)
                            for part in parts if batch else ():
                                if hook is not None and type(part[0]) is ToolCallsRequired:
                                    await hop(functools.partial(_not_a_drop, hook, part[0]))
                                yield part
                            if end is not None:
                                self.finished = True
                                yield [end]
                                return
            except _HookError as wrapped:
                raise wrapped.error from wrapped.error.__cause__
            except STREAM_ERRORS as exc:
                error = exc
            if progressed:
                failures = 0
            elif not _cut_short(error, heard, limit):
                failures += 1
            if error is None:
                try:
                    if not await hop(functools.partial(self._resume_after_eof, progressed)):
                        return
                except STREAM_ERRORS as exc:  # the server is away: try to reconnect
                    error = exc
            await hop(functools.partial(self._before_reconnect, failures, error))

    def _parse(
        self, frames: list[RawFrame], batch: list[ServerSentEvent], id_before: str | None
    ) -> list[StreamEvent]:
        """Parse a chunk's events, dropping those already yielded before a reconnect.

        ``frames`` (raw, canonical) come before ``batch`` (decoded); a frame without an
        id has the last id before it, as the SSE rules say. The list ends at the first
        ``flow_completed``: nothing after it belongs to the run.
        """
        events = self._parse_frames(frames, id_before)
        if events and type(events[-1]) is FlowCompleted:
            batch = []
        last = self.last_event_id
        for name, data, sse_id, _ in batch:
            event_id = _int_id(sse_id)
            if event_id is not None:
                if last is not None and event_id <= last:
                    continue
                last = event_id
            cls = DEFERRED_WIRE.get(name.encode())
            if cls is not None and event_id is not None and _looks_sent(data):
                # as _parse_frames reads it: QA found a damaged event an UnknownEvent, and
                # a misshapen usage a silent TokenUsage(0, 0, 0), only when a comment (a
                # heartbeat) or a CRLF had sent the chunk down this path
                event = deferred_event(cls, event_id, data)
            else:
                event = parse_event(name, data, event_id)
            events.append(event)
            if type(event) is FlowCompleted:
                break
        self.last_event_id = last
        if self.execution_id is None and events:
            self.execution_id = events[0].execution_id or None
        return events

    def _parse_frames(self, frames: list[RawFrame], id_before: str | None) -> list[StreamEvent]:
        """The raw frames' events (sets ``last_event_id``); stops after ``flow_completed``.

        The hot loop of every stream, written out flat, with what ``models.events`` does
        inlined: a frame of a deferred class whose data looks like the server's becomes a
        :func:`~vi_flow.models.events.deferred_event` of its bytes (JSON read, and a
        nested value checked, on first use); anything else goes through
        :func:`parse_event`.
        """
        del id_before  # canonical frames always carry their id
        events: list[StreamEvent] = []
        append, (lazy, new, set_id, set_wire) = events.append, _LAZY
        last = self.last_event_id
        floor = -1 if last is None else last  # canonical ids are digits: never below 0
        for ident, wire_name, data in frames:
            event_id = int(ident)
            if event_id <= floor:
                continue  # yielded before a reconnect
            floor = event_id
            cls = lazy.get(wire_name)
            if cls is not None and data.startswith(LAZY_PREFIX) and data[-1] == 125:  # "}"
                event = new(cls)
                set_id(event, event_id)
                set_wire(event, data)
                append(event)
                continue
            kind = EVENT_NAMES.get(wire_name) or wire_name.decode("utf-8", "replace") or "message"
            event = parse_event(kind, data, event_id)
            append(event)
            if type(event) is FlowCompleted:
                break
        if floor >= 0:
            self.last_event_id = floor
        return events

    def _learn_execution_id(self, resp: aiohttp.ClientResponse) -> None:
        if self.execution_id is None:
            self.execution_id = resp.headers.get("X-Execution-Id") or None

    async def _resume_after_eof(self, progressed: bool) -> bool:
        """Whether to reconnect after a clean end before ``flow_completed``.

        Yes while the run is still going; once it is over, one more connection replays
        whatever the server has left (and another after each that brought news), then
        no more.

        Raises:
            APIResponseValidationError: The answer ended without naming a run (no
                ``X-Execution-Id``, no event): a 200 that is not a run's event stream
                (QA AK: a page of another server, a proxy's empty answer) ended the
                stream as if the run had, without a ``FlowCompleted`` or an error.
        """
        if self.execution_id is None:
            raise APIResponseValidationError(
                "the event stream ended before it named its run (no X-Execution-Id header,"
                " no event): the answer is not a vi_flow event stream; is base_url a"
                " vi_flow server's, and does a proxy change its answers?"
            )
        if await self._still_running(self):
            return True
        # The run is over: replay what the server holds, at least once (QA AM: an answer a
        # proxy ended right after its headers, for a run that had ended meanwhile, ended
        # the stream with no event and no error), and again after each that brought news.
        replay = progressed or not self._replayed
        self._replayed = True
        return replay

    async def _before_reconnect(self, failures: int, error: BaseException | None) -> None:
        if error is not None and self.execution_id is None:
            # a timeout stays one (QA AD: `except APITimeoutError` missed it, as execute's not)
            kind = APITimeoutError if _timed_out(error) else APIConnectionError
            raise kind(f"the event stream broke before its run was known: {error!r}") from error
        if failures > self.max_reconnects:
            raise gave_up(
                f"the event stream of run {self.execution_id} broke {failures} times in a row"
                f" without news (last error: {error!r})",
                error,
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


_STREAMS: weakref.WeakKeyDictionary[AsyncIterator[StreamEvent], ResumableEventStream] = (
    weakref.WeakKeyDictionary()
)


def event_batches(
    events: AsyncIterator[StreamEvent],
) -> Callable[[Awaiter], AsyncGenerator[list[StreamEvent], None]] | None:
    """The lists-per-chunk form of a fresh run event iterator, or ``None`` for another one.

    ``events`` must not have been started: the lists replace it (see
    :meth:`ResumableEventStream.batches`, which this returns). The sync layer drives
    them in its caller's thread and flattens them there.
    """
    stream = _STREAMS.get(events)
    return None if stream is None else stream.batches


def _hopped_context(
    connection: AbstractAsyncContextManager[aiohttp.ClientResponse], hop: Awaiter
) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    """``connection`` entered and exited through ``hop``."""
    return connection if hop is now else _Hopped(connection, hop)


class _Hopped(AbstractAsyncContextManager[aiohttp.ClientResponse]):
    def __init__(
        self, connection: AbstractAsyncContextManager[aiohttp.ClientResponse], hop: Awaiter
    ) -> None:
        self._connection = connection
        self._hop = hop

    async def __aenter__(self) -> aiohttp.ClientResponse:
        return await self._hop(self._connection.__aenter__)

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._hop(lambda: self._connection.__aexit__(*exc))


def _cut_short(error: BaseException | None, heard: float | None, limit: float | None) -> bool:
    """Whether ``error`` is the caller's read timeout ending a silence shorter than the
    server's heartbeat allows (``limit``): a quiet step of a live run, not a failure.
    Such a stream resumes as often as the timeout says, as the docs promise; a server
    silent past its own bound, or one that never answered, counts toward giving up."""
    if (
        heard is None
        or limit is None
        or not isinstance(error, (asyncio.TimeoutError, TimeoutError))
    ):
        return False
    return time.monotonic() - heard < limit


def _hopped_chunks(resp: aiohttp.ClientResponse, hop: Awaiter) -> AsyncIterator[bytes]:
    """The body's chunks (:func:`read_chunks`), each read through ``hop``."""
    chunks = read_chunks(resp)
    return chunks if hop is now else _each_hopped(chunks, hop)


async def _each_hopped(chunks: AsyncIterator[bytes], hop: Awaiter) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await hop(chunks.__anext__)
        except StopAsyncIteration:
            return
        yield chunk


# A fast link hands over 256 KiB at once: parsed whole, its thousand-odd events would all
# live at once, survive into the garbage collector's older generations and fall out of
# the CPU caches (measured: ~30 % slower per event than 32-64 KiB pieces).
_PIECE = 1 << 15


def _pieces(chunk: bytes) -> Sequence[bytes]:
    """``chunk`` cut into pieces of at most :data:`_PIECE` bytes."""
    if len(chunk) <= _PIECE:
        return (chunk,)
    return [chunk[at : at + _PIECE] for at in range(0, len(chunk), _PIECE)]


def _at_tool_calls(batch: list[StreamEvent]) -> list[list[StreamEvent]]:
    """``batch`` cut before each ``ToolCallsRequired`` (so its hook can run first)."""
    cuts = [i for i, event in enumerate(batch) if type(event) is ToolCallsRequired and i]
    if not cuts:
        return [batch]
    return [batch[i:j] for i, j in zip([0, *cuts], [*cuts, len(batch)], strict=True)]


class _HookError(Exception):
    """Carries an error of the tool-call hook past the reconnect handler."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


async def _not_a_drop(hook: OnToolCalls, event: ToolCallsRequired) -> None:
    # A failed side request is the caller's error, not a dropped stream to reconnect.
    try:
        await hook(event)
    except STREAM_ERRORS as exc:
        raise _HookError(exc) from exc


# What models.events.deferred_event does, as locals of the hot loop: every deferred class
# keeps its data bytes (a nested value is checked when they are decoded).
# flow_completed is never deferred (its status is converted), so the loop checks for it
# on the parse_event side only.
_LAZY = (DEFERRED_WIRE, *deferred_steps())
assert FlowCompleted not in DEFERRED_WIRE.values()


def _looks_sent(data: bytes) -> bool:
    """Whether ``data`` looks like a vi_flow server's event data at both ends (the hot
    loop of :meth:`ResumableEventStream._parse_frames` writes this test out)."""
    return data.startswith(LAZY_PREFIX) and data.endswith(b"}")


def _int_id(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _timed_out(error: BaseException) -> bool:
    """Whether ``error`` is a timeout: the client's own, or asyncio's."""
    return isinstance(error, (APITimeoutError, asyncio.TimeoutError, TimeoutError))
