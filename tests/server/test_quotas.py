"""Per-organization quotas over real HTTP: over one is a clear error that changes nothing.

Each test starts a real server whose quotas come from ``VI_FLOW_QUOTA_<NAME>``, as an
operator would set them, and checks that the answer names the quota, that nothing
was made, that other organizations are not held back, and that freeing one makes room.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from vi_flow.server.quotas import Quotas

from .conftest import Server, StartServer

pytestmark = pytest.mark.anyio

HOUR_MS = 3600 * 1000


def _over(answer: Any, quota: str, status: int) -> None:
    assert answer.status == status, answer.body
    assert answer.body["error"]["code"] == "QUOTA_EXCEEDED"
    message = answer.body["error"]["message"]
    assert message.startswith(f"{quota}:") and f"VI_FLOW_QUOTA_{quota.upper()}" in message


async def _other_token(server: Server) -> str:
    org = (await server.call("POST", "/organizations", json={"name": "other"})).body
    made = await server.call(
        "POST", f"/organizations/{org['organizationId']}/tokens", json={"name": "ci"}
    )
    return str(made.body["token"])


def _later(hours: int) -> int:
    return int(time.time() * 1000) + hours * HOUR_MS


async def test_reservations_per_organization(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VI_FLOW_QUOTA_RESERVATIONS", "2")
    server = await start_server()
    made = []
    for hours in (1, 3):
        body = {"cpus": 1, "startTime": _later(hours), "durationHours": 1}
        answer = await server.call("POST", "/reservations", json=body)
        assert answer.status == 201, answer.body
        made.append(answer.body["reservationId"])
    third = {"cpus": 1, "startTime": _later(5), "durationHours": 1}
    _over(await server.call("POST", "/reservations", json=third), "reservations", 422)
    assert len((await server.call("GET", "/reservations")).body["items"]) == 2
    other = await _other_token(server)
    theirs = await server.call("POST", "/reservations", json=third, token=other)
    assert theirs.status == 201, theirs.body  # a quota per organization
    assert (await server.call("DELETE", f"/reservations/{made[0]}")).status == 200
    again = await server.call("POST", "/reservations", json=third)
    assert again.status == 201, again.body  # a cancelled one no longer counts


async def test_reserved_cpus_per_organization(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VI_FLOW_QUOTA_RESERVED_CPUS", "1")
    server = await start_server()
    first = {"cpus": 1, "startTime": _later(1), "durationHours": 1}
    assert (await server.call("POST", "/reservations", json=first)).status == 201
    second = {"cpus": 1, "startTime": _later(3), "durationHours": 1}
    _over(await server.call("POST", "/reservations", json=second), "reserved_cpus", 422)
    assert len((await server.call("GET", "/reservations")).body["items"]) == 1


async def test_pending_tasks_per_organization(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VI_FLOW_QUOTA_PENDING_TASKS", "2")
    server = await start_server()
    body = {"cpus": 1, "startTime": _later(2), "durationHours": 1}
    reservation = (await server.call("POST", "/reservations", json=body)).body["reservationId"]
    waiting = {"command": "true", "cpus": 1, "reservationId": reservation}  # waits for it
    tasks = [(await server.call("POST", "/tasks", json=waiting)).body for _ in range(2)]
    assert [t["status"] for t in tasks] == ["pending", "pending"]
    _over(await server.call("POST", "/tasks", json=waiting), "pending_tasks", 429)
    assert len((await server.call("GET", "/tasks")).body["items"]) == 2
    # refused where it would be recorded: its directory was made, and is gone again
    assert sorted(p.name for p in (server.home / "tasks").iterdir()) == sorted(t["taskId"] for t in tasks)  # fmt: skip
    cancelled = await server.call("POST", f"/tasks/{tasks[0]['taskId']}/cancel", json={})
    assert cancelled.status == 200, cancelled.body
    assert (await server.call("POST", "/tasks", json=waiting)).status == 201


def test_quotas_come_from_the_environment_and_bad_values_are_named() -> None:
    env = {"VI_FLOW_QUOTA_PENDING_TASKS": "5", "VI_FLOW_QUOTA_RESERVATIONS": "none"}
    quotas = Quotas.from_env({**env, "VI_FLOW_QUOTA_RESERVED_CPUS": ""})
    assert quotas.pending_tasks == 5 and quotas.reservations is None
    assert quotas.reserved_cpus == Quotas().reserved_cpus  # empty: as if not set
    assert Quotas.from_env({}) == Quotas()
    for bad in ("lots", "-1", "1.5"):
        with pytest.raises(ValueError, match=r"^VI_FLOW_QUOTA_RESERVED_GPUS: "):
            Quotas.from_env({"VI_FLOW_QUOTA_RESERVED_GPUS": bad})


async def test_racing_reservations_stay_within_the_quota(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VI_FLOW_QUOTA_RESERVATIONS", "3")
    server = await start_server()
    bodies = [{"cpus": 1, "startTime": _later(2 * i + 1), "durationHours": 1} for i in range(8)]
    answers = await asyncio.gather(*(server.call("POST", "/reservations", json=b) for b in bodies))
    assert sorted(a.status for a in answers) == [201] * 3 + [422] * 5
    assert len((await server.call("GET", "/reservations")).body["items"]) == 3


async def test_events_per_run_fail_the_step_that_logs_past_them(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VI_FLOW_QUOTA_EVENTS_PER_RUN", "50")
    server = await start_server()
    blocks = [{"block": "emit", "id": "flood", "settings": {"count": 1_000_000}}]
    flow = (await server.call("POST", "/flows", json={"name": "f", "blocks": blocks})).body
    outcome = (await server.call("POST", f"/flows/{flow['flowId']}/execute", json={})).body
    assert outcome["status"] == "Failed" and outcome["failedStep"] == "flood", outcome
    assert (
        "events_per_run" in outcome["error"] and "VI_FLOW_QUOTA_EVENTS_PER_RUN" in outcome["error"]
    )
    events = await server.call("GET", f"/runs/{outcome['executionId']}/events")
    kinds = [line for line in events.raw.decode().splitlines() if line.startswith("event:")]
    assert kinds[-1] == "event: flow_completed" and len(kinds) <= 50 + 3  # + the failure
    small = [{"block": "emit", "settings": {"count": 10}}]
    fine = (await server.call("POST", "/flows", json={"name": "s", "blocks": small})).body
    done = (await server.call("POST", f"/flows/{fine['flowId']}/execute", json={})).body
    assert done["status"] == "Succeeded", done  # another run has its own quota


async def test_a_task_step_logging_past_the_events_quota_fails_and_its_task_stops(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VI_FLOW_QUOTA_EVENTS_PER_RUN", "40")
    server = await start_server()
    blocks = [{"block": "task", "id": "chatty", "settings": {"command": "yes"}}]
    flow = (await server.call("POST", "/flows", json={"name": "t", "blocks": blocks})).body
    outcome = (await server.call("POST", f"/flows/{flow['flowId']}/execute", json={})).body
    assert outcome["status"] == "Failed" and "events_per_run" in outcome["error"], outcome
    tasks = (await server.call("GET", "/tasks")).body["items"]
    assert [t["status"] for t in tasks] == ["cancelled"], tasks  # not left running


async def test_streams_per_organization(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA: nothing bounded the streams one organization held; ~330 held log follows (at an
    # open-file limit of 1024) made every other organization's request answer 503
    monkeypatch.setenv("VI_FLOW_QUOTA_STREAMS", "2")
    server = await start_server()
    task = (await server.call("POST", "/tasks", json={"command": "sleep 60"})).body["taskId"]
    url = f"{server.root}/v1/tasks/{task}/logs?follow=true"
    held = [await server.session.get(url, headers=server.headers()) for _ in range(2)]
    try:
        assert [r.status for r in held] == [200, 200]
        third = await server.call("GET", f"/tasks/{task}/logs", params={"follow": "true"})
        _over(third, "streams", 429)
        snapshot = await server.call("GET", f"/tasks/{task}/logs")  # not a stream: answered
        assert snapshot.status == 200, snapshot.body
        other = await _other_token(server)
        theirs = (await server.call("POST", "/tasks", json={"command": "true"}, token=other)).body
        path = f"/tasks/{theirs['taskId']}/logs"
        answer = await server.call("GET", path, params={"follow": "true"}, token=other)
        assert answer.status == 200  # a quota per organization
        held.pop().close()  # one given back: room for one more, at once (QA: a quiet
        for _ in range(20):  # stream held its slot until its next heartbeat, 15 s)
            again = await server.session.get(url, headers=server.headers())
            held.append(again)
            if again.status == 200:
                break
            await asyncio.sleep(0.05)
        assert again.status == 200
    finally:
        for response in held:
            response.close()
        await server.call("POST", f"/tasks/{task}/cancel", json={"gracePeriod": 0})


async def test_a_quiet_stream_whose_client_left_gives_its_slot_back_at_once(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA: the event stream of a paused run writes only its heartbeat (every 15 s), so a
    # client that reset it held its slot until then: 429 for new streams meanwhile
    monkeypatch.setenv("VI_FLOW_QUOTA_STREAMS", "2")
    server = await start_server()
    ask = {"block": "tool", "id": "ask", "settings": {"tool": "lookup"}}
    flow = (await server.call("POST", "/flows", json={"name": "ask", "blocks": [ask]})).body
    run = (await server.call("POST", f"/flows/{flow['flowId']}/jobs", json={})).body
    url = f"{server.root}/v1/runs/{run['executionId']}/events"
    for _ in range(3):  # each round: two held, both left, two more at once
        held = [await server.session.get(url, headers=server.headers()) for _ in range(2)]
        assert [r.status for r in held] == [200, 200]
        for response in held:
            response.close()
        await asyncio.sleep(0.2)
    await server.call("POST", f"/runs/{run['executionId']}/cancel", json={})
