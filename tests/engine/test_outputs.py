"""Each step's output is stored once, and a run's outputs together are bounded.

Every step rewrote the run's row with all the outputs before it, so a flow of N steps
of one large output cost N² of them in writes and time: 80 steps of 1 MB took 15 times
as long as 20, and one request of 1,000 steps could keep a shared server busy for hours
(QA AF).
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest

from vi_flow.server.engine import executor
from vi_flow.server.engine.tables import ENGINE_TABLES

from ..live_server import state_sql
from .conftest import Server, StartServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def _echo_steps(count: int) -> list[dict[str, Any]]:
    return [
        {"block": "template", "id": f"s{i}", "settings": {"template": "{{ message }}"}}
        for i in range(count)
    ]


def _written() -> int:
    """Bytes this process has written so far (the server runs in it)."""
    with open(f"/proc/{os.getpid()}/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's /proc/<pid>/io")
async def test_a_long_flow_writes_each_output_a_bounded_number_of_times(server: Server) -> None:
    steps, size = 60, 100_000
    flow = await server.flow(*_echo_steps(steps))
    before = _written()
    answer = await server.call("POST", f"/flows/{flow}/execute", json={"message": "m" * size})
    written = _written() - before
    assert answer.status == 200 and answer.body["state"] == "completed", answer.body
    assert answer.body["output"] == "m" * size
    # each output: in its row, in two events, their WAL pages and the checkpoint's copy
    # of them; the run's row holding every output so far wrote 30 times as much here
    assert written < steps * size * 12, f"{written / (steps * size):.1f} writes per output"


async def test_a_run_whose_outputs_outgrow_the_bound_fails_at_that_step(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor, "MAX_RUN_OUTPUTS", 1_000_000)
    flow = await server.flow(*_echo_steps(5))
    answer = await server.call("POST", f"/flows/{flow}/execute", json={"message": "m" * 300_000})
    outcome = answer.body
    assert outcome["state"] == "failed" and outcome["failedStep"] == "s3", outcome
    assert "OUTPUTS_TOO_LARGE" not in outcome["error"]  # the message, not the code
    assert "more than the 1000000" in outcome["error"], outcome["error"]
    events = await server.call("GET", f"/runs/{outcome['executionId']}/events")
    failed = [
        orjson.loads(line[6:])
        for line in events.raw.splitlines()
        if line.startswith(b"data: ") and b'"code"' in line
    ]
    assert [e["code"] for e in failed] == ["OUTPUTS_TOO_LARGE"]


async def test_a_run_paused_before_the_upgrade_resumes_with_its_earlier_outputs(
    start_server: StartServer,
) -> None:
    """A run stored by a server before ``engine-4-step-outputs`` kept every output in
    ``engine_runs.outputs``: resumed by this one, its later steps still read them."""
    server = await start_server()
    flow = await server.flow(
        {"block": "template", "id": "first", "settings": {"template": "A-{{ message }}"}},
        {"block": "tool", "id": "ask", "settings": {"tool": "lookup"}},
        {"block": "template", "id": "last",
         "settings": {"template": "{{ steps.first.output }} / {{ input }}"}},
    )  # fmt: skip
    paused = (await server.call("POST", f"/flows/{flow}/execute", json={"message": "m"})).body
    assert paused["state"] == "paused", paused
    run_id, call = paused["executionId"], paused["toolCalls"][0]["id"]
    await server.stop()
    # as the server before stored it: in the run's row, with no row of its own
    state_sql(server.home, "DELETE FROM engine_outputs WHERE run_id = ?", run_id)
    state_sql(server.home, "UPDATE engine_runs SET outputs = ? WHERE run_id = ?",
              orjson.dumps({"first": "A-m"}), run_id)  # fmt: skip
    server = await start_server(home=server.home)
    body = {"toolResults": [{"toolCallId": call, "output": "found"}]}
    answer = await server.call(
        "POST", f"/runs/{run_id}/tool-results", json=body, params={"wait": "true"}
    )
    assert answer.status == 200 and answer.body["state"] == "completed", answer.body
    assert answer.body["output"] == "A-m / found"


async def test_a_run_resumed_after_a_restart_reads_the_outputs_of_its_steps(
    start_server: StartServer,
) -> None:
    server = await start_server()
    flow = await server.flow(
        {"block": "template", "id": "first", "settings": {"template": "A-{{ message }}"}},
        {"block": "template", "id": "second", "settings": {"template": "B-{{ input }}"}},
        {"block": "tool", "id": "ask", "settings": {"tool": "lookup"}},
        {"block": "template", "id": "last",
         "settings": {"template": "{{ steps.first.output }} {{ steps.second.output }} {{ input }}"}},
    )  # fmt: skip
    paused = (await server.call("POST", f"/flows/{flow}/execute", json={"message": "m"})).body
    run_id, call = paused["executionId"], paused["toolCalls"][0]["id"]
    await server.stop()
    rows = state_sql(
        server.home, "SELECT step_id, output FROM engine_outputs WHERE run_id = ?", run_id
    )
    assert sorted((r[0], orjson.loads(r[1])) for r in rows) == [
        ("first", "A-m"), ("second", "B-A-m")
    ]  # fmt: skip
    server = await start_server(home=server.home)
    body = {"toolResults": [{"toolCallId": call, "output": "C"}]}
    answer = await server.call(
        "POST", f"/runs/{run_id}/tool-results", json=body, params={"wait": "true"}
    )
    assert answer.body["output"] == "A-m B-A-m C", answer.body


async def test_deleting_a_run_leaves_nothing_of_it_in_the_engine_tables(server: Server) -> None:
    flow = await server.flow(*_echo_steps(3))
    run_id = (await server.call("POST", f"/flows/{flow}/execute", json={"message": "x"})).body[
        "executionId"
    ]
    stored = "SELECT count(*) FROM engine_outputs WHERE run_id = ?"
    assert state_sql(server.home, stored, run_id)[0][0] == 3
    assert (await server.call("DELETE", f"/runs/{run_id}")).status in (200, 204)
    for table in ENGINE_TABLES:
        assert not state_sql(server.home, f"SELECT 1 FROM {table} WHERE run_id = ?", run_id), table
