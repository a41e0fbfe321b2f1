"""A task's logs over HTTP: ``GET /v1/tasks/{id}/logs?follow=`` as a resumable SSE stream."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

import vi_flow
import vi_flow.compute._follow
from tests.live_server import Starter
from tests.proxy import CuttingProxy, cutting_proxy
from vi_flow._sse import ServerSentEvent, SSEDecoder
from vi_flow.models.loglines import MAX_LINE
from vi_flow.server.state import ServerSettings

from .conftest import TaskServer


async def _events(
    server: TaskServer,
    task_id: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> tuple[int, Any, list[ServerSentEvent]]:
    """``(status, headers, events)`` of one logs stream, read to its end (or ``stop_after``)."""
    decoder, events = SSEDecoder(), []
    async with server.session.get(
        f"{server.root}/v1/tasks/{task_id}/logs",
        params={"follow": "true", **(params or {})},
        headers=server.headers(extra=headers),
    ) as resp:
        if resp.status != 200:
            return (
                resp.status,
                resp.headers,
                [ServerSentEvent("error", await resp.read(), None, None)],
            )
        async for chunk in resp.content.iter_any():
            events += decoder.feed(chunk)
            if stop_after is not None and len(events) >= stop_after:
                break
        return resp.status, resp.headers, events


def _text(events: list[ServerSentEvent], stream: str | None = None) -> str:
    logs = [orjson.loads(e.data) for e in events if e.event == "log"]
    return "".join(d["text"] for d in logs if stream is None or d["stream"] == stream)


@pytest.mark.anyio
async def test_follow_streams_both_logs_then_the_end_state(server: TaskServer) -> None:
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.1; done; exit 3"
    task = await server.submit(command=script)
    status, headers, events = await _events(server, task["taskId"])
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert float(headers["X-Heartbeat-Interval"]) > 0
    assert _text(events, "stdout") == "out1\nout2\nout3\n"
    assert _text(events, "stderr") == "err1\nerr2\nerr3\n"
    assert events[-1].event == "end"
    end = orjson.loads(events[-1].data)
    assert (end["status"], end["exitCode"], end["reason"]) == ("failed", 3, "NonZeroExit")
    assert events[-1].id == "15:15"  # three 5-byte lines in each log
    for event in events[:-1]:
        data = orjson.loads(event.data)
        out, err = (int(x) for x in (event.id or "").split(":"))
        assert data["offset"] == (out if data["stream"] == "stdout" else err)


@pytest.mark.anyio
async def test_last_event_id_resumes_exactly(server: TaskServer) -> None:
    task = await server.submit(command="for i in $(seq 1 200); do echo line$i; echo e$i >&2; done")
    await server.wait(task["taskId"])
    whole = _text((await _events(server, task["taskId"]))[2], "stdout")
    _, _, first = await _events(server, task["taskId"], stop_after=1)
    resumed = await _events(server, task["taskId"], headers={"Last-Event-ID": str(first[0].id)})
    assert _text(first, "stdout") + _text(resumed[2], "stdout") == whole
    by_query = await _events(server, task["taskId"], params={"lastEventId": str(first[0].id)})
    assert _text(by_query[2]) == _text(resumed[2])
    assert whole == "".join(f"line{i}\n" for i in range(1, 201))


@pytest.mark.anyio
async def test_one_stream_only_and_follow_false(server: TaskServer) -> None:
    task = await server.submit(command="echo a; echo b >&2; printf partial; sleep 30")
    await server.wait(task["taskId"], until={"running"})
    params = {"follow": "false", "stream": "stdout"}
    for _ in range(200):  # the shell may not have written yet
        status, _, events = await _events(server, task["taskId"], params=params)
        if events:
            break
        await asyncio.sleep(0.02)
    assert status == 200
    # Only whole lines while the task runs, and no end event: it has not ended.
    assert [e.event for e in events] == ["log"] and _text(events) == "a\n"
    await server.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})
    _, _, events = await _events(server, task["taskId"], params={"stream": "stderr"})
    assert _text(events) == "b\n" and events[-1].event == "end"
    _, _, events = await _events(server, task["taskId"], params={"stream": "stdout"})
    assert _text(events) == "a\npartial"  # the last, unfinished line once it is over


@pytest.mark.anyio
async def test_utf8_and_a_line_longer_than_one_read(server: TaskServer) -> None:
    script = "python3 -c \"import sys; sys.stdout.write('é' * 300000 + '\\n✓ done\\n')\""
    task = await server.submit(command=script)
    _, _, events = await _events(server, task["taskId"])
    assert len([e for e in events if e.event == "log"]) > 1  # sent in pieces
    assert _text(events) == "é" * 300000 + "\n✓ done\n"  # no character cut in two


@pytest.mark.anyio
async def test_a_line_of_exactly_max_line_bytes_is_one_line(server: TaskServer) -> None:
    # QA: a line of exactly 262,144 bytes came back as that line and an empty one.
    script = f"python3 -c \"print('x' * {MAX_LINE}); print('end')\""
    task = await server.submit(command=script)
    _, _, events = await _events(server, task["taskId"])
    assert _text(events) == "x" * MAX_LINE + "\nend\n"
    snapshot = await server.call("GET", f"/tasks/{task['taskId']}/logs", params={"tail": "3"})
    assert snapshot.body["lines"] == ["x" * MAX_LINE, "end"]


@pytest.mark.anyio
async def test_bad_requests_name_the_bad_value(server: TaskServer) -> None:
    task = await server.submit(command="true")
    cases = [
        ({}, {"Last-Event-ID": "12"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "a:b"}, "Last-Event-ID"),
        ({"lastEventId": "-1:0"}, {}, "lastEventId"),
        ({"stream": "both-ish"}, {}, "stream"),
        ({"follow": "maybe"}, {}, "follow"),
    ]
    for params, headers, name in cases:
        status, _, events = await _events(server, task["taskId"], params=params, headers=headers)
        assert status == 422, (params, headers)  # as every bad parameter
        assert orjson.loads(events[0].data)["error"]["message"].startswith(name)


@pytest.mark.anyio
async def test_another_organization_gets_404(server: TaskServer) -> None:
    task = await server.submit(command="echo secret")
    org = await server.call("POST", "/organizations", json={"name": "other"})
    token = await server.call(
        "POST", f"/organizations/{org.body['organizationId']}/tokens", json={"name": "t"}
    )
    async with server.session.get(
        f"{server.root}/v1/tasks/{task['taskId']}/logs?follow=true",
        headers={"Authorization": f"Bearer {token.body['token']}"},
    ) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "TASK_NOT_FOUND"


@pytest.mark.anyio
async def test_a_revoked_key_ends_its_follow_before_the_revocation_is_answered(
    server: TaskServer,
) -> None:
    # The follow looked at its key once a second: lines written after the revocation
    # was answered still reached its holder (QA).
    org = (await server.call("POST", "/organizations", json={"name": "team"})).body
    path = f"/organizations/{org['organizationId']}/tokens"
    token = (await server.call("POST", path, json={"name": "leaving"})).body["token"]
    ticks = "for i in $(seq 500); do date +%s%N; sleep 0.02; done"
    task = await server.call("POST", "/tasks", json={"command": ticks}, token=token)
    assert task.status == 201, task.body
    follow = asyncio.ensure_future(
        _events(server, task.body["taskId"], headers={"Authorization": f"Bearer {token}"})
    )
    await asyncio.sleep(1.5)  # half way between two of the follow's looks at its key
    assert (await server.call("DELETE", f"{path}/leaving")).body["revoked"] == 1
    answered = time.time_ns()
    with anyio.fail_after(5):  # ten seconds before the task would end
        _, _, events = await follow
    sent = [int(line) for line in _text(events).split()]
    assert sent and max(sent) < answered, (max(sent) - answered) / 1e6
    assert "end" not in [e.event for e in events]


@pytest.mark.anyio
@pytest.mark.parametrize("replaced", ["the log", "its directory"])
async def test_a_log_replaced_by_a_link_is_not_followed(
    server: TaskServer, tmp_path: Path, replaced: str
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "stdout.log").write_text("server secret\n")
    task = await server.submit(command="echo hi")
    done = await server.wait(task["taskId"])
    logs = Path(done["workdir"]).parent / "logs"
    # What a task with write access to its directory could do:
    if replaced == "the log":
        (logs / "stdout.log").unlink()
        (logs / "stdout.log").symlink_to(secrets / "stdout.log")
    else:
        logs.rename(logs.with_name("old-logs"))
        logs.symlink_to(secrets)
    _, _, events = await _events(server, task["taskId"], params={"stream": "stdout"})
    assert "server secret" not in b"".join(e.data for e in events).decode()
    assert [e.event for e in events] == ["error"]
    assert orjson.loads(events[0].data)["code"] == "LOG_UNREADABLE"


# -- the SDK over HTTP ---------------------------------------------------------------------

_WRITER = """
import time
for i in range(3000):
    print(f"line {i}", flush=True)
    if i % 100 == 0:
        time.sleep(0.04)
"""


async def _cut_now_and_then(proxy: CuttingProxy, rng: random.Random) -> None:
    while True:
        await asyncio.sleep(rng.uniform(0.02, 0.25))
        proxy.cut()


@pytest.mark.anyio
async def test_100_http_follows_with_random_cuts_lose_and_repeat_nothing(
    server: TaskServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", "http")
    rng = random.Random(13)
    task = await server.submit(command=["python3", "-c", _WRITER])
    port = int(server.root.rsplit(":", 1)[1])
    async with (
        cutting_proxy(port) as proxy,
        vi_flow.AsyncClient(
            base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key=server.token, home=tmp_path
        ) as client,
    ):
        # the handles before the cuts: a plain GET gives up after its few retries, and a
        # loaded machine let three cuts in a row strike one (follows reconnect for ever)
        handles = [await client.get_task(task["taskId"]) for _ in range(100)]

        async def follow(handle: vi_flow.AsyncTask) -> tuple[list[str], int | None]:
            await asyncio.sleep(rng.uniform(0, 3))  # some during the run, some after it
            lines = [line async for line in handle.follow_logs()]
            return lines, handle.exit_code

        cutter = asyncio.ensure_future(_cut_now_and_then(proxy, rng))
        try:
            results = await asyncio.gather(*(follow(handle) for handle in handles))
        finally:
            cutter.cancel()
    expected = [f"line {i}" for i in range(3000)]
    for lines, exit_code in results:
        assert lines == expected  # nothing lost, nothing repeated, in order
        assert exit_code == 0  # the end event's task reached the handle
    # the cuts did force reconnects (how many hit a live follow depends on the machine's
    # load: a busy one ran the cutter less often, and once 24 reconnects for 100 follows)
    assert proxy.connections > len(handles) + 10


@pytest.mark.anyio
async def test_follows_of_a_long_log_through_a_link_that_drops_every_8_to_40_kb_end(
    server: TaskServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server sent what a task had written in frames of up to 256 KiB, the client's
    # place moving only at a frame's end: through a link that drops every 40 KB, a
    # follow of a 300 KB log reconnected for ever from the same place (found by QA).
    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", "http")
    rng = random.Random(8)
    command = "for i in $(seq 3000); do echo \"line $i $(printf '%090d' 0)\"; done"
    task = await server.submit(command=["sh", "-c", command])
    port = int(server.root.rsplit(":", 1)[1])
    async with (
        cutting_proxy(port, cut_after=lambda: rng.randint(8_000, 40_000)) as proxy,
        vi_flow.AsyncClient(
            base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key=server.token, home=tmp_path
        ) as client,
    ):
        handle = await client.get_task(task["taskId"])
        await handle.wait(timeout=60)

        async def follow() -> list[str]:
            return [line async for line in handle.follow_logs()]

        with anyio.fail_after(120):
            results = await asyncio.gather(*(follow() for _ in range(5)))
    expected = [f"line {i} {'0' * 90}" for i in range(1, 3001)]
    for lines in results:
        assert lines == expected
    assert proxy.connections > 5 * 8  # 300 KB through links of 8 to 40 KB


@pytest.mark.anyio
async def test_a_stalled_link_is_left_after_twice_the_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", "http")
    settings = ServerSettings(home=tmp_path / "home", heartbeat_interval=0.2)
    async with Starter(TaskServer) as starter:
        server = await starter.start(settings)
        task = await server.submit(command="echo first; sleep 1.5; echo second")
        port = int(server.root.rsplit(":", 1)[1])
        async with (
            cutting_proxy(port) as proxy,
            vi_flow.AsyncClient(
                base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key=server.token, home=tmp_path
            ) as client,
        ):
            lines = []
            with anyio.fail_after(6):  # far below the 60 s read timeout
                async for line in client.follow_logs(task["taskId"]):
                    lines.append(line)
                    if line == "first":
                        proxy.stall()  # the socket stays open, nothing more arrives
    assert lines == ["first", "second"]
    assert proxy.connections >= 2


@pytest.mark.anyio
async def test_auto_follows_over_http_when_ssh_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VI_FLOW_LOG_TRANSPORT", raising=False)  # auto
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        nowhere = closed.getsockname()[1]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        ssh_port = free.getsockname()[1]
    settings = ServerSettings(home=tmp_path / "home", ssh_port=ssh_port, ssh_public_port=nowhere)
    async with Starter(TaskServer) as starter:
        server = await starter.start(settings)
        task = await server.submit(command="echo one; echo two >&2; exit 4")
        async with vi_flow.AsyncClient(
            base_url=f"{server.root}/v1", api_key=server.token, home=tmp_path
        ) as client:
            endpoint = await client.tasks.ssh_endpoint(task["taskId"])
            assert endpoint.port == nowhere  # what the server advertises
            handle = await client.get_task(task["taskId"])
            lines = [line async for line in handle.follow_logs(stream="both")]
    assert sorted(lines) == ["one", "two"]
    assert handle.exit_code == 4


def test_bad_transport_and_ca_file_settings_name_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vi_flow._config import resolve_settings

    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", "pigeon")
    with pytest.raises(
        ValueError, match="log_transport must be one of auto, ssh, http, got 'pigeon'"
    ):
        resolve_settings(home=tmp_path)
    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", "http")
    monkeypatch.setenv("VI_FLOW_CA_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="ca_file must name a PEM file"):
        resolve_settings(home=tmp_path)


# -- the SSH follow ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_ssh_follow_of_a_quiet_task_resumes_at_once_each_time_ssh_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", "ssh")
    # a connection up for STEADY seconds has come back: 0.3 s instead of 1 s, so that ten
    # cuts take seconds
    monkeypatch.setattr(vi_flow.compute._follow, "STEADY", 0.3)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        ssh_port = free.getsockname()[1]
    async with cutting_proxy(ssh_port) as proxy, Starter(TaskServer) as starter:
        settings = ServerSettings(
            home=tmp_path / "home", ssh_port=ssh_port, ssh_public_port=proxy.port
        )
        server = await starter.start(settings)
        # quiet until the test is done cutting: it prints "end" once `release` exists
        task = await server.submit(
            command="echo start; until [ -e release ]; do sleep 0.05; done; echo end"
        )
        workdir = Path((await server.call("GET", f"/tasks/{task['taskId']}")).body["workdir"])
        async with vi_flow.AsyncClient(
            base_url=f"{server.root}/v1", api_key=server.token, home=tmp_path
        ) as client:
            lines: list[str] = []
            cutter: asyncio.Future[None] | None = None
            with anyio.fail_after(60):
                async for line in client.follow_logs(task["taskId"]):
                    lines.append(line)
                    if line == "start":
                        cutter = asyncio.ensure_future(_cut_ten_times(proxy, workdir / "release"))
            assert cutter is not None and cutter.done()
            cutter.result()
    assert lines == ["start", "end"]
    # Each drop of a connection that had come back is a first failure (no growing backoff,
    # no giving up): every cut met a live connection.
    assert proxy.connections >= 11


async def _cut_ten_times(proxy: CuttingProxy, release: Path) -> None:
    for _ in range(10):  # more drops than the reconnect attempts allowed in a row
        before = proxy.connections
        proxy.cut()
        while proxy.connections == before:  # the follow comes back at once...
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.8)  # ...its SSH session opens and stays up past STEADY
    await anyio.Path(release).touch()


@pytest.mark.anyio
async def test_an_idle_stream_sends_heartbeats(tmp_path: Path) -> None:
    settings = ServerSettings(home=tmp_path / "home", heartbeat_interval=0.1)
    async with Starter(TaskServer) as starter:
        server = await starter.start(settings)
        task = await server.submit(command="sleep 30")
        raw = b""
        async with server.session.get(
            f"{server.root}/v1/tasks/{task['taskId']}/logs?follow=true",
            headers=server.headers(),
        ) as resp:
            assert resp.headers["X-Heartbeat-Interval"] == "0.1"
            with anyio.move_on_after(3):  # 0.6 s on an idle machine; more under load
                async for chunk in resp.content.iter_any():
                    raw += chunk
                    if raw.count(b": heartbeat\n\n") >= 3:
                        break
        await server.call("POST", f"/tasks/{task['taskId']}/cancel", json={"force": True})
    assert raw.count(b": heartbeat\n\n") >= 3


@pytest.mark.anyio
async def test_the_json_snapshot_does_not_follow_a_link_either(
    server: TaskServer, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("server secret\n")
    task = await server.submit(command="echo hi")
    done = await server.wait(task["taskId"])
    log = Path(done["workdir"]).parent / "logs" / "stdout.log"
    log.unlink()
    log.symlink_to(secret)
    snapshot = await server.call("GET", f"/tasks/{task['taskId']}/logs")
    assert snapshot.status == 200 and snapshot.body["lines"] == []
    assert snapshot.body["stdoutSize"] == 0  # not the size of what the link points at


@pytest.mark.anyio
async def test_the_ssh_follow_leaves_a_stalled_link_after_its_keepalives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", "ssh")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        ssh_port = free.getsockname()[1]
    async with cutting_proxy(ssh_port) as proxy, Starter(TaskServer) as starter:
        settings = ServerSettings(
            home=tmp_path / "home", ssh_port=ssh_port, ssh_public_port=proxy.port
        )
        server = await starter.start(settings)
        task = await server.submit(command="echo first; sleep 2; echo second")
        async with vi_flow.AsyncClient(
            base_url=f"{server.root}/v1", api_key=server.token, home=tmp_path
        ) as client:
            lines: list[str] = []
            with anyio.fail_after(25):  # a 15 s keepalive would take 45 s or more
                async for line in client.follow_logs(task["taskId"]):
                    lines.append(line)
                    if line == "first":
                        proxy.stall()  # open, silent: no byte, no keepalive answer
    assert lines == ["first", "second"]
    assert proxy.connections >= 2


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["http", "ssh"])
async def test_a_progress_bar_is_followed_as_it_redraws_not_when_its_line_ends(
    server: TaskServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    # A training loop's tqdm bar redraws one line with "\r" and ends it only when it
    # closes: a follow showed nothing of it until then (an epoch later).
    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", transport)
    script = (
        "printf 'epoch 1\\n\\r  0%%|  |'; sleep 0.3; printf '\\r 50%%|█ |'; sleep 0.3; "
        "printf '\\r100%%|██|'; until [ -e release ]; do sleep 0.05; done; echo"
    )
    task = await server.submit(command=script)
    workdir = Path((await server.wait(task["taskId"], until={"running"}))["workdir"])
    got: list[str] = []
    async with vi_flow.AsyncClient(
        base_url=f"{server.root}/v1", api_key=server.token, home=tmp_path
    ) as client:
        with anyio.fail_after(30):
            async for line in client.follow_logs(task["taskId"]):
                got.append(line)
                if line == " 50%|█ |\r":  # the second redraw, while the line is unfinished
                    await anyio.Path(workdir / "release").touch()
    # each redraw one redraw late (what follows its last \r may be unfinished), then the
    # line as a whole: shown in turn on a terminal, it is the task's own output
    assert got == ["epoch 1", "\r  0%|  |\r", " 50%|█ |\r", "100%|██|"]
    assert [isinstance(line, vi_flow.LinePiece) for line in got] == [False, True, True, False]


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["http", "ssh"])
async def test_a_follow_of_both_streams_gives_a_bars_line_whole(
    server: TaskServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    # QA AC: a stderr bar's pieces came between stdout's lines, and follow_logs("both")
    # does not say whose line is whose: they could not be joined again
    monkeypatch.setenv("VI_FLOW_LOG_TRANSPORT", transport)
    script = (
        "printf '\\r 0%%' >&2; sleep 0.3; echo loss=0.9; printf '\\r50%%' >&2; sleep 0.3;"
        " echo loss=0.5; printf '\\r100%%\\n' >&2"
    )
    task = await server.submit(command=script)
    async with vi_flow.AsyncClient(
        base_url=f"{server.root}/v1", api_key=server.token, home=tmp_path
    ) as client:
        with anyio.fail_after(30):
            got = [line async for line in client.follow_logs(task["taskId"], stream="both")]
    assert not any(isinstance(line, vi_flow.LinePiece) for line in got)
    assert sorted(got) == sorted(["loss=0.9", "loss=0.5", "\r 0%\r50%\r100%"])
