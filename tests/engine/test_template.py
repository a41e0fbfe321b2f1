"""The template block, execute outcomes, 422s and the event stream of a simple run."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from .conftest import Server, data, names

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


async def test_template_renders_message_parameters_and_outputs(server: Server) -> None:
    flow = await server.flow(
        {"block": "template", "id": "greet", "settings": {"template": "Hello {{ message }}"}},
        {"block": "template", "settings": {"template": {
            "text": "{{ steps.greet.output }} and {{ parameters.name | upper }}",
            "raw": "{{ parameters.items }}", "first": "{{ items[0] }}"}}},
    )  # fmt: skip
    body = {"message": "world", "parameters": {"name": "ada", "items": [1, 2]}}
    answer = await server.call("POST", f"/flows/{flow}/execute", json=body)
    assert answer.status == 200, answer.body
    outcome = answer.body
    assert outcome["state"] == "completed"
    assert outcome["output"] == {"text": "Hello world and ADA", "raw": [1, 2], "first": 1}
    assert [s["stepId"] for s in outcome["steps"]] == ["greet", "step2"]
    assert all(s["status"] == "Succeeded" and s["durationMs"] >= 0 for s in outcome["steps"])
    assert outcome["steps"][0]["output"] is None  # snapshots only when tracing
    run = await server.call("GET", f"/runs/{outcome['executionId']}")
    assert run.body["status"]["conditions"][-1]["condition"] == "Succeeded"


async def test_an_omitted_message_renders_as_empty(server: Server) -> None:
    flow = await server.flow(
        {"block": "template", "id": "greet", "settings": {"template": "Hello{{ message }}!"}}
    )
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json={})).body
    assert (outcome["state"], outcome["output"]) == ("completed", "Hello!")
    named = {"parameters": {"message": " from a parameter"}}  # an input named message wins
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json=named)).body
    assert outcome["output"] == "Hello from a parameter!"


async def test_a_lone_placeholder_keeps_the_text_around_a_string(server: Server) -> None:
    # QA: "  {{ message }}" rendered "hi": the whitespace went with the rule that a lone
    # placeholder keeps its value's type. A value that is not a string still keeps it.
    flow = await server.flow(
        {"block": "template", "settings": {"template": {
            "indented": "  {{ message }}", "line": "{{ message }}\n",
            "list": " {{ parameters.items }}\n", "json": " {{ parameters.items | json }}"}}},
    )  # fmt: skip
    body = {"message": "hi", "parameters": {"items": [1, 2]}}
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json=body)).body
    assert outcome["output"] == {
        "indented": "  hi", "line": "hi\n", "list": [1, 2], "json": " [1,2]"
    }  # fmt: skip


async def test_missing_name_fails_the_step_naming_it(server: Server) -> None:
    flow = await server.flow(
        {"block": "template", "id": "a", "settings": {"template": "{{ steps.nope.output }}"}}
    )
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json={})).body
    assert outcome["state"] == "failed"
    assert outcome["failedStep"] == "a"
    assert "steps.nope.output" in outcome["error"]
    run = await server.call("GET", f"/runs/{outcome['executionId']}")
    assert run.body["status"]["conditions"][-1]["condition"] == "Failed"


async def test_stream_has_every_event_in_order(server: Server) -> None:
    flow = await server.flow({"block": "template", "settings": {"template": "{{ message }}!"}})
    events, headers = await server.sse(
        "POST", f"/flows/{flow}/events", json={"message": "hi", "trace": True}
    )
    assert names(events) == ["run_started", "step_started", "step_input", "step_output",
                             "step_completed", "flow_completed"]  # fmt: skip
    assert [e.id for e in events] == [str(i) for i in range(1, 7)]
    assert headers["X-Request-Id"].startswith("req_")
    assert headers["X-Execution-Id"] == data(events[0])["executionId"]
    final = data(events[-1])
    assert final["status"] == "Succeeded" and final["output"] == "hi!" and final["eventId"] == 6


async def test_trace_snapshots_when_traced(server: Server) -> None:
    flow = await server.flow(
        {"block": "template", "id": "t", "settings": {"template": "{{ message }}"}}
    )
    outcome = (
        await server.call("POST", f"/flows/{flow}/execute", json={"message": "m", "trace": True})
    ).body
    run_id = outcome["executionId"]
    trace = (await server.call("GET", f"/runs/{run_id}/trace")).body
    assert trace["status"] == "Succeeded" and trace["durationMs"] >= 0
    assert trace["steps"][0]["input"] == {"template": "m"} and trace["steps"][0]["output"] == "m"
    step = await server.call("GET", f"/runs/{run_id}/steps/t/trace")
    assert step.status == 200 and step.body["stepId"] == "t"
    missing = await server.call("GET", f"/runs/{run_id}/steps/zzz/trace")
    assert missing.status == 404 and "zzz" in missing.body["error"]["message"]


async def test_block_overrides_change_settings(server: Server) -> None:
    flow = await server.flow({"block": "template", "id": "t", "settings": {"template": "a"}})
    body = {"blockOverrides": {"t": {"template": "b"}}}
    assert (await server.call("POST", f"/flows/{flow}/execute", json=body)).body["output"] == "b"
    bad = await server.call("POST", f"/flows/{flow}/execute", json={"blockOverrides": {"x": {}}})
    assert bad.status == 422 and "blockOverrides.x" in bad.body["error"]["message"]
    # a misspelt setting was ignored (found by QA), as it is refused in a flow's own blocks
    runs = (await server.call("GET", "/runs")).body
    typo = await server.call(
        "POST", f"/flows/{flow}/execute", json={"blockOverrides": {"t": {"tmpl": "b"}}}
    )
    assert typo.status == 422, typo.body
    assert "blockOverrides.t.settings.tmpl" in typo.body["error"]["message"]
    assert "did you mean 'template'" in typo.body["error"]["message"]
    # QA AR: the path of that message (.settings.<name>) invited {"t": {"settings": {...}}}
    nested = {"blockOverrides": {"t": {"settings": {"template": "b"}}}}
    nesting = await server.call("POST", f"/flows/{flow}/execute", json=nested)
    assert nesting.status == 422, nesting.body
    said = "blockOverrides.t is the settings themselves: blockOverrides.t.<name>, not nested"
    assert said in nesting.body["error"]["message"]
    assert (await server.call("GET", "/runs")).body == runs  # no run was made


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"attachments": [f"https://e.x/{i}" for i in range(11)]}, "attachments"),
        ({"attachments": ["http://e.x/a"]}, "attachments[0]"),
        ({"tools": [{"type": "function"}]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": f"t{i}"}} for i in range(65)]},
            "tools",
        ),
        ({"version": "main"}, "version"),
        ({"version": 0}, "version"),
        ({"toolChoice": "sometimes"}, "toolChoice"),
    ],
)
async def test_bad_requests_are_422_naming_the_field(
    server: Server, body: dict[str, Any], field: str
) -> None:
    flow = await server.flow({"block": "template"})
    answer = await server.call("POST", f"/flows/{flow}/execute", json=body)
    assert answer.status == 422, answer.body
    assert answer.body["error"]["code"] == "VALIDATION_ERROR"
    assert answer.body["error"]["message"].startswith(field)


async def test_missing_required_parameter_is_422(server: Server) -> None:
    flow = await server.flow({"block": "template"}, inputs=[{"name": "city", "required": True}])
    answer = await server.call("POST", f"/flows/{flow}/execute", json={"message": "x"})
    assert answer.status == 422 and "parameters.city" in answer.body["error"]["message"]


async def test_attachments_reach_blocks(server: Server) -> None:
    flow = await server.flow(
        {"block": "template", "settings": {"template": "{{ attachments[0] }}"}}
    )
    body = {"attachments": ["https://example.com/a.png"]}
    assert (await server.call("POST", f"/flows/{flow}/execute", json=body)).body[
        "output"
    ] == "https://example.com/a.png"


async def test_versions(server: Server) -> None:
    flow = await server.flow({"block": "template", "settings": {"template": "v1"}})
    assert (await server.call("POST", f"/flows/{flow}/publish")).body["version"] == 1
    missing = await server.call("POST", f"/flows/{flow}/execute", json={"version": 2})
    assert missing.status == 404 and missing.body["error"]["code"] == "FLOW_VERSION_NOT_FOUND"
    no_prod = await server.call("POST", f"/flows/{flow}/execute", json={"version": "production"})
    assert no_prod.status == 404 and no_prod.body["error"]["code"] == "FLOW_VERSION_NOT_FOUND"
    await server.call("POST", f"/flows/{flow}/promote", json={"version": 1})
    prod = await server.call("POST", f"/flows/{flow}/execute", json={"version": "production"})
    assert prod.body["output"] == "v1"
    unknown = await server.call("POST", "/flows/flow_nope/execute", json={})
    assert unknown.status == 404 and unknown.body["error"]["code"] == "FLOW_NOT_FOUND"


async def test_jobs_answer_at_once_and_finish(server: Server) -> None:
    flow = await server.flow({"block": "emit", "settings": {"count": 3, "interval": 0.05}})
    answer = await server.call("POST", f"/flows/{flow}/jobs", json={})
    assert answer.status == 202 and answer.body["status"] in ("Pending", "Running")
    events, _ = await server.sse("GET", f"/runs/{answer.body['executionId']}/events")
    assert names(events).count("log") == 3 and events[-1].event == "flow_completed"


async def test_a_template_that_doubles_its_input_stops_at_the_limit(server: Server) -> None:
    doubling = [{"block": "template", "id": "s0", "settings": {"template": "{{ parameters.big }}"}}]
    for i in range(1, 8):  # 512 KiB doubled 7 times would be 64 MiB
        twice = f"{{{{ steps.s{i - 1}.output }}}}" * 2
        doubling.append({"block": "template", "id": f"s{i}", "settings": {"template": twice}})
    flow = await server.flow(*doubling)
    body = {"parameters": {"big": "A" * (1 << 19)}}
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json=body)).body
    assert outcome["state"] == "failed"
    failed = [step for step in outcome["steps"] if step["status"] == "Failed"]
    assert [step["stepId"] for step in failed] == ["s5"]  # 16 MiB: over 8 MiB characters
    assert "over 8388608 characters" in outcome["error"] and "steps.s4.output" in outcome["error"]
    assert (await server.call("GET", f"/flows/{flow}")).status == 200


async def test_many_unclosed_placeholders_render_as_text_at_once(server: Server) -> None:
    # Found by QA: 40,000 "{{" without "}}" held the event loop 20 s (the lazy regex
    # scanned to the end for each), and every other request of every organization waited.
    unclosed = "{{" * 100_000
    flow = await server.flow(
        {"block": "template", "id": "a", "settings": {"template": unclosed}},
        {"block": "template", "id": "b", "settings": {"template": {
            "mix": "{{ message }}, " + unclosed, "tail": "{" + unclosed + "}"}}},
    )  # fmt: skip
    with anyio.fail_after(5):
        answer = await server.call("POST", f"/flows/{flow}/execute", json={"message": "hi"})
    assert answer.status == 200 and answer.body["state"] == "completed", answer.body
    assert answer.body["output"] == {"mix": "hi, " + unclosed, "tail": "{" + unclosed + "}"}
    assert answer.body["steps"][0]["status"] == "Succeeded"


@pytest.mark.parametrize("again", ["{{ steps.a.output }}", "{{ steps.a.output | json }}"])
async def test_whole_placeholders_count_against_the_limit(server: Server, again: str) -> None:
    # Found by QA: a string that is one placeholder was not counted, so 100 copies of a
    # 100 KB message fanned out to 7.8 GB of server memory over two steps.
    flow = await server.flow(
        {"block": "template", "id": "a", "settings": {"template": ["{{ message }}"] * 50}},
        {"block": "template", "id": "b", "settings": {"template": {"x": again, "y": again}}},
    )
    body = {"message": "m" * 100_000}  # 5 MB in step a; twice that would be 10 MB in b
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json=body)).body
    assert outcome["state"] == "failed" and outcome["failedStep"] == "b", outcome["steps"]
    assert "over 8388608 characters at {{ steps.a.output }}" in outcome["error"]
    fanned = await server.flow(
        {"block": "template", "id": "a", "settings": {"template": ["{{ message }}"] * 100}}
    )
    outcome = (await server.call("POST", f"/flows/{fanned}/execute", json=body)).body
    assert outcome["failedStep"] == "a" and "at {{ message }}" in outcome["error"]


async def test_an_output_nested_too_deep_fails_its_step(server: Server) -> None:
    # Found by QA: 300 steps that each wrapped the last output in a list ended the run
    # an EngineError (orjson's recursion limit, in the event log), with events lost.
    wrap = [{"block": "template", "id": f"s{i}", "settings": {"template": ["{{ input }}"]}}
            for i in range(1, 71)]  # fmt: skip
    flow = await server.flow(*wrap)
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json={})).body
    assert outcome["state"] == "failed" and outcome["failedStep"] == "s65", outcome["error"]
    assert "nest deeper than 64 levels" in outcome["error"]
    run = (await server.call("GET", f"/runs/{outcome['executionId']}")).body
    assert run["status"]["conditions"][-1]["reason"] == "StepFailed"
    events, _ = await server.sse("GET", f"/runs/{outcome['executionId']}/events")
    assert [int(e.id or 0) for e in events] == list(range(1, len(events) + 1))
    assert names(events)[-2:] == ["step_failed", "flow_completed"]


async def test_a_filter_that_cannot_take_the_value_fails_naming_the_placeholder(
    server: Server,
) -> None:
    flow = await server.flow(
        {"block": "template", "id": "n", "settings": {"template": "{{ parameters.n | length }}"}}
    )
    body = {"parameters": {"n": 5}}
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json=body)).body
    assert outcome["state"] == "failed" and outcome["failedStep"] == "n", outcome
    assert "filter 'length' cannot take int at {{ parameters.n }}" in outcome["error"]
    assert "TypeError" not in outcome["error"]


async def test_a_run_the_engine_crashes_on_says_so_without_the_exceptions_words(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA J: a run ended "internal error: PostgresError('permission denied for table
    # engine_events')": the server's inner words (tables, paths, privileges) in an answer
    from vi_flow.server.state import ENGINE_KEY

    async def crash(*_: Any) -> None:
        raise RuntimeError("permission denied for table hidden_things")

    monkeypatch.setattr(server.app[ENGINE_KEY].executor, "drive", crash)
    flow = await server.flow({"block": "template", "id": "t", "settings": {"template": "x"}})
    outcome = (await server.call("POST", f"/flows/{flow}/execute", json={})).body
    run = (await server.call("GET", f"/runs/{outcome['executionId']}")).body
    last = run["status"]["conditions"][-1]
    assert (last["condition"], last["reason"]) == ("Error", "EngineError"), last
    assert "internal error" in last["message"] and "hidden_things" not in str(run), run
