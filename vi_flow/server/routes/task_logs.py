"""``GET /v1/tasks/{taskId}/logs`` as a stream: a task's logs over HTTP (SSE), resumable.

Asked for with ``?follow=true|false`` (or ``Accept: text/event-stream``); without either
the route answers its JSON snapshot (``routes/tasks``). The stream sends whole lines:

- ``event: log`` with ``data: {"stream", "offset", "text"}``, ``offset`` being the byte
  offset in that stream's log right after ``text``;
- every event's ``id`` is ``<stdout offset>:<stderr offset>``, so ``Last-Event-ID`` (or
  ``?lastEventId=``) resumes both streams exactly where the client stopped;
- ``event: end`` with the task (``status``, ``exitCode``, ``reason``, ...) once the task
  has finished and its logs are drained; ``follow=false`` sends what exists, then the
  end event if the task is over, and closes;
- ``: heartbeat`` comments while idle, the interval announced in ``X-Heartbeat-Interval``.

Files are opened and read in worker threads, never on the event loop, and without
following a link the task may have put in place of its log (:mod:`..tasks.logfile`).
"""

from __future__ import annotations

import asyncio
import errno
import time

import orjson
from aiohttp import web

from ...models._base import dumps
from ...models.execution import HEARTBEAT_HEADER
from ...models.limits import MAX_INT, shown
from ..clock import wait_event
from ..errors import APIProblem
from ..helpers import begin_body, bool_query, org_of
from ..middleware import StillAuthorized
from ..state import SETTINGS_KEY
from ..tasks import TASKS_KEY, TaskService
from ..tasks.logfile import LogReader, NotALogFile, last_char_end
from ..tasks.records import TaskRecords

__all__ = ["STREAMS", "follow_logs", "parse_event_id", "resume_point", "wants_stream"]

STREAMS = ("stdout", "stderr")
_CHOICES = {"stdout": ("stdout",), "stderr": ("stderr",), "all": STREAMS, "both": STREAMS}
_POLL_MIN, _POLL_MAX = 0.005, 0.25  # after news, then doubling while idle
_STATUS_EVERY = 5.0  # seconds between status reads when no change was announced
_HEARTBEAT = b": heartbeat\n\n"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer this answer
}


def wants_stream(request: web.Request) -> bool:
    """Whether a logs request asks for the event stream rather than the JSON snapshot."""
    return "follow" in request.query or "text/event-stream" in request.headers.get("Accept", "")


def parse_event_id(raw: str) -> dict[str, int]:
    """Byte offsets per stream from an event id ``<stdout offset>:<stderr offset>``.

    Raises:
        ValueError: Not two offsets in 0..2**63-1.
    """
    parts = raw.strip().split(":")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"expected '<stdout offset>:<stderr offset>', got {raw[:40]!r}")
    offsets = [int(p) for p in parts]
    if any(o > MAX_INT for o in offsets):
        raise ValueError(f"offsets must be 0..{MAX_INT}, got {raw[:40]!r}")
    return dict(zip(STREAMS, offsets, strict=True))


def resume_point(request: web.Request) -> dict[str, int] | None:
    """The offsets in ``Last-Event-ID`` (or ``?lastEventId=``); ``None`` when not given.

    Raises:
        APIProblem: 422 naming the header or parameter when it is not two offsets.
    """
    name, raw = "Last-Event-ID", request.headers.get("Last-Event-ID")
    if not raw:
        name, raw = "lastEventId", request.query.get("lastEventId")
    if not raw:
        return None
    try:
        return parse_event_id(raw)
    except ValueError as exc:
        raise APIProblem.validation(name, str(exc)) from None


def since_query(request: web.Request) -> int | None:
    """The ``since`` parameter: a time in milliseconds since the epoch, or ``None``."""
    raw = request.query.get("since")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_INT:  # not "²": int() fails
        raise APIProblem.validation(
            "since", f"expected milliseconds since the epoch, got {raw[:40]!r}"
        )
    return int(raw)


async def _start_since(
    request: web.Request, service: TaskService, task_id: str, start: dict[str, int] | None
) -> dict[str, int]:
    """Where the stream starts: ``Last-Event-ID``, else ``since``, else the beginning."""
    since = since_query(request)
    if start is not None or since is None:
        return start or dict.fromkeys(STREAMS, 0)
    return await service.log_times.offsets_since(task_id, since)


def _streams(request: web.Request) -> tuple[str, ...]:
    raw = request.query.get("stream", "all")
    if raw not in _CHOICES:
        raise APIProblem.validation(
            "stream", f"must be stdout, stderr, both or all, got {shown(raw)}"
        )
    return _CHOICES[raw]


class _LogStream:
    """One client's follow: where each stream stands and how to send what comes next."""

    def __init__(self, service: TaskService, task_id: str, streams: tuple[str, ...]) -> None:
        paths = service.provider.task_paths(task_id)
        files = {"stdout": paths.stdout, "stderr": paths.stderr}
        self.service = service
        self.task_id = task_id
        self.readers = {name: LogReader(paths.root, files[name]) for name in streams}
        self.offsets = dict.fromkeys(STREAMS, 0)
        self.sent = 0  # bytes of the frames made for this answer

    def event_id(self) -> str:
        return ":".join(str(self.offsets[name]) for name in STREAMS)

    def read(self, final: bool) -> list[bytes]:
        """Frames for what the logs hold past the offsets (blocking: run in a thread).

        A frame holds at most as many bytes as this answer has sent before it (4 KiB
        for the first ones): a connection cut anywhere has delivered at least half of
        what it carried in whole frames, whose ids the client resumes from. One frame
        per read (256 KiB) would let a link that drops every 40 KB bring a follow of a
        long log no further, however often it reconnected.
        """
        frames = []
        for name, reader in self.readers.items():
            start, data = reader.read(self.offsets[name], final=final)
            while data:
                piece = _piece(data, max(_FIRST_FRAME, self.sent))
                data = data[len(piece) :]
                start += len(piece)
                self.offsets[name] = start
                frames.append(self._frame(name, piece))
                self.sent += len(frames[-1])
        return frames

    def _frame(self, name: str, data: bytes) -> bytes:
        text = data.decode("utf-8", "replace")
        body = orjson.dumps({"stream": name, "offset": self.offsets[name], "text": text})
        return b"id: %s\nevent: log\ndata: %s\n\n" % (self.event_id().encode(), body)

    async def end_frame(self) -> bytes:
        task = await self.service.get(self.task_id)
        return b"id: %s\nevent: end\ndata: %s\n\n" % (self.event_id().encode(), dumps(task))

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


_FIRST_FRAME = 4096  # the most bytes of log in each of an answer's first frames


def _piece(data: bytes, limit: int) -> bytes:
    """The start of ``data`` that one frame sends: all of it when it fits in ``limit``
    bytes, else its whole lines that do, else (one longer line) up to a character's end."""
    if len(data) <= limit:
        return data
    end = data.rfind(b"\n", 0, limit) + 1
    return data[: end or last_char_end(data[:limit]) or limit]


async def _read(stream: _LogStream, final: bool) -> list[bytes]:
    while True:
        try:
            return await asyncio.to_thread(stream.read, final)
        except NotALogFile as exc:
            raise _Refused(f"the task's log is not readable: {exc}") from exc
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise _Refused(f"cannot read the task's log: {exc.strerror or exc}") from exc
        # Out of descriptors (the server answers new clients 503 meanwhile): wait, retry;
        # ending here would send the end event before the log was drained.
        await asyncio.sleep(_POLL_MAX)


class _Refused(Exception):
    """The task replaced its log with something the server will not read."""


class _Ended:
    """Whether the task is over, read from the store only when that may have changed: its
    change event fired, or :data:`_STATUS_EVERY` passed. Thousands of idle follows must
    not query the database at every poll."""

    def __init__(self, records: TaskRecords, task_id: str) -> None:
        self._records, self._task_id = records, task_id
        self._event: asyncio.Event | None = None
        self._next = 0.0

    async def check(self) -> bool:
        event = self._event
        if event is not None and not event.is_set() and time.monotonic() < self._next:
            return False
        self._event = self._records.changed(self._task_id)  # before the read: no change lost
        self._next = time.monotonic() + _STATUS_EVERY
        return (await self._records.status(self._task_id)).terminal

    async def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, less when the task changes."""
        if self._event is None:
            await asyncio.sleep(timeout)
            return
        await wait_event(self._event, timeout)


async def _pump(
    response: web.StreamResponse, request: web.Request, stream: _LogStream, follow: bool
) -> None:
    heartbeat = request.app[SETTINGS_KEY].heartbeat_interval
    ended = _Ended(stream.service.records, stream.task_id)
    still = StillAuthorized(request)
    poll, quiet_since = _POLL_MIN, time.monotonic()
    while True:
        if not await still.holds():
            return  # a revoked key or ended session: the stream ends, its next call is 401
        frames = await _read(stream, final=False)
        if frames:
            for frame in frames:
                if still.cut:  # found gone meanwhile (credentials_gone): nothing more
                    return
                await response.write(frame)
            poll, quiet_since = _POLL_MIN, time.monotonic()
            continue
        if await ended.check():
            await _drain(response, stream, still)
            return
        if not follow or _gone(request):
            return
        if time.monotonic() - quiet_since >= heartbeat:
            await response.write(_HEARTBEAT)
            quiet_since = time.monotonic()
        await ended.wait(poll)
        poll = min(poll * 2, _POLL_MAX)


async def _drain(response: web.StreamResponse, stream: _LogStream, still: StillAuthorized) -> None:
    """The task is over: send what it wrote before it ended, the last line too, then the end."""
    while frames := await _read(stream, final=True):
        for frame in frames:
            if still.cut:
                return
            await response.write(frame)
    end = await stream.end_frame()
    if not still.cut:
        await response.write(end)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def follow_logs(request: web.Request) -> web.StreamResponse:
    """Stream a task's log lines as SSE (``follow``, ``stream``, ``Last-Event-ID``)."""
    service: TaskService = request.app[TASKS_KEY]
    task_id = request.match_info["taskId"]
    follow, streams, start = (
        bool_query(request, "follow", True),
        _streams(request),
        resume_point(request),
    )
    await service.get(task_id, org_of(request))  # 404 for another organization's task
    start = await _start_since(request, service, task_id, start)
    heartbeat = request.app[SETTINGS_KEY].heartbeat_interval
    response = web.StreamResponse(headers={**_SSE_HEADERS, HEARTBEAT_HEADER: f"{heartbeat:g}"})
    stream = _LogStream(service, task_id, streams)
    stream.offsets.update(start)
    if not await begin_body(request, response):
        return response
    try:
        await _pump(response, request, stream, follow)
    except _Refused as exc:
        error = orjson.dumps({"code": "LOG_UNREADABLE", "message": str(exc)})
        await response.write(b"event: error\ndata: %s\n\n" % error)
    except ConnectionError:  # the client went away
        return response
    finally:
        await asyncio.to_thread(stream.close)
    await response.write_eof()
    return response
