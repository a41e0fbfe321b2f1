"""Replicas in one process: two or three servers on one PostgreSQL schema, each its own home.

Any replica serves any run: a stream opened on B of a run executing on A is live, cancel
and tool results sent to B reach the run, and when A stops its runs are taken over after
the lease. (``tests/replicas`` does the same with server processes and ``kill -9``.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vi_flow.server.db import open_database
from vi_flow.server.state import REPLICA_KEY, STORE_KEY

from .conftest import Server, StartServer, data, names
from .test_tools import ECHO, TOOL

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

LEASE = 1.0  # the takeover test's: A's runs move to B a second after A falls silent
STEADY_LEASE = 10.0  # the others': a loaded CI machine can stall a heartbeat past a second


@pytest.fixture
def database(postgres_schema: str) -> str:
    return postgres_schema


async def _replicas(
    start: StartServer, tmp_path: Path, database: str, n: int, lease: float = STEADY_LEASE
) -> list[Server]:
    return [
        await start(tmp_path / f"r{i}", database=database, replica_lease=lease, heartbeat_interval=30,
                    replica_name=f"r{i}")
        for i in range(n)
    ]  # fmt: skip


def _sql(database: str, statement: str, *args: object) -> None:
    """Run one statement on the database, from a connection of its own."""
    db = open_database(database)
    conn = db.connect()
    try:
        conn.execute(statement, args)
    finally:
        conn.close()


@contextlib.contextmanager
def _database_away(database: str) -> Iterator[None]:
    """Inside, ``database`` has no session: every one is ended and none may open (set
    from a connection to another database, held open meanwhile)."""
    import psycopg  # tests_postgres has it

    admin = psycopg.connect(database, dbname="postgres", autocommit=True)
    name = psycopg.conninfo.conninfo_to_dict(database)["dbname"]
    try:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'.encode())
        admin.execute(  # every session of the database: the store's, the event log's...
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        yield
    finally:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'.encode())
        admin.close()


def _last(run: dict[str, Any]) -> dict[str, Any]:
    """The run's latest condition."""
    return dict(run["status"]["conditions"][-1])


async def _slow_job(server: Server, count: int = 80, interval: float = 0.02) -> str:
    flow = await server.flow({"block": "emit", "settings": {"count": count, "interval": interval}})
    job = await server.call("POST", f"/flows/{flow}/jobs", json={})
    assert job.status in (200, 201, 202), job.body
    return str(job.body["executionId"])


async def test_a_stream_on_b_of_a_run_on_a_is_live_and_resumes_exactly_on_c(
    database: str, start_server: StartServer, tmp_path: Path
) -> None:
    a, b, c = await _replicas(start_server, tmp_path, database, 3)
    run_id = await _slow_job(a, count=100, interval=0.02)
    first, _ = await b.sse("GET", f"/runs/{run_id}/events", limit=20)
    # live: the 20th event reached B while A was still emitting (100 events, 20 ms apart)
    state = await a.call("GET", f"/runs/{run_id}")
    assert _last(state.body)["condition"] == "Running", state.body
    last_id = first[-1].id
    rest, _ = await c.sse("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": str(last_id)})
    ids = [int(e.id) for e in first + rest if e.id]
    assert ids == list(range(1, len(ids) + 1))
    assert names(rest)[-1] == "flow_completed" and data(rest[-1])["status"] == "Succeeded"
    assert names(first + rest).count("log") == 100


async def test_cancel_sent_to_b_ends_the_run_running_on_a(
    database: str, start_server: StartServer, tmp_path: Path
) -> None:
    a, b = await _replicas(start_server, tmp_path, database, 2)
    run_id = await _slow_job(a, count=1000, interval=0.01)
    await b.sse("GET", f"/runs/{run_id}/events", limit=5)
    answer = await b.call("POST", f"/runs/{run_id}/cancel")
    assert answer.status == 200 and _last(answer.body)["condition"] == "Cancelled", answer.body
    events, _ = await a.sse("GET", f"/runs/{run_id}/events")
    assert names(events).count("flow_completed") == 1
    assert data(events[-1])["status"] == "Cancelled" and names(events).count("log") < 1000


async def test_tool_results_sent_to_b_resume_a_run_paused_on_a(
    database: str, start_server: StartServer, tmp_path: Path
) -> None:
    a, b, c = await _replicas(start_server, tmp_path, database, 3)
    flow = await a.flow(TOOL, ECHO)
    paused = await a.call("POST", f"/flows/{flow}/execute", json={"parameters": {"city": "Oslo"}})
    assert paused.body["state"] == "paused", paused.body
    run_id, call = paused.body["executionId"], paused.body["toolCalls"][0]
    results = {"toolResults": [{"toolCallId": call["id"], "output": {"temp": 21}}]}
    answer = await b.call(
        "POST", f"/runs/{run_id}/tool-results", json=results, params={"wait": "true"}
    )
    assert answer.status == 200 and answer.body["state"] == "completed", answer.body
    assert answer.body["output"] == "It is 21"
    events, _ = await c.sse("GET", f"/runs/{run_id}/events")
    assert names(events).count("flow_completed") == 1 and data(events[-1])["status"] == "Succeeded"


async def test_a_late_heartbeat_of_the_id_a_replica_gave_up_leaves_its_new_one(
    database: str, start_server: StartServer, tmp_path: Path
) -> None:
    # Back from a stall past its lease, a replica gave up its runs and rejoined under a
    # new id; then the answer to the heartbeat its listening thread had sent for the old
    # id came ("no such row") and it gave up the new id too: a run started meanwhile
    # would end ReplicaLost on a healthy replica (found by QA, once, with SIGSTOP).
    (a,) = await _replicas(start_server, tmp_path, database, 1)
    replica = a.app[REPLICA_KEY]
    old = replica.id
    await replica._give_up("stalled, in this test")
    new = replica.id
    assert new != old
    run_id = await _slow_job(a, count=40, interval=0.02)
    replica._beat(old, False)  # as the thread reports its late UPDATE of the old row
    events, _ = await a.sse("GET", f"/runs/{run_id}/events")
    assert replica.id == new
    assert data(events[-1])["status"] == "Succeeded", events[-1]


async def test_runs_of_a_silent_replica_are_taken_over_after_the_lease(
    database: str, start_server: StartServer, tmp_path: Path
) -> None:
    a, b = await _replicas(start_server, tmp_path, database, 2, lease=LEASE)
    running = await _slow_job(a, count=10_000, interval=0.01)
    flow = await a.flow(TOOL, ECHO)
    paused = await a.call("POST", f"/flows/{flow}/execute", json={"parameters": {"city": "Oslo"}})
    await b.sse("GET", f"/runs/{running}/events", limit=3)
    a.app[REPLICA_KEY]._stop.set()  # A hangs: its heartbeats stop, its row stays
    events, _ = await b.sse("GET", f"/runs/{running}/events")
    end = data(events[-1])
    assert names(events).count("flow_completed") == 1 and end["status"] == "Error"
    run = await b.call("GET", f"/runs/{running}")
    assert _last(run.body)["reason"] == "ReplicaLost", run.body["status"]
    # the paused run lives on: B resumes it
    run_id, call = paused.body["executionId"], paused.body["toolCalls"][0]
    results = {"toolResults": [{"toolCallId": call["id"], "output": {"temp": 5}}]}
    answer = await b.call(
        "POST", f"/runs/{run_id}/tool-results", json=results, params={"wait": "true"}
    )
    assert answer.status == 200 and answer.body["output"] == "It is 5", answer.body


async def test_concurrent_idempotent_creates_on_three_replicas_make_one_resource(
    database: str, start_server: StartServer, tmp_path: Path
) -> None:
    servers = await _replicas(start_server, tmp_path, database, 3)
    for server in servers:  # warm: each replica's connection and tables are ready
        await server.flow({"block": "template", "settings": {"template": "x"}})
    spec: dict[str, Any] = {"name": "once", "blocks": [], "inputs": []}
    headers = {"Idempotency-Key": "same-key-1"}
    answers = await asyncio.gather(*(
        servers[i % 3].call("POST", "/flows", json={"spec": spec}, headers=headers)
        for i in range(60)
    ))  # fmt: skip
    assert {a.status for a in answers} == {201}, {a.status for a in answers}
    assert len({a.body["flowId"] for a in answers}) == 1
    listed = await servers[1].call("GET", "/flows")
    assert [f["spec"]["name"] for f in listed.body["items"]].count("once") == 1
    flow = answers[0].body["flowId"]
    headers = {"Idempotency-Key": "same-key-2"}
    jobs = await asyncio.gather(*(
        servers[i % 3].call("POST", f"/flows/{flow}/jobs", json={}, headers=headers)
        for i in range(30)
    ))  # fmt: skip
    assert len({j.body["executionId"] for j in jobs}) == 1
    runs = await servers[2].call("GET", "/runs", params={"flowId": flow})
    assert len(runs.body["items"]) == 1, runs.body
    # execute answers when the run ends: the key is held meanwhile, the others wait
    slow = await servers[0].flow({"block": "emit", "settings": {"count": 20, "interval": 0.01}})
    headers = {"Idempotency-Key": "same-key-3"}
    executed = await asyncio.gather(*(
        servers[i % 3].call("POST", f"/flows/{slow}/execute", json={}, headers=headers)
        for i in range(15)
    ))  # fmt: skip
    assert {e.status for e in executed} == {200}, [e.body for e in executed]
    assert len({e.body["executionId"] for e in executed}) == 1
    assert {e.body["state"] for e in executed} == {"completed"}
    runs = await servers[1].call("GET", "/runs", params={"flowId": slow})
    assert len(runs.body["items"]) == 1, runs.body


async def test_replicas_reconnect_when_their_database_connections_are_cut(
    database: str, start_server: StartServer, tmp_path: Path
) -> None:
    a, b = await _replicas(start_server, tmp_path, database, 2)
    run_id = await _slow_job(a, count=150, interval=0.02)
    first, _ = await b.sse("GET", f"/runs/{run_id}/events", limit=5)
    backends = [
        await server.app[STORE_KEY].run(
            lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0]
        )
        for server in (a, b)
    ]
    # this test's servers' sessions only: their stores' (by pid) and their listeners'
    # (by the names this module gives its replicas)
    cut = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN (?, ?)"
        " OR application_name IN ('vi-flow replica r0', 'vi-flow replica r1')"
    )
    _sql(database, cut, *backends)
    rest, _ = await b.sse("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": first[-1].id})
    ids = [int(e.id) for e in first + rest if e.id]
    assert ids == list(range(1, len(ids) + 1)) and names(rest)[-1] == "flow_completed"
    assert (await a.call("GET", "/flows")).status == 200
    assert (await b.call("GET", "/flows")).status == 200


async def test_local_tasks_stay_on_their_replica_and_cancel_reaches_them(
    database: str, start_server: StartServer, tmp_path: Path
) -> None:
    a, b = await _replicas(start_server, tmp_path, database, 2)
    made = await a.call("POST", "/tasks", json={"command": "sleep 30"})
    assert made.status == 201, made.body
    task_id = made.body["taskId"]
    assert (await b.call("GET", f"/tasks/{task_id}")).status == 200
    logs = await b.call("GET", f"/tasks/{task_id}/logs")
    assert logs.status == 409 and logs.body["error"]["code"] == "TASK_ON_OTHER_REPLICA"
    assert "'r0'" in logs.body["error"]["message"]
    assert (await a.call("GET", f"/tasks/{task_id}/logs")).status == 200
    cancelled = await b.call("POST", f"/tasks/{task_id}/cancel")
    assert cancelled.status == 200 and cancelled.body["status"] == "cancelled", cancelled.body


async def test_concurrent_publishes_and_conditional_updates_on_two_replicas(
    database: str, start_server: StartServer, tmp_path: Path
) -> None:
    a, b = await _replicas(start_server, tmp_path, database, 2)
    flow = await a.flow({"block": "template", "settings": {"template": "x"}})
    published = await asyncio.gather(*(
        (a, b)[i % 2].call("POST", f"/flows/{flow}/publish") for i in range(10)
    ))  # fmt: skip
    assert all(p.status in (200, 201) for p in published), [p.body for p in published]
    versions = sorted(p.body["version"] for p in published)
    assert versions == list(range(1, 11)), versions
    etag = (await a.call("GET", f"/flows/{flow}")).body["etag"]
    spec = {"name": "changed", "blocks": [], "inputs": []}
    updates = await asyncio.gather(*(
        (a, b)[i % 2].call("PUT", f"/flows/{flow}", json={"spec": spec},
                           headers={"If-Match": f'"{etag}"'})
        for i in range(6)
    ))  # fmt: skip
    assert sorted(u.status for u in updates) == [200] + [412] * 5, [u.body for u in updates]


async def test_each_replica_reports_the_work_it_holds_and_every_live_replica(
    database: str, start_server: StartServer, tmp_path: Path
) -> None:
    a, b = await _replicas(start_server, tmp_path, database, 2)
    run_id = await _slow_job(a, count=1000, interval=0.01)
    on_a, on_b = (await a.call("GET", "/server")).body, (await b.call("GET", "/server")).body
    assert (on_a["activeRuns"], on_b["activeRuns"]) == (1, 0), (on_a, on_b)
    assert on_a["replica"] == "r0" and on_b["replicas"] == ["r0", "r1"]
    await b.call("POST", f"/runs/{run_id}/cancel")


async def test_a_run_caught_by_a_database_outage_ends_and_requests_meanwhile_are_503(
    postgres_database: str, start_server: StartServer, tmp_path: Path
) -> None:
    # Found by QA: PostgreSQL restarted under a running run; its event write failed, the
    # run crashed, and ending it failed the same way: it stayed Running for good, its
    # stream waited for ever, and every request in the outage was a 500.
    (a,) = await _replicas(start_server, tmp_path, postgres_database, 1)
    run_id = await _slow_job(a, count=60, interval=0.02)  # it ends inside the outage
    first, _ = await a.sse("GET", f"/runs/{run_id}/events", limit=5)
    with _database_away(postgres_database):
        await asyncio.sleep(3.0)  # the run's next event writes fail meanwhile
        during = await a.call("GET", "/flows")
        assert during.status == 503, during.body
        assert during.body["error"]["code"] == "DATABASE_UNAVAILABLE"
        assert during.headers["Retry-After"] == "1"
        assert (await a.call("GET", "/health")).status == 200  # up,
        unready = await a.call("GET", "/health?ready=1")  # but not ready (a balancer's check)
        assert unready.status == 503, unready.body
        assert unready.body["error"]["code"] == "DATABASE_UNAVAILABLE"
    for _ in range(100):  # ready again once the database is back
        ready = await a.call("GET", "/health?ready=true")
        if ready.status == 200:
            break
        await asyncio.sleep(0.1)
    assert (ready.status, ready.body) == (200, {"status": "ok"})
    for _ in range(300):  # the run ends once the database is back (Error, or Succeeded)
        run = (await a.call("GET", f"/runs/{run_id}")).body
        if _last(run)["condition"] != "Running":
            break
        await asyncio.sleep(0.1)
    assert _last(run)["condition"] in ("Error", "Succeeded"), run
    # its flow_completed, lost with the write the outage failed, is written at its end
    # (the stream waited on heartbeats for good)
    resumed = a.sse("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": first[-1].id})
    rest, _ = await asyncio.wait_for(resumed, 20)
    assert names(rest)[-1] == "flow_completed" and names(rest).count("flow_completed") == 1


async def test_a_run_that_outlives_a_database_outage_loses_none_of_its_events(
    postgres_database: str, start_server: StartServer, tmp_path: Path
) -> None:
    # Found by reading: the events of a write the outage failed were dropped, and a
    # step that went on logging ended Succeeded with a gap in its log. They are kept
    # and written once the database is back, in order, before what came after them.
    (a,) = await _replicas(start_server, tmp_path, postgres_database, 1)
    run_id = await _slow_job(a, count=250, interval=0.02)  # 5 s: it outlives the outage
    first, _ = await a.sse("GET", f"/runs/{run_id}/events", limit=5)
    with _database_away(postgres_database):
        await asyncio.sleep(2.0)  # the step logs on meanwhile; its writes fail
    rest, _ = await asyncio.wait_for(
        a.sse("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": first[-1].id}), 30
    )
    events = first + rest
    assert [int(e.id) for e in events if e.id] == list(range(1, len(events) + 1))
    lines = [data(e)["line"] for e in events if e.event == "log"]
    assert lines == [f"event {i}" for i in range(1, 251)]
    assert data(events[-1])["status"] == "Succeeded", events[-1].data
    run = (await a.call("GET", f"/runs/{run_id}")).body
    assert _last(run)["condition"] == "Succeeded", run
    replay, _ = await a.sse("GET", f"/runs/{run_id}/events")
    assert [e.data for e in replay] == [e.data for e in events]


async def test_a_task_step_outlives_a_database_outage_shorter_than_the_lease(
    postgres_database: str, start_server: StartServer, tmp_path: Path
) -> None:
    # QA AN: a PostgreSQL restart of half a second ended a run whose task step was
    # executing Error (EngineError), and its log events were lost: the step's own reads
    # of its task failed, and so did the write of that failure. It rides the outage out.
    (a,) = await _replicas(start_server, tmp_path, postgres_database, 1)
    script = "for i in $(seq 1 40); do echo line $i; sleep 0.1; done"
    flow = await a.flow({"block": "task", "id": "t", "settings": {"command": script}})
    job = await a.call("POST", f"/flows/{flow}/jobs", json={})
    assert job.status in (200, 201, 202), job.body
    run_id = job.body["executionId"]
    first, _ = await a.sse("GET", f"/runs/{run_id}/events", limit=5)
    with _database_away(postgres_database):
        await asyncio.sleep(1.5)  # the task prints on; the step's reads and writes fail
    rest, _ = await asyncio.wait_for(
        a.sse("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": first[-1].id}), 30
    )
    events = first + rest
    assert data(events[-1])["status"] == "Succeeded", events[-1].data
    lines = [data(e)["line"] for e in events if e.event == "log"]
    assert lines == [f"line {i}" for i in range(1, 41)]
    assert [int(e.id) for e in events if e.id] == list(range(1, len(events) + 1))


@pytest.mark.timeout(90)
async def test_a_replica_back_from_a_database_outage_keeps_its_running_tasks(
    postgres_database: str, start_server: StartServer, tmp_path: Path
) -> None:
    # Found by QA: past the lease, a replica whose database was away came back under a
    # new id, took its own running task over as another's, and killed it as an orphan
    # ("ServerRestarted") - or a replica on another host recorded it failed.
    a, _ = await _replicas(start_server, tmp_path, postgres_database, 2, lease=LEASE)
    made = await a.call("POST", "/tasks", json={"command": "sleep 6; echo survived"})
    assert made.status == 201, made.body
    task_id = made.body["taskId"]
    for _ in range(100):
        if (await a.call("GET", f"/tasks/{task_id}")).body["status"] == "running":
            break
        await asyncio.sleep(0.05)
    with _database_away(postgres_database):
        await asyncio.sleep(3 * LEASE)  # both replicas miss their lease
    for _ in range(300):
        task = (await a.call("GET", f"/tasks/{task_id}")).body
        if task.get("status") not in ("pending", "running", None):
            break
        await asyncio.sleep(0.1)
    assert (task["status"], task["exitCode"]) == ("completed", 0), task
    logs = await a.call("GET", f"/tasks/{task_id}/logs")
    assert logs.body["lines"] == ["survived"], logs.body
