"""Follow a task's log files by byte offset, across dropped connections: over SSH or HTTP.

:class:`LogFollower` runs ``tail -c +N -F <file>`` in the task for each followed file
(stdout, stderr or both) and counts every byte it receives. When the connection drops
(or the remote ``tail`` ends unexpectedly) it reconnects and restarts ``tail`` at the
exact byte offset reached, so a line is never lost, never repeated, and no overlap is
guessed. A partial line (bytes after the last newline) is kept across reconnects.

The follow ends when a probe says the task is terminal (answering each file's final
size, as the server measured it) *and* each file has been read to that size, so the
last lines a task writes before exiting are always delivered. A connection counts as
come back once it has stayed up for :data:`STEADY` seconds or brought bytes: only
reconnects that fail in a row count toward giving up, so a follow of a quiet task
survives any number of drops as long as the server answers again. A dead link is found
by SSH keepalives.

:class:`HTTPLogFollower` reads the server's SSE log stream (``GET
/v1/tasks/{id}/logs?follow=true``) instead, for clients that cannot reach the task's SSH
endpoint (behind a reverse proxy, on another network): each event carries both streams'
byte offsets in its id, so a reconnect with ``Last-Event-ID`` resumes exactly; silence
past twice the announced heartbeat counts as a dead connection; the stream ends with
the server's ``end`` event, carrying the task's final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from .._errors import APIConnectionError, APIStatusError, ViFlowError
from ..models.loglines import LineSplitter

if TYPE_CHECKING:
    import aiohttp
    import asyncssh

__all__ = [
    "STEADY",
    "Connector",
    "HTTPLogFollower",
    "LogFollower",
    "LogStreamOpener",
    "LogUnreadableError",
    "TerminalProbe",
]

log = logging.getLogger("vi_flow")

Connector = Callable[[], Awaitable["asyncssh.SSHClientConnection"]]
"""Opens a fresh (pinned) SSH connection to the task."""

TerminalProbe = Callable[[], Awaitable["Mapping[str, int] | None"]]
"""Answers ``None`` while the task runs, and each stream's final size once it has ended."""

LogStreamOpener = Callable[[str | None], AbstractAsyncContextManager["aiohttp.ClientResponse"]]
"""Opens the task's SSE log stream, resuming after the given event id (``None``: start)."""

STEADY = 1.0
"""Seconds a connection (its ``tail`` started) must stay up, without bytes, to count as
having come back; one that breaks sooner counts as another failed attempt."""

_READ_SIZE = 1 << 18  # what the server sends in one write: fewer, larger reads
_MAX_BACKOFF = 5.0


class LogUnreadableError(ViFlowError):
    """The server refused to read the task's log (the task replaced it with a link)."""


class _File:
    """One followed file: where it is, how far it was read, its live ``tail``."""

    def __init__(self, stream: str, path: str, offset: int, *, progress: bool = True) -> None:
        self.stream = stream
        self.path = path
        self.offset = offset
        # holds a partial line across reconnects; hands out a progress bar as it redraws
        self.lines = LineSplitter(progress=progress)
        self.final_size: int | None = None
        self.proc: Any = None
        self.reader: asyncio.Task[bytes] | None = None

    @property
    def drained(self) -> bool:
        return self.final_size is not None and self.offset >= self.final_size

    def take_lines(self, data: bytes) -> list[str]:
        self.offset += len(data)
        return self.lines.feed(data)

    def stop(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            self.reader = None
        if self.proc is not None:
            self.proc.close()
            self.proc = None


class _Broken(Exception):
    """The connection or a remote ``tail`` ended; reconnect and resume."""


class LogFollower:
    """Stream lines of a task's log files, exactly once each, until the task ends.

    Iterate it (``async for stream, line in follower``) to get ``(stream, line)``
    pairs, ``line`` without its newline; :meth:`batches` gives the lines of each
    received chunk together.

    Args:
        connect: Opens a new SSH connection to the task (called again after a drop).
        files: Stream name (``"stdout"``/``"stderr"``) to the log file path in the task.
        is_terminal: Answers ``None`` while the task runs, then the final byte size
            of each stream (streams it does not name are taken as empty).
        offsets: Byte offsets to start from (default 0, the beginning).
        poll_interval: Seconds between task-state probes.
        max_retries: Reconnect attempts in a row that fail before giving up (a
            connection that came back, see :data:`STEADY`, starts the count again).
        sleep: The sleep used for reconnect backoff (injectable for tests).
        progress: Hand out a progress bar's unfinished line as it redraws (a
            :class:`~vi_flow.models.loglines.LinePiece`); off, lines come whole.
    """

    def __init__(
        self,
        connect: Connector,
        files: Mapping[str, str],
        *,
        is_terminal: TerminalProbe,
        offsets: Mapping[str, int] | None = None,
        poll_interval: float = 0.5,
        max_retries: int = 8,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        progress: bool = True,
    ) -> None:
        start = offsets or {}
        self._files = [_File(s, p, start.get(s, 0), progress=progress) for s, p in files.items()]
        self._connect = connect
        self._is_terminal = is_terminal
        self._poll_interval = poll_interval
        self._max_retries = max_retries
        self._sleep = sleep
        self._conn: Any = None
        self._failures = 0
        self._connected_at: float | None = None
        self.reconnects = 0
        """How many times the follow reconnected (for tests and diagnostics)."""

    @property
    def offsets(self) -> dict[str, int]:
        """Bytes received so far per stream."""
        return {f.stream: f.offset for f in self._files}

    def __aiter__(self) -> AsyncGenerator[tuple[str, str], None]:
        return _pairs(self.batches())

    async def batches(self) -> AsyncGenerator[tuple[str, list[str]], None]:
        """``(stream, lines)`` for each chunk received, in order, until the task ended and
        every stream is drained."""
        probe: asyncio.Task[Mapping[str, int] | None] | None = None
        try:
            next_probe = 0.0
            while not all(f.drained for f in self._files):
                try:
                    await self._ensure_tails()
                    if probe is None and self._final_unknown and time.monotonic() >= next_probe:
                        # Asked beside the reads, not before them: its HTTP round trip
                        # never holds up lines that are already here.
                        next_probe = time.monotonic() + self._poll_interval
                        probe = asyncio.ensure_future(self._is_terminal())
                    wait = self._poll_interval
                    if probe is None and self._final_unknown:
                        wait = max(0.0, next_probe - time.monotonic())
                    batches, broken = await self._read_some(wait, probe)
                    if probe is not None and probe.done():
                        answered, probe = probe, None
                        if (sizes := answered.result()) is not None:
                            self._set_final_sizes(sizes)
                    for batch in batches:
                        yield batch
                    if broken is not None:
                        raise broken
                except _Broken as exc:  # noqa: PERF203 - rare, and reconnecting is the point
                    await self._recover(exc)
            for f in self._files:
                if rest := f.lines.flush():
                    yield f.stream, rest
        finally:
            if probe is not None:
                probe.cancel()
                with anyio.move_on_after(2, shield=True):
                    await asyncio.gather(probe, return_exceptions=True)
            await self._close()

    @property
    def _final_unknown(self) -> bool:
        return any(f.final_size is None for f in self._files)

    async def _ensure_tails(self) -> None:
        import asyncssh

        try:
            if self._conn is None:
                self._conn = await self._connect()
                self._connected_at = time.monotonic()
            for f in self._files:
                if f.proc is None and not f.drained:
                    f.proc = await self._conn.create_process(
                        _tail_command(f.path, f.offset), encoding=None, stderr=asyncssh.DEVNULL
                    )
                    f.proc.stdin.write_eof()
                if f.reader is None and f.proc is not None:
                    f.reader = asyncio.ensure_future(f.proc.stdout.read(_READ_SIZE))
        except (OSError, asyncssh.Error) as exc:
            raise _Broken(str(exc)) from exc

    async def _read_some(
        self, wait: float, probe: asyncio.Task[Any] | None
    ) -> tuple[list[tuple[str, list[str]]], _Broken | None]:
        """What the tails sent within ``wait`` seconds; returns early when ``probe`` is
        answered."""
        readers: dict[asyncio.Future[Any], _File] = {}
        for f in self._files:
            if f.reader is not None:
                readers[f.reader] = f
        waiting = {*readers, probe} if probe is not None else set(readers)
        if not waiting:
            await anyio.sleep(wait)
            return [], None
        done, _ = await asyncio.wait(waiting, timeout=wait, return_when="FIRST_COMPLETED")
        batches: list[tuple[str, list[str]]] = []
        broken: _Broken | None = None
        for task in done:
            read = readers.get(task)
            if read is None:  # the probe
                continue
            read.reader = None
            try:
                data = _result(task)
            except _Broken as exc:
                broken = exc
                continue
            self._failures = 0
            if lines := read.take_lines(data):
                batches.append((read.stream, lines))
            if read.drained:
                read.stop()
        return batches, broken

    def _set_final_sizes(self, sizes: Mapping[str, int]) -> None:
        for f in self._files:
            f.final_size = sizes.get(f.stream, 0)
            if f.drained:
                f.stop()

    async def _recover(self, exc: _Broken) -> None:
        await self._close()
        if _came_back(self._connected_at):
            self._failures = 0
        self._connected_at = None
        self._failures += 1
        if self._failures > self._max_retries:
            raise APIConnectionError(f"lost the SSH connection to the task: {exc}") from exc
        self.reconnects += 1
        await self._sleep(_backoff(self._failures))

    async def _close(self) -> None:
        readers = [f.reader for f in self._files if f.reader is not None]
        for f in self._files:
            f.stop()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        # Wait (briefly, even when cancelled) so the socket is really closed before the
        # caller's event loop may stop; a half-closed session would hold the server up.
        with anyio.move_on_after(2, shield=True):
            await asyncio.gather(*readers, return_exceptions=True)
            if conn is not None:
                await conn.wait_closed()


async def _pairs(
    batches: AsyncGenerator[tuple[str, list[str]], None],
) -> AsyncGenerator[tuple[str, str], None]:
    """One ``(stream, line)`` per line of the batches (closing them when closed early)."""
    async with contextlib.aclosing(batches):
        async for stream, lines in batches:
            for line in lines:
                yield stream, line


def _came_back(connected_at: float | None) -> bool:
    return connected_at is not None and time.monotonic() - connected_at >= STEADY


def _backoff(failures: int) -> float:
    return float(min(0.05 * 2 ** (failures - 1), _MAX_BACKOFF)) if failures else 0.0


def _result(task: asyncio.Task[bytes]) -> bytes:
    import asyncssh

    try:
        data = task.result()
    except (OSError, asyncssh.Error, asyncio.IncompleteReadError) as exc:
        raise _Broken(str(exc)) from exc
    if not data:
        raise _Broken("the remote tail ended")
    return data


def _tail_command(path: str, offset: int) -> str:
    # `tail -c +N` is 1-based: +1 starts at the first byte, so resume at offset + 1.
    # `-s 0.2`: where inotify is unavailable (or the file is yet to appear) tail polls;
    # its 1 s default would show up as latency.
    return f"exec tail -c +{offset + 1} -s 0.2 -F -- {shlex.quote(path)}"


class HTTPLogFollower:
    """Stream lines of a task's logs over the server's SSE log stream, exactly once each.

    Iterate it (``async for stream, line in follower``), or its :meth:`batches`, like a
    :class:`LogFollower`.

    Args:
        open_stream: Opens the log stream, resuming after an event id (``None``: from
            the ``offsets``).
        streams: The streams to follow (``"stdout"``, ``"stderr"``).
        offsets: Byte offsets to start from (default 0).
        on_end: Called with the ``end`` event's data (the task, as wire JSON).
        max_retries: Attempts in a row that fail to open the stream before giving up
            (an opened stream starts the count again).
        sleep: The sleep used for reconnect backoff (injectable for tests).
        progress: As :class:`LogFollower`'s.
    """

    def __init__(
        self,
        open_stream: LogStreamOpener,
        streams: list[str],
        *,
        offsets: Mapping[str, int] | None = None,
        on_end: Callable[[Any], None] | None = None,
        max_retries: int = 12,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        progress: bool = True,
    ) -> None:
        start = offsets or {}
        self._open = open_stream
        self._lines = {name: LineSplitter(progress=progress) for name in streams}
        self._offsets = {name: start.get(name, 0) for name in ("stdout", "stderr")}
        self._on_end = on_end
        self._max_retries = max_retries
        self._sleep = sleep
        self.reconnects = 0
        """How many times the follow reconnected (for tests and diagnostics)."""

    @property
    def offsets(self) -> dict[str, int]:
        """Bytes received so far per followed stream."""
        return {name: self._offsets[name] for name in self._lines}

    def __aiter__(self) -> AsyncGenerator[tuple[str, str], None]:
        return _pairs(self.batches())

    def _event_id(self) -> str:
        return f"{self._offsets['stdout']}:{self._offsets['stderr']}"

    async def batches(self) -> AsyncGenerator[tuple[str, list[str]], None]:
        """``(stream, lines)`` for each log event, until the server's end event."""
        from .._sse import STREAM_ERRORS  # aiohttp: loaded when a follow starts

        failures = quiet = 0
        while True:
            opened, error = False, None
            try:
                async with self._open(self._event_id()) as resp:
                    opened, failures = True, 0
                    async for batch in self._events(resp):
                        if batch is None:
                            for name, splitter in self._lines.items():
                                if rest := splitter.flush():
                                    yield name, rest
                            return
                        quiet = 0
                        yield batch
            except STREAM_ERRORS as exc:
                error = exc
            except APIStatusError as exc:
                if exc.status_code < 500:
                    raise
                error = exc
            failures, quiet = (failures, quiet + 1) if opened else (failures + 1, quiet)
            await self._before_reconnect(failures, quiet, error)

    async def _events(
        self, resp: aiohttp.ClientResponse
    ) -> AsyncGenerator[tuple[str, list[str]] | None, None]:
        """The lines of one connection; ``None`` once the server said the follow ended."""
        from .._sse import SSEDecoder, read_chunks

        if not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            raise ViFlowError(
                "the server does not stream task logs over HTTP (a vi-flow server older "
                "than this client?); set log_transport = ssh"
            )
        decoder = SSEDecoder()
        async for chunk in read_chunks(resp):
            for event in decoder.feed(chunk):
                if event.event == "log":
                    if batch := self._take(orjson.loads(event.data)):
                        yield batch
                elif event.event == "end":
                    if self._on_end is not None:
                        self._on_end(orjson.loads(event.data))
                    yield None
                    return
                elif event.event == "error":
                    raise LogUnreadableError(orjson.loads(event.data).get("message", ""))

    def _take(self, data: dict[str, Any]) -> tuple[str, list[str]] | None:
        name = data["stream"]
        self._offsets[name] = int(data["offset"])
        splitter = self._lines.get(name)
        lines = splitter.feed(str(data["text"]).encode()) if splitter is not None else []
        return (name, lines) if lines else None

    async def _before_reconnect(
        self, failures: int, quiet: int, error: BaseException | None
    ) -> None:
        if failures > self._max_retries:
            from .._sse import gave_up  # aiohttp's module: loaded when a follow starts

            message = f"lost the task's log stream {failures} times in a row: {error!r}"
            raise gave_up(message, error) from error
        self.reconnects += 1
        delay = _backoff(max(failures, quiet))
        log.info("log stream ended (%r); resuming at %s in %.2fs", error, self._event_id(), delay)
        await self._sleep(delay)
