"""The server's log: one access line per request, state changes, levels, the file, no secrets."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anyio
import orjson
import pytest
from aiohttp import web

from tests.live_server import LiveServer, Starter
from vi_flow.server.logs import close_logging, configure_logging
from vi_flow.server.state import ServerSettings

from .conftest import Server, StartServer, spec

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

_ACCESS = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO vi_flow\.server\.access: "
    r"(?P<id>\S+) (?P<org>\S+) (?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) [\d.]+ ms$"
)


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """The server's log lines, as ``vi-flow serve`` would write them to stderr."""
    out = io.StringIO()
    configure_logging(stream=out)
    yield out
    close_logging()


def access_lines(out: io.StringIO) -> list[re.Match[str]]:
    """The parsed access lines written so far."""
    return [m for line in out.getvalue().splitlines() if (m := _ACCESS.match(line))]


async def org_of(server: LiveServer) -> str:
    """The admin token's organization."""
    return str((await server.call("GET", "/whoami")).body["organizationId"])


async def test_one_access_line_per_request(server: Server, log: io.StringIO) -> None:
    org = await org_of(server)
    answers = {
        (org, "GET", "/v1/flows", "200"): await server.call("GET", "/flows"),
        (org, "GET", "/v1/flows/flow_nope", "404"): await server.call("GET", "/flows/flow_nope"),
        ("-", "GET", "/v1/health", "200"): await server.call("GET", "/health", token=""),
        ("-", "POST", "/v1/flows", "401"): await server.call("POST", "/flows", token="wrong"),
    }
    lines = {m["id"]: m for m in access_lines(log)}
    assert len(access_lines(log)) == len(answers) + 1  # and the whoami
    for expected, answer in answers.items():
        line = lines[answer.headers["X-Request-Id"]]
        assert (line["org"], line["method"], line["path"], line["status"]) == expected


async def test_streamed_responses_are_logged_when_they_end(
    start_server: StartServer, log: io.StringIO
) -> None:
    server = await start_server(prepare=_add_routes)
    answer = await server.call("GET", "/stream/2")
    assert answer.status == 200 and answer.raw.count(b"event: tick") == 2
    [line] = [m for m in access_lines(log) if m["path"] == "/v1/stream/2"]
    assert line["id"] == answer.headers["X-Request-Id"] and line["status"] == "200"


async def test_query_strings_and_tokens_are_never_logged(server: Server, log: io.StringIO) -> None:
    secret = "sk-live-0123456789abcdef"
    listed = await server.call("GET", "/runs", params={"flowId": secret, "pageSize": "5"})
    unknown = await server.call("GET", "/flows", params={"apiKey": secret})  # 422 naming it
    refused = await server.call("GET", "/flows", token="vf_not_a_real_token_9876")
    assert (listed.status, unknown.status, refused.status) == (200, 422, 401)
    text = log.getvalue()
    for answer in (listed, unknown, refused):
        assert answer.headers["X-Request-Id"] in text
    for value in (secret, "apiKey", server.token, "vf_not_a_real_token_9876"):
        assert value not in text
    assert "aiohttp.access" not in text  # its request line would carry the query string


async def test_the_level_comes_from_vi_flow_log(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setenv("VI_FLOW_LOG", "Warning")
    configure_logging(stream=out)
    try:
        await server.call("GET", "/flows")
        logging.getLogger("vi_flow.server").warning("still shown")
    finally:
        close_logging()
    assert "vi_flow.server.access" not in out.getvalue()
    assert "WARNING vi_flow.server: still shown" in out.getvalue()


def test_an_unknown_level_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VI_FLOW_LOG", "loud")
    with pytest.raises(ValueError, match=r"VI_FLOW_LOG='loud'.*debug, info, warning, error"):
        configure_logging(stream=io.StringIO())


def test_configuring_twice_installs_one_handler_and_close_restores() -> None:
    logger = logging.getLogger("vi_flow.server")
    before = (list(logger.handlers), logger.level, logger.propagate)
    configure_logging(stream=io.StringIO())
    configure_logging(stream=io.StringIO())
    assert len(logger.handlers) == len(before[0]) + 1
    assert logging.getLogger("aiohttp.access").level == logging.WARNING
    close_logging()
    close_logging()
    assert (logger.handlers, logger.level, logger.propagate) == before


def test_asyncio_errors_are_in_the_server_log(tmp_path: Path) -> None:
    # they went to Python's last-resort handler: the background server's stderr file
    # (not server.log), and for `vi-flow serve` a synchronous write to its stderr
    file = tmp_path / "logs" / "server.log"
    asyncio_log = logging.getLogger("asyncio")
    before = (list(asyncio_log.handlers), asyncio_log.level, asyncio_log.propagate)
    configure_logging(file=file)
    asyncio_log.error("Task exception was never retrieved")
    close_logging()
    assert "ERROR asyncio: Task exception was never retrieved" in file.read_text()
    assert (asyncio_log.handlers, asyncio_log.level, asyncio_log.propagate) == before


_OTHER_LIBRARIES = """
import logging, sys
from pathlib import Path
from vi_flow.server.logs import close_logging, configure_logging

configure_logging(file=Path(sys.argv[1]))
logging.getLogger("asyncssh").warning("a warning of asyncssh")
logging.getLogger("asyncssh").info("chatter of asyncssh")
logging.getLogger("vi_flow").error("an error of the SDK's own logger")
close_logging()
logging.getLogger("psycopg").warning("after close")
"""


def test_other_libraries_warnings_are_in_the_server_log(tmp_path: Path) -> None:
    # They went to Python's last-resort handler: bare messages in the background
    # server's stderr file, beside its log.
    file = tmp_path / "server.log"
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_LIBRARIES, str(file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line.split(" ", 2)[2] for line in file.read_text().splitlines()]
    assert lines == [
        "WARNING asyncssh: a warning of asyncssh",
        "ERROR vi_flow: an error of the SDK's own logger",
    ]
    assert done.stderr == "after close\n"  # the root logger is as it was


def test_an_applications_own_root_handler_is_left_alone(tmp_path: Path) -> None:
    root = logging.getLogger()
    mine = logging.NullHandler()
    root.addHandler(mine)
    try:
        before = list(root.handlers)
        configure_logging(file=tmp_path / "server.log")
        assert root.handlers == before
        close_logging()
        assert root.handlers == before
    finally:
        root.removeHandler(mine)


async def test_the_log_file_is_private_and_rotates(server: Server, tmp_path: Path) -> None:
    file = tmp_path / "home" / "logs" / "server.log"
    configure_logging(file=file, max_bytes=2000)
    try:
        answer = await server.call("GET", "/flows")
        for i in range(100):
            logging.getLogger("vi_flow.server.engine").info("line %d of filler text", i)
    finally:
        close_logging()  # writes what is still queued
    files = sorted(p.name for p in file.parent.iterdir())
    assert files[:3] == ["server.log", "server.log.1", "server.log.2"]
    assert len(files) <= 6  # the file and five backups
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE((file.parent / "server.log.1").stat().st_mode) == 0o600
    assert "line 99 of filler text" in file.read_text()
    everything = "".join(p.read_text() for p in file.parent.iterdir())
    assert f"INFO vi_flow.server.access: {answer.headers['X-Request-Id']} " in everything


# -- clients that leave early -----------------------------------------------------------


def _add_routes(app: web.Application) -> None:
    async def slow(request: web.Request) -> web.Response:
        """Answer after a second."""
        await asyncio.sleep(1.0)
        return web.json_response({"late": True})

    async def stream(request: web.Request) -> web.StreamResponse:
        """Send ``frames`` SSE frames (500 unless the path says), 20 ms apart."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(int(request.match_info.get("frames", "500"))):
            await resp.write(b"event: tick\ndata: {}\n\n")
            await asyncio.sleep(0.02)
        await resp.write_eof()
        return resp

    async def upstream_reset(request: web.Request) -> web.Response:
        """Lose an outgoing connection, with the client still there."""
        raise ConnectionResetError("upstream reset")

    app.router.add_get("/v1/slow", slow)
    app.router.add_get("/v1/stream", stream)
    app.router.add_get("/v1/stream/{frames}", stream)
    app.router.add_get("/v1/upstream-reset", upstream_reset)


async def _give_up_early(server: Server, path: str, request_id: str) -> None:
    timeout = aiohttp.ClientTimeout(total=0.3)
    headers = server.headers(extra={"X-Request-Id": request_id})
    with pytest.raises(asyncio.TimeoutError):
        async with server.session.get(
            f"{server.root}{path}", headers=headers, timeout=timeout
        ) as r:
            await r.read()


@pytest.mark.parametrize("path", ["/v1/slow", "/v1/stream"])
async def test_a_client_that_leaves_is_an_info_line_not_a_traceback(
    start_server: StartServer, log: io.StringIO, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    caplog.set_level(logging.DEBUG)  # asyncio and anything else outside the server's tree
    server = await start_server(prepare=_add_routes)
    await _give_up_early(server, path, "req-leaves-early")
    with anyio.fail_after(5):
        while "client disconnected" not in log.getvalue():
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # anything aiohttp would log after the handler
    text = log.getvalue()
    [line] = [x for x in text.splitlines() if "req-leaves-early" in x]
    assert re.search(rf"INFO vi_flow\.server\.access: req-leaves-early org_\w+ GET {path} "
                     r"client disconnected after [\d.]+ ms$", line)  # fmt: skip
    assert "Traceback" not in text and " ERROR " not in text and " WARNING " not in text
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert (await server.call("GET", "/health", token="")).status == 200


async def test_a_reader_that_stopped_reading_then_reset_is_an_info_line_not_a_traceback(
    server: Server, log: io.StringIO
) -> None:
    # QA: a stream whose reader stopped reading waits for room to write; a reset then
    # ends that wait with ConnectionError("Connection lost"), which was logged as an
    # unhandled error with its traceback, about 40 lines a stream: any organization
    # could fill the server's log with them.
    flow = await server.call("POST", "/flows", json={"name": "many", "blocks": [
        {"block": "emit", "settings": {"count": 200_000, "line": "x" * 200}}]})  # fmt: skip
    run = await server.call("POST", f"/flows/{flow.body['flowId']}/jobs", json={})
    task = await server.call("POST", "/tasks", json={"command": "yes | head -c 50000000"})
    paths = [f"/v1/runs/{run.body['executionId']}/events"] * 3
    paths += [f"/v1/tasks/{task.body['taskId']}/logs?follow=true"] * 3
    host, port = server.root.split("//")[1].split("/")[0].rsplit(":", 1)
    readers = []
    for number, path in enumerate(paths):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-stalled-{number}\r\n"
        sock.sendall(f"{request}Authorization: Bearer {server.token}\r\n\r\n".encode())
        readers.append(sock)
    await asyncio.sleep(1.5)  # each stream fills its socket and waits for room
    for sock in readers:  # then a reset (no FIN): the waits end with "Connection lost"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    with anyio.fail_after(10):
        while log.getvalue().count("client disconnected") < len(paths):
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    text = log.getvalue()
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]
    for number, path in enumerate(paths):
        [line] = [x for x in text.splitlines() if f"req-stalled-{number} " in x]
        assert f"GET {path.split('?')[0]} client disconnected after" in line, line
    await server.call("POST", f"/tasks/{task.body['taskId']}/cancel", json={})


async def test_a_reset_the_client_did_not_cause_is_a_500(
    start_server: StartServer, log: io.StringIO
) -> None:
    server = await start_server(prepare=_add_routes)
    answer = await server.call("GET", "/upstream-reset")
    assert answer.status == 500 and answer.body["error"]["code"] == "INTERNAL"
    [line] = [m for m in access_lines(log) if m["path"] == "/v1/upstream-reset"]
    assert line["id"] == answer.headers["X-Request-Id"] and line["status"] == "500"
    assert "ERROR vi_flow.server: unhandled error in GET /v1/upstream-reset" in log.getvalue()


async def _send_raw(server: LiveServer, request: bytes, *, until: bytes | None = None) -> bytes:
    """Send raw bytes; read the answer to ``until`` (else to the close), within 5 s."""
    host, port = server.root.split("//")[1].split("/")[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        with anyio.fail_after(5):  # an answer at once, never a wait for a body
            return await (reader.readuntil(until) if until else reader.read())
    finally:
        writer.close()


async def test_a_malformed_request_is_one_info_line_not_a_traceback(
    server: Server, log: io.StringIO
) -> None:
    answer = await _send_raw(server, b"GET /v1/flows HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n")
    long = await _send_raw(server, b"GET /v1/flows HTTP/1.1\r\nX: " + b"h" * 9000 + b"\r\n\r\n")
    assert b" 400 Bad Request" in answer.split(b"\r\n")[0]
    assert b" 400 Bad Request" in long.split(b"\r\n")[0]
    await asyncio.sleep(0.1)
    text = log.getvalue()
    assert "Traceback" not in text and " ERROR " not in text
    refused = [line for line in text.splitlines() if "refused a malformed request" in line]
    assert len(refused) == 2 and all(" INFO aiohttp.server: " in line for line in refused)
    assert (
        "its head does not read as HTTP/1" in refused[0] and "hhhhhhhhhhhhhhhhhhh" * 10 not in text
    )
    # the line names the request id the client was answered
    request_id = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]["requestId"]
    assert f"refused a malformed request {request_id} from " in refused[0]
    # aiohttp quotes the bytes it read: with a key among them, they never reach the log
    token = server.headers()["Authorization"].encode()
    await _send_raw(
        server, b"GET /v1/flows HTTP/1.1\r\nAuthorization: " + token + b"x" * 9000 + b"\r\n\r\n"
    )
    await _send_raw(server, b"GET /v1/flows?key=" + token[7:] + b"y" * 9000 + b" HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.1)
    text = log.getvalue()
    assert token[7:].decode() not in text
    assert text.count("refused a malformed request") == 4
    assert text.count(": 400 'a line of its head is too long (8190 bytes at most)'") == 3


async def test_a_body_its_content_encoding_does_not_decode_is_one_info_line(
    server: Server, log: io.StringIO
) -> None:
    # Answered 400, then logged by aiohttp as "ERROR Unhandled exception" with a traceback
    # of 15 to 50 lines, for each such request anyone sends (found by QA).
    token = server.headers()["Authorization"].encode()
    answer = await _send_raw(
        server,
        b"POST /v1/flows HTTP/1.1\r\nHost: x\r\nAuthorization: " + token
        + b"\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        + b"Content-Length: 24\r\n\r\n" + b'{"name":"x","blocks":[]}',
        until=b"}}",
    )  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 400") and b"could not be decoded" in answer
    await asyncio.sleep(0.2)
    text = log.getvalue()
    assert "Traceback" not in text and " ERROR " not in text, text
    [refused] = [line for line in text.splitlines() if "refused a malformed request" in line]
    assert "its body does not decode as its Content-Encoding says" in refused


async def test_a_body_declared_over_the_limit_is_refused_at_once(server: Server) -> None:
    token = server.headers()["Authorization"].encode()
    answer = await _send_raw(
        server,
        b"POST /v1/flows HTTP/1.1\r\nHost: x\r\nAuthorization: " + token
        + b"\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{}",
        until=b"}}",
    )  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"99999999999 bytes is over the limit" in answer
    assert (await server.call("GET", "/flows")).body["items"] == []  # nothing was made


# -- state changes ----------------------------------------------------------------------


async def test_a_run_logs_its_state_changes(server: Server, log: io.StringIO) -> None:
    org = await org_of(server)
    flow = (await server.call("POST", "/flows", json={"spec": spec("demo", "a")})).body["flowId"]
    outcome = await server.call("POST", f"/flows/{flow}/execute", json={"message": "secret-msg"})
    assert outcome.body["state"] == "completed", outcome.body
    run = outcome.body["executionId"]
    changes = [x.split(": ", 1)[1] for x in log.getvalue().splitlines() if f"run {run} " in x]
    assert changes == [
        f"run {run} of {org}: created, flow {flow}",
        f"run {run} of {org}: Pending -> Running",
        f"run {run} of {org}: Running -> Succeeded",
    ]
    assert "secret-msg" not in log.getvalue()


async def test_a_task_logs_its_state_changes(tmp_path: Path, log: io.StringIO) -> None:
    settings = ServerSettings(home=tmp_path / "home", extra={"local_cpus": 1, "local_gpus": []})
    async with Starter(LiveServer) as starter:
        server = await starter.start(settings)
        body = {"command": "true", "env": {"TASK_SECRET": "hunter2-value"}}
        task = (await server.call("POST", "/tasks", json=body)).body
        with anyio.fail_after(10):
            while (await server.call("GET", f"/tasks/{task['taskId']}")).body["status"] not in (
                "completed",
                "failed",
            ):
                await asyncio.sleep(0.02)
    lines = [x.split(": ", 1)[1] for x in log.getvalue().splitlines() if task["taskId"] in x]
    changes = [x for x in lines if x.startswith("task ")]
    assert changes[0].startswith(f"task {task['taskId']} of org_")
    assert changes[-1] == f"task {task['taskId']}: running -> completed (exit 0)"
    assert "hunter2-value" not in log.getvalue() and "TASK_SECRET" not in log.getvalue()
