"""``flows``, ``runs`` and ``execute`` against the embedded local server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from unittest import mock

import pytest

import vi_flow
from vi_flow.cli._state import CliState
from vi_flow.server import embedded

from .conftest import Invoker, write

SPEC = """\
name: greet
inputs:
  - name: punctuation
    required: false
    default: "!"
blocks:
  - block: template
    id: hello
    settings:
      template: "Hello, {{ message }}{{ punctuation }}"
"""


def _create(vf: Invoker, tmp_path: Path, text: str = SPEC) -> str:
    result = vf("flows", "create", "-f", str(write(tmp_path / "spec.yaml", text)))
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_create_list_get_delete(vf: Invoker, tmp_path: Path) -> None:
    flow_id = _create(vf, tmp_path)
    assert flow_id.startswith("flow_")
    listed = json.loads(vf("flows", "list", "--json").stdout)
    assert [f["flowId"] for f in listed] == [flow_id]
    table = vf("flows", "list").stdout
    assert flow_id in table and "greet" in table
    got = vf("flows", "get", flow_id)
    assert "hello (template)" in got.stdout
    assert json.loads(vf("flows", "get", flow_id, "--json").stdout)["spec"]["name"] == "greet"
    assert vf("flows", "delete", flow_id, "--yes").exit_code == 0
    missing = vf("flows", "get", flow_id)
    assert missing.exit_code == 4
    assert missing.stderr.startswith("error: FLOW_NOT_FOUND: ")
    assert "hint: " in missing.stderr
    # QA: the JSON message repeated the code and the request id, which have fields
    error = json.loads(vf("flows", "get", flow_id, "--json").stderr)["error"]
    assert error["code"] == "FLOW_NOT_FOUND" and error["requestId"].startswith("req_")
    assert error["message"] == f"flow {flow_id!r} not found"


def test_publish_and_promote(vf: Invoker, tmp_path: Path) -> None:
    flow_id = _create(vf, tmp_path)
    assert "version 1" in vf("flows", "publish", flow_id).stdout
    assert json.loads(vf("flows", "publish", flow_id, "--json").stdout)["version"] == 2
    assert "production version is now 2" in vf("flows", "promote", flow_id, "2").stdout
    result = vf("execute", flow_id, "-m", "prod", "--version", "production")
    assert result.stdout == "Hello, prod!\n"
    result = vf("execute", flow_id, "-m", "x", "--version", "9")
    assert result.exit_code == 4
    assert "FLOW_VERSION_NOT_FOUND" in result.stderr


def test_invalid_yaml_names_the_line(vf: Invoker, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "name: x\nblocks:\n  - block: template\n   id: oops\n")
    result = vf("flows", "create", "-f", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:4:" in result.stderr
    assert "not valid YAML" in result.stderr


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # a billion laughs: nine levels of nine would be 387 million strings sent as JSON
        (
            "name: x\nl0: &l0 [a, a, a, a, a, a, a, a, a]\n"
            + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))
            + "blocks: []\n",
            ":3:10: not valid YAML: aliases (*l0) are not supported",
        ),
        ("name: x\nblocks: &b\n  - *b\n", ":3:5: not valid YAML: aliases (*b) are not supported"),
        ("name: x\nblocks: " + "[" * 50_000 + "]" * 50_000 + "\n", ": not valid YAML: nested too"),
        (
            "name: x\nblocks:\n  - block: template\n    id: a\n    id: b\n",
            ":5:5: not valid YAML: duplicate key 'id' (first on line 4)",
        ),
        (  # inside a merged mapping too (it is merged, never constructed itself)
            "name: x\nblocks:\n  - block: template\n    <<: {id: a,\n         id: b}\n",
            ":5:10: not valid YAML: duplicate key 'id' (first on line 4)",
        ),
    ],
    ids=["alias-bomb", "recursive-alias", "deep-nesting", "duplicate-key", "duplicate-merged"],
)
def test_hostile_yaml_is_a_usage_error_naming_the_line(
    vf: Invoker, tmp_path: Path, text: str, problem: str
) -> None:
    bad = write(tmp_path / "bad.yaml", text)
    result = vf("flows", "create", "-f", str(bad))
    assert result.exit_code == 2, result.stderr
    assert f"{bad}{problem}" in result.stderr
    assert vf("flows", "list").stdout.strip() == ""  # nothing was created


def test_invalid_flow_names_the_line_and_field(vf: Invoker, tmp_path: Path) -> None:
    text = "name: x\nblocks:\n  - block: template\n    id: a\n  - id: b\n    settings: {}\n"
    bad = write(tmp_path / "bad.yaml", text)
    result = vf("flows", "create", "-f", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:5: blocks[1].block: required" in result.stderr


def test_flow_spec_must_be_a_mapping(vf: Invoker, tmp_path: Path) -> None:
    bad = write(tmp_path / "list.yaml", "- a\n- b\n")
    result = vf("flows", "create", "-f", str(bad))
    assert result.exit_code == 2
    assert "must be a mapping" in result.stderr


def test_execute_prints_output_and_params(vf: Invoker, tmp_path: Path) -> None:
    flow_id = _create(vf, tmp_path)
    result = vf("execute", flow_id, "--message", "world", "--param", "punctuation=?")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Hello, world?\n"


def test_execute_stream_plain_and_json(vf: Invoker, tmp_path: Path) -> None:
    flow_id = _create(vf, tmp_path)
    plain = vf("execute", flow_id, "-m", "you", "--stream")
    assert plain.exit_code == 0
    lines = plain.stdout.splitlines()
    assert lines[0].startswith("run run_") and "started" in lines[0]
    assert any(line.startswith("step hello done in") for line in lines)
    assert lines[-1].endswith("Hello, you!")
    ndjson = vf("execute", flow_id, "-m", "you", "--stream", "--json")
    events = [json.loads(line) for line in ndjson.stdout.splitlines()]
    assert events[0]["event"] == "run_started"
    assert events[-1]["event"] == "flow_completed"
    assert [ev["eventId"] for ev in events] == list(range(1, len(events) + 1))


def test_failed_run_exits_1_naming_the_step(vf: Invoker, tmp_path: Path) -> None:
    flow_id = _create(vf, tmp_path, SPEC.replace("{{ message }}", "{{ nickname }}"))
    result = vf("execute", flow_id)
    assert result.exit_code == 1
    assert "at step 'hello' (TEMPLATE_ERROR)" in result.stderr  # the step's code (QA AF)
    assert "nickname" in result.stderr
    as_json = vf("execute", flow_id, "--json")
    assert as_json.exit_code == 1
    assert as_json.stdout == ""  # the error alone, on stderr, as docs/cli.md says
    error = json.loads(as_json.stderr)["error"]
    assert "at step 'hello'" in error["message"] and error["exitCode"] == 1
    assert error["code"] == "RUN_FAILED"  # was null: a script could not tell it apart


def test_runs_list_get_watch_cancel(vf: Invoker, tmp_path: Path) -> None:
    flow_id = _create(vf, tmp_path)
    final = json.loads(vf("execute", flow_id, "-m", "a", "--json").stdout)
    run_id = final["executionId"]
    runs = json.loads(vf("runs", "list", "--flow", flow_id, "--json").stdout)
    assert [r["runId"] for r in runs] == [run_id]
    assert vf("runs", "list", "--condition", "failed", "--json").stdout.strip() == "[]"
    shown = vf("runs", "get", run_id)
    assert "Succeeded" in shown.stdout
    watched = vf("runs", "watch", run_id, "--json")
    assert watched.exit_code == 0
    assert json.loads(watched.stdout.splitlines()[-1])["status"] == "Succeeded"
    replay = vf("runs", "watch", run_id, "--after", "2")
    assert "step hello started" not in replay.stdout
    assert vf("runs", "cancel", run_id).stdout.strip() == f"{run_id}: Succeeded"
    assert vf("runs", "get", "run_nope").exit_code == 4


TOOL_SPEC = """\
name: weather
inputs:
  - name: city
blocks:
  - block: tool
    id: lookup
    settings:
      tool: get_weather
      arguments: {city: "{{ city }}"}
  - block: template
    id: answer
    settings:
      template: "{{ city }}: {{ steps.lookup.output.summary }}"
"""


def test_execute_answers_tool_calls_from_the_command_line(vf: Invoker, tmp_path: Path) -> None:
    flow_id = _create(vf, tmp_path, TOOL_SPEC)
    answer = '{"summary": "sunny"}'
    result = vf("execute", flow_id, "-p", "city=Lima", "--tool-result", f"get_weather={answer}")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Lima: sunny\n"
    assert "get_weather" in result.stderr  # the call is shown


def test_runs_list_shows_how_long_an_unfinished_run_has_run(vf: Invoker, tmp_path: Path) -> None:
    # A paused run's record does not change while it waits: ELAPSED said 0ms (found by QA)
    flow_id = json.loads(
        vf("flows", "create", "-f", str(write(tmp_path / "tool.yaml", TOOL_SPEC)), "--json").stdout
    )["flowId"]
    with vi_flow.Client() as client:
        paused = client.flow(flow_id).execute_async(parameters={"city": "Lima"})
        time.sleep(1.2)
        listed = vf("runs", "list", "--flow", flow_id)
        row = next(line for line in listed.stdout.splitlines() if paused.execution_id in line)
        assert "Running" in row and not row.rstrip().endswith("ms"), row  # 1.2s or more
        client.runs.cancel(paused.execution_id)


def test_unanswered_tool_call_fails_the_run_instead_of_waiting(vf: Invoker, tmp_path: Path) -> None:
    flow_id = _create(vf, tmp_path, TOOL_SPEC)
    result = vf("execute", flow_id, "-p", "city=Lima")
    assert result.exit_code == 1
    assert "at step 'answer'" in result.stderr
    # QA AO: the failure names a later step; what went unanswered is said as it happens
    note = "note: no answer given for tool 'get_weather'; run with --tool-result get_weather="
    assert note in result.stderr, result.stderr
    as_json = vf("execute", flow_id, "-p", "city=Lima", "--json")
    assert json.loads(as_json.stderr)["error"]["code"] == "RUN_FAILED", (
        as_json.stdout,
        as_json.stderr,
        as_json.exit_code,
    )
    bad = vf("execute", flow_id, "--tool-result", "get_weather")
    assert bad.exit_code == 2 and "--tool-result" in bad.stderr


def test_a_base_url_without_v1_is_named_as_the_likely_mistake(
    vf: Invoker, server: embedded.EmbeddedServer
) -> None:
    # The console's sign-in page answered, and the CLI printed its HTML and a hint to
    # set --api-key, for a key that was fine (found by QA).
    result = vf("--base-url", server.url_root + "/", "--api-key", "any", "flows", "list")
    assert result.exit_code == 2  # a usage error: the URL needs fixing, not the key
    assert "<!doctype" not in result.stderr.lower()
    assert "not an answer of the vi-flow API" in result.stderr and "/v1" in result.stderr
    assert "--api-key" not in result.stderr.split("hint:", 1)[-1]


def test_spec_and_task_files_read_from_stdin_with_a_dash(vf: Invoker) -> None:
    spec = "name: piped\nblocks:\n  - block: template\n    id: a\n    settings: {template: hi}\n"
    created = vf("flows", "create", "-f", "-", input=spec)
    assert created.exit_code == 0, created.stderr
    assert vf("execute", created.stdout.strip()).stdout == "hi\n"
    bad = vf("flows", "create", "-f", "-", input="name: x\nblocks:\n  - id: b\n")
    assert bad.exit_code == 2 and "<stdin>:3: blocks[0].block: required" in bad.stderr
    task = vf("tasks", "run", "-f", "-", "--follow", input="command: [echo, piped]\n")
    assert (task.exit_code, task.stdout.splitlines()[-1]) == (0, "piped"), task.stderr
    typo = vf("tasks", "run", "-f", "-", input="comand: [echo, hi]\n")
    assert typo.exit_code == 2 and "<stdin>: unknown task config field 'comand'" in typo.stderr


def test_names_and_outputs_are_shown_as_text_not_markup_or_escapes(
    vf: Invoker, tmp_path: Path
) -> None:
    # On a terminal (--color always draws as on one) a flow named "[/]" made rich raise
    # MarkupError, so `flows list` failed; "[link=...]" drew a link; an escape sequence
    # in an output (here one that clears the screen) reached the terminal as it was.
    spec = {"name": "[/] [link=http://evil.test]x", "blocks": [
        {"block": "template", "id": "t", "settings": {"template": "[b]out\x1b[2J {{ message }}"}}
    ]}  # fmt: skip
    flow_id = _create(vf, tmp_path, json.dumps(spec))
    listed = vf("--color", "always", "flows", "list", env={"COLUMNS": "200"})  # one line
    assert listed.exit_code == 0, listed.stderr
    assert "[/] [link=http://evil.test]x" in listed.stdout
    assert "\x1b]8" not in listed.stdout  # no hyperlink
    for colour in ("always", "never"):
        streamed = vf("--color", colour, "execute", flow_id, "-m", "hi", "--stream")
        assert streamed.exit_code == 0, streamed.stderr
        assert "done in" in streamed.stdout and "[b]out\\x1b[2J hi" in streamed.stdout
        assert "\x1b[2J" not in streamed.stdout
    # The answer alone goes to a pipe exact (click stripped its CSI sequences before)...
    assert vf("execute", flow_id, "-m", "hi").stdout == "[b]out\x1b[2J hi\n"
    # ...and to a terminal with its escapes written out.
    with mock.patch.object(CliState, "interactive", True):
        shown = vf("execute", flow_id, "-m", "hi")
    assert (shown.exit_code, shown.stdout) == (0, "[b]out\\x1b[2J hi\n"), shown.stderr
