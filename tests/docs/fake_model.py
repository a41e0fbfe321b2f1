"""A scripted stand-in for an OpenAI-compatible model, so the docs' ``llm`` examples run.

It answers ``POST /v1/chat/completions`` over a real loopback socket, as the protocol
says: offered tools, it asks for the first one with ``{"city": <the question's last
word>}``; given that tool's result, it answers ``It is <temp_c> °C in <city>.``, which is
all the weather examples of the docs expect of a model.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _reply(body: dict[str, Any]) -> dict[str, Any]:
    messages = body["messages"]
    question = next(m["content"] for m in messages if m["role"] == "user")
    city = question.rstrip("?").split()[-1]
    results = [m for m in messages if m["role"] == "tool"]
    message: dict[str, Any]
    if body.get("tools") and not results:
        tool = body["tools"][0]["function"]["name"]
        call = {"name": tool, "arguments": json.dumps({"city": city})}
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": call}]}  # fmt: skip
    else:
        temp = json.loads(results[-1]["content"])["temp_c"] if results else "?"
        message = {"role": "assistant", "content": f"It is {temp} °C in {city}."}
    finish = "tool_calls" if "tool_calls" in message else "stop"
    return {
        "id": f"chatcmpl-{len(messages)}", "object": "chat.completion", "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = json.dumps(_reply(body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@contextlib.contextmanager
def fake_model() -> Iterator[str]:
    """Serve the scripted model on a free loopback port; yield its base URL (``.../v1``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-model", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
