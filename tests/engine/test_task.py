"""The task block on the local compute provider: log events, exit code, artifacts."""

from __future__ import annotations

import sys

import orjson
import pytest

from vi_flow.models.limits import MAX_TAIL_CHARS
from vi_flow.server.engine.blocks.task import MAX_ARTIFACTS

from ..live_server import deep_path, deep_tree
from .conftest import Server, data, names

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

SCRIPT = 'echo "hello {{ message }}"; echo oops >&2; echo w > "$VI_FLOW_OUTPUT_DIR/model.bin"'


async def test_task_streams_logs_and_outputs_artifacts(server: Server) -> None:
    flow = await server.flow({"block": "task", "id": "train", "settings": {"command": SCRIPT}})
    events, _ = await server.sse("POST", f"/flows/{flow}/events", json={"message": "gpu"})
    logs = [data(e) for e in events if e.event == "log"]
    assert {(log["stream"], log["line"]) for log in logs} == {
        ("stdout", "hello gpu"),
        ("stderr", "oops"),
    }
    assert all(log["stepId"] == "train" for log in logs)
    final = data(events[-1])
    assert final["status"] == "Succeeded", final
    output = final["output"]
    assert output["exitCode"] == 0 and output["status"] == "completed"
    assert output["artifacts"] == [{"path": "model.bin", "size": 2}]
    assert "hello gpu" in output["logTail"]
    tasks = await server.call("GET", "/tasks")
    assert output["taskId"] in [t["taskId"] for t in tasks.body["items"]]


async def test_failing_task_fails_the_step(server: Server) -> None:
    flow = await server.flow(
        {"block": "task", "id": "t", "settings": {"command": "echo bye; exit 3"}}
    )
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json={})).body
    assert outcome["state"] == "failed" and outcome["failedStep"] == "t"
    assert "bye" in outcome["error"]
    allowed = await server.flow(
        {"block": "task", "settings": {"command": "exit 3", "allow_failure": True}}
    )
    outcome = (await server.call("POST", f"/flows/{allowed}/execute", json={})).body
    assert outcome["state"] == "completed" and outcome["output"]["exitCode"] == 3
    assert (outcome["output"]["signal"], outcome["output"]["reason"]) == (None, "NonZeroExit")
    killed = await server.flow(
        {"block": "task", "settings": {"command": "kill -9 $$", "allow_failure": True}}
    )
    output = (await server.call("POST", f"/flows/{killed}/execute", json={})).body["output"]
    assert (output["exitCode"], output["signal"], output["reason"]) == (None, 9, "Killed")


async def test_a_steps_log_tail_keeps_a_bounded_number_of_characters(server: Server) -> None:
    # QA: a task that printed without newlines had up to 10,000 pieces of 256 KiB kept in
    # its step's output (2.5 GB held by the server), and the step's error quoted them.
    big = "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo near; echo end; exit 4"
    settings = {"command": big, "tail_lines": 10_000, "allow_failure": True}
    flow = await server.flow({"block": "task", "id": "t", "settings": settings})
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json={})).body
    tail = outcome["output"]["logTail"]
    assert tail[-2:] == ["near", "end"] and sum(map(len, tail)) <= MAX_TAIL_CHARS
    assert set("".join(tail[:-2])) == {"x"}  # the end of the long line, as far as it fits
    settings = {"command": "head -c 3000000 /dev/zero | tr '\\0' y; exit 4"}
    failing = await server.flow({"block": "task", "id": "t", "settings": settings})
    outcome = (await server.call("POST", f"/flows/{failing}/execute", json={})).body
    assert outcome["state"] == "failed" and len(outcome["error"]) < 1000, len(outcome["error"])
    assert f"{'y' * 200}… ({262144} characters)" in outcome["error"]
    # QA: a task's escape sequences reached the terminal that showed the step's error
    settings = {"command": "printf 'title \\033]0;owned\\007 bar\\rX\\n'; exit 3"}
    escapes = await server.flow({"block": "task", "id": "t", "settings": settings})
    outcome = (await server.call("POST", f"/flows/{escapes}/execute", json={})).body
    assert "title \\x1b]0;owned\\x07 bar\\rX" in outcome["error"], outcome["error"]
    assert "\x1b" not in outcome["error"] and "\r" not in outcome["error"]


async def test_env_values_are_text_a_whole_placeholder_goes_in_as_json(server: Server) -> None:
    env = {"EPOCHS": "{{ parameters.epochs }}", "FAST": "{{ parameters.fast }}"}
    env["NAME"] = "run {{ parameters.fast }}"
    settings = {"command": 'echo "$EPOCHS|$FAST|$NAME"', "env": env}
    flow = await server.flow({"block": "task", "id": "t", "settings": settings})
    body = {"parameters": {"epochs": 3, "fast": True}}
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json=body)).body
    assert outcome["state"] == "completed", outcome
    assert outcome["output"]["logTail"] == ["3|true|run true"]  # JSON's words, not Python's
    literal = {"block": "task", "settings": {"command": "true", "env": {"EPOCHS": None}}}
    spec = {"name": "test", "blocks": [literal]}
    refused = await server.call("POST", "/flows", json={"spec": spec})
    assert refused.status == 422
    assert refused.body["error"]["message"].startswith("spec.blocks[0].settings.env.EPOCHS:")


async def test_task_without_command_fails(server: Server) -> None:
    flow = await server.flow({"block": "task"})
    events, _ = await server.sse("POST", f"/flows/{flow}/events", json={})
    assert "step_failed" in names(events) and "settings.command" in data(events[-1])["error"]


async def test_cancelling_the_run_cancels_its_task(server: Server) -> None:
    flow = await server.flow({"block": "task", "settings": {"command": "echo started; sleep 30"}})
    job = (await server.call("POST", f"/flows/{flow}/jobs", json={})).body
    events, _ = await server.sse("GET", f"/runs/{job['executionId']}/events", limit=3)
    assert events[-1].event == "log"
    await server.call("POST", f"/runs/{job['executionId']}/cancel")
    events, _ = await server.sse("GET", f"/runs/{job['executionId']}/events")
    assert data(events[-1])["status"] == "Cancelled"
    tasks = (await server.call("GET", "/tasks")).body["items"]
    assert [t["status"] for t in tasks] == ["cancelled"]


@pytest.mark.parametrize("working_dir", ["/tmp/vi_flow_escape_step", "../up", "{{ message }}"])
async def test_a_task_step_keeps_its_working_dir_in_the_workspace(
    server: Server, working_dir: str
) -> None:
    settings = {"command": "pwd", "workingDir": working_dir}
    flow = await server.flow({"block": "task", "id": "t", "settings": settings})
    body = {"message": "/tmp/vi_flow_escape_step"}  # a rendered setting is checked too
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json=body)).body
    assert outcome["state"] == "failed" and "workingDir" in outcome["error"], outcome
    assert (await server.call("GET", "/tasks")).body["items"] == []


@pytest.mark.usefixtures("deep_trees")
async def test_a_task_step_lists_the_outputs_of_a_deep_tree(server: Server) -> None:
    # Found by QA: the command exited 0 and the step failed with a RecursionError.
    flow = await server.flow(
        {"block": "task", "settings": {"command": deep_tree("VI_FLOW_OUTPUT_DIR")}}
    )
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json={})).body
    assert outcome["state"] == "completed", outcome
    assert outcome["output"]["artifacts"] == [{"path": deep_path(), "size": 6}]


async def test_a_task_steps_artifacts_are_capped_and_counted(server: Server) -> None:
    # Found by QA: 300,000 output files were named in full in three events of the run.
    count = MAX_ARTIFACTS + 500
    script = (
        "import os; out = os.environ['VI_FLOW_OUTPUT_DIR']\n"
        f"for i in range({count}): open(f'{{out}}/f{{i:05d}}', 'w').close()\n"
    )
    flow = await server.flow(
        {"block": "task", "settings": {"command": [sys.executable, "-c", script]}}
    )
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json={})).body
    assert outcome["state"] == "completed", outcome
    output = outcome["output"]
    names = [f"f{i:05d}" for i in range(MAX_ARTIFACTS)]
    assert [a["path"] for a in output["artifacts"]] == names
    assert (output["artifactCount"], output["artifactsTruncated"]) == (count, True)
    listed = await server.call("GET", f"/tasks/{output['taskId']}/outputs")
    assert len(listed.body["items"]) == count  # all of them, there
    events = await server.call("GET", f"/runs/{outcome['executionId']}/events")
    assert len(events.raw) < 3 * len(orjson.dumps(output)) + 20_000
    small = await server.flow({"block": "task", "settings": {"command": SCRIPT}})
    output = (await server.call("POST", f"/flows/{small}/execute", json={})).body["output"]
    assert (output["artifactCount"], output["artifactsTruncated"]) == (1, False)
