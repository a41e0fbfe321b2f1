"""One execute request for both sides: the same limits, the same sentences, never a 500.

The client and the server check the request with the one model in
:mod:`vi_flow.models.execution`: a request at a limit passes both, one past it is
refused by the client before anything is sent and by the server when sent raw.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import vi_flow
from vi_flow.models import (
    MAX_ATTACHMENTS,
    MAX_NESTING,
    MAX_TOOLS,
    Condition,
    ExecuteRequest,
    ExecuteRequestError,
    ExecutionJob,
    from_wire,
    to_wire,
)

from .conftest import Server

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

ECHO = {"block": "template", "id": "t", "settings": {"template": "{{ attachments | length }}"}}


def _tools(count: int) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": f"tool{i}"}} for i in range(count)]


def _attachments(count: int) -> list[str]:
    return [f"https://example.com/{i}.png" for i in range(count)]


def _nested(depth: int) -> Any:
    """A value whose objects nest ``depth`` levels deep (``{"a": {"a": ... 1}}``)."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.fixture
async def aclient(server: Server) -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient(
        base_url=f"{server.root}/v1", api_key=server.token, max_retries=0
    ) as client:
        yield client


async def _run_count(server: Server) -> int:
    answer = await server.call("GET", "/runs", params={"pageSize": 1000})
    assert answer.status == 200, answer.body
    return len(answer.body["items"])


# -- the shared limits -------------------------------------------------------------------

AT_LIMIT: list[dict[str, Any]] = [
    {"attachments": _attachments(MAX_ATTACHMENTS)},
    {"tools": _tools(MAX_TOOLS)},
    # ``parameters`` is one level itself, so its values may nest one level less
    {"parameters": {"deep": _nested(MAX_NESTING - 1)}},
]
PAST_LIMIT: list[tuple[dict[str, Any], str]] = [
    ({"attachments": _attachments(MAX_ATTACHMENTS + 1)}, "attachments"),
    ({"tools": _tools(MAX_TOOLS + 1)}, "tools"),
    ({"parameters": {"deep": _nested(MAX_NESTING)}}, "parameters"),
]


@pytest.mark.parametrize("kwargs", AT_LIMIT)
async def test_a_request_at_the_limit_passes_client_and_server(
    server: Server, aclient: vi_flow.AsyncClient, kwargs: dict[str, Any]
) -> None:
    flow_id = await server.flow(ECHO)
    result = await aclient.flow(flow_id).execute(**kwargs, trace=True)
    assert isinstance(result, vi_flow.ExecuteResult)
    body = ExecuteRequest.build(**kwargs).to_wire()
    raw = await server.call("POST", f"/flows/{flow_id}/execute", json=body)
    assert raw.status == 200 and raw.body["state"] == "completed", raw.body
    trace = await server.call("GET", f"/runs/{raw.body['executionId']}/trace")
    assert trace.status == 200, trace.body


@pytest.mark.parametrize(("kwargs", "field"), PAST_LIMIT)
async def test_one_past_the_limit_is_refused_alike_by_client_and_server(
    server: Server, aclient: vi_flow.AsyncClient, kwargs: dict[str, Any], field: str
) -> None:
    flow_id = await server.flow(ECHO)
    with pytest.raises(ValueError, match=f"^{field}: ") as refused:
        await aclient.flow(flow_id).execute(**kwargs)
    assert await _run_count(server) == 0  # the client sent nothing
    raw = await server.call("POST", f"/flows/{flow_id}/execute", json=_raw_body(kwargs))
    assert raw.status == 422, raw.body
    assert raw.body["error"]["code"] == "VALIDATION_ERROR"
    assert raw.body["error"]["message"] == str(refused.value)  # the same sentence
    assert await _run_count(server) == 0


def _raw_body(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` as JSON, written by hand: the model would refuse to build it."""
    return {"version": "draft", **kwargs}


async def test_camel_case_fields_are_named_as_the_wire_spells_them(
    server: Server, aclient: vi_flow.AsyncClient
) -> None:
    flow_id = await server.flow(ECHO)
    with pytest.raises(ValueError, match=r"^tool_choice: ") as refused:
        await aclient.flow(flow_id).execute(tool_choice="sometimes")  # type: ignore[arg-type]
    raw = await server.call("POST", f"/flows/{flow_id}/execute", json={"toolChoice": "sometimes"})
    assert raw.status == 422
    problem = str(refused.value).removeprefix("tool_choice: ")
    assert raw.body["error"]["message"] == f"toolChoice: {problem}"


# -- the jobs answer ----------------------------------------------------------------------


async def test_the_jobs_answer_is_the_shared_model(
    server: Server, aclient: vi_flow.AsyncClient
) -> None:
    flow_id = await server.flow(ECHO)
    raw = await server.call("POST", f"/flows/{flow_id}/jobs", json={"message": "m"})
    assert raw.status == 202 and set(raw.body) == {"executionId", "status"}
    answer = from_wire(raw.body, ExecutionJob)
    assert answer.execution_id.startswith("run_") and answer.status.known
    job = await aclient.flow(flow_id).execute_async(message="m")
    assert await job.wait(poll_interval=0.05) == Condition.SUCCEEDED


# -- bad bodies are 4xx, never 500 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"attachments": ["https://[::1/a.png"]}, "attachments[0]"),  # urlsplit raises on it
        ({"attachments": "https://example.com/a.png"}, "attachments"),
        ({"message": {"text": "hi"}}, "message"),
        ({"parameters": [1, 2]}, "parameters"),
        ({"blockOverrides": {"t": 3}}, "blockOverrides.t"),
        ({"blockOverrides": {"t": {"deep": _nested(MAX_NESTING)}}}, "blockOverrides"),
        ({"tools": [{"function": {"name": "x", "parameters": "schema"}}]}, "tools[0].function"),
        ({"tools": [{"function": {"name": "x", "parameters": _nested(MAX_NESTING)}}]}, "tools[0]"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"toolChoice": ["auto"]}, "toolChoice"),
        ({"toolChoice": "required"}, "toolChoice"),  # and no tools to call
        ({"toolChoice": {"function": {"name": "x"}}}, "toolChoice.function.name"),
        ({"trace": "yes"}, "trace"),
        ({"cancelOnDisconnect": 1}, "cancelOnDisconnect"),
        ({"version": "²"}, "version"),  # a digit to str.isdigit, not to int()
        ({"version": []}, "version"),
    ],
)
async def test_bad_json_types_are_422_naming_the_wire_field(
    server: Server, body: dict[str, Any], field: str
) -> None:
    flow_id = await server.flow(ECHO)
    answer = await server.call("POST", f"/flows/{flow_id}/execute", json=body)
    assert answer.status == 422, answer.body
    assert answer.body["error"]["message"].startswith(f"{field}"), answer.body


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 300, 1000])
async def test_deep_nesting_is_refused_not_a_500(server: Server, depth: int) -> None:
    flow_id = await server.flow(ECHO)
    nested = '{"a":' * depth + "1" + "}" * depth  # orjson cannot write it, so by hand
    for body in (f'{{"parameters": {{"p": {nested}}}}}', f'{{"attachments": [{nested}]}}'):
        answer = await server.call(
            "POST",
            f"/flows/{flow_id}/execute",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert answer.status == 422, answer.body
        assert len(answer.body["error"]["message"]) < 200  # the value is named, not echoed


async def test_a_version_sent_as_digits_is_the_number(server: Server) -> None:
    flow_id = await server.flow(ECHO)
    answer = await server.call("POST", f"/flows/{flow_id}/execute", json={"version": "1"})
    assert answer.status == 404 and "version" in answer.body["error"]["message"]


# -- the model itself ------------------------------------------------------------------------


def test_the_wire_body_leaves_defaults_out_and_reads_back_the_same() -> None:
    request = ExecuteRequest.build(message="hi", tools=_tools(1), trace=True, version=3)
    body = request.to_wire()
    assert body == {"message": "hi", "tools": _tools(1), "trace": True, "version": 3}
    assert to_wire(request) == body
    assert from_wire(body, ExecuteRequest) == request
    assert ExecuteRequest.build().to_wire() == {"version": "draft"}
    assert ExecuteRequest.from_wire({"message": None, "trace": None, "unknown": 1}) == (
        ExecuteRequest()
    )


def test_errors_name_the_field_both_ways() -> None:
    with pytest.raises(ExecuteRequestError) as caught:
        ExecuteRequest.build(block_overrides={"my_step": 1})
    assert isinstance(caught.value, TypeError)
    assert str(caught.value) == "block_overrides.my_step: expected a dict of settings, got 1"
    assert caught.value.wire_field == "blockOverrides.my_step"  # step ids keep their names
    with pytest.raises(ExecuteRequestError) as caught:
        ExecuteRequest.from_wire({"toolChoice": "always"})
    assert isinstance(caught.value, ValueError) and caught.value.wire_field == "toolChoice"


def test_the_jobs_answer_keeps_an_unknown_status() -> None:
    job = from_wire({"executionId": "run_1", "status": "Queued"}, ExecutionJob)
    assert job.execution_id == "run_1" and job.status.value == "Queued"
    assert not job.status.known
    assert to_wire(ExecutionJob("run_1")) == {"executionId": "run_1", "status": "Pending"}


def test_a_key_past_a_limit_is_named_by_the_path_to_it() -> None:
    from vi_flow.models.limits import MAX_STRING_LENGTH, LimitError, check_json

    body = {"a": {"b": [{"ok": 1, "x" * (MAX_STRING_LENGTH + 1): 2}]}}
    with pytest.raises(LimitError) as caught:
        check_json(body, "spec")
    assert str(caught.value) == f"spec.a.b[0]: longer than {MAX_STRING_LENGTH} characters"


# -- overrides keep the flow's limits ----------------------------------------------------


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"count": 3_000_000}, "blockOverrides.e.settings.count: must be between 0 and 1000000"),
        ({"interval": -1}, "blockOverrides.e.settings.interval: must be between 0 and 3600"),
        ({"count": "many"}, "blockOverrides.e.settings.count: expected an integer"),
    ],
)
async def test_block_overrides_are_checked_as_the_flows_own_settings(
    server: Server, override: dict[str, Any], field: str
) -> None:
    # Found by QA: a count refused at create (over 1,000,000) was taken as an override,
    # and 3,000,005 events were written from one small request.
    flow_id = await server.flow({"block": "emit", "id": "e", "settings": {"count": 1}})
    body = {"blockOverrides": {"e": override}}
    answer = await server.call("POST", f"/flows/{flow_id}/execute", json=body)
    assert answer.status == 422, answer.body
    assert answer.body["error"]["message"].startswith(field), answer.body
    assert await _run_count(server) == 0


async def test_an_emit_step_writes_a_bounded_amount_of_text(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by QA: 1000 lines of a 2 MB message made 2 GB of events (6 GB of memory).
    from vi_flow.server.engine.blocks import emit

    monkeypatch.setattr(emit, "MAX_EMIT_TEXT", 1000, raising=False)  # 64 MiB in production
    flow_id = await server.flow(
        {"block": "emit", "id": "e", "settings": {"count": 10, "line": "{{ message }} {i}"}}
    )
    fits = await server.call("POST", f"/flows/{flow_id}/execute", json={"message": "m" * 97})
    assert fits.body["state"] == "completed", fits.body  # 10 lines of up to 100: the limit
    over = await server.call("POST", f"/flows/{flow_id}/execute", json={"message": "m" * 98})
    assert over.body["state"] == "failed" and over.body["failedStep"] == "e", over.body
    assert "over the limit of 1000 per step" in over.body["error"]
    events = (await server.call("GET", f"/runs/{over.body['executionId']}/events")).body
    assert "event: log" not in str(events)  # refused before a line was written


# -- block settings are checked when the flow is stored -----------------------------------


@pytest.mark.parametrize(
    ("block", "settings", "problem"),
    [
        ("llm", {"timeout": "abc"}, "timeout: expected a number, got 'abc'"),
        ("llm", {"timeout": 0}, "timeout: must be between 0.001 and 86400, got 0"),
        ("llm", {"timeout": -1}, "timeout: must be between 0.001 and 86400, got -1"),
        ("llm", {"maxIterations": "x"}, "maxIterations: expected an integer, got 'x'"),
        ("llm", {"max_iterations": -5}, "max_iterations: must be between 1 and 1000, got -5"),
        ("llm", {"temperature": "hot"}, "temperature: expected a number, got 'hot'"),
        ("llm", {"temperature": 9}, "temperature: must be between 0 and 2, got 9"),
        ("llm", {"maxTokens": 0}, "maxTokens: must be between 1 and 100000000, got 0"),
        ("llm", {"max_tokens": 1.5}, "max_tokens: expected an integer, got 1.5"),
        ("task", {"command": "true", "tailLines": -1}, "tailLines: must be between 0 and 10000"),
        ("tool", {"tool": "t", "timeout": -1}, "timeout: must be between 0.001 and 86400"),
    ],
)
async def test_block_settings_out_of_range_are_refused_when_stored(
    server: Server, block: str, settings: dict[str, Any], problem: str
) -> None:
    # Found by QA: these were stored, then failed the step with a raw Python error
    # ("could not convert string to float"), or ran with no timeout at all (0, -1); an
    # llm's temperature and max_tokens went to the endpoint as given (QA round 8).
    spec = {"name": "s", "blocks": [{"block": block, "id": "c", "settings": settings}]}
    answer = await server.call("POST", "/flows", json={"spec": spec})
    assert answer.status == 422, answer.body
    assert answer.body["error"]["message"].startswith(f"spec.blocks[0].settings.{problem}")
    flow_id = await server.flow({"block": block, "id": "c"})
    override = await server.call(
        "POST", f"/flows/{flow_id}/execute", json={"blockOverrides": {"c": settings}}
    )
    assert override.status == 422, override.body
    assert override.body["error"]["message"].startswith(f"blockOverrides.c.settings.{problem}")


async def test_a_setting_given_by_a_placeholder_is_checked_when_it_is_rendered(
    server: Server,
) -> None:
    # The ranges checked when a flow is stored refused "{{ parameters.n }}" (review): a
    # whole placeholder keeps its value's type, and the value is checked once rendered.
    spec = {
        "name": "templated",
        "inputs": [{"name": "n"}],
        "blocks": [{"block": "emit", "id": "e", "settings": {"count": "{{ parameters.n }}"}}],
    }
    made = await server.call("POST", "/flows", json={"spec": spec})
    assert made.status == 201, made.body
    run = f"/flows/{made.body['flowId']}/execute"
    ran = await server.call("POST", run, json={"parameters": {"n": 2}})
    assert ran.body["state"] == "completed" and ran.body["output"] == {"count": 2}, ran.body
    over = await server.call("POST", run, json={"parameters": {"n": 3_000_000}})
    assert over.body["state"] == "failed" and over.body["failedStep"] == "e", over.body
    assert "count" in over.body["error"] and "1000000" in over.body["error"]
    override = {"blockOverrides": {"e": {"interval": "{{ parameters.n }}"}}, "parameters": {"n": 0}}
    assert (await server.call("POST", run, json=override)).body["state"] == "completed"
