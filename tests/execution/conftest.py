"""Fixtures for the execution tests: clients on the real local server and a few flows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import vi_flow
from vi_flow.execution import AsyncFlow, PausedResult

GREET = {"block": "template", "id": "greet", "settings": {"template": "Hello {{ message }}"}}
ASK = {
    "block": "tool",
    "id": "ask",
    "settings": {"tool": "lookup", "arguments": {"q": "{{ message }}"}},
}
FINAL = {"block": "template", "id": "final", "settings": {"template": "got {{ steps.ask.output }}"}}

TOOL_FLOW: dict[str, Any] = {"name": "tools", "blocks": [GREET, ASK, FINAL]}
"""greet -> ask (one ``lookup`` tool call) -> final (renders the tool's output)."""

LOOP_FLOW: dict[str, Any] = {
    "name": "three pauses",
    "blocks": [
        {"block": "tool", "id": f"ask{i}", "settings": {"tool": "lookup", "arguments": {"n": i}}}
        for i in range(1, 4)
    ],
}
"""Three tool steps in a row: three tool rounds."""

FAIL_FLOW: dict[str, Any] = {
    "name": "fails",
    "blocks": [
        GREET,
        {"block": "template", "id": "broken", "settings": {"template": "{{ nowhere.to.go }}"}},
    ],
}
"""Fails at step ``broken``: the template names something that does not exist."""

PARAM_FLOW: dict[str, Any] = {
    "name": "params",
    "inputs": [
        {"name": "city", "required": True},
        {"name": "unit", "required": False, "default": "C"},
    ],
    "blocks": [
        {
            "block": "template",
            "id": "say",
            "settings": {"template": "{{ parameters.city }} in {{ parameters.unit }}"},
        }
    ],
}


def emit_flow(count: int, interval: float = 0) -> dict[str, Any]:
    """A flow whose one step streams ``count`` log events."""
    return {
        "name": "emit",
        "blocks": [
            {"block": "emit", "id": "emit", "settings": {"count": count, "interval": interval}}
        ],
    }


@pytest.fixture
async def aclient() -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as client:
        yield client


@pytest.fixture
def client() -> Iterator[vi_flow.Client]:
    with vi_flow.Client() as c:
        yield c


async def new_flow(client: vi_flow.AsyncClient, spec: dict[str, Any]) -> AsyncFlow:
    """Create ``spec`` on the server and return its execution proxy."""
    created = await client.flows.create(spec)
    return client.flow(created.flow_id)


async def paused_at_ask(client: vi_flow.AsyncClient) -> tuple[AsyncFlow, PausedResult]:
    """A run of :data:`TOOL_FLOW`, paused at ``ask`` for its one ``lookup`` call."""
    flow = await new_flow(client, TOOL_FLOW)
    paused = await flow.execute(message="bob")
    assert isinstance(paused, PausedResult), paused
    return flow, paused
