"""The shapes a tool handler may return, and what happens when it fails."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from vi_flow.execution import ToolHandlerWarning
from vi_flow.execution._tools import call_tool_handler, coerce_tool_results, is_async_handler
from vi_flow.models import ToolCall, ToolFunction, ToolResult
from vi_flow.models.limits import MAX_STRING_LENGTH

pytestmark = pytest.mark.anyio

CALLS = [ToolCall(id=f"c{i}", function=ToolFunction(name="f", arguments="{}")) for i in (1, 2)]


def test_list_of_outputs_by_position() -> None:
    assert coerce_tool_results(["a", {"b": 1}], CALLS) == [
        ToolResult(tool_call_id="c1", output="a"),
        ToolResult(tool_call_id="c2", output={"b": 1}),
    ]


def test_tool_results_and_dicts_keep_their_ids_in_any_order() -> None:
    returned = [
        {"tool_call_id": "c2", "output": 2, "is_error": True},
        ToolResult(tool_call_id="c1", output=1),
    ]
    assert coerce_tool_results(returned, CALLS) == [
        ToolResult(tool_call_id="c2", output=2, is_error=True),
        ToolResult(tool_call_id="c1", output=1),
    ]


def test_mapping_by_call_id() -> None:
    assert coerce_tool_results({"c2": "two", "c1": "one"}, CALLS) == [
        ToolResult(tool_call_id="c1", output="one"),
        ToolResult(tool_call_id="c2", output="two"),
    ]


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        (["only one"], "one per call"),
        ("a string", "list with one entry per call"),
        ({"c1": 1}, r"no answer for \['c2'\]"),
        ({"c1": 1, "nope": 2}, r"unknown call id\(s\) \['nope'\]; no answer for \['c2'\]"),
        ([ToolResult(tool_call_id="c1"), ToolResult(tool_call_id="c1")], "answer"),
        ([{"tool_call_id": "c1", "oops": 1}, 2], "unknown ToolResult field"),
        ([object(), 1], "not JSON-ready"),
        ([b"hello", 1], "bytes are not JSON"),  # was sent as base85 text (found by QA)
    ],
)
def test_bad_shapes_are_type_errors(returned: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        coerce_tool_results(returned, CALLS)


def test_an_output_json_cannot_hold_names_the_call_and_the_value() -> None:
    # orjson writes nan as null: the run would have read "no value" from the tool
    with pytest.raises(ValueError, match=r"call 'c2' .*temps\[1\]: expected a finite number"):
        coerce_tool_results([1, {"temps": [20.5, float("nan")]}], CALLS)


def test_an_output_past_the_servers_limits_names_the_call_and_the_limit() -> None:
    # QA: a 9 MiB string went out, the server refused it (422) and the run stayed
    # paused for its hour, waiting for an answer
    with pytest.raises(ValueError, match=r"call 'c1' is past the server's limits: output\.text"):
        coerce_tool_results([{"text": "x" * (MAX_STRING_LENGTH + 1)}, 2], CALLS)


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        (("x" * (MAX_STRING_LENGTH + 1),), "longer than"),  # a tuple is a list on the wire
        (functools.reduce(lambda inner, _: [inner], range(65), []), "nest deeper"),
        (functools.reduce(lambda inner, _: {"k": inner}, range(70), {}), "nest deeper"),
    ],
    ids=["tuple-of-a-long-string", "lists-65-deep", "dicts-70-deep"],
)
def test_outputs_the_server_would_refuse_are_caught_as_it_reads_them(
    output: Any, problem: str
) -> None:
    # QA: these passed the client's check, then the server refused them (or, nested 65
    # deep, failed the run) as it counts nesting from the body's root
    with pytest.raises(ValueError, match=f"past the server's limits.*{problem}"):
        coerce_tool_results([output, 1], CALLS)


def test_results_over_the_request_body_limit_are_a_value_error() -> None:
    # QA: 100,000 strings of 700 characters: 70 MB, each value within its own limits
    big = ["y" * 700] * 50_000
    with pytest.raises(ValueError, match=r"bytes of JSON, over the server's limit of 67108864"):
        coerce_tool_results([big, big], CALLS)


async def test_raising_handler_answers_every_call_with_an_error() -> None:
    def handler(calls: list[ToolCall]) -> list[Any]:
        raise OSError("disk gone")

    with pytest.warns(ToolHandlerWarning, match=r"OSError: disk gone.*c1, c2"):
        results = await call_tool_handler(handler, CALLS)
    assert [r.tool_call_id for r in results] == ["c1", "c2"]
    assert all(r.is_error and "disk gone" in r.output for r in results)


async def test_async_and_sync_handlers() -> None:
    async def async_handler(calls: list[ToolCall]) -> list[Any]:
        return [c.id for c in calls]

    def sync_handler(calls: list[ToolCall]) -> list[Any]:
        return [c.id for c in calls]

    assert is_async_handler(async_handler) and not is_async_handler(sync_handler)
    for handler in (async_handler, sync_handler):
        results = await call_tool_handler(handler, CALLS)
        assert [r.output for r in results] == ["c1", "c2"]
