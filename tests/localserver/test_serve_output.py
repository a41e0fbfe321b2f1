"""``vi-flow serve`` writing its log to a pipe that nobody reads keeps answering.

Found as a user: a script that starts ``vi-flow serve`` with ``stderr=subprocess.PIPE``
and never reads it (a common mistake) got no answer after about 580 requests: each
request logs a line, and once the pipe held its 64 KiB the next line blocked the
server's event loop for good.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vi_flow.local import call_server
from vi_flow.server.logs import close_logging, configure_logging

from .kit import foreground_serve, run_file

pytestmark = pytest.mark.timeout(120)

REQUESTS = 2000  # about 220 KB of access lines: the pipe takes 64 KiB of them


def test_a_server_whose_log_pipe_nobody_reads_keeps_answering(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with foreground_serve(home, stderr=subprocess.PIPE) as serve:
        info = run_file(home)
        assert info is not None and serve.stderr is not None
        for _ in range(REQUESTS):
            status, _ = call_server(info, "GET", "/health", timeout=10)
            assert status == 200
        # the lines held meanwhile reach the pipe, in order, once it is read
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=60)
    assert serve.returncode == 0, err[-2000:]
    health = [line for line in err.decode().splitlines() if " GET /v1/health 200 " in line]
    assert len(health) == REQUESTS
    assert b"log lines dropped" not in err


def _lines_through_a_pipe(count: int, size: int) -> list[str]:
    """Log ``count`` lines of ``size`` characters to a pipe nobody reads meanwhile, then
    stop logging while a reader drains it; what the reader got, line by line."""
    read_end, write_end = os.pipe()
    out = os.fdopen(write_end, "w")
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(_read_all(read_end)))
    configure_logging(stream=out)
    try:
        logger = logging.getLogger("vi_flow.server.test_pipe")
        started = time.monotonic()
        for i in range(count):
            logger.warning("%d %s", i, "x" * size)
        assert time.monotonic() - started < 30  # never waited for a reader
    finally:
        reader.start()
        close_logging()  # lets the pipe take what is held (the reader reads it)
        out.close()
        reader.join(30)
        os.close(read_end)
    return got.decode().splitlines()


def _read_all(fd: int) -> bytes:
    """Everything read from ``fd`` until its writers are gone."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def test_lines_past_what_is_held_for_a_full_pipe_are_dropped_and_counted() -> None:
    # 3,000 lines of 1 KB: the pipe takes 64 KiB, the server holds 1 MiB more for it,
    # the rest is dropped (memory stays bounded) and the count follows what was held
    lines = _lines_through_a_pipe(3000, 1000)
    numbers = [int(m[1]) for line in lines if (m := re.search(r"test_pipe: (\d+) x", line))]
    assert numbers == list(range(len(numbers)))  # the first ones, whole and in order
    assert 1000 < len(numbers) < 1200
    note = re.search(r"WARNING vi_flow\.server: (\d+) log lines dropped", lines[-1])
    assert note is not None, lines[-1]
    assert int(note[1]) == 3000 - len(numbers)


def test_a_pipe_with_room_gets_every_line_as_written() -> None:
    lines = _lines_through_a_pipe(50, 100)
    assert [line.split(": ", 1)[1] for line in lines] == [f"{i} {'x' * 100}" for i in range(50)]
