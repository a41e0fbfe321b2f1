"""Flows and runs end to end against the embedded local server over loopback HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

import vi_flow
from vi_flow import (
    AuthenticationError,
    ConflictError,
    FlowNotFoundError,
    NotFoundError,
    PreconditionFailedError,
    RunNotFoundError,
    UnprocessableEntityError,
)
from vi_flow.models import Condition, FlowBlock, FlowSpec, PaginationParams

from ..proxy import CuttingProxy, cutting_proxy

pytestmark = pytest.mark.anyio

SPEC = {
    "name": "demo",
    "blocks": [{"block": "template", "id": "greet", "settings": {"template": "hi"}}],
}


class NoSleep:
    """Records the backoff delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
async def client() -> vi_flow.AsyncClient:
    async with vi_flow.AsyncClient(sleep=NoSleep()) as c:
        yield c  # type: ignore[misc]


async def test_create_get_list_delete(client: vi_flow.AsyncClient) -> None:
    flow = await client.flows.create(SPEC)
    assert flow.flow_id.startswith("flow_") and flow.organization_id == "org_default"
    assert flow.spec.blocks == [
        FlowBlock(block="template", id="greet", settings={"template": "hi"})
    ]
    assert (await client.flows.get(flow.flow_id)) == flow
    assert [f.flow_id for f in (await client.flows.list()).items] == [flow.flow_id]
    deleted = await client.flows.delete(flow.flow_id)
    assert deleted.flow_id == flow.flow_id and deleted.deleted
    with pytest.raises(FlowNotFoundError, match=flow.flow_id):
        await client.flows.get(flow.flow_id)


async def test_create_from_model_with_chosen_id(client: vi_flow.AsyncClient) -> None:
    spec = FlowSpec(name="typed", blocks=[FlowBlock(block="template")], training_project="proj_1")
    flow = await client.flows.create(spec, flow_id="flow_abc123")
    assert flow.flow_id == "flow_abc123"
    assert (await client.flows.get("flow_abc123")).spec.training_project == "proj_1"
    with pytest.raises(ConflictError, match="flow_abc123"):
        await client.flows.create(spec, flow_id="flow_abc123")
    assert client.http.sleep.delays == []  # type: ignore[attr-defined]  # a state conflict is not retried


async def test_unknown_flow_names_the_id(client: vi_flow.AsyncClient) -> None:
    with pytest.raises(FlowNotFoundError, match="flow_missing") as info:
        await client.flows.get("flow_missing")
    assert info.value.status_code == 404 and info.value.request_id


async def test_malformed_spec_is_422_naming_the_field(client: vi_flow.AsyncClient) -> None:
    with pytest.raises(UnprocessableEntityError, match=r"blocks\[1\]\.block"):
        await client.flows.create(
            {"name": "bad", "blocks": [{"block": "template"}, {"settings": {}}]}
        )
    with pytest.raises(UnprocessableEntityError, match="name"):
        await client.flows.create({"name": "", "blocks": []})
    assert (await client.flows.list()).items == []


async def test_a_number_json_cannot_hold_is_refused_before_sending(
    client: vi_flow.AsyncClient,
) -> None:
    # orjson writes nan and infinities as null: the server got "no value" in their place
    spec = {**SPEC, "blocks": [{**SPEC["blocks"][0], "settings": {"w": [1.5, float("nan")]}}]}
    with pytest.raises(ValueError, match=r"blocks\[0\]\.settings\.w\[1\]: .* got nan"):
        await client.flows.create(spec)
    assert (await client.flows.list()).items == []
    flow = await client.flows.create({**SPEC, "blocks": [{**SPEC["blocks"][0], "w": None}]})
    assert flow.spec.name == "demo"  # a null the caller gave goes as null


@pytest.mark.parametrize("transport", ["aiohttp", "stdlib"])
async def test_a_callers_idempotency_key_in_any_case_is_the_one_sent(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA: "idempotency-key" (lower case) in http.request's headers was not seen, so the
    # SDK added its own: over aiohttp its key won and a repeat made a second flow; over
    # the stdlib both went, and the server refused the request (422).
    monkeypatch.setenv("VI_FLOW_HTTP_TRANSPORT", transport)
    body = {"name": "once", "blocks": [{"block": "template"}]}
    async with vi_flow.AsyncClient() as client:
        made = [
            await client.http.request(
                "POST", "/flows", json=body, headers={"idempotency-key": "mine-1"}
            )
            for _ in range(2)
        ]
        assert made[0]["flowId"] == made[1]["flowId"]
        assert len((await client.flows.list()).items) == 1


async def test_stale_etag_is_rejected(client: vi_flow.AsyncClient) -> None:
    flow = await client.flows.create(SPEC)
    renamed = await client.flows.update(flow.flow_id, {**SPEC, "name": "v2"}, etag=flow.etag)
    assert renamed.spec.name == "v2" and renamed.etag != flow.etag
    with pytest.raises(PreconditionFailedError):
        await client.flows.update(flow.flow_id, {**SPEC, "name": "v3"}, etag=flow.etag)
    assert (await client.flows.get(flow.flow_id)).spec.name == "v2"


async def test_runs_move_to_a_terminal_condition(client: vi_flow.AsyncClient) -> None:
    flow = await client.flows.create(SPEC)
    run = await client.runs.create(flow.flow_id, run_id="run_abc123")
    assert run.run_id == "run_abc123"
    assert run.status.conditions[0].condition is Condition.PENDING
    with anyio.fail_after(10):
        while (
            not (run := await client.runs.get(run.run_id)).status.conditions[-1].condition.terminal
        ):
            await anyio.sleep(0.02)
    history = [c.condition for c in run.status.conditions]
    assert history[:2] == [Condition.PENDING, Condition.RUNNING]
    assert history[-1] is Condition.SUCCEEDED
    listed = await client.runs.list(flow_id=flow.flow_id, condition="Succeeded")
    assert [r.run_id for r in listed.items] == ["run_abc123"]
    assert (await client.runs.list(condition=Condition.FAILED)).items == []
    for spelled in ("succeeded", "SUCCEEDED", " Succeeded "):  # any case, as users type it
        assert [r.run_id for r in (await client.runs.list(condition=spelled)).items] == [
            "run_abc123"
        ]
    with pytest.raises(ValueError, match=r"condition must be one of .*Succeeded.*'done'"):
        client.runs.list(condition="done")
    pages = PaginationParams(page_size=1)  # passed positionally, as the seeds' tables allow
    assert len((await client.runs.list(pages)).items) == 1
    assert len((await client.flows.list(pages)).items) == 1
    assert (await client.runs.delete("run_abc123")).deleted
    with pytest.raises(RunNotFoundError):
        await client.runs.get("run_abc123")


async def test_runs_of_unknown_flow_are_rejected(client: vi_flow.AsyncClient) -> None:
    with pytest.raises(FlowNotFoundError, match="flow_nope"):
        await client.runs.create("flow_nope")


async def test_wrong_token_is_authentication_error(client: vi_flow.AsyncClient) -> None:
    await client.flows.list()
    endpoint = await client.http.connection.endpoint()
    async with vi_flow.AsyncClient(base_url=endpoint.base_url, api_key="not-a-token") as stranger:
        with pytest.raises(AuthenticationError):
            await stranger.flows.list()


async def test_other_organization_sees_404(client: vi_flow.AsyncClient) -> None:
    flow = await client.flows.create(SPEC)
    org = await client.http.request("POST", "/organizations", json={"name": "other"})
    token = await client.http.request(
        "POST", f"/organizations/{org['organizationId']}/tokens", json={"name": "t"}
    )
    endpoint = await client.http.connection.endpoint()
    async with vi_flow.AsyncClient(base_url=endpoint.base_url, api_key=token["token"]) as other:
        with pytest.raises(FlowNotFoundError):
            await other.flows.get(flow.flow_id)
        assert (await other.flows.list()).items == []
        with pytest.raises(NotFoundError):
            await other.flows.delete(flow.flow_id)
    assert (await client.flows.get(flow.flow_id)).flow_id == flow.flow_id


@contextlib.asynccontextmanager
async def _first_answer_lost(
    client: vi_flow.AsyncClient,
) -> AsyncIterator[tuple[vi_flow.AsyncClient, CuttingProxy]]:
    """A client of ``client``'s server whose first request's answer is lost on the way
    (the server did the work; the client retries at once), and the proxy between."""
    endpoint = await client.http.connection.endpoint()
    port = int(endpoint.base_url.rsplit(":", 1)[1].split("/")[0])
    async with cutting_proxy(port, swallow_answers=1) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/v1"
        async with vi_flow.AsyncClient(
            base_url=url, api_key=endpoint.api_key, sleep=NoSleep()
        ) as flaky:
            yield flaky, proxy


async def test_post_retried_after_a_dropped_connection_creates_one_flow(
    client: vi_flow.AsyncClient,
) -> None:
    async with _first_answer_lost(client) as (flaky, proxy):
        flow = await flaky.flows.create(SPEC)
        assert proxy.connections == 2
    flows = (await client.flows.list()).items
    assert [f.flow_id for f in flows] == [flow.flow_id]


async def test_an_update_and_a_delete_whose_answers_were_lost_report_their_own_change(
    client: vi_flow.AsyncClient,
) -> None:
    # Found by QA: retried without an Idempotency-Key, the update's retry met its own
    # change (412 ETAG_MISMATCH) and the delete's its own deletion (404).
    flow = await client.flows.create(SPEC)
    renamed = {**SPEC, "name": "renamed"}
    for lost in ("update", "delete"):
        async with _first_answer_lost(client) as (flaky, proxy):
            if lost == "update":
                updated = await flaky.flows.update(flow.flow_id, renamed, etag=flow.etag)
                assert updated.spec.name == "renamed" and updated.etag != flow.etag
            else:
                deleted = await flaky.flows.delete(flow.flow_id)
                assert deleted.flow_id == flow.flow_id
            assert proxy.connections == 2  # the first answer was lost; the retry replayed it
    assert (await client.flows.list()).items == []


async def test_a_streamed_run_whose_answer_was_lost_is_streamed_not_run_again(
    client: vi_flow.AsyncClient,
) -> None:
    # Found by QA: the retry of POST /flows/{id}/events, whose first answer was lost before
    # its first byte, started a second run (the stream followed it; the first ran unseen).
    flow = await client.flows.create(SPEC)
    async with _first_answer_lost(client) as (flaky, proxy):
        events = [e async for e in flaky.flow(flow.flow_id).events(message="once")]
        assert proxy.connections == 2  # the first answer was lost; the retry streamed
    runs = [r.run_id async for r in client.runs.list().all_items()]
    assert runs == [events[-1].execution_id]
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))  # each once


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    async with vi_flow.AsyncClient() as first:
        flow = await first.flows.create(SPEC)
    async with vi_flow.AsyncClient() as second:
        assert (await second.flows.get(flow.flow_id)).spec == flow.spec


async def test_a_flow_id_filter_that_could_match_nothing_is_refused() -> None:
    async with vi_flow.AsyncClient(base_url="http://127.0.0.1:9/v1", api_key="k") as client:
        for bad in ("", 5):
            with pytest.raises(ValueError, match="flow_id must be a non-empty string"):
                client.runs.list(flow_id=bad)  # type: ignore[arg-type]
