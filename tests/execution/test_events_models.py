"""Event models: the tagged union by SSE name, round trips, unknown types and bad data."""

from __future__ import annotations

import orjson
import pytest

from vi_flow.models import (
    EVENT_TYPES,
    Condition,
    ExecutionOutcome,
    FlowCompleted,
    LogLine,
    RunStarted,
    RunTrace,
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
    ToolFunction,
    UnknownEvent,
    event_name,
    event_to_wire,
    from_wire,
    parse_event,
)

USAGE = TokenUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
CALL = ToolCall(id="call_1", function=ToolFunction(name="lookup", arguments='{"q": 1}'))
BASE = {"execution_id": "run_1", "event_id": 9, "time": 1_700_000_000_000}

EVENTS: list[StreamEvent] = [
    RunStarted(**BASE, flow_id="flow_1", flow_version="3"),
    StepStarted(**BASE, step_id="s", block="llm", index=2),
    StepInput(**BASE, step_id="s", input={"a": [1, 2]}),
    StepOutput(**BASE, step_id="s", output="text"),
    StepCompleted(**BASE, step_id="s", block="llm", output={"x": None}, duration_ms=5, usage=USAGE),
    StepFailed(**BASE, step_id="s", block="template", error="boom", code="TEMPLATE_ERROR"),
    StepPaused(**BASE, step_id="s", reason="tool_calls"),
    ToolCallsRequired(**BASE, step_id="s", tool_calls=[CALL]),
    FlowCompleted(**BASE, status=Condition.FAILED, error="boom", failed_step="s", duration_ms=8),
    LogLine(**BASE, step_id="s", stream="stderr", line="warning"),
]


def test_every_known_type_has_a_class() -> None:
    assert set(EVENT_TYPES) == {event_name(e) for e in EVENTS}


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_round_trip_through_the_wire(event: StreamEvent) -> None:
    name, data = event_to_wire(event)
    assert name == event_name(event)
    assert b"executionId" in data and b"eventId" in data  # camelCase on the wire
    assert parse_event(name, data, event.event_id) == event


def test_sse_id_wins_over_data() -> None:
    name, data = event_to_wire(EVENTS[0])
    assert parse_event(name, data, 42).event_id == 42
    assert parse_event(name, data).event_id == 9


def test_unknown_fields_are_ignored_and_missing_ones_default() -> None:
    event = parse_event("step_started", b'{"executionId": "r", "stepId": "a", "new": [1]}', 1)
    assert event == StepStarted(execution_id="r", event_id=1, step_id="a")


def test_unknown_status_is_kept() -> None:
    event = parse_event("flow_completed", b'{"executionId": "r", "status": "Paused"}', 1)
    assert isinstance(event, FlowCompleted)
    assert event.status.value == "Paused" and not event.status.known


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("brand_new", b'{"executionId": "r", "time": 5, "x": 1}'),
        ("step_started", b"not json"),
        ("step_started", b"[1, 2]"),
        ("step_started", b'{"time": 1}'),  # no executionId
        ("flow_completed", b'{"executionId": "r", "usage": {"promptTokens": "many"}}'),
        ("tool_calls_required", b'{"executionId": "r", "toolCalls": [{"id": 1}]}'),
    ],
)
def test_anything_else_becomes_unknown_event(name: str, data: bytes) -> None:
    event = parse_event(name, data, 3)
    assert isinstance(event, UnknownEvent)
    assert event.type == name and event.event_id == 3
    assert event_to_wire(event)[0] == name


def test_unknown_event_keeps_its_data() -> None:
    event = parse_event("brand_new", b'{"executionId": "r", "time": 5, "x": 1}', 3)
    assert isinstance(event, UnknownEvent)
    assert event.execution_id == "r" and event.time == 5
    assert event.data["x"] == 1
    assert orjson.loads(event_to_wire(event)[1])["x"] == 1


def test_outcome_and_trace_models() -> None:
    outcome = from_wire(
        {
            "executionId": "r",
            "state": "paused",
            "stepId": "s",
            "toolCalls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
            "steps": [{"stepId": "s", "block": "tool", "status": "Running", "extra": 1}],
            "usage": {"promptTokens": 1, "completionTokens": 2, "totalTokens": 3},
        },
        ExecutionOutcome,
    )
    assert outcome.tool_calls[0].function.parsed_arguments() == {}
    assert outcome.steps[0].status is Condition.RUNNING
    trace = from_wire({"executionId": "r", "status": "Succeeded", "durationMs": 4}, RunTrace)
    assert trace.status is Condition.SUCCEEDED and trace.steps == []


def test_events_are_frozen_and_hashable() -> None:
    event = EVENTS[1]
    with pytest.raises(AttributeError):
        event.step_id = "other"  # type: ignore[misc]
    assert hash(event) == hash(parse_event(*event_to_wire(event), event.event_id))
