"""Open-file limits: the server raises its soft limit to the hard one at start and says so;
past the limit new connections get 503 with Retry-After, and the log says so once."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
_SCRIPT = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[3])))
from vi_flow.server import ServerSettings, run_server
from vi_flow.server.logs import configure_logging
configure_logging()
run_server(ServerSettings(home=Path(sys.argv[1]), port=0))
"""


def _wait_for(log: Path, proc: subprocess.Popen[bytes], pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if match := re.search(pattern, log.read_text()):
            return match
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the server log: {log.read_text()}")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def run(soft: int, hard: int) -> tuple[str, Path]:
        log = tmp_path / f"server-{len(procs)}.log"
        env = {**os.environ, "PYTHONPATH": str(_REPO), "VI_FLOW_LOG": "info"}
        home = tmp_path / f"home-{len(procs)}"
        with log.open("w") as err:
            argv = [sys.executable, "-c", _SCRIPT, str(home), str(soft), str(hard)]
            procs.append(subprocess.Popen(argv, stderr=err, env=env))
        match = _wait_for(log, procs[-1], r"listening on (http://127\.0\.0\.1:\d+)/v1")
        return match.group(1), log

    yield run
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_soft_limit_is_raised_to_the_hard_one_and_logged(start: object) -> None:
    _, log = start(128, 512)  # type: ignore[operator]
    assert "open files: limit 512 (hard limit 512)" in log.read_text()


async def _health(port: int) -> tuple[str, asyncio.StreamWriter]:
    """One keep-alive ``GET /v1/health``: the answer's head, and the still open socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    try:
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)).decode()
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        head = f"no answer: {exc!r}"
    return head, writer


@pytest.mark.anyio
async def test_past_the_limit_new_connections_get_503_and_one_log_line(start: object) -> None:
    url, log = start(128, 128)  # type: ignore[operator]
    port = int(url.rsplit(":", 1)[1])
    first = [await _health(port) for _ in range(100)]  # kept open, one by one
    await asyncio.sleep(1.5)  # the server's count of open files catches up
    # More than the server has descriptors for, all at once: none may hang.
    rest = await asyncio.gather(*(_health(port) for _ in range(150)))
    answers = [head for head, _ in first + rest]
    writers = [writer for _, writer in first + rest]
    ok = [a for a in answers if a.startswith("HTTP/1.1 200")]
    busy = [a for a in answers if a.startswith("HTTP/1.1 503")]
    assert len(ok) + len(busy) == len(answers), [a for a in answers if a not in ok + busy][:3]
    assert ok and busy
    assert all("Retry-After: 1" in a for a in busy)
    for writer in writers:
        writer.close()
    await asyncio.sleep(2.5)  # the count of open files catches up
    head, writer = await _health(port)
    writer.close()
    assert head.startswith("HTTP/1.1 200")  # back to normal once connections went away
    text = log.read_text()
    assert text.count("open-file limit 128 reached") == 1, text[-3000:]
    assert "out of system resource" not in text and "Traceback" not in text
