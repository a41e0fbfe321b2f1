"""Server-Sent Events: an incremental byte-level decoder.

:class:`SSEDecoder` follows the WHATWG event-stream rules (CR, LF and CRLF line ends,
even split across chunks; comments; multi-line ``data`` joined with LF; ``id`` without
NUL; ``retry``; ``event`` defaulting to ``message``; a leading BOM). It is fed the raw
chunks of ``resp.content.iter_any()`` and never uses aiohttp's line reader, which fails
on long lines; it scans with ``bytes`` methods, never byte by byte, and keeps ``data``
as bytes so JSON goes straight to orjson.

What a run's events mean (resuming with ``Last-Event-ID``, ``flow_completed``) lives next
to runs, in :mod:`vi_flow.execution._stream`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator, Mapping
from typing import NamedTuple

import aiohttp
import anyio

from ._errors import APIConnectionError, APIResponseValidationError, APITimeoutError
from .models.events import EVENT_TYPES
from .models.execution import HEARTBEAT_HEADER

__all__ = [
    "EVENT_NAMES",
    "STREAM_ERRORS",
    "RawFrame",
    "SSEDecoder",
    "ServerSentEvent",
    "gave_up",
    "iter_sse",
    "read_chunks",
    "silence_limit",
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

    __slots__ = (
        "_data", "_event", "_head", "_held", "_id_before", "_last_id", "_pending", "_retry",
        "_retry_before", "_skip_lf",
    )  # fmt: skip

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # pieces of a line whose end has not arrived yet
        self._held = 0  # their bytes
        self._skip_lf = False  # the last chunk ended with CR: a leading LF finishes a CRLF
        self._head: bytes | None = b""  # bytes kept back until the BOM check is done
        self._data: list[bytes] = []
        self._event = ""
        self._last_id: str | None = None
        self._id_before: str | None = None  # the last id before this chunk's raw frames
        self._retry: int | None = None
        self._retry_before: int | None = None

    @property
    def last_event_id(self) -> str | None:
        """The last ``id:`` value seen, or ``None``."""
        return self._last_id

    @property
    def id_before(self) -> str | None:
        """The last ``id:`` seen before the frames :meth:`feed_raw` last returned."""
        return self._id_before

    @property
    def retry_before(self) -> int | None:
        """The ``retry:`` value in force for the frames :meth:`feed_raw` last returned."""
        return self._retry_before

    @property
    def retry(self) -> int | None:
        """The last ``retry:`` value in milliseconds, or ``None``."""
        return self._retry

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume one chunk; return the events it completed, in order."""
        frames, events = self.feed_raw(chunk)
        if not frames:
            return events
        out, last_id, retry, names = [], self._id_before, self._retry_before, EVENT_NAMES
        for ident, name, data in frames:
            if ident:
                last_id = ident.decode()
            event = (names.get(name) or name.decode("utf-8", "replace")) if name else "message"
            out.append(_new(ServerSentEvent, (event, data, last_id, retry)))
        return [*out, *events]

    def feed_raw(self, chunk: bytes) -> tuple[list[RawFrame], list[ServerSentEvent]]:
        """Consume one chunk: its canonical frames raw, then any other events it completed.

        The frames come first, in order, as ``(id, event, data)`` bytes (every one has an
        id; ``event`` is ``b""`` when the line was empty); the events (frames of other shapes, and all that follows one in this chunk) come
        after them. :meth:`feed` gives the same as :class:`ServerSentEvent` objects; a
        reader that wants bytes (the run event stream) skips making them.
        """
        if self._head is not None:
            chunk = self._strip_bom(chunk)
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 10:
                chunk = chunk[1:]
        self._id_before, self._retry_before = self._last_id, self._retry
        if not chunk:
            return [], []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._pending.append(chunk)  # the middle of a long line: no copying
            self._held += len(chunk)
            if self._held > MAX_EVENT_BYTES:
                raise _too_large(f"a line of over {MAX_EVENT_BYTES} bytes")
            return [], []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending.clear()
            self._held = 0
        out: list[ServerSentEvent] = []
        frames: list[RawFrame] = []
        pos = 0
        if not self._data and not self._event and b"\r" not in chunk:
            frames, pos = self._frames(chunk)
            rest = len(chunk) - pos
            if 0 < rest <= _MAX_HELD and chunk.find(b"\n\n", pos) < 0:
                # An unfinished frame: keep it raw so the next chunk takes the fast path.
                self._pending.append(chunk[pos:])
                self._held = rest
                return frames, out
        if pos < len(chunk):
            self._lines(self._split(chunk[pos:] if pos else chunk), out)
            if self._data:  # an event still open: bounded in lines and bytes
                data = self._data
                if len(data) > MAX_EVENT_LINES or sum(map(len, data)) > MAX_EVENT_BYTES:
                    raise _too_large(
                        f"an event of over {MAX_EVENT_BYTES} bytes or {MAX_EVENT_LINES} lines"
                    )
        return frames, out

    def _strip_bom(self, chunk: bytes) -> bytes:
        head = self._head + chunk if self._head else chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = None
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _frames(self, buf: bytes) -> tuple[list[RawFrame], int]:
        """The complete frames of ``buf`` when all are canonical, and where they end.

        Frames of the shape every vi_flow server sends (``id: <digits>``, ``event:``, one
        ``data:`` line, blank line) are found by one regular expression pass with no
        Python step per frame. Each match starts at a line start and holds exactly four
        line ends, so when the span has four per match nothing lay between them: else
        some frame had another shape (a comment, a multi-line ``data``, no ``id``...),
        nothing is taken here and the general line rules read the chunk.
        """
        end = buf.rfind(b"\n\n") + 2
        if end < 2:
            return [], 0
        frames: list[RawFrame] = _FRAME.findall(buf, 0, end)
        if not frames or 4 * len(frames) != buf.count(b"\n", 0, end):
            return [], 0
        self._last_id = frames[-1][0].decode()
        return frames, end

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
            self._held = len(tail)
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
                event = EVENT_NAMES.get(value) or value.decode("utf-8", "replace")
            elif name == b"data":
                data.append(value)
            elif name == b"retry" and value.isdigit():
                self._retry = int(value)
        self._data, self._event, self._last_id = data, event, last_id


_MAX_HELD = 1 << 16

MAX_EVENT_BYTES = 256 * 1024 * 1024
"""The most bytes one event (or one line) may hold before the stream is refused: a
vi_flow server's largest event is a few tens of MB; a broken or hostile server or proxy
that never ends its event must not take all of the client's memory."""

MAX_EVENT_LINES = 1_000_000
"""The most ``data:`` lines one event may hold (each is an object of its own)."""


def _too_large(what: str) -> APIResponseValidationError:
    return APIResponseValidationError(
        f"the event stream sent {what} without ending it; a vi_flow server never does"
        " (is a proxy in the way?)"
    )


_new = tuple.__new__
EVENT_NAMES = {name.encode(): name for name in EVENT_TYPES}
"""The known event names as the wire spells them (bytes) -> the same as ``str``."""
# "." is any byte but LF (no DOTALL): the same as [^\n], and a faster loop in re. The
# look-behind anchors a match at a line start (or at the start of the buffer).
# An id of more than 19 digits (past any event id: 2**63 - 1) is no canonical frame: the
# general rules read it (Python's int() refuses 4,300 digits and more).
_FRAME = re.compile(rb"(?<![^\n])id: ([0-9]{1,19})\nevent: (.*)\ndata: (.*)\n\n")

RawFrame = tuple[bytes, bytes, bytes]
"""A canonical frame's ``id``, ``event`` and ``data`` values (``event`` may be ``b""``)."""


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


def gave_up(message: str, error: BaseException | None) -> APIConnectionError:
    """The error of a stream that stopped reconnecting: ``APITimeoutError`` when its last
    attempt timed out (aiohttp's, anyio's or the client's own timeout), else
    ``APIConnectionError``; ``message`` says what broke."""
    timed_out = isinstance(error, (asyncio.TimeoutError, TimeoutError, APITimeoutError))
    return (APITimeoutError if timed_out else APIConnectionError)(message)


def silence_limit(headers: Mapping[str, str]) -> float | None:
    """Seconds of silence after which a stream is dead: twice its announced heartbeat.

    ``None`` when the server announces none (the read timeout alone then applies).
    """
    try:
        heartbeat = float(headers.get(HEARTBEAT_HEADER, ""))
    except ValueError:
        return None
    return 2 * heartbeat if math.isfinite(heartbeat) and heartbeat > 0 else None


async def read_chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body's chunks; silence past :func:`silence_limit` is an ``asyncio.TimeoutError``.

    A stalled proxy or a half-dead link keeps the socket open and sends nothing; the
    heartbeat says how long a live server stays silent, so a stream reconnects (and
    resumes with ``Last-Event-ID``) after that, not after the whole read timeout.
    """
    limit = silence_limit(resp.headers)
    while True:
        if limit is None:
            chunk = await resp.content.readany()
        else:
            # Not asyncio.wait_for: on 3.10/3.11 it can drop a cancellation that arrives
            # with the last chunk, and this loop would then read a live stream for ever.
            with anyio.move_on_after(limit) as scope:
                chunk = await resp.content.readany()
            if scope.cancelled_caught:
                raise asyncio.TimeoutError(f"no bytes for {limit:g}s (twice the heartbeat)")
        if not chunk:
            return
        yield chunk
