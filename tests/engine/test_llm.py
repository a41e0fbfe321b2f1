"""The llm block against a fake OpenAI-compatible server on 127.0.0.1 (real HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from .conftest import StartServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


class FakeOpenAI:
    """Answers /v1/chat/completions: a tool call while ``tool_rounds`` last, then text."""

    def __init__(self, tool_rounds: int) -> None:
        self.tool_rounds = tool_rounds
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.auth.append(request.headers.get("Authorization", ""))
        n = len(self.requests)
        if n <= self.tool_rounds:
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{n}", "type": "function",
                "function": {"name": "lookup", "arguments": orjson.dumps({"q": n}).decode()}}]}  # fmt: skip
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": f"answer after {n} calls"}
            finish = "stop"
        return web.json_response({
            "id": f"chatcmpl-{n}", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })  # fmt: skip


async def _fake(rounds: int) -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(rounds)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async for f in _fake(2):
        yield f


async def test_llm_tool_loop_and_usage(start_server: StartServer, fake: FakeOpenAI) -> None:
    server = await start_server(llm_base_url=fake.url, llm_api_key="sk-test")
    flow = await server.flow({"block": "llm", "id": "chat", "settings": {
        "system": "be brief", "prompt": "Q: {{ message }}", "model": "m1", "temperature": 0}})  # fmt: skip
    body = {"message": "hi", "tools": TOOLS, "toolChoice": "auto",
            "attachments": ["https://example.com/cat.png"]}  # fmt: skip
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json=body)).body
    run_id = outcome["executionId"]
    for n in (1, 2):
        assert outcome["state"] == "paused", outcome
        assert outcome["toolCalls"][0]["id"] == f"call_{n}"
        results = {"toolResults": [{"toolCallId": f"call_{n}", "output": {"r": n}}]}
        answer = await server.call(
            "POST", f"/runs/{run_id}/tool-results", json=results, params={"wait": "true"}
        )
        outcome = answer.body
    assert outcome["state"] == "completed" and outcome["output"] == "answer after 3 calls"
    assert outcome["usage"] == {"promptTokens": 30, "completionTokens": 15, "totalTokens": 45}
    assert outcome["steps"][0]["usage"]["totalTokens"] == 45
    first, last = fake.requests[0], fake.requests[-1]
    assert first["model"] == "m1" and first["tools"] == TOOLS and first["tool_choice"] == "auto"
    assert first["messages"][0] == {"role": "system", "content": "be brief"}
    assert first["messages"][1]["content"][0] == {"type": "text", "text": "Q: hi"}
    assert first["messages"][1]["content"][1]["image_url"]["url"] == "https://example.com/cat.png"
    assert [m["role"] for m in last["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]
    assert last["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": '{"r":1}'}
    assert fake.auth == ["Bearer sk-test"] * 3
    trace = (await server.call("GET", f"/runs/{run_id}/trace")).body
    assert trace["usage"]["totalTokens"] == 45


async def test_iteration_limit_fails_clearly(start_server: StartServer, fake: FakeOpenAI) -> None:
    server = await start_server(llm_base_url=fake.url)
    flow = await server.flow({"block": "llm", "id": "chat", "settings": {"max_iterations": 1}})
    outcome = (
        await server.call("POST", f"/flows/{flow}/execute", json={"message": "x", "tools": TOOLS})
    ).body
    call_id = outcome["toolCalls"][0]["id"]
    answer = await server.call("POST", f"/runs/{outcome['executionId']}/tool-results",
                               json={"toolResults": [{"toolCallId": call_id, "output": 1}]},
                               params={"wait": "true"})  # fmt: skip
    assert answer.body["state"] == "failed" and answer.body["failedStep"] == "chat"
    assert "limit of 1 model calls" in answer.body["error"]
    assert len(fake.requests) == 1


async def test_llm_without_endpoint_fails_the_step(start_server: StartServer) -> None:
    server = await start_server()
    flow = await server.flow({"block": "llm"})
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json={"message": "x"})).body
    assert outcome["state"] == "failed" and "llm_base_url" in outcome["error"]
