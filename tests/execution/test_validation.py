"""Arguments are checked before any request: the client points at a port nobody listens on."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import vi_flow
from vi_flow.models import MAX_NESTING, ToolCall

pytestmark = pytest.mark.anyio

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
TOO_DEEP: Any = 1
for _ in range(MAX_NESTING):
    TOO_DEEP = [TOO_DEEP]


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
async def offline() -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient(base_url=_dead_url(), api_key="k", max_retries=0) as client:
        yield client


@pytest.fixture
def offline_sync() -> Iterator[vi_flow.Client]:
    with vi_flow.Client(base_url=_dead_url(), api_key="k", max_retries=0) as client:
        yield client


BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"version": "main"}, ValueError, "version"),
    ({"version": "dev"}, ValueError, "'dev'"),
    ({"version": 0}, ValueError, "version"),
    ({"version": -3}, ValueError, "version"),
    ({"version": True}, ValueError, "version"),
    ({"version": 1.5}, ValueError, "version"),
    ({"tools": [TOOL] * 65}, ValueError, "at most 64 tools"),
    ({"tools": [{"type": "function"}]}, ValueError, r"tools\[0\].function"),
    ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, ValueError, r"tools\[0\].type"),
    ({"tools": [TOOL, {"function": {"name": ""}}]}, ValueError, r"tools\[1\].function.name"),
    ({"tools": ["lookup"]}, ValueError, r"tools\[0\]"),
    ({"tools": TOOL}, ValueError, "list of OpenAI tool"),
    # found by QA: two tools of one name were sent on; which one a call meant, no one knows
    ({"tools": [TOOL, TOOL]}, ValueError, r"tools\[1\].function.name: 'lookup' names tools\[0\]"),
    ({"attachments": ["https://x.test/a.png"] * 11}, ValueError, "at most 10 attachments"),
    ({"attachments": ["http://x.test/a.png"]}, ValueError, r"attachments\[0\].*https"),
    ({"attachments": ["https://ok.test/a", "ftp://x"]}, ValueError, r"attachments\[1\]"),
    ({"tool_choice": "always"}, ValueError, "tool_choice"),
    ({"tool_choice": {"type": "function"}}, ValueError, "tool_choice"),
    # from the last notes: a choice no model could follow was sent, and dropped unseen
    ({"tool_choice": "required"}, ValueError, "tool_choice: 'required' needs tools"),
    (
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
        ValueError,
        r"tool_choice.function.name: names the function 'other', which is not",
    ),
    ({"max_tool_rounds": -1}, ValueError, "max_tool_rounds"),
    ({"max_tool_rounds": "3"}, ValueError, "max_tool_rounds"),
    ({"message": 3}, TypeError, "message"),
    ({"parameters": ["a"]}, TypeError, "parameters"),
    ({"parameters": {"p": TOO_DEEP}}, ValueError, f"parameters: .* deeper than {MAX_NESTING}"),
    ({"block_overrides": {"s": 1}}, TypeError, "block_overrides"),
    ({"trace": "yes"}, TypeError, "trace"),
    ({"tool_handler": "not callable"}, TypeError, "tool_handler"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD)
async def test_bad_arguments_raise_before_any_request(
    offline: vi_flow.AsyncClient, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    flow = offline.flow("flow_x")
    with pytest.raises(error, match=match):
        await flow.execute(**kwargs)
    with pytest.raises(error, match=match):
        flow.events(**kwargs)
    with pytest.raises(error, match=match):
        flow.steps(**kwargs)


@pytest.mark.parametrize("version", ["draft", "production", 1, 42])
async def test_good_versions_reach_the_network(offline: vi_flow.AsyncClient, version: Any) -> None:
    with pytest.raises(vi_flow.APIConnectionError):
        await offline.flow("flow_x").execute(version=version)


async def test_execute_async_checks_too(offline: vi_flow.AsyncClient) -> None:
    with pytest.raises(ValueError, match="version"):
        await offline.flow("flow_x").execute_async(version="latest")


def test_sync_flow_rejects_async_handler_before_any_request(offline_sync: vi_flow.Client) -> None:
    async def handler(calls: list[ToolCall]) -> list[Any]:
        return []

    class AsyncCallable:
        async def __call__(self, calls: list[ToolCall]) -> list[Any]:
            return []

    flow = offline_sync.flow("flow_x")
    for bad in (handler, AsyncCallable()):
        with pytest.raises(TypeError, match="sync tool_handler"):
            flow.execute(tool_handler=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="sync tool_handler"):
            flow.events(tool_handler=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="sync tool_handler"):
            flow.steps(tool_handler=bad)  # type: ignore[arg-type]


def test_sync_flow_checks_version(offline_sync: vi_flow.Client) -> None:
    flow = offline_sync.flow("flow_x")
    with pytest.raises(ValueError, match="'main'"):
        flow.execute(version="main")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version"):
        flow.events(version=0)


def test_empty_flow_id_is_rejected(offline_sync: vi_flow.Client) -> None:
    with pytest.raises(ValueError, match="flow_id"):
        offline_sync.flow("")
