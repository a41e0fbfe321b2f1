"""The run stream's fast path (issue 15): lazy events, pieces, lists per chunk.

A stream event of a class with plain fields keeps its ``data:`` bytes and reads the JSON
on first use; these tests pin that it is then the event :func:`parse_event` makes, that
what ``parse_event`` would have made an ``UnknownEvent`` still is one where it can be
told up front, and that lists per chunk keep the tool-call hook's order. A scripted SSE
server on 127.0.0.1 sends the bodies.
"""

from __future__ import annotations

import copy
import logging
import pickle
from typing import Any

import aiohttp
import anyio.to_thread
import orjson
import pytest
from aiohttp import web

import vi_flow
from vi_flow.execution._stream import _PIECE, _pieces, event_batches
from vi_flow.models import (
    FlowCompleted,
    LogLine,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepInput,
    StepOutput,
    StepPaused,
    StepStarted,
    StreamEvent,
    TokenUsage,
    ToolCall,
    ToolCallsRequired,
    UnknownEvent,
)
from vi_flow.models.events import ToolFunction, parse_event

from .test_reconnect import done, frame, log, scripted, stream_of

pytestmark = pytest.mark.anyio

RUN = "run_s"


def one_of_each() -> list[StreamEvent]:
    base: dict[str, Any] = {"execution_id": RUN, "time": 99}
    call = ToolCall(id="c1", function=ToolFunction(name="f", arguments='{"a": 1}'))
    usage = TokenUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    return [
        RunStarted(**base, event_id=1, flow_id="f", flow_version="2"),
        StepStarted(**base, event_id=2, step_id="s", block="llm", index=1),
        StepInput(**base, event_id=3, step_id="s", input={"q": [1, None]}),
        LogLine(**base, event_id=4, step_id="s", stream="stderr", line="hi"),
        StepOutput(**base, event_id=5, step_id="s", output="out"),
        StepCompleted(**base, event_id=6, step_id="s", block="llm", duration_ms=5, usage=usage),
        StepFailed(**base, event_id=7, step_id="s", block="task", error="boom", code="X"),
        StepPaused(**base, event_id=8, step_id="s"),
        ToolCallsRequired(**base, event_id=9, step_id="s", tool_calls=[call]),
        FlowCompleted(**base, event_id=10, output="ok", usage=usage),
    ]


async def read(body: bytes) -> list[StreamEvent]:
    async with scripted(lambda n, last: body) as (url, _), aiohttp.ClientSession() as s:
        return [e async for e in stream_of(s, url, running=[], sleeps=[])]


async def test_every_type_arrives_as_parse_event_would_make_it() -> None:
    sent = one_of_each()
    got = await read(b"".join(frame(e) for e in sent))
    assert [type(e) for e in got] == [type(e) for e in sent]
    assert [e.event_id for e in got] == list(range(1, 11))  # known before any field is read
    assert got == sent
    assert [repr(e) for e in got] == [repr(e) for e in sent]
    for event in got:
        name, data = frame(event).split(b"\nevent: ")[1].split(b"\ndata: ")
        assert parse_event(name.decode(), data.rstrip(b"\n"), event.event_id) == event


async def test_plain_events_read_their_json_on_first_use() -> None:
    (first, _) = await read(frame(log(1)) + frame(done(2)))
    assert type(object.__getattribute__(first, "_wire")) is bytes  # not decoded yet
    assert isinstance(first, LogLine) and first.event_id == 1
    assert type(object.__getattribute__(first, "_wire")) is bytes  # the id needed no JSON
    assert first.line == "l1"
    decoded = object.__getattribute__(first, "_wire")
    assert type(decoded) is dict  # decoded once, on the first read
    assert first.execution_id == RUN and first.time == 0
    assert object.__getattribute__(first, "_wire") is decoded  # and not again


async def test_a_nested_value_is_made_once_and_kept() -> None:
    usage = {"promptTokens": 3, "completionTokens": 4, "totalTokens": 7}
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = (
        b'id: 1\nevent: step_completed\ndata: {"executionId":"run_s","usage":%s}\n\n'
        b'id: 2\nevent: tool_calls_required\ndata: {"executionId":"run_s","toolCalls":%s}\n\n'
    ) % (orjson.dumps(usage), orjson.dumps(calls)) + frame(done(3))
    completed, required, _ = await read(body)
    assert isinstance(completed, StepCompleted) and isinstance(required, ToolCallsRequired)
    assert completed.usage == TokenUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    assert completed.usage is completed.usage
    assert required.tool_calls is required.tool_calls
    assert required.tool_calls[0].function.name == "f"


async def test_a_lazy_event_copies_pickles_and_hashes_as_an_eager_one() -> None:
    lazy = (await read(frame(log(1)) + frame(done(2))))[0]
    twin = (await read(frame(log(1)) + frame(done(2))))[0]
    assert pickle.loads(pickle.dumps(lazy)) == log(1)
    assert copy.copy(twin) == log(1) and hash(lazy) == hash(log(1))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        (b"log", b"not json"),
        (b"log", b'{"line": "no executionId"}'),
        (b"log", b"[1, 2]"),
        (b"step_completed", b'{"usage": {"promptTokens": "many"}, "executionId": "run_s"}'),
        (b"brand_new", b'{"executionId": "run_s"}'),
    ],
)
async def test_what_parse_event_makes_unknown_is_unknown_in_a_stream(
    name: bytes, data: bytes
) -> None:
    body = b"id: 1\nevent: %s\ndata: %s\n\n" % (name, data) + frame(done(2))
    first, end = await read(body)
    assert isinstance(first, UnknownEvent) and first.type == name.decode()
    assert first == parse_event(name.decode(), data, 1)
    assert isinstance(end, FlowCompleted)


def sent_as(body: bytes, shape: str) -> bytes:
    """``body`` as a server or a proxy may send it: plain, after a heartbeat comment
    in the same read, or with CRLF line ends. QA: the last two took another path,
    where a damaged event became an UnknownEvent, and a misshapen usage a silent
    TokenUsage(0, 0, 0)."""
    if shape == "heartbeat":
        return b": heartbeat\n\n" + body
    return body.replace(b"\n", b"\r\n") if shape == "crlf" else body


SHAPES = pytest.mark.parametrize("shape", ["plain", "heartbeat", "crlf"])


@SHAPES
async def test_a_corrupted_object_keeps_its_class_with_defaults_and_a_warning(
    caplog: pytest.LogCaptureFixture, shape: str
) -> None:
    # Looks like the server's data (prefix and closing brace) but does not parse: only
    # reading it can tell, and by then it is a LogLine.
    body = b'id: 1\nevent: log\ndata: {"executionId":"run_s", oops}\n\n' + frame(done(2))
    first, _ = await read(sent_as(body, shape))
    assert isinstance(first, LogLine) and first.event_id == 1
    with caplog.at_level(logging.WARNING, logger="vi_flow"):
        assert first.line == "" and first.execution_id == ""
    assert "event 1 (log): its data is not an event object" in caplog.text


@pytest.mark.parametrize(
    ("name", "data", "field"),
    [
        (b"step_completed", b'{"executionId":"run_s","stepId":"s","usage":{"promptTokens":"many"}}', "usage"),
        (b"step_completed", b'{"executionId":"run_s","stepId":"s","usage":{"totalTokens":null}}', "usage"),
        (b"tool_calls_required", b'{"executionId":"run_s","stepId":"s","toolCalls":[{"id":1}]}', "toolCalls"),
        (b"tool_calls_required", b'{"executionId":"run_s","stepId":"s","toolCalls":"x"}', "toolCalls"),
    ],
)  # fmt: skip
@SHAPES
async def test_a_nested_value_of_the_wrong_shape_keeps_its_default_with_a_warning(
    name: bytes, data: bytes, field: str, caplog: pytest.LogCaptureFixture, shape: str
) -> None:
    # Only decoding tells the shape, and a stream decodes on first use: the event keeps
    # its class and its other fields, the field that does not fit its default.
    body = b"id: 1\nevent: %s\ndata: %s\n\n" % (name, data) + frame(done(2))
    first, end = await read(sent_as(body, shape))
    assert isinstance(first, (StepCompleted, ToolCallsRequired)) and first.event_id == 1
    with caplog.at_level(logging.WARNING, logger="vi_flow"):
        assert first.step_id == "s" and first.execution_id == "run_s"
        assert "shape" not in caplog.text  # only what is read is structured
        nested = first.usage if isinstance(first, StepCompleted) else first.tool_calls
    assert nested == (None if field == "usage" else [])
    assert f"event 1 ({name.decode()}): its {field} is not of its type's shape" in caplog.text
    assert isinstance(end, FlowCompleted)
    # parse_event, which decodes at once, still makes such data an UnknownEvent
    assert isinstance(parse_event(name.decode(), data, 1), UnknownEvent)


async def test_a_big_chunk_is_read_in_pieces_without_loss() -> None:
    count = 3 * _PIECE // 40
    body = b"".join(frame(log(i)) for i in range(1, count)) + frame(done(count))
    got = await read(body)
    assert [e.event_id for e in got] == list(range(1, count + 1))
    assert got[-2] == log(count - 1)


def test_pieces_cut_only_big_chunks() -> None:
    assert _pieces(b"x" * _PIECE) == (b"x" * _PIECE,)
    cut = _pieces(b"".join(bytes([i]) * 1000 for i in range(200)))
    assert b"".join(cut) == b"".join(bytes([i]) * 1000 for i in range(200))
    assert max(map(len, cut)) == _PIECE


async def test_lists_start_at_tool_calls_and_the_hook_runs_when_they_are_taken() -> None:
    call = ToolCall(id="c1", function=ToolFunction(name="f"))
    tcr = ToolCallsRequired(execution_id=RUN, event_id=3, step_id="s", tool_calls=[call])
    sent: list[StreamEvent] = [log(1), log(2), tcr, log(4), done(5)]
    body = b"".join(map(frame, sent))
    seen: list[str] = []

    async def hook(event: ToolCallsRequired) -> None:
        seen.append(f"hook {event.event_id}")

    async with scripted(lambda n, last: body) as (url, _), aiohttp.ClientSession() as s:
        stream = stream_of(s, url, running=[], sleeps=[])
        stream._on_tool_calls = hook
        lists = [[e.event_id for e in batch] async for batch in stream.batches()]
        assert lists == [[1, 2], [3, 4], [5]] and seen == ["hook 3"]
        seen.clear()
        stream = stream_of(s, url, running=[], sleeps=[])
        stream._on_tool_calls = hook
        async for event in stream:
            seen.append(f"event {event.event_id}")  # noqa: PERF401 - the hook writes here too
    assert seen == ["event 1", "event 2", "hook 3", "event 3", "event 4", "event 5"]


async def test_event_batches_knows_only_run_streams() -> None:
    async def other() -> Any:
        yield log(1)

    assert event_batches(other()) is None


def _run_app(body: bytes) -> web.Application:
    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/runs/{run}/events", events)
    return app


async def test_sync_events_flatten_the_lists_and_a_break_closes_the_stream() -> None:
    count = 2 * _PIECE // 40
    body = b"".join(frame(log(i)) for i in range(1, count)) + frame(done(count))
    runner = web.AppRunner(_run_app(body))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    def sync_read() -> tuple[list[int], list[int]]:
        with vi_flow.Client(base_url=url, api_key="k") as client:
            run = client.flow("f").run(RUN)
            head = []
            events = run.events()
            for event in events:
                head.append(event.event_id)
                if len(head) == 3:
                    break
            events.close()  # type: ignore[attr-defined]
            return head, [e.event_id for e in run.events()]

    try:
        head, whole = await anyio.to_thread.run_sync(sync_read)
    finally:
        await runner.cleanup()
    assert head == [1, 2, 3]
    assert whole == list(range(1, count + 1))
