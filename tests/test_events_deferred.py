"""Events parsed from the wire fill their fields on first use, exactly as an eager parse.

``parse_event`` defers structuring the event classes whose fields are all plain JSON
values (issue 15: a reader that only counts events should not pay for the rest). These
tests pin that such an event is indistinguishable from one built eagerly.
"""

from __future__ import annotations

import copy
import pickle
import sys
import threading
from typing import Any

import attrs
import orjson
import pytest

from vi_flow.models._base import to_wire
from vi_flow.models.events import (
    EVENT_TYPES,
    LogLine,
    StepOutput,
    UnknownEvent,
    event_to_wire,
    parse_event,
)

SAMPLES: dict[str, dict[str, Any]] = {
    "run_started": {"flowId": "f", "flowVersion": "3"},
    "step_started": {"stepId": "s", "block": "llm", "index": 2},
    "step_input": {"stepId": "s", "input": {"a": [1, None]}},
    "step_output": {"stepId": "s", "output": "text"},
    "step_failed": {"stepId": "s", "block": "task", "error": "boom", "code": "X"},
    "step_paused": {"stepId": "s", "reason": "tool_calls"},
    "log": {"stepId": "s", "stream": "stderr", "line": "hello"},
}


def _data(name: str) -> bytes:
    return orjson.dumps({"executionId": "run_1", "eventId": 7, "time": 11, **SAMPLES[name]})


def _eager(name: str) -> Any:
    return EVENT_TYPES[name](
        execution_id="run_1", event_id=7, time=11,
        **{f.name: to_wire_value(name, f.name) for f in attrs.fields(EVENT_TYPES[name])
           if f.name not in ("execution_id", "event_id", "time")},
    )  # fmt: skip


def to_wire_value(name: str, field: str) -> Any:
    default = attrs.fields_dict(EVENT_TYPES[name])[field].default
    camel = field.split("_")[0] + "".join(p.title() for p in field.split("_")[1:])
    return SAMPLES[name].get(camel, default)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_deferred_event_is_the_eager_one(name: str) -> None:
    assert type(parse_event(name, _data(name), 7)) is EVENT_TYPES[name]
    assert parse_event(name, _data(name), 7) == _eager(name)
    if name == "step_input":  # a dict field: neither is hashable
        with pytest.raises(TypeError):
            hash(parse_event(name, _data(name), 7))
    else:
        assert hash(parse_event(name, _data(name), 7)) == hash(_eager(name))
    assert repr(parse_event(name, _data(name), 7)) == repr(_eager(name))
    assert to_wire(parse_event(name, _data(name), 7)) == to_wire(_eager(name))
    assert event_to_wire(parse_event(name, _data(name), 7)) == event_to_wire(_eager(name))
    assert pickle.loads(pickle.dumps(parse_event(name, _data(name), 7))) == _eager(name)
    assert copy.copy(parse_event(name, _data(name), 7)) == _eager(name)
    assert attrs.evolve(parse_event(name, _data(name), 7)) == _eager(name)


def test_the_sse_id_wins_and_fields_read_one_by_one() -> None:
    event = parse_event("log", _data("log"), 99)
    assert isinstance(event, LogLine)
    assert event.event_id == 99 and event.line == "hello" and event.stream == "stderr"
    assert event.execution_id == "run_1" and event.time == 11


def test_a_missing_execution_id_is_still_an_unknown_event() -> None:
    assert isinstance(parse_event("log", b'{"line": "x"}', 1), UnknownEvent)
    assert isinstance(parse_event("log", b"[1, 2]", 1), UnknownEvent)
    assert isinstance(parse_event("log", b"not json", 1), UnknownEvent)


def test_a_misspelt_field_is_an_attribute_error_naming_it() -> None:
    event = parse_event("step_output", _data("step_output"), 7)
    assert isinstance(event, StepOutput)
    with pytest.raises(AttributeError, match="'StepOutput' object has no attribute 'outptu'"):
        event.outptu  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError, match="outptu"):
        StepOutput(execution_id="r").outptu  # type: ignore[attr-defined]  # noqa: B018


def test_events_filled_from_many_threads_at_once_agree() -> None:
    events = [parse_event("log", _data("log"), i) for i in range(2000)]
    seen: list[list[str]] = [[] for _ in range(4)]

    def read(k: int) -> None:
        seen[k] = [e.line for e in events]  # type: ignore[union-attr]

    threads = [threading.Thread(target=read, args=(k,)) for k in range(4)]
    # Threads switch every microsecond: the race of two first reads is then certain to
    # happen (the CI once hit it at the default 5 ms).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert all(s == ["hello"] * 2000 for s in seen)
