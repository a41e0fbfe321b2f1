"""A stand-in event source for the client benchmark: one finished run, served as fast as it goes.

``python benchmarks/_sse_source.py COUNT PORT`` listens on ``127.0.0.1:PORT`` and answers ``GET /v1/runs/{id}/events`` with the same body every time: ``COUNT``
events in the mix of a real run, made with the SDK's own models and the server's frame
layout (``id:``, ``event:``, ``data:``), ending with ``flow_completed``. The body is
built once and written in 64 KiB pieces, so the source costs next to nothing and the
client benchmark measures the readers alone (raw aiohttp + orjson against the SDK).
"""

from __future__ import annotations

import sys
from typing import Any

from aiohttp import web

from vi_flow.models.events import (
    FlowCompleted,
    LogLine,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepInput,
    StepOutput,
    StepPaused,
    StepStarted,
    TokenUsage,
    ToolCall,
    ToolCallsRequired,
    ToolFunction,
    event_to_wire,
)

RUN = "run-bench"
PIECE = 1 << 16


def _usage() -> TokenUsage:
    return TokenUsage(prompt_tokens=812, completion_tokens=64, total_tokens=876)


def _cycle(i: int, step: str) -> Any:
    """One of the nine event types of a run's body (logs are half of them, as in real runs)."""
    base: dict[str, Any] = {"execution_id": RUN, "event_id": i, "time": 1_764_000_000_000 + i}
    kind = i % 16
    if kind < 8:
        return LogLine(**base, step_id=step, stream="stdout" if kind else "stderr",
                       line=f"epoch 3 batch {i}: loss=0.{i % 9973:04d} lr=3e-4 tokens/s=51234")  # fmt: skip
    call = ToolCall(id=f"call_{i}", function=ToolFunction(name="search", arguments='{"q": "x"}'))
    return [
        StepStarted(**base, step_id=step, block="llm", index=i % 7),
        StepInput(**base, step_id=step, input={"prompt": "Summarize: " + "word " * 30}),
        StepOutput(**base, step_id=step, output={"text": "A summary " * 12}),
        StepCompleted(
            **base,
            step_id=step,
            block="llm",
            output={"text": "done"},
            duration_ms=1234,
            usage=_usage(),
        ),
        StepFailed(**base, step_id=step, block="task", error="exit status 1", code="TASK_FAILED"),
        StepPaused(**base, step_id=step, reason="tool_calls"),
        ToolCallsRequired(**base, step_id=step, tool_calls=[call]),
        RunStarted(**base, flow_id="flow-bench", flow_version="3"),
    ][kind - 8]


def _frame(event: Any) -> bytes:
    name, data = event_to_wire(event)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.event_id, name.encode(), data)


def build_body(count: int) -> bytes:
    """``count`` frames of the nine-type mix; the last is ``flow_completed``."""
    frames = [_frame(_cycle(i, f"step-{i // 1000}")) for i in range(1, count)]
    end = FlowCompleted(execution_id=RUN, event_id=count, time=1, output={"ok": True},
                        duration_ms=99, usage=_usage())  # fmt: skip
    return b"".join([*frames, _frame(end)])


def make_app(body: bytes) -> web.Application:
    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Execution-Id": RUN}
        )
        await response.prepare(request)
        view = memoryview(body)
        for at in range(0, len(body), PIECE):
            await response.write(view[at : at + PIECE])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/runs/{runId}/events", events)
    return app


def main() -> None:
    count = int(sys.argv[1])
    app = make_app(build_body(count))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=lambda m: None, access_log=None)


if __name__ == "__main__":
    main()
