"""Where the server process logs: one line per event, to stderr or to a rotating file.

:func:`configure_logging` gives the ``vi_flow.server`` logger tree (access lines, engine,
tasks, providers), aiohttp's own loggers and asyncio's one handler, at the level named
by ``VI_FLOW_LOG`` (``debug``, ``info``, ``warning``, ``error``; ``info`` when unset).
``vi-flow serve`` logs to stderr (a pipe or socket only while it has room: see
:class:`_WhenWritable`); the background server to ``<home>/logs/server.log``, rotated.
aiohttp's access logger is silenced: the access middleware writes the request lines,
without the query string that aiohttp's would show. Other libraries' warnings and errors
are written there too, unless the process's root logger already has a handler.
:func:`close_logging` undoes it all.

Example:
    >>> configure_logging(file=home / "logs" / "server.log")
    >>> ...
    >>> close_logging()
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import select
import stat
import sys
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TextIO

import attrs
from aiohttp import http_exceptions
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

__all__ = [
    "FORMAT", "LEVELS", "MALFORMED_REQUEST_ID", "close_logging", "configure_logging",
    "malformed_reason",
]  # fmt: skip

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""One line per record: ``2026-12-02 05:00:00,123 INFO vi_flow.server.access: ...``."""

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
"""The values ``VI_FLOW_LOG`` accepts (any case) and the levels they mean."""

# asyncio's errors ("Task exception was never retrieved") belong in the server's log too:
# left to Python's last-resort handler they went to stderr, written synchronously.
_LOGGERS = ("vi_flow.server", "aiohttp", "asyncio")
# aiohttp's access line carries the full request line, query string included.
_SILENCED = ("aiohttp.access",)
_MAX_BYTES = 10 * 1024 * 1024
_BACKUPS = 5
_HELD_MOST = 1 << 20  # bytes of lines held for a pipe that is full, at most
_PIPE_BUF = 4096  # a write of this many bytes at most never blocks on a pipe that polls writable
_LAST_WAIT = 1.0  # seconds to let a full pipe take what is held, when logging stops


@attrs.define
class _Installed:
    """What :func:`configure_logging` changed, so that :func:`close_logging` restores it."""

    handler: logging.Handler
    listener: logging.handlers.QueueListener | None
    saved: list[tuple[logging.Logger, int, bool]]
    stream: _WhenWritable | None = None
    others: logging.Handler | None = None  # on the root logger, when it had no handler


class _Others(logging.Handler):
    """Other libraries' warnings and errors (asyncssh, psycopg, the SDK's own ``vi_flow``
    logger...), written as the server's lines. With no handler on the root logger they
    went to Python's last-resort handler: a bare message on stderr, outside the log
    file of a background server, without its time or level.
    """

    def __init__(self, target: logging.Handler) -> None:
        super().__init__(logging.WARNING)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


_installed: _Installed | None = None


class _PrivateRotatingFile(logging.handlers.RotatingFileHandler):
    """A rotating file that only its owner may read: requests name organizations."""

    def _open(self) -> Any:
        def opener(path: str, flags: int) -> int:  # never through a link
            return os.open(path, flags | os.O_NOFOLLOW, 0o600)

        return open(  # the handler owns and closes the stream
            self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors, opener=opener
        )


class _WhenWritable:
    """A pipe or socket for the log lines, written only while it has room.

    ``vi-flow serve`` started by a program that gives it a pipe and never reads it (a
    common mistake of scripts) stopped answering once the pipe was full: the line a
    request logged blocked the event loop for good. Lines now wait in memory while the
    pipe is full (up to :data:`_HELD_MOST` bytes; later ones are dropped and counted)
    and are written, in order, whenever a line is logged and the pipe has room; the
    count of dropped lines follows them. Each write is of :data:`_PIPE_BUF` bytes at
    most, after ``poll`` said the pipe can take it, so it never blocks.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._held = bytearray()
        self._dropped = 0
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)

    @classmethod
    def wrapping(cls, stream: TextIO) -> _WhenWritable | None:
        """One for ``stream`` when it is a pipe or a socket (a terminal or a file keeps
        its plain writes)."""
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, OSError, ValueError):  # io.StringIO, closed...
            return None
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return None
        stream.flush()  # what was written through it first goes first
        return cls(fd)

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "backslashreplace")
        if len(self._held) + len(data) > _HELD_MOST:
            self._dropped += max(1, text.count("\n"))
        else:
            self._held += data
        self._drain(0)
        return len(text)

    def flush(self) -> None:
        self._drain(0)

    def close(self) -> None:
        """Let the pipe take what is held, a second at most (nobody may read it)."""
        deadline = time.monotonic() + _LAST_WAIT
        while self._held or self._dropped:
            left = deadline - time.monotonic()
            if left <= 0 or not self._drain(int(left * 1000)):
                return

    def _drain(self, wait_ms: int) -> bool:
        """Write what is held while the pipe has room; whether all of it went."""
        while self._held or self._dropped:
            if not self._held:  # every line held went: say how many did not
                when = time.strftime("%Y-%m-%d %H:%M:%S")
                note = (f"{when} WARNING vi_flow.server: {self._dropped} log lines dropped:"
                        " nothing read this server's log output meanwhile\n")  # fmt: skip
                self._held += note.encode()
                self._dropped = 0
            try:
                if not self._poll.poll(wait_ms):
                    return False
                written = os.write(self._fd, self._held[:_PIPE_BUF])
            except BlockingIOError:
                return False
            except OSError:  # the reader is gone (EPIPE): nothing will take them
                self._held.clear()
                self._dropped = 0
                return True
            del self._held[:written]
        return True


def _level() -> int:
    raw = os.environ.get("VI_FLOW_LOG", "").strip()
    if not raw:
        return logging.INFO
    try:
        return LEVELS[raw.lower()]
    except KeyError:
        known = ", ".join(LEVELS)
        raise ValueError(f"VI_FLOW_LOG={raw!r} is not a log level; use one of {known}") from None


def _file_handler(file: Path, max_bytes: int) -> logging.Handler:
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = _PrivateRotatingFile(file, maxBytes=max_bytes, backupCount=_BACKUPS, encoding="utf-8")
    if handler.stream is not None:  # a file left by an older server may be wider
        os.fchmod(handler.stream.fileno(), 0o600)
    return handler


def _queued(handler: logging.Handler) -> tuple[logging.Handler, logging.handlers.QueueListener]:
    """Write through a thread, so that disk writes and rotation never block the event loop."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
    listener.start()
    return logging.handlers.QueueHandler(records), listener


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad header byte, a line over 8 KiB, a
    body that its ``Content-Encoding`` does not decode) as an ERROR with a traceback.
    That is the client's mistake, answered 400: one INFO line with the reason says it
    without alarming the operator.

    The reason only, in words of ours (:func:`malformed_reason`): aiohttp quotes the
    bytes it read (``Got more than 8190 bytes when reading: b'Bearer vf_...'``, or a URL
    it could not parse), and those are the request's own, its API key among them, which
    the log never shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RequestPayloadError):  # a body that did not decode, which aiohttp
            exc = exc.__cause__  # reads on (and fails again) after the server's 400
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            named = MALFORMED_REQUEST_ID.get()
            record.msg = f"refused a malformed request{' ' if named else ''}%s from %s: %d %r"
            record.args = (named, remote, exc.code, malformed_reason(exc))
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


MALFORMED_REQUEST_ID: ContextVar[str] = ContextVar("vi_flow_malformed_request_id", default="")
"""The id of the malformed request being answered (set by the server's connection while
aiohttp logs it), for the log line to name what the client was told."""


def malformed_reason(exc: BaseException | None) -> str:
    """Why aiohttp could not read a request, in words of ours: none of the request's
    bytes, which aiohttp's messages quote (a header line too long, a URL it could not
    parse: the API key may be in either)."""
    for kind, reason in _MALFORMED_REASONS:
        if isinstance(exc, kind):
            return reason
    return f"the request is not HTTP this server reads ({type(exc).__name__})"


_MALFORMED_REASONS: tuple[tuple[type[BaseException], str], ...] = tuple(
    (kind, reason)
    for name, reason in (  # most specific first; aiohttp 3.10.0, our floor, has no BadHttpMethod
        ("LineTooLong", "a line of its head is too long (8190 bytes at most)"),
        ("InvalidURLError", "its URL is not one"),
        ("BadHttpMethod", "its method is not one"),
        ("BadStatusLine", "its request line is not HTTP/1"),
        ("InvalidHeader", "a header of it is not one"),
        ("ContentLengthError", "its body is not as long as it says"),
        ("TransferEncodingError", "its body's framing is not one"),
        ("ContentEncodingError", "its body does not decode as its Content-Encoding says"),
        ("PayloadEncodingError", "its body does not decode"),
        ("BadHttpMessage", "its head does not read as HTTP/1"),
    )
    if isinstance(kind := getattr(http_exceptions, name, None), type)
)


_MALFORMED = _MalformedRequests()


def _install(handler: logging.Handler, level: int) -> list[tuple[logging.Logger, int, bool]]:
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED)  # a second add is a no-op
    saved = []
    for name in (*_LOGGERS, *_SILENCED):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # a handler on the root (or the client's) would repeat lines
    for name in _SILENCED:
        logging.getLogger(name).setLevel(logging.WARNING)
    return saved


def configure_logging(
    *, file: Path | None = None, stream: TextIO | None = None, max_bytes: int = _MAX_BYTES
) -> None:
    """Send the server's log lines to ``file`` (rotated) or to ``stream``.

    Calling it again replaces what the previous call installed.

    Args:
        file: A log file, rotated at ``max_bytes`` with five backups (``server.log.1``
            ...); its folder is created and the file is readable by its owner only.
        stream: Where to write when no ``file`` is given; ``sys.stderr`` by default.
        max_bytes: The size at which ``file`` is rotated.

    Raises:
        ValueError: ``VI_FLOW_LOG`` names no known level.
    """
    level = _level()
    close_logging()
    target = _file_handler(file, max_bytes) if file is not None else None
    out = stream if stream is not None else sys.stderr
    writable = None if target is not None else _WhenWritable.wrapping(out)
    handler = target or logging.StreamHandler(writable or out)
    handler.setFormatter(logging.Formatter(FORMAT))
    listener = None
    if target is not None:
        handler, listener = _queued(target)
    saved = _install(handler, level)
    root = logging.getLogger()
    others = None if root.handlers else _Others(handler)  # an application's own are kept
    if others is not None:
        root.addHandler(others)
    global _installed
    _installed = _Installed(handler, listener, saved, writable, others)


def close_logging() -> None:
    """Remove and close what :func:`configure_logging` installed; a no-op otherwise.

    Lines still queued for the log file are written first.
    """
    global _installed
    installed, _installed = _installed, None
    if installed is None:
        return
    for logger, level, propagate in installed.saved:
        logger.removeHandler(installed.handler)
        logger.setLevel(level)
        logger.propagate = propagate
    if installed.others is not None:
        logging.getLogger().removeHandler(installed.others)
    if installed.listener is not None:
        installed.listener.stop()
        for handler in installed.listener.handlers:
            handler.close()
    installed.handler.close()
    if installed.stream is not None:
        installed.stream.close()
