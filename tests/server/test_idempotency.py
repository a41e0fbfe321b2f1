"""Idempotency-Key on POST: the first answer is stored and replayed, never run twice."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import asyncssh
import orjson
import pytest
from multidict import CIMultiDict

from vi_flow.server.helpers import IDEMPOTENCY_LOCKS
from vi_flow.server.state import STORE_KEY

from .conftest import Server, StartServer, spec

pytestmark = pytest.mark.anyio


async def test_replay_returns_the_same_flow_and_creates_one(server: Server) -> None:
    headers = {"Idempotency-Key": "key-1"}
    first = await server.call("POST", "/flows", json=spec("once"), headers=headers)
    again = await server.call("POST", "/flows", json=spec("once"), headers=headers)
    assert first.status == again.status == 201
    assert again.body["flowId"] == first.body["flowId"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len((await server.call("GET", "/flows")).body["items"]) == 1


async def test_concurrent_retries_create_exactly_one(server: Server) -> None:
    ids: list[str] = []

    async def post() -> None:
        answer = await server.call(
            "POST", "/flows", json=spec("c"), headers={"Idempotency-Key": "k"}
        )
        ids.append(answer.body["flowId"])

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(post)
    assert len(set(ids)) == 1
    assert len((await server.call("GET", "/flows")).body["items"]) == 1


async def test_same_key_with_another_body_is_rejected(server: Server) -> None:
    headers = {"Idempotency-Key": "key-2"}
    await server.call("POST", "/flows", json=spec("a"), headers=headers)
    other = await server.call("POST", "/flows", json=spec("b"), headers=headers)
    assert other.status == 422
    assert other.body["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_a_retry_with_its_keys_in_another_order_is_a_replay(server: Server) -> None:
    """A client that rebuilt its request (another JSON library, a dict made anew) sends
    the same JSON with other key order and spacing: the same request, not a reuse."""
    headers = {"Idempotency-Key": "key-order", "Content-Type": "application/json"}
    body = spec("ordered")
    first = await server.call("POST", "/flows", data=orjson.dumps(body), headers=headers)
    reordered = orjson.loads(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    text = json.dumps(dict(reversed(list(reordered.items()))), indent=2).encode()
    again = await server.call("POST", "/flows", data=text, headers=headers)
    assert first.status == again.status == 201, again.body
    assert again.body["flowId"] == first.body["flowId"]
    assert again.headers["Idempotent-Replayed"] == "true"
    changed = dict(body, description="another")
    other = await server.call("POST", "/flows", data=orjson.dumps(changed), headers=headers)
    assert other.status == 422 and other.body["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_a_key_given_twice_is_refused_and_makes_nothing(server: Server) -> None:
    # QA: the first of two Idempotency-Key headers won, silently; a proxy that read the
    # other would retry under a key this server never stored
    headers = CIMultiDict(server.headers(None, None))
    headers.extend([("Idempotency-Key", "one"), ("Idempotency-Key", "two")])
    url = f"{server.root}/v1/flows"
    async with server.session.post(url, json=spec("twice"), headers=headers) as answer:
        body = await answer.json()
    assert answer.status == 422 and "Idempotency-Key: given more than once" in str(body)
    assert (await server.call("GET", "/flows")).body["items"] == []


async def test_without_a_key_every_post_creates(server: Server) -> None:
    await server.call("POST", "/flows", json=spec("a"))
    await server.call("POST", "/flows", json=spec("a"))
    assert len((await server.call("GET", "/flows")).body["items"]) == 2


async def test_keys_are_scoped_by_path_and_failures_are_not_stored(server: Server) -> None:
    headers = {"Idempotency-Key": "shared"}
    bad = await server.call("POST", "/flows", json={"name": ""}, headers=headers)
    assert bad.status == 422
    good = await server.call("POST", "/flows", json=spec("ok"), headers=headers)
    assert good.status == 201
    run = await server.call("POST", "/runs", json={"flowId": good.body["flowId"]}, headers=headers)
    assert run.status == 201 and run.body["runId"].startswith("run_")


async def test_replay_survives_a_restart(server: Server, start_server: StartServer) -> None:
    headers = {"Idempotency-Key": "durable"}
    first = await server.call("POST", "/flows", json=spec("d"), headers=headers)
    await server.stop()
    restarted = await start_server(server.home)
    again = await restarted.call("POST", "/flows", json=spec("d"), headers=headers)
    assert again.body == first.body
    assert len((await restarted.call("GET", "/flows")).body["items"]) == 1


async def test_the_lock_map_keeps_only_keys_in_use(server: Server) -> None:
    async def post(key: str) -> int:
        headers = {"Idempotency-Key": key}
        return (await server.call("POST", "/flows", json=spec(key), headers=headers)).status

    statuses = await asyncio.gather(*(post(f"k{i % 5}") for i in range(40)))
    assert set(statuses) == {201}
    assert len((await server.call("GET", "/flows")).body["items"]) == 5  # one per key
    assert len(server.app[IDEMPOTENCY_LOCKS]) == 0  # nothing left once every request ended


async def test_the_resource_and_its_record_are_saved_together(server: Server) -> None:
    store = server.app[STORE_KEY]

    async def crash(*args: object) -> None:
        raise RuntimeError("the server died between two transactions")

    store.put_idempotent = crash  # type: ignore[method-assign]  # a separate save would fail
    headers = {"Idempotency-Key": "together"}
    first = await server.call("POST", "/flows", json=spec("one"), headers=headers)
    again = await server.call("POST", "/flows", json=spec("one"), headers=headers)
    assert first.status == again.status == 201
    assert again.body["flowId"] == first.body["flowId"] and again.headers["Idempotent-Replayed"]
    body = {"flowId": first.body["flowId"]}
    runs = [await server.call("POST", "/runs", json=body, headers=headers) for _ in range(2)]
    assert runs[0].body["runId"] == runs[1].body["runId"]
    assert len((await server.call("GET", "/flows")).body["items"]) == 1
    assert len((await server.call("GET", "/runs")).body["items"]) == 1


async def test_changes_and_deletes_are_saved_with_their_record(server: Server) -> None:
    # QA: a publish, update or delete saved its answer in a transaction of its own: a
    # crash between the two made the retry publish again, or answer 412 or 404 about the
    # request's own change (and an organization's create made two)
    flow_id = (await server.call("POST", "/flows", json=spec("mine"))).body["flowId"]
    store = server.app[STORE_KEY]

    async def crash(*args: object) -> None:
        raise RuntimeError("the server died between two transactions")

    store.put_idempotent = crash  # type: ignore[method-assign]  # a separate save would fail

    async def twice(method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Idempotency-Key": f"{method} {path}", **kwargs.pop("headers", {})}
        first = await server.call(method, path, headers=headers, **kwargs)
        again = await server.call(method, path, headers=headers, **kwargs)
        assert (first.status, again.body) == (again.status, first.body), (first, again)
        assert 200 <= first.status < 300 and again.headers["Idempotent-Replayed"] == "true"
        return first.body

    assert await twice("POST", f"/flows/{flow_id}/publish") == {"version": 1}
    etag = (await server.call("GET", f"/flows/{flow_id}")).headers["ETag"]
    changed = await twice(
        "PUT", f"/flows/{flow_id}", json=spec("changed"), headers={"If-Match": etag}
    )
    assert changed["spec"]["name"] == "changed"
    org = await twice("POST", "/organizations", json={"name": "once"})
    orgs = await store.run(lambda c: c.execute("SELECT COUNT(*) FROM orgs").fetchone())
    assert orgs[0] == 2  # the server's own and one more
    run_id = (await server.call("POST", f"/flows/{flow_id}/execute", json={})).body["executionId"]
    with anyio.fail_after(30):  # a run is deleted once it ended
        while (await server.call("GET", f"/runs/{run_id}")).body["status"]["conditions"][-1][
            "condition"
        ] in ("Pending", "Running"):
            await anyio.sleep(0.05)
    assert (await twice("DELETE", f"/runs/{run_id}"))["deleted"]
    assert (await twice("DELETE", f"/flows/{flow_id}"))["deleted"]
    assert (await server.call("GET", f"/flows/{flow_id}")).status == 404
    # QA: the same for a volume's delete, an SSH key's and a token's revoke
    volume = (await server.call("POST", "/volumes", json={"sizeGb": 1})).body["volumeId"]
    assert (await twice("DELETE", f"/volumes/{volume}"))["deleted"]
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    key = await server.call("POST", "/ssh-keys", json={"name": "k", "publicKey": public})
    assert (await twice("DELETE", f"/ssh-keys/{key.body['keyId']}"))["deleted"]
    tokens = f"/organizations/{org['organizationId']}/tokens"
    assert (await server.call("POST", tokens, json={"name": "ci"})).status == 201
    assert await twice("DELETE", f"{tokens}/ci") == {"name": "ci", "revoked": 1}


CREATES = [
    ("/tasks", {"command": "true"}, "taskId"),
    ("/volumes", {"sizeGb": 1}, "volumeId"),
    ("/reservations", {"cpus": 1, "durationHours": 1}, "reservationId"),
]


@pytest.mark.parametrize(("path", "body", "field"), CREATES)
async def test_tasks_volumes_and_reservations_are_saved_with_their_record(
    server: Server, path: str, body: dict[str, object], field: str
) -> None:
    store = server.app[STORE_KEY]

    async def crash(*args: object) -> None:
        raise RuntimeError("the server died between two transactions")

    store.put_idempotent = crash  # type: ignore[method-assign]  # a separate save would fail
    headers = {"Idempotency-Key": f"together-{path}"}
    first = await server.call("POST", path, json=body, headers=headers)
    again = await server.call("POST", path, json=body, headers=headers)
    assert first.status == again.status == 201, first.body
    assert again.body[field] == first.body[field] and again.headers["Idempotent-Replayed"]
    assert len((await server.call("GET", path)).body["items"]) == 1


@pytest.mark.parametrize(("path", "body", "field"), CREATES)
async def test_concurrent_duplicates_make_one_task_volume_or_reservation(
    server: Server, path: str, body: dict[str, object], field: str
) -> None:
    headers = {"Idempotency-Key": "same"}
    answers = await asyncio.gather(
        *(server.call("POST", path, json=body, headers=headers) for _ in range(6))
    )
    assert {a.status for a in answers} == {201}
    assert len({a.body[field] for a in answers}) == 1
    assert len((await server.call("GET", path)).body["items"]) == 1


async def test_a_task_the_provider_refuses_leaves_no_replayable_answer(server: Server) -> None:
    headers = {"Idempotency-Key": "refused"}
    body = {"command": "true", "cpus": 10_000}  # more than this machine has: refused
    first = await server.call("POST", "/tasks", json=body, headers=headers)
    assert 400 <= first.status < 500, first.body
    again = await server.call("POST", "/tasks", json=body, headers=headers)
    assert again.status == first.status and "Idempotent-Replayed" not in again.headers
    assert (await server.call("GET", "/tasks")).body["items"] == []


async def test_a_background_job_is_saved_with_its_record(server: Server) -> None:
    store = server.app[STORE_KEY]

    async def crash(*args: object) -> None:
        raise RuntimeError("the server died between two transactions")

    store.put_idempotent = crash  # type: ignore[method-assign]  # a separate save would fail
    flow = (await server.call("POST", "/flows", json=spec("job"))).body["flowId"]
    headers = {"Idempotency-Key": "one-job"}
    answers = await asyncio.gather(
        *(server.call("POST", f"/flows/{flow}/jobs", json={}, headers=headers) for _ in range(6))
    )
    assert {a.status for a in answers} == {202}
    assert len({a.body["executionId"] for a in answers}) == 1
    assert answers[0].body["status"] in ("Running", "Succeeded")
    assert len((await server.call("GET", "/runs")).body["items"]) == 1
