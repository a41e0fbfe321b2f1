"""Replicas on PostgreSQL beside the SQLite server: executions/s and live events/s.

Three configurations run side by side, each its own ``vi-flow serve`` processes on
127.0.0.1 (each with its own home), and are measured in rotated order every round:

* ``sqlite``: one server on its home's SQLite database (the baseline);
* ``pg 1``: one server on a fresh PostgreSQL schema;
* ``pg 3``: three replicas on one other fresh schema; clients are spread round robin over
  the three ports, and the readers of a run read from the two replicas that do not
  execute it (its events reach them through the database and its NOTIFY).

Measures, each round:

* ``exec``: CLIENTS coroutines each making EXECUTES ``AsyncFlow.execute()`` calls of a
  one-block ``template`` flow (client i on port i mod N); executions/s over all of them.
* ``events``: RUNS runs started with ``POST /v1/flows/{id}/jobs`` (run j on port j mod N),
  each read by READERS ``GET /v1/runs/{id}/events`` streams (on the other ports when
  there are three). A run first emits one line and waits GATE seconds, so every reader
  is connected before its ``bulk`` step emits LINES log lines; events/s is the bulk
  lines delivered to all readers over the time from the first bulk event any reader saw
  to the last reader's end. Every reader must get every event of its run exactly once
  (checked by count), or the benchmark stops with the run id.

Printed: medians with min-max, the ratio of each PostgreSQL configuration to SQLite, and
where the CPU went in each measure (percent of one core): the servers (replicas summed),
the PostgreSQL cluster's processes (when it runs on this host), this client, the whole
machine. No goal is judged: the figures say what replicas cost or give on this machine.
Round 0 warms every path and is dropped. Before the rounds every replica must list all
of them live (``GET /v1/server``); after them the warnings and errors the servers logged
are printed (a clean run prints none).

PostgreSQL: ``VI_FLOW_TEST_POSTGRES_URL`` if set (a fresh schema per configuration,
dropped afterwards), else a throwaway cluster from ``tests/pgcluster.py``; without
PostgreSQL or ``psycopg`` it prints a skip line and exits 0. A server without replicas
refuses a second server on one schema: ``pg 3`` is then reported as skipped.
``--quick`` shrinks the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import attrs
from _common import Samples, ServerProcess, quick_flag, rotated, server_process

import vi_flow

QUICK = quick_flag()
ROUNDS = 2 if QUICK else 5
CLIENTS = 16
EXECUTES = 4 if QUICK else 16
RUNS = 3
READERS = 2
LINES = 5_000 if QUICK else 50_000
GATE = 0.5
LIMIT = 120.0  # seconds for one measure (all executes, or one stream), so a hang ends
TIMEOUT = aiohttp.ClientTimeout(total=LIMIT)
BULK = b'"stepId":"bulk"'
# run_started; gate: step_started, log, step_output, step_completed; bulk: step_started,
# LINES logs, step_output, step_completed; flow_completed
FRAMES = LINES + 9
SKIP = "bench_replicas: skipped"
Measure = tuple[float, dict[str, float]]  # per second; CPU % of one core by who spent it
CLOCK = os.sysconf("SC_CLK_TCK")
CPU_OF = ("servers", "PostgreSQL", "this client", "machine")


@attrs.frozen
class Setup:
    """One configuration: its servers, and the flows created on it."""

    name: str
    servers: list[ServerProcess]
    exec_flow: str
    emit_flow: str

    def peer(self, index: int, shift: int) -> ServerProcess:
        """The server ``shift`` places after ``index`` (itself when there is one)."""
        return self.servers[(index + shift) % len(self.servers)]


# -- PostgreSQL --------------------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[str | None]:
    """A PostgreSQL URL (``VI_FLOW_TEST_POSTGRES_URL`` or a throwaway cluster), or None."""
    url = os.environ.get("VI_FLOW_TEST_POSTGRES_URL", "")
    if url and url != "start":
        yield url
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.pgcluster import find_bindir, running_cluster

    if find_bindir() is None:
        yield None
        return
    with running_cluster() as started:
        yield started


@contextlib.contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """``url`` with a new schema first on its search path; the schema is dropped on exit."""
    import psycopg

    schema = f"bench_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    try:
        joiner = "&" if "?" in url else "?"
        yield f"{url}{joiner}options={quote(f'-c search_path={schema}')}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())


def probe(url: str) -> tuple[str | None, int | None]:
    """Why ``url`` does not answer (None: it does), and its postmaster's pid if it is local.

    The reason leaves the URL out: it may hold a password.
    """
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            backend = conn.execute(b"SELECT pg_backend_pid()").fetchone()
            # while the connection is open: its backend exits when it closes
            return None, _parent(int(backend[0])) if backend else None
    except psycopg.Error as exc:
        return f"PostgreSQL did not answer ({type(exc).__name__})", None


def _parent(pid: int) -> int | None:
    """The parent of local process ``pid`` (a backend's postmaster), or None if not here."""
    stat = proc_stat(pid)  # None: PostgreSQL on another host, or in another pid namespace
    return int(stat[1][1]) if stat and stat[0] == b"postgres" else None


# -- servers -----------------------------------------------------------------------------


def start_servers(
    stack: contextlib.ExitStack, count: int, database: str | None
) -> list[ServerProcess]:
    """``count`` servers, each with its own home, on ``database`` (None: SQLite)."""
    # the URL goes in the environment, not in argv, where ps would show a password
    env = {k: v for k, v in os.environ.items() if k != "VI_FLOW_DATABASE"}
    if database:
        env["VI_FLOW_DATABASE"] = database
    return [stack.enter_context(server_process(env=env)) for _ in range(count)]


async def create_flows(name: str, servers: list[ServerProcess]) -> Setup:
    first = servers[0]
    emit = {"name": "replica-events", "blocks": [
        {"block": "emit", "id": "gate", "settings": {"count": 1, "interval": GATE}},
        {"block": "emit", "id": "bulk", "settings": {"count": LINES}}]}  # fmt: skip
    template = {"template": "hello {{message}}"}
    one = {"name": "one-block", "blocks": [{"block": "template", "id": "t", "settings": template}]}
    async with vi_flow.AsyncClient(base_url=first.base_url, api_key=first.api_key) as client:
        exec_flow = (await client.flows.create(one)).flow_id
        emit_flow = (await client.flows.create(emit)).flow_id
    return Setup(name, servers, exec_flow, emit_flow)


Meter = Callable[[], float]  # CPU seconds so far, of something


@attrs.define
class Window:
    """A measured stretch of time, and the CPU seconds each meter counted in it."""

    meters: dict[str, Meter]
    wall: float | None = None
    then: dict[str, float] = attrs.Factory(dict)

    def open(self) -> None:
        """Start the window (later calls keep the first start)."""
        if self.wall is None:
            self.wall, self.then = time.perf_counter(), {n: m() for n, m in self.meters.items()}

    def close(self, count: int, ended: float | None = None) -> Measure:
        """``count`` per second over the window, and each meter's CPU in % of one core."""
        assert self.wall is not None
        spent = {name: meter() - self.then[name] for name, meter in self.meters.items()}
        wall = (ended or time.perf_counter()) - self.wall
        return count / wall, {name: 100 * cpu / wall for name, cpu in spent.items()}


def meters(setup: Setup, postmaster: int | None) -> dict[str, Meter]:
    """What a window counts: the servers, PostgreSQL (when local), this client, the machine."""
    found: dict[str, Meter] = {"servers": lambda: cpu_seconds(s.process.pid for s in setup.servers)}
    if postmaster is not None:
        found["PostgreSQL"] = lambda: cpu_seconds(cluster_pids(postmaster))
    found["this client"] = time.process_time
    found["machine"] = machine_busy
    return found


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (``/proc/stat``), every core summed."""
    with open("/proc/stat", "rb") as stat:
        ticks = [int(t) for t in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK  # idle and iowait are not busy


def proc_stat(pid: int) -> tuple[bytes, list[bytes]] | None:
    """Process ``pid``'s name and the fields after it in ``/proc/PID/stat``; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            head, rest = stat.read().rsplit(b")", 1)
    except OSError:
        return None
    return head.split(b"(", 1)[1], rest.split()


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of processes ``pids``, summed (gone ones count 0)."""
    stats = [stat[1] for stat in map(proc_stat, pids) if stat]
    return sum(int(fields[11]) + int(fields[12]) for fields in stats) / CLOCK


def cluster_pids(postmaster: int) -> list[int]:
    """The postmaster and its children: every process of a local PostgreSQL cluster."""
    children = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
    return [postmaster, *(p for p in children if _parent_is(p, postmaster))]


def _parent_is(pid: int, parent: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and int(stat[1][1]) == parent


# -- executions --------------------------------------------------------------------------


async def executions(setup: Setup, window: Window) -> Measure:
    """Executions/s of CLIENTS coroutines spread round robin over the servers; CPU %."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                vi_flow.AsyncClient(base_url=s.base_url, api_key=s.api_key)
            )
            for s in setup.servers
        ]

        async def worker(index: int) -> None:
            flow = clients[index % len(clients)].flow(setup.exec_flow)
            for _ in range(EXECUTES):
                await flow.execute(message="hi")

        window.open()
        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(CLIENTS))), LIMIT)
        return window.close(CLIENTS * EXECUTES)


# -- live events -------------------------------------------------------------------------


@attrs.define
class Reading:
    """What one reader saw: frames, when the bulk step first showed, when it ended."""

    frames: int = 0
    bulk_at: float | None = None
    ended_at: float = 0.0
    late: bool = False


async def read_run(
    session: aiohttp.ClientSession, server: ServerProcess, run_id: str, window: Window
) -> Reading:
    """Read one run's stream to its end, counting frames and timing the bulk step."""
    seen = Reading()
    try:
        await _read(session, server, run_id, window, seen)
    except asyncio.TimeoutError:
        raise RuntimeError(
            f"run {run_id} on {server.base_url}: stream still open after {LIMIT:.0f} s, "
            f"{seen.frames} of {FRAMES} frames"
        ) from None
    seen.ended_at = time.perf_counter()
    if seen.frames != FRAMES:
        raise RuntimeError(
            f"run {run_id} on {server.base_url}: {seen.frames} frames, expected {FRAMES}"
        )
    return seen


async def _read(
    session: aiohttp.ClientSession, server: ServerProcess, run_id: str, window: Window,
    seen: Reading,
) -> None:  # fmt: skip
    last, tail, first = b"", b"", True
    async with session.get(
        f"{server.base_url}/runs/{run_id}/events",
        headers={**_auth(server), "Accept": "text/event-stream"},
    ) as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_any():
            seen.frames += chunk.count(b"\n\n") + (last == b"\n" and chunk[:1] == b"\n")
            if seen.bulk_at is None and BULK in tail + chunk:
                seen.bulk_at, seen.late = time.perf_counter(), first
                window.open()
            first, last, tail = False, chunk[-1:], chunk[-len(BULK) :]


def _auth(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


async def start_run(session: aiohttp.ClientSession, server: ServerProcess, flow_id: str) -> str:
    async with session.post(
        f"{server.base_url}/flows/{flow_id}/jobs", json={}, headers=_auth(server)
    ) as resp:
        resp.raise_for_status()
        return str((await resp.json())["executionId"])


async def live_events(setup: Setup, window: Window, late: list[int]) -> Measure:
    """Bulk log events/s delivered to RUNS x READERS readers, and the servers' CPU %.

    The window opens when the first reader sees the bulk step and closes when the last
    reader has its run's end; readers that connected after the bulk began are counted.
    """
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        owners = [setup.peer(j, 0) for j in range(RUNS)]
        runs = await asyncio.gather(*(start_run(session, s, setup.emit_flow) for s in owners))
        readers = [
            read_run(session, setup.peer(j, 1 + k), run, window)
            for j, run in enumerate(runs) for k in range(READERS)
        ]  # fmt: skip
        seen = await asyncio.gather(*readers)
    late.append(sum(r.late for r in seen))
    return window.close(RUNS * READERS * LINES, max(r.ended_at for r in seen))


# -- rounds and report -------------------------------------------------------------------


async def measure(setup: Setup, samples: Samples, late: list[int], postmaster: int | None) -> None:
    for kind in ("exec", "events"):
        window = Window(meters(setup, postmaster))
        value, cpu = await (
            executions(setup, window) if kind == "exec" else live_events(setup, window, late)
        )
        samples.add(f"{setup.name} {kind}", value)
        for who, share in cpu.items():
            samples.add(f"{setup.name} {kind} {who}", share)


def report(samples: Samples, names: list[str], late: list[int]) -> None:
    print(f"\nReplicas on PostgreSQL vs one SQLite server (median of {ROUNDS} rotated rounds)")
    units = {"exec": "exec/s", "events": "ev/s"}
    titles = {
        "exec": f"executions/s: {CLIENTS} clients x {EXECUTES} executes of a one-block flow",
        "events": f"live events/s: {RUNS} runs x {LINES:,} log lines, {READERS} readers each",
    }
    for kind in ("exec", "events"):
        print(f"  {titles[kind]}")
        base = samples.median(f"sqlite {kind}")
        for name in names:
            key = f"{name} {kind}"
            ratio = samples.median(key) / base
            print(f"      {name:<7} {samples.spread(key, units[kind])}  ratio {ratio:4.2f}")
            shares = [(who, samples.spread(f"{key} {who}", "%").strip()) for who in CPU_OF
                      if f"{key} {who}" in samples.values]  # fmt: skip
            print("              CPU: " + ", ".join(f"{who} {share}" for who, share in shares))
    if any(late):
        print(f"  note: {sum(late)} reader(s) connected after the bulk step began (part replayed)")


_PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) |^Traceback", re.MULTILINE)


def log_problems(setups: list[Setup]) -> None:
    """Print the warnings and errors the servers logged (a clean run logs none)."""
    for setup in setups:
        for index, server in enumerate(setup.servers):
            text = (server.home / "server.log").read_text(errors="replace")
            lines = [line for line in text.splitlines() if _PROBLEM.search(line)]
            for line in lines[:3]:
                print(f"  {setup.name} server {index} logged: {_redacted(line)[:300]}")
            if len(lines) > 3:
                print(f"  {setup.name} server {index}: {len(lines) - 3} more such lines")


def _redacted(text: str) -> str:
    """``text`` without database URLs (one may hold a password)."""
    return re.sub(r"postgresql://\S+", "postgresql://...", text)


async def run_rounds(setups: list[Setup], postmaster: int | None) -> None:
    samples, scratch, late = Samples(), Samples(), [0]
    names = [s.name for s in setups]
    by_name = {s.name: s for s in setups}
    for round_no in range(ROUNDS + 1):  # round 0 warms every path and is dropped
        for name in rotated(names, round_no):
            target = samples if round_no else scratch
            await measure(by_name[name], target, late if round_no else [], postmaster)
    report(samples, names, late)
    log_problems(setups)


def configurations(stack: contextlib.ExitStack, url: str) -> list[tuple[str, list[ServerProcess]]]:
    """The servers of each configuration; ``pg 3`` is left out (and said so) when refused."""
    found = [("sqlite", start_servers(stack, 1, None))]
    found.append(("pg 1", start_servers(stack, 1, stack.enter_context(fresh_schema(url)))))
    replicas = contextlib.ExitStack()
    try:
        servers = start_servers(replicas, 3, stack.enter_context(fresh_schema(url)))
    except RuntimeError as exc:
        replicas.close()
        reason = _redacted(str(exc).strip().splitlines()[-1])
        print(f"pg 3: skipped, a second server on one schema did not start: {reason}")
        return found
    stack.enter_context(replicas)
    found.append(("pg 3", servers))
    return found


def main() -> int:
    if importlib.util.find_spec("psycopg") is None:
        print(f"{SKIP}: psycopg is not installed (pip install 'vi-flow[postgres]')")
        return 0
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres())
        if url is None:
            print(f"{SKIP}: no PostgreSQL (set VI_FLOW_TEST_POSTGRES_URL or install postgresql)")
            return 0
        problem, postmaster = probe(url)
        if problem:
            print(f"{SKIP}: {problem}")
            return 0
        started = time.perf_counter()
        found = configurations(stack, url)
        print(
            f"servers up in {time.perf_counter() - started:.1f} s: "
            + ", ".join(n for n, _ in found)
        )
        asyncio.run(_main(found, postmaster))
    return 0


async def live_replicas(name: str, servers: list[ServerProcess]) -> None:
    """Check that every replica lists all of them live (``GET /v1/server``)."""
    if len(servers) == 1:
        return
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        seen = []
        for server in servers:
            async with session.get(f"{server.base_url}/server", headers=_auth(server)) as resp:
                resp.raise_for_status()
                seen.append(len((await resp.json()).get("replicas", [])))
    print(f"{name}: live replicas listed by each: {seen}")
    if seen != [len(servers)] * len(servers):
        raise RuntimeError(f"{name}: expected every replica to list {len(servers)} live ones")


async def _main(found: list[tuple[str, list[ServerProcess]]], postmaster: int | None) -> None:
    for name, servers in found:
        await live_replicas(name, servers)
    setups = [await create_flows(name, servers) for name, servers in found]
    await run_rounds(setups, postmaster)


if __name__ == "__main__":
    sys.exit(main())
