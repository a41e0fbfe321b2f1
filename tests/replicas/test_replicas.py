"""Replicas on one PostgreSQL schema, proven as a user runs them (issue 17).

Each test starts real ``vi-flow serve`` processes, each with its own home, on one fresh
schema, and talks to them over loopback HTTP: directly (to say which replica owns a run:
the one that started it) or through :class:`~.kit.RoundRobinProxy`, the load balancer.
Replica leases are 2 s (``VI_FLOW_REPLICA_LEASE``), so a takeover comes within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
import uuid
from typing import Any

import aiohttp
import anyio
import asyncssh
import attrs
import orjson
import pytest

import vi_flow
from vi_flow import AsyncPausedResult
from vi_flow.models import Condition, FlowCompleted, Run, StreamEvent

from ..execution.conftest import TOOL_FLOW, emit_flow
from ..live_server import Answer
from .kit import (
    Cluster,
    Replica,
    RoundRobinProxy,
    call,
    condition,
    conditions,
    create_flow,
    data,
    exactly_once,
    get_run,
    live_replicas,
    one_end,
    sse,
    start_job,
    stored,
    three,
    wait_ended,
)

pytestmark = pytest.mark.anyio

# -- 1. one schema, three replicas ------------------------------------------------------


_BLOCKED_BY = """
WITH RECURSIVE blocked(pid) AS (
    SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))
    UNION
    SELECT a.pid FROM pg_stat_activity a JOIN blocked b ON b.pid = ANY(pg_blocking_pids(a.pid))
) SELECT count(*) FROM blocked
"""
"""How many sessions wait, directly or behind another, on the locks of session ``%s``
(asked from another session: inside a transaction ``pg_stat_activity`` is a snapshot)."""


async def blocked_by(watch: Any, pid: int) -> int:
    row = await (await watch.execute(_BLOCKED_BY, (pid,))).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.timeout(120)
async def test_three_replicas_started_at_once_on_an_empty_database_all_come_up(
    cluster: Cluster,
) -> None:
    """Three replicas that start at the same moment on a database with no organization yet
    (a first deployment) all come up. The race is made certain, not left to timing: the
    test holds a SHARE lock on ``orgs`` (reads pass, writes wait) until all three
    replicas wait behind it, then lets them go together."""
    import psycopg

    (first,) = await cluster.start("first")  # makes the tables; then as if never started
    assert cluster.terminate(first) == 0, first.output()
    connect = psycopg.AsyncConnection.connect
    async with (
        await connect(cluster.database) as conn,
        await connect(cluster.database, autocommit=True) as watch,
    ):
        async with conn.transaction():
            await conn.execute("DELETE FROM tokens")
            await conn.execute("DELETE FROM orgs")
        async with conn.transaction():
            await conn.execute("LOCK TABLE orgs IN SHARE MODE")
            replicas = [cluster.spawn(name) for name in ("a", "b", "c")]
            holder = conn.info.backend_pid
            with anyio.fail_after(60):
                while await blocked_by(watch, holder) < 3:
                    assert all(r.alive() for r in replicas), [r.output() for r in replicas]
                    await anyio.sleep(0.1)
    for replica in replicas:  # the lock is gone: all three went on together
        await cluster.wait_ready(replica)
        answer = await call(replica, "GET", "/health")
        assert answer.status == 200, (replica.name, answer.body)


@pytest.mark.timeout(120)
async def test_three_replicas_share_flows_and_tokens(cluster: Cluster) -> None:
    a, b, c = await three(cluster)
    assert len({a.pid, b.pid, c.pid}) == 3 and len({a.port, b.port, c.port}) == 3
    for replica in (a, b, c):
        answer = await call(replica, "GET", "/server")
        assert answer.status == 200 and answer.body["pid"] == replica.pid, answer.body
        assert answer.body.get("replica") == replica.name, answer.body
        assert sorted(answer.body.get("replicas", [])) == ["a", "b", "c"], answer.body
    async with a.client() as client:
        flow = await client.flows.create({"name": "shared", "blocks": []})
    for replica in (b, c):
        async with replica.client() as client:  # its own home's admin token
            listed = [f.flow_id async for f in client.flows.list().all_items()]
        assert listed == [flow.flow_id]
        for other in (a, b, c):  # every replica's token holds on every replica
            answer = await call(replica, "GET", f"/flows/{flow.flow_id}", token=other.token)
            assert answer.status == 200, (replica.name, other.name, answer.body)


# -- 2. a live stream on another replica; resume on a third -----------------------------


@pytest.mark.timeout(120)
async def test_a_stream_on_b_of_a_run_on_a_is_live_and_resumes_exactly_on_c(
    cluster: Cluster,
) -> None:
    a, b, c = await three(cluster)
    flow_id = await create_flow(a, emit_flow(80, interval=0.05))
    run_id = await start_job(a, flow_id)
    seen: list[tuple[int, str, Any]] = []
    running_when_seen = None
    with anyio.fail_after(60):
        async with contextlib.aclosing(sse(b, f"/runs/{run_id}/events")) as events:
            async for event in events:
                seen.append((int(event.id or 0), event.event, data(event)))
                if len(seen) == 10:  # still going on A while B already streams it
                    running_when_seen = condition(await get_run(a, run_id))
                if len(seen) == 40:
                    break
    assert running_when_seen == "Running"
    rest: list[tuple[int, str, Any]] = []
    with anyio.fail_after(60):
        headers = {"Last-Event-ID": str(seen[-1][0])}
        async with contextlib.aclosing(sse(c, f"/runs/{run_id}/events", headers=headers)) as it:
            rest = [(int(e.id or 0), e.event, data(e)) async for e in it]
    whole = seen + rest
    exactly_once([i for i, _, _ in whole])
    assert [name for _, name, _ in whole].count("flow_completed") == 1
    assert whole[-1][1] == "flow_completed" and whole[-1][2]["status"] == "Succeeded"
    assert sum(name == "log" for _, name, _ in whole) == 80
    assert whole == await stored(a, run_id)


# -- 3. cancel through a replica that does not own the run ------------------------------


@pytest.mark.timeout(120)
async def test_cancel_sent_to_b_ends_a_run_running_on_a(cluster: Cluster) -> None:
    a, b, c = await three(cluster)
    flow_id = await create_flow(a, emit_flow(2000, interval=0.05))
    run_id = await start_job(a, flow_id)
    with anyio.fail_after(30):
        async with contextlib.aclosing(sse(c, f"/runs/{run_id}/events")) as live:
            async for event in live:
                if event.event == "log":
                    break
    with anyio.fail_after(15):  # the call answers once the cancel is stored
        answer = await call(b, "POST", f"/runs/{run_id}/cancel")
    assert answer.status == 200, answer.body
    run = await wait_ended(c, run_id, 15)
    assert condition(run) == "Cancelled"
    one_end(run)
    events = await stored(b, run_id)
    exactly_once([i for i, _, _ in events])
    ends = [d for _, name, d in events if name == "flow_completed"]
    assert len(ends) == 1 and events[-1][1] == "flow_completed"
    assert ends[0]["status"] == "Cancelled"
    assert sum(name == "log" for _, name, _ in events) < 2000


# -- 4. tool calls answered on another replica ------------------------------------------


@pytest.mark.timeout(120)
async def test_tool_results_on_b_resume_a_run_paused_on_a(cluster: Cluster) -> None:
    a, b, c = await three(cluster)
    async with a.client() as on_a, b.client() as on_b, c.client() as on_c:
        flow = await on_a.flows.create(TOOL_FLOW)
        paused = await on_a.flow(flow.flow_id).execute(message="hi")
        assert isinstance(paused, AsyncPausedResult)
        (call_id,) = [tc.id for tc in paused.tool_calls]
        run_id = paused.execution_id
        accepted = (
            await on_b.flow(flow.flow_id)
            .run(run_id)
            .submit_tool_results([{"tool_call_id": call_id, "output": "42"}])
        )
        assert accepted == [call_id]
        with anyio.fail_after(30):
            events = [e async for e in on_c.flow(flow.flow_id).run(run_id).events()]
        trace = await on_c.flow(flow.flow_id).run(run_id).trace()
    exactly_once([e.event_id for e in events])
    ends = [e for e in events if isinstance(e, FlowCompleted)]
    assert len(ends) == 1 and ends[0] is events[-1]
    assert ends[0].status is Condition.SUCCEEDED and ends[0].output == "got 42"
    assert [s.step_id for s in trace.steps] == ["greet", "ask", "final"]
    one_end(await get_run(c, run_id))

    # the same, with B waiting for the outcome the owner (A) reaches
    second = await call(a, "POST", f"/flows/{flow.flow_id}/execute", json={"message": "x"})
    assert second.status == 200 and second.body["state"] == "paused", second.body
    results = [{"toolCallId": second.body["toolCalls"][0]["id"], "output": "7"}]
    with anyio.fail_after(30):
        outcome = await call(
            b,
            "POST",
            f"/runs/{second.body['executionId']}/tool-results?wait=true",
            json={"toolResults": results},
        )
    assert outcome.status == 200, outcome.body
    assert outcome.body["state"] == "completed" and outcome.body["output"] == "got 7"


# -- 5. one Idempotency-Key across replicas; credits spent once ------------------------


async def post_many(
    replicas: list[Replica], count: int, path: str, body: Any, headers: dict[str, str]
) -> list[Answer]:
    """``count`` concurrent POSTs, the i-th to ``replicas[i % len]``, with A's token."""
    token = replicas[0].token
    answers: list[Answer] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def post(i: int) -> None:
            replica = replicas[i % len(replicas)]
            answer = await call(
                replica, "POST", path, json=body, token=token, headers=headers,
                session=session, seconds=60,
            )  # fmt: skip
            answers.append(answer)

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for i in range(count):
                    tg.start_soon(post, i)
    return answers


@pytest.mark.timeout(180)
async def test_one_idempotency_key_on_three_replicas_makes_one_resource(
    cluster: Cluster,
) -> None:
    replicas = list(await three(cluster))
    block = {"block": "template", "id": "t", "settings": {"template": "ok"}}
    key = {"Idempotency-Key": f"flow-{uuid.uuid4().hex}"}
    made = await post_many(
        replicas, 100, "/flows", {"spec": {"name": "once", "blocks": [block]}}, key
    )
    assert [a.status for a in made] == [201] * 100, {a.status: a.body for a in made}
    assert len({a.raw for a in made}) == 1  # every answer the same, byte for byte
    flow_id = made[0].body["flowId"]
    async with replicas[1].client(replicas[0].token) as client:
        assert [f.flow_id async for f in client.flows.list().all_items()] == [flow_id]

    key = {"Idempotency-Key": f"job-{uuid.uuid4().hex}"}
    jobs = await post_many(replicas, 100, f"/flows/{flow_id}/jobs", {}, key)
    assert [a.status for a in jobs] == [202] * 100, {a.status: a.body for a in jobs}
    assert len({a.raw for a in jobs}) == 1
    async with replicas[2].client(replicas[0].token) as client:
        runs: list[Run] = [r async for r in client.runs.list().all_items()]
    assert [r.run_id for r in runs] == [jobs[0].body["executionId"]]


@pytest.mark.timeout(180)
async def test_one_key_on_three_replicas_makes_one_organization_and_one_version(
    cluster: Cluster,
) -> None:
    # Routes that save their answer after their change (not in its transaction) each
    # looked the key up, found nothing and made the resource on every replica at once:
    # 60 creates gave 2 to 4 organizations, 60 publishes versions 1, 2 and 3 (found by QA).
    replicas = list(await three(cluster))
    key = {"Idempotency-Key": f"org-{uuid.uuid4().hex}"}
    made = await post_many(replicas, 60, "/organizations", {"name": "once"}, key)
    assert [a.status for a in made] == [201] * 60, {a.status: a.body for a in made}
    assert len({a.raw for a in made}) == 1
    import psycopg

    async with await psycopg.AsyncConnection.connect(cluster.database) as conn:
        cursor = await conn.execute("SELECT org_id FROM orgs WHERE name = 'once'")
        assert [row[0] for row in await cursor.fetchall()] == [made[0].body["organizationId"]]

    flow_id = await create_flow(replicas[0], {"name": "published", "blocks": []})
    key = {"Idempotency-Key": f"publish-{uuid.uuid4().hex}"}
    published = await post_many(replicas, 60, f"/flows/{flow_id}/publish", {}, key)
    assert {a.status for a in published} == {200}, {a.status: a.body for a in published}
    assert {a.body["version"] for a in published} == {1}
    flow = await call(replicas[2], "GET", f"/flows/{flow_id}", token=replicas[0].token)
    assert flow.body["latestVersion"] == 1, flow.body


async def test_a_key_held_by_a_replica_that_died_answering_is_taken_by_the_retry(
    cluster: Cluster,
) -> None:
    # A replica holds a key with a placeholder naming it while it answers; killed then,
    # it leaves the placeholder: a retry elsewhere, once that replica is gone from the
    # live ones, takes the key over instead of waiting for an answer that never comes.
    import psycopg

    a, b = await cluster.start("a", "b")
    body = {"name": "retried"}
    body_hash = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    key = f"dead-{uuid.uuid4().hex}"
    async with await psycopg.AsyncConnection.connect(cluster.database) as conn:
        await conn.execute(
            "INSERT INTO idempotency (org_id, key, method, path, body_hash, status, body,"
            " created_at) VALUES ('org_default', %s, 'POST', '/v1/organizations', %s, 0, %s, 0)",
            (key, body_hash, b"@rep_gone"),
        )
        await conn.commit()
    with anyio.fail_after(30):
        made = await call(b, "POST", "/organizations", json=body, token=a.token,
                          headers={"Idempotency-Key": key})  # fmt: skip
    assert made.status == 201, made.body
    again = await call(a, "POST", "/organizations", json=body, headers={"Idempotency-Key": key})
    assert again.status == 201 and again.body == made.body, again.body


@pytest.mark.timeout(180)
async def test_credits_spent_on_three_replicas_at_once_are_spent_once(cluster: Cluster) -> None:
    replicas = list(await three(cluster))
    a = replicas[0]
    flow_id = await create_flow(a, {"name": "paid", "blocks": []})
    credits = "/organizations/org_default/credits"
    assert (await call(a, "PUT", credits, json={"credits": 10})).status == 200
    answers = await post_many(replicas, 40, f"/flows/{flow_id}/jobs", {}, {})
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [202] * 10 + [402] * 30, statuses
    assert {a.body["error"]["code"] for a in answers if a.status == 402} == {"INSUFFICIENT_CREDITS"}
    left = await call(replicas[1], "GET", credits, token=a.token)
    assert left.status == 200 and left.body["credits"] == 0, left.body
    async with replicas[2].client(a.token) as client:
        runs = [r.run_id async for r in client.runs.list().all_items()]
    assert sorted(runs) == sorted(a.body["executionId"] for a in answers if a.status == 202)


# -- 6 and 7. a replica goes away under live runs and streams ---------------------------

VICTIM_LINES = 600  # 60 s at 0.1 s a line: still running when its replica goes
OTHER_LINES = 100  # 10 s: ends normally on its own replica


@attrs.define
class Stream:
    """One client's event stream through a balancer: of a run started on ``owner``
    (``run_id``), or one that starts its run (``POST .../events``, ``run_id`` None) on
    the balancer's first upstream, which is ``owner``."""

    owner: Replica
    flow_id: str
    run_id: str | None
    proxy: RoundRobinProxy
    events: list[StreamEvent] = attrs.Factory(list)

    async def follow(self, token: str) -> None:
        async with vi_flow.AsyncClient(base_url=self.proxy.base_url, api_key=token) as client:
            flow = client.flow(self.flow_id)
            events = flow.events() if self.run_id is None else flow.run(self.run_id).events()
            with anyio.fail_after(150):
                async for event in events:
                    self.events.append(event)  # one by one: the test watches it fill

    @property
    def run(self) -> str:
        return self.run_id or self.events[0].execution_id


async def _streams(
    stack: contextlib.AsyncExitStack,
    replicas: tuple[Replica, Replica, Replica],
    victim_runs: int,
    other_runs: int,
    streams: int,
) -> list[Stream]:
    """Runs on A (slow) and on B and C (short), ``streams`` followers of them through one
    balancer, and two ``flow.events()`` streams that start their run on A, two on B."""
    a, b, c = replicas
    slow = await create_flow(a, emit_flow(VICTIM_LINES, interval=0.1))
    short = await create_flow(a, emit_flow(OTHER_LINES, interval=0.1))
    proxy = await stack.enter_async_context(RoundRobinProxy([a.port, b.port, c.port]))
    runs = [(a, slow, await start_job(a, slow)) for _ in range(victim_runs)]
    for i in range(other_runs):
        owner = (b, c)[i % 2]
        runs.append((owner, short, await start_job(owner, short, a.token)))
    made = [Stream(*runs[i % len(runs)], proxy) for i in range(streams)]
    for owner, flow, others in ((a, slow, (b, c)), (b, short, (c, a))):
        for _ in range(2):
            ports = [owner.port, *(o.port for o in others)]  # the run starts on ``owner``
            own = await stack.enter_async_context(RoundRobinProxy(ports))
            made.append(Stream(owner, flow, None, own))
    return made


async def _lose_a_replica(
    cluster: Cluster, how: str, victim_runs: int, other_runs: int, streams: int
) -> None:
    """Start runs on A, B and C, follow them through the balancer, then stop A (``kill``:
    SIGKILL, ``term``: SIGTERM); every stream must end exactly once, every run too."""
    replicas = await three(cluster)
    a, token = replicas[0], replicas[0].token
    async with contextlib.AsyncExitStack() as stack:
        followed = await _streams(stack, replicas, victim_runs, other_runs, streams)
        balancers = {id(s.proxy): s.proxy for s in followed}.values()
        async with anyio.create_task_group() as tg:
            for stream in followed:
                tg.start_soon(stream.follow, token)
            with anyio.fail_after(60):  # every stream is live before A goes
                while not all(stream.events for stream in followed):
                    await anyio.sleep(0.05)
            assert followed[0].proxy.served[a.port] > 0
            before = sum(sum(p.served.values()) for p in balancers)
            if how == "kill":
                cluster.kill(a)
            else:
                assert cluster.terminate(a) == 0, a.output()
            lost_at = time.monotonic()
            victims = [stream.events for stream in followed if stream.owner is a]
            with anyio.fail_after(cluster.lease + 20):  # its runs end once taken over
                while not all(isinstance(events[-1], FlowCompleted) for events in victims):
                    await anyio.sleep(0.05)
            handed_over_in = time.monotonic() - lost_at
        ended_in = time.monotonic() - lost_at
        # the streams A served reconnected through B and C
        assert sum(sum(p.served.values()) for p in balancers) > before
    assert ended_in < cluster.lease + 30
    if how == "kill":  # nobody took A's runs before its lease ran out
        assert handed_over_in > cluster.lease / 2, handed_over_in
    assert await live_replicas(replicas[1]) == ["b", "c"]
    await _check_ends(replicas, followed)


async def _check_ends(replicas: tuple[Replica, Replica, Replica], followed: list[Stream]) -> None:
    """Each stream got its run's events exactly once; each run ended once: A's ``Error``
    (``ReplicaLost``), the others ``Succeeded``."""
    a, b, c = replicas
    for stream in followed:
        events = stream.events
        exactly_once([e.event_id for e in events])
        ends = [e for e in events if isinstance(e, FlowCompleted)]
        assert len(ends) == 1 and ends[0] is events[-1], stream.run
        full = await stored(c, stream.run, a.token)
        assert [e.event_id for e in events] == [i for i, _, _ in full], stream.run
        run = await get_run(b, stream.run, a.token)
        one_end(run)
        last = conditions(run)[-1]
        if stream.owner is a:
            assert (last["condition"], last.get("reason")) == ("Error", "ReplicaLost"), last
            assert full[-1][2]["status"] == "Error"
        else:
            assert last["condition"] == "Succeeded", last
            assert sum(name == "log" for _, name, _ in full) == OTHER_LINES


@pytest.mark.timeout(300)
async def test_kill_9_of_a_replica_under_20_runs_and_50_streams_loses_nothing(
    cluster: Cluster,
) -> None:
    await _lose_a_replica(cluster, "kill", victim_runs=20, other_runs=10, streams=50)


@pytest.mark.timeout(240)
async def test_a_replica_stopped_with_sigterm_hands_its_runs_over(cluster: Cluster) -> None:
    await _lose_a_replica(cluster, "term", victim_runs=5, other_runs=4, streams=12)


# -- 8. a paused run outlives its replica -----------------------------------------------


async def _paused_run(a: Replica) -> tuple[str, str]:
    """A run of the tool flow executed on ``a``, paused: its id and its tool call's id."""
    flow_id = await create_flow(a, TOOL_FLOW)
    paused = await call(a, "POST", f"/flows/{flow_id}/execute", json={"message": "x"})
    assert paused.status == 200 and paused.body["state"] == "paused", paused.body
    return paused.body["executionId"], paused.body["toolCalls"][0]["id"]


async def _answer(
    b: Replica, run_id: str, call_id: str, output: str, *, within: float, token: str | None = None
) -> None:
    """Send the tool call's ``output`` to ``b`` and wait: the run completes with it."""
    results = [{"toolCallId": call_id, "output": output}]
    with anyio.fail_after(within):
        outcome = await call(
            b, "POST", f"/runs/{run_id}/tool-results?wait=true", json={"toolResults": results},
            token=token,
        )  # fmt: skip
    assert outcome.status == 200, outcome.body
    assert outcome.body["state"] == "completed" and outcome.body["output"] == f"got {output}"


@pytest.mark.timeout(120)
async def test_a_run_paused_on_a_killed_replica_stays_paused_and_resumes_on_b(
    cluster: Cluster,
) -> None:
    a, b, _ = await three(cluster)
    run_id, call_id = await _paused_run(a)
    cluster.kill(a)
    await anyio.sleep(3 * cluster.lease)  # long past the lease: a live replica took it
    run = await get_run(b, run_id, a.token)
    assert condition(run) == "Running", conditions(run)  # paused runs show as Running
    await _answer(b, run_id, call_id, "9", within=30)
    events = await stored(b, run_id, a.token)
    exactly_once([i for i, _, _ in events])
    assert [name for _, name, _ in events].count("flow_completed") == 1
    one_end(await get_run(b, run_id, a.token))


# -- 9. asked of a replica while the owner is dead, before its lease ran out -------------


@pytest.mark.timeout(120)
async def test_cancel_sent_to_b_while_the_owner_lies_dead_answers_and_ends_the_run_once(
    cluster: Cluster,
) -> None:
    a, b, c = await three(cluster)
    flow_id = await create_flow(a, emit_flow(2000, interval=0.05))
    run_id = await start_job(a, flow_id)
    with anyio.fail_after(30):
        async with contextlib.aclosing(sse(c, f"/runs/{run_id}/events")) as live:
            async for event in live:
                if event.event == "log":
                    break
    cluster.kill(a)
    with anyio.fail_after(cluster.lease + 15):  # answered, at the latest after a takeover
        answer = await call(b, "POST", f"/runs/{run_id}/cancel", token=a.token)
    assert answer.status == 200, answer.body
    run = await wait_ended(c, run_id, cluster.lease + 15, a.token)
    one_end(run)
    last = conditions(run)[-1]
    assert (last["condition"], last.get("reason")) in {
        ("Cancelled", "UserCancelled"),  # the taker honoured the stored cancel
        ("Error", "ReplicaLost"),  # or took the run first
    }, last
    events = await stored(b, run_id, a.token)
    exactly_once([i for i, _, _ in events])
    assert [name for _, name, _ in events].count("flow_completed") == 1
    assert events[-1][2]["status"] == last["condition"]


@pytest.mark.timeout(120)
async def test_tool_results_sent_to_b_while_the_owner_lies_dead_resume_the_run(
    cluster: Cluster,
) -> None:
    a, b, _ = await three(cluster)
    run_id, call_id = await _paused_run(a)
    cluster.kill(a)
    # the taker resumes it
    await _answer(b, run_id, call_id, "5", within=cluster.lease + 20, token=a.token)
    one_end(await get_run(b, run_id, a.token))


# -- 10. a replica that joins late ------------------------------------------------------


@pytest.mark.timeout(120)
async def test_replicas_that_join_late_leave_a_live_replicas_runs_and_tasks_alone(
    cluster: Cluster,
) -> None:
    (a,) = await cluster.start("a")
    flow_id = await create_flow(a, emit_flow(60, interval=0.1))  # 6 s
    async with a.client() as on_a:
        task = await on_a.run(["sleep", "30"], wait=True)
        try:
            run_id = await start_job(a, flow_id)
            b, c = await cluster.start("b", "c")  # their start-up recovery runs now
            await anyio.sleep(2 * cluster.lease)  # and a few of their heartbeat ticks
            async with c.client(a.token) as on_c:
                assert await on_c.status(task.task_id) == "running"
                logs = await call(c, "GET", f"/tasks/{task.task_id}/logs", token=a.token)
                assert logs.status == 409, logs.body  # its files are on A's host
                assert logs.body["error"]["code"] == "TASK_ON_OTHER_REPLICA"
                assert "'a'" in logs.body["error"]["message"], logs.body
                assert (await call(a, "GET", f"/tasks/{task.task_id}/logs")).status == 200
                run = await wait_ended(b, run_id, 30, a.token)
                assert await on_c.status(task.task_id) == "running"
        finally:
            await on_a.cancel(task.task_id, force=True)
    one_end(run)
    last = conditions(run)[-1]
    assert (last["condition"], last.get("reason")) == ("Succeeded", None), last


@pytest.mark.timeout(120)
async def test_a_task_of_a_replica_stalled_past_its_lease_stops_once_another_ended_it(
    cluster: Cluster,
) -> None:
    # Found by QA: A, stopped past its lease (a paused VM), came back to find B had
    # recorded its task failed ("ended with the server"); the task's processes ran on, and
    # a cancel answered 200 and stopped nothing.
    a, b, _ = await three(cluster)
    async with a.client() as on_a:
        beat = "while :; do echo beat >> beats; sleep 0.1; done"
        task = await on_a.run(["sh", "-c", beat], wait=True)
    beats = a.home / "tasks" / task.task_id / "workspace" / "beats"
    os.kill(a.pid, signal.SIGSTOP)
    try:
        with anyio.fail_after(cluster.lease + 30):  # B takes it over and records its end
            while (await call(b, "GET", f"/tasks/{task.task_id}", token=a.token)).body[
                "status"
            ] == "running":
                await anyio.sleep(0.2)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    with anyio.fail_after(cluster.lease + 30):  # A, back, stops what no record shows
        size = -1
        while size != (size := beats.stat().st_size):
            await anyio.sleep(1.0)
    ended = (await call(a, "GET", f"/tasks/{task.task_id}")).body
    assert ended["status"] == "failed", ended


@pytest.mark.timeout(120)
async def test_the_files_of_a_killed_replicas_task_stay_with_that_replica(
    cluster: Cluster,
) -> None:
    # Found by QA: B took the dead A's task over as its driver, then answered its logs
    # empty (they are on A's disk) and sent everyone else to B; A, started again, 409.
    a, b, _ = await three(cluster)
    async with a.client() as on_a:
        task = await on_a.run(["sh", "-c", "echo kept-on-a; sleep 60"], wait=True)
        with anyio.fail_after(30):
            while "kept-on-a" not in (await on_a.logs(task.task_id)):
                await anyio.sleep(0.2)
    cluster.kill(a)  # its task dies with it (bubblewrap's --die-with-parent)
    path = f"/tasks/{task.task_id}/logs"
    with anyio.fail_after(30):  # a live replica takes it over and records its end
        while (await call(b, "GET", f"/tasks/{task.task_id}", token=a.token)).body["status"] in (
            "pending",
            "running",
        ):
            await anyio.sleep(0.2)
    away = await call(b, "GET", path, token=a.token)
    assert away.status == 409, away.body
    message = away.body["error"]["message"]
    assert away.body["error"]["code"] == "TASK_ON_OTHER_REPLICA" and "'a'" in message
    assert "not running now" in message, message
    (again,) = await cluster.start("a")  # on its home, with its name
    logs = await call(again, "GET", f"{path}?tail=10", token=a.token)
    assert logs.status == 200 and "kept-on-a" in logs.raw.decode(), logs.body
    there = await call(b, "GET", path, token=a.token)
    assert there.status == 409 and "send this request to that replica" in str(there.body)


@pytest.mark.timeout(120)
async def test_a_task_queued_on_a_killed_replica_fails_there_not_run_on_b(
    cluster: Cluster,
) -> None:
    # QA J: B took over the task A had queued (its CPUs full) and launched it in B's
    # home: with a volume (on A's host) the launch crashed and the task stayed pending
    # for good; without one it ran on B while its record sent everyone to A for logs.
    a, b, _ = await three(cluster)
    every_cpu = os.cpu_count() or 1
    full = await call(a, "POST", "/tasks", json={"command": "sleep 60", "cpus": every_cpu})
    queued = await call(a, "POST", "/tasks", json={"command": "echo ran > ran", "cpus": 1})
    assert full.status == queued.status == 201, (full.body, queued.body)
    path = f"/tasks/{queued.body['taskId']}"
    with anyio.fail_after(30):
        while (await call(a, "GET", path)).body.get("reason") != "WaitingForCapacity":
            await anyio.sleep(0.2)
    cluster.kill(a)
    with anyio.fail_after(cluster.lease + 30):  # B takes it over once A's lease ran out
        while (ended := (await call(b, "GET", path, token=a.token)).body)["status"] == "pending":
            await anyio.sleep(0.2)
    assert (ended["status"], ended["reason"]) == ("failed", "ReplicaLost"), ended
    assert "'a'" in ended["message"] and "submit it again" in ended["message"]
    assert not (b.home / "tasks" / queued.body["taskId"]).exists()  # nothing ran on B


@pytest.mark.timeout(120)
async def test_a_reservation_held_on_a_is_named_on_b_not_404(cluster: Cluster) -> None:
    # The local provider's reservations hold their host's capacity: B answered one made
    # on A 404, and a task sent to B for it was refused as if it did not exist (QA).
    a, b, _ = await three(cluster)
    made = await call(a, "POST", "/reservations", json={"cpus": 1, "durationHours": 1})
    assert made.status == 201, made.body
    path = f"/reservations/{made.body['reservationId']}"
    assert (await call(a, "GET", path)).status == 200
    for answer in (
        await call(b, "GET", path),
        await call(b, "POST", "/tasks", json={"command": "true", "reservationId": path[14:]}),
    ):
        assert answer.status == 409, answer.body
        assert answer.body["error"]["code"] == "RESERVATION_ON_OTHER_REPLICA"
        assert "'a'" in answer.body["error"]["message"]
    assert (await call(b, "GET", "/tasks")).body["items"] == []
    assert (await call(a, "DELETE", path)).status == 200


@pytest.mark.timeout(120)
async def test_a_key_revoked_on_a_ends_its_quiet_streams_on_b_at_once(cluster: Cluster) -> None:
    # A stream waiting for a run's next event looked at its key only when it had one to
    # send: up to a heartbeat (15 s) after the revocation, on any replica (QA round 8).
    a, b, _ = await three(cluster)
    org = (await call(a, "POST", "/organizations", json={"name": "team"})).body
    tokens = f"/organizations/{org['organizationId']}/tokens"
    token = (await call(a, "POST", tokens, json={"name": "leaving"})).body["token"]
    quiet = {"block": "emit", "id": "quiet", "settings": {"count": 3, "interval": 60}}
    made = await call(a, "POST", "/flows", json={"name": "q", "blocks": [quiet]}, token=token)
    job = await call(a, "POST", f"/flows/{made.body['flowId']}/jobs", json={}, token=token)
    lines: list[str] = []

    async def follow() -> None:
        async for event in sse(b, f"/runs/{job.body['executionId']}/events", token=token):
            if event.event == "log":
                lines.append(data(event)["line"])  # noqa: PERF401 (read as it grows)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            while not lines:
                await anyio.sleep(0.1)
            assert (await call(a, "DELETE", f"{tokens}/leaving")).body["revoked"] == 1
            revoked = time.monotonic()
    assert time.monotonic() - revoked < 5 and lines == ["event 1"], lines


@pytest.mark.timeout(120)
async def test_b_answers_a_task_on_as_host_with_its_paths_there_and_no_ssh_host_of_bs(
    cluster: Cluster,
) -> None:
    # B named its own SSH port and a workspace under its own home for a task whose
    # files and SSH session are on A (QA round 2).
    a, b, _ = await three(cluster)
    async with a.client() as on_a:
        task = await on_a.run(["sleep", "60"], wait=True)
    here = (await call(a, "GET", f"/tasks/{task.task_id}")).body
    there = (await call(b, "GET", f"/tasks/{task.task_id}")).body
    assert here["sshPort"] and str(a.home) in here["workdir"], here
    assert there["sshHost"] is None and there["sshPort"] is None, there
    assert there["workdir"] == here["workdir"] and there["outputDir"] == here["outputDir"]
    (listed,) = (await call(b, "GET", "/tasks")).body["items"]
    assert listed["sshPort"] is None and listed["workdir"] == here["workdir"]
    cancel = await call(b, "POST", f"/tasks/{task.task_id}/cancel", json={"force": True})
    assert cancel.status == 200 and cancel.body["status"] == "cancelled", cancel.body


@pytest.mark.timeout(120)
async def test_a_key_deleted_on_b_ends_the_ssh_connections_made_with_it_on_a(
    cluster: Cluster,
) -> None:
    # An SFTP session is not looked at again once open: a key deleted on another
    # replica left one on A reading and writing the task's files (QA round 7).
    a, b, _ = await three(cluster)
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key().decode()
    made = await call(a, "POST", "/ssh-keys", json={"name": "k", "publicKey": public})
    assert made.status == 201, made.body
    async with a.client() as on_a:
        task = await on_a.run(["sleep", "60"], wait=True)
    endpoint = (await call(a, "GET", f"/tasks/{task.task_id}/ssh")).body
    known = asyncssh.import_known_hosts(endpoint["knownHosts"])
    async with (
        asyncssh.connect(
            endpoint["host"],
            endpoint["port"],
            username=endpoint["user"],
            client_keys=[key],
            known_hosts=known,
            agent_path=None,
            config=None,
        ) as conn,
        conn.start_sftp_client() as sftp,
    ):
        assert "workspace" in await sftp.listdir("/")
        gone = await call(b, "DELETE", f"/ssh-keys/{made.body['keyId']}")
        assert gone.status == 200, gone.body
        with anyio.fail_after(10):
            await conn.wait_closed()
        with pytest.raises((asyncssh.Error, OSError)):
            await sftp.listdir("/")
    cancel = await call(a, "POST", f"/tasks/{task.task_id}/cancel", json={"force": True})
    assert cancel.status == 200, cancel.body


# -- 11. a replica restarted in place ---------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_second_live_replica_of_one_name_is_refused(cluster: Cluster) -> None:
    # Found by QA: it started, and answered the first one's local tasks as its own (their
    # logs empty: the files are on the other's host).
    (a,) = await cluster.start("a")
    tokens = (await call(a, "GET", "/organizations/org_default/tokens")).body["items"]
    twin = cluster.spawn("a", home_name="a-twin")
    with anyio.fail_after(cluster.lease + 30):
        while twin.alive():
            await anyio.sleep(0.2)
    assert twin.proc.returncode == 1, twin.output()
    assert "a live replica of this database is named 'a'" in twin.output()
    assert (await call(a, "GET", "/flows")).status == 200
    # QA Y: the refused one had written an admin token that nobody could revoke (409)
    assert not (twin.home / "admin-token").exists()
    assert (await call(a, "GET", "/organizations/org_default/tokens")).body["items"] == tokens
    cluster.kill(a)  # restarted at once, as systemd does: it waits out the dead one's lease
    (again,) = await cluster.start("a")
    assert (await call(again, "GET", "/flows")).status == 200


@pytest.mark.timeout(120)
async def test_a_replica_back_from_a_stall_beside_a_namesake_stops(cluster: Cluster) -> None:
    # Review: a replica stalled past its lease rejoined under its name without looking,
    # beside the one started under that name meanwhile: two of one name again.
    a, b = await cluster.start("a", "b")
    os.kill(a.pid, signal.SIGSTOP)
    try:
        twin = cluster.spawn("a", home_name="a-twin")  # it waits out a's lease, then joins
        await cluster.wait_ready(twin)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    with anyio.fail_after(cluster.lease + 30):  # a finds its name taken at its next tick
        while a.alive():
            await anyio.sleep(0.2)
    assert "a live replica took this name while this one was stalled" in a.output()
    assert await live_replicas(b) == ["a", "b"]
    assert (await call(twin, "GET", "/flows")).status == 200


@pytest.mark.timeout(120)
async def test_a_replica_restarted_on_its_home_rejoins_with_its_token(cluster: Cluster) -> None:
    a, b, _ = await three(cluster)
    flow_id = await create_flow(a, {"name": "kept", "blocks": []})
    assert cluster.terminate(a) == 0, a.output()
    with anyio.fail_after(10):  # a clean stop leaves at once, no lease to wait for
        while await live_replicas(b) != ["b", "c"]:
            await anyio.sleep(0.1)
    (again,) = await cluster.start("a")
    assert again.home == a.home and again.token == a.token  # its home's token still holds
    assert await live_replicas(b) == ["a", "b", "c"]
    assert (await call(again, "GET", f"/flows/{flow_id}")).status == 200


async def test_a_server_restarted_without_a_name_still_serves_its_earlier_tasks(
    cluster: Cluster,
) -> None:
    # QA Y: one server on PostgreSQL, no --replica-name (as the docs' units run it): its
    # default name was HOST:PID, new at every start, and after a restart its own
    # finished task's logs and outputs answered 409 TASK_ON_OTHER_REPLICA, naming its
    # former self, which could never come back
    (solo,) = await cluster.start("solo", named=False)
    name = (await call(solo, "GET", "/server")).body["replica"]
    async with solo.client() as client:
        task = await client.run(["sh", "-c", "echo kept > $VI_FLOW_OUTPUT_DIR/out.txt"])
        with anyio.fail_after(30):
            while (await client.tasks.get(task.task_id)).status.value != "completed":
                await anyio.sleep(0.2)
    assert cluster.terminate(solo) == 0, solo.output()
    (again,) = await cluster.start("solo", named=False)  # on its home, named as before
    assert (await call(again, "GET", "/server")).body["replica"] == name
    output = await call(again, "GET", f"/tasks/{task.task_id}/outputs/out.txt")
    assert output.status == 200 and output.raw == b"kept\n", output.body


async def test_an_execute_retried_on_b_after_its_replica_died_answers_the_first_run(
    cluster: Cluster,
) -> None:
    # The retry (same Idempotency-Key, same body) found the dead replica's placeholder and
    # waited for an answer that nobody would give: 15 minutes (found by QA).
    a, b, c = await three(cluster)
    flow_id = await create_flow(a, emit_flow(2000, interval=0.05))
    key = {"Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
    first = asyncio.ensure_future(
        call(a, "POST", f"/flows/{flow_id}/execute", json={}, headers=key, seconds=60)
    )
    with anyio.fail_after(30):
        while not (await call(b, "GET", f"/runs?flowId={flow_id}")).body["items"]:
            await anyio.sleep(0.1)
    await anyio.sleep(0.5)
    cluster.kill(a)
    with contextlib.suppress(aiohttp.ClientError):
        await first
    with anyio.fail_after(cluster.lease + 20):  # answered once the run is taken over
        retried = await call(b, "POST", f"/flows/{flow_id}/execute", json={}, headers=key)
    assert retried.status == 200, retried.body
    assert retried.headers.get("Idempotent-Replayed") == "true"  # the first request's run
    runs = (await call(c, "GET", f"/runs?flowId={flow_id}")).body["items"]
    assert [r["runId"] for r in runs] == [retried.body["executionId"]]  # no second run
    assert retried.body["status"] == "Error", retried.body


@pytest.mark.timeout(180)
async def test_prunes_on_three_replicas_at_once_take_turns_and_count_what_went(
    cluster: Cluster,
) -> None:
    # They deadlocked on PostgreSQL (500 INTERNAL), and each counted every run it had
    # selected, 3x what went (found by QA).
    a, b, c = await three(cluster)
    flow_id = await create_flow(a, emit_flow(150))
    runs = [await start_job(replica, flow_id) for replica in (a, b, c) for _ in range(20)]
    for run_id in runs:
        await wait_ended(a, run_id, 60)
    body = {"olderThan": 0, "organizationId": "*"}
    answers = await asyncio.gather(
        *(call(r, "POST", "/retention/prune", json=body, seconds=120) for r in (a, b, c))
    )
    assert [answer.status for answer in answers] == [200] * 3, [x.body for x in answers]
    assert sum(answer.body["runs"] for answer in answers) == len(runs)
    assert (await call(c, "GET", f"/runs?flowId={flow_id}")).body["items"] == []
