"""Retention: pruning 100,000 old runs while the server keeps answering GETs.

A ``vi-flow serve`` in its own process gets one real finished run (a one-block flow); its
rows (``runs``, ``engine_runs``, ``engine_steps``, ``engine_events``) are then cloned
100,000 times straight into its database (new ids, finished 40 days ago), which is what
months of use leave behind. Then GET latency is measured twice, with the same load
(``CLIENTS`` connections each looping ``GET /v1/runs/{recent}`` and ``GET /v1/runs``):

* ``idle``: for ``IDLE_SECONDS``, nothing else happening;
* ``pruning``: while ``POST /v1/retention/prune {"olderThan": "30d"}`` deletes them all.

This is done twice in one run: first with the server on SQLite (its home's ``state.db``,
cloned with :mod:`sqlite3`), then with the server on a fresh PostgreSQL schema (cloned
with one ``INSERT ... SELECT ... generate_series`` per table, then ``VACUUM ANALYZE``, as
autovacuum would have left months-old rows). Printed side by side: p50, p99 and max
latency, requests, and the prune's rate. Goal (issue 17): p99 under 100 ms while
pruning. ``--quick`` seeds 10,000 runs.

PostgreSQL: ``VI_FLOW_TEST_POSTGRES_URL`` if set (a fresh schema, dropped afterwards),
else a throwaway cluster from ``tests/pgcluster.py``; without PostgreSQL or ``psycopg``
its column says skipped, and why. The URL goes to the server in its environment, never
in argv or the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from _common import ServerProcess, percentile, quick_flag

QUICK = quick_flag()
RUNS = 10_000 if QUICK else 100_000
CLIENTS = 4
IDLE_SECONDS = 3.0 if QUICK else 8.0
PRUNE_LIMIT = 600.0  # seconds: the prune must finish within this
GOAL_P99_MS = 100.0
DAY_MS = 86_400_000

_TABLES = ("runs", "engine_runs", "engine_steps", "engine_events")
_TIMES = ("created_at", "updated_at", "started_at", "ended_at")

Seed = Callable[[str, int], None]
"""``seed(template, count)``: clone run ``template``'s rows ``count`` times."""


@attrs.frozen
class Outcome:
    """One database's measurement: GET latencies (ms), the prune, the seeding."""

    idle: list[float]
    pruning: list[float]
    pruned: int
    prune_s: float
    seed_s: float


# -- seeding ----------------------------------------------------------------------------


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _clone(row: tuple[object, ...], cols: list[str], run_id: str, old: int) -> tuple[object, ...]:
    values = dict(zip(cols, row, strict=True))
    values["run_id"] = run_id
    for name in _TIMES:
        if name in values and values[name] is not None:
            values[name] = old
    values.pop("seq", None)
    return tuple(values.values())


def _old_ms() -> int:
    return int(time.time() * 1000) - 40 * DAY_MS


def seed_sqlite(db: Path, template: str, count: int) -> None:
    """Clone run ``template``'s rows ``count`` times, finished 40 days ago."""
    conn = sqlite3.connect(db, timeout=60)
    old = _old_ms()
    conn.execute("BEGIN IMMEDIATE")
    for table in _TABLES:
        cols = _columns(conn, table)
        rows = conn.execute(f"SELECT * FROM {table} WHERE run_id = ?", (template,)).fetchall()
        kept = [c for c in cols if c != "seq"]
        sql = f"INSERT INTO {table} ({', '.join(kept)}) VALUES ({', '.join('?' * len(kept))})"
        for start in range(0, count, 10_000):
            batch = range(start, min(count, start + 10_000))
            conn.executemany(
                sql, (_clone(r, cols, f"run_old{i:07d}", old) for i in batch for r in rows)
            )
    conn.execute("COMMIT")
    conn.close()


def seed_postgres(url: str, template: str, count: int) -> None:
    """The same clones on PostgreSQL, made by the database itself: one ``INSERT ...
    SELECT`` per table over ``generate_series`` (``seq`` comes from its identity)."""
    import psycopg
    from psycopg import sql

    old = sql.Literal(_old_ms())

    def value(col: str) -> sql.Composable:
        if col == "run_id":  # run_old0000042, as on SQLite
            return sql.SQL("'run_old' || lpad(g::text, 7, '0')")
        if col in _TIMES:
            return sql.SQL("CASE WHEN t.{c} IS NOT NULL THEN {old} END").format(
                c=sql.Identifier(col), old=old
            )
        return sql.SQL("t.{}").format(sql.Identifier(col))

    with psycopg.connect(url) as conn:  # one transaction, committed on exit
        for table in _TABLES:
            found = conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
                " AND table_schema = current_schema() ORDER BY ordinal_position",
                (table,),
            ).fetchall()
            kept = [str(r[0]) for r in found if r[0] != "seq"]
            conn.execute(
                sql.SQL(
                    "INSERT INTO {table} ({cols}) SELECT {values} FROM {table} t"
                    " CROSS JOIN generate_series(0, %s) g WHERE t.run_id = %s ORDER BY g"
                ).format(
                    table=sql.Identifier(table),
                    cols=sql.SQL(", ").join(map(sql.Identifier, kept)),
                    values=sql.SQL(", ").join(map(value, kept)),
                ),
                (count - 1, template),
            )
    with psycopg.connect(url, autocommit=True) as conn:  # VACUUM runs outside a transaction
        for table in _TABLES:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))


# -- the measurement --------------------------------------------------------------------


async def _finished_run(http: aiohttp.ClientSession, base: str) -> str:
    spec = {
        "name": "b",
        "blocks": [{"block": "template", "id": "a", "settings": {"template": "x"}}],
    }
    async with http.post(f"{base}/flows", json=spec) as resp:
        flow_id = (await resp.json())["flowId"]
    async with http.post(f"{base}/runs", json={"flowId": flow_id}) as resp:
        run_id: str = (await resp.json())["runId"]
    while True:
        async with http.get(f"{base}/runs/{run_id}") as resp:
            if (await resp.json())["status"]["conditions"][-1]["condition"] == "Succeeded":
                return run_id
        await asyncio.sleep(0.02)


async def _load(http: aiohttp.ClientSession, urls: list[str], stop: asyncio.Event) -> list[float]:
    """Loop GETs over ``urls`` until ``stop``; the latency of each, in ms."""
    took: list[float] = []
    i = 0
    while not stop.is_set():
        started = time.perf_counter()
        async with http.get(urls[i % len(urls)]) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        took.append((time.perf_counter() - started) * 1000)
        i += 1
    return took


async def _measure(
    http: aiohttp.ClientSession, urls: list[str], work: asyncio.Future[Any]
) -> list[float]:
    stop = asyncio.Event()
    loads = [asyncio.ensure_future(_load(http, urls, stop)) for _ in range(CLIENTS)]
    try:
        await asyncio.wait_for(asyncio.shield(work), PRUNE_LIMIT)
    finally:
        stop.set()
    return [ms for batch in await asyncio.gather(*loads) for ms in batch]


async def bench(server: ServerProcess, seed: Seed) -> Outcome:
    """Seed ``RUNS`` old runs with ``seed``, then measure GETs idle and while pruning."""
    headers = {"Authorization": f"Bearer {server.api_key}"}
    base = server.base_url
    async with aiohttp.ClientSession(headers=headers) as http:
        recent = await _finished_run(http, base)
        started = time.perf_counter()
        await asyncio.to_thread(seed, recent, RUNS)
        seed_s = time.perf_counter() - started
        async with http.get(f"{base}/runs/run_old{RUNS - 1:07d}") as resp:  # a clone reads as a run
            assert resp.status == 200, await resp.text()
        urls = [f"{base}/runs/{recent}", f"{base}/runs?pageSize=20"]
        idle = await _measure(http, urls, asyncio.ensure_future(asyncio.sleep(IDLE_SECONDS)))

        async def prune() -> dict[str, object]:
            async with http.post(f"{base}/retention/prune", json={"olderThan": "30d"}) as resp:
                assert resp.status == 200, await resp.text()
                return dict(await resp.json())

        started = time.perf_counter()
        job = asyncio.ensure_future(prune())
        pruning = await _measure(http, urls, job)
        prune_s = time.perf_counter() - started
        pruned = int(str(job.result()["runs"]))
    return Outcome(idle, pruning, pruned, prune_s, seed_s)


def on_sqlite() -> Outcome:
    from bench_replicas import start_servers

    with contextlib.ExitStack() as stack:
        server = start_servers(stack, 1, None)[0]
        return asyncio.run(bench(server, functools.partial(seed_sqlite, server.home / "state.db")))


def on_postgres() -> Outcome | str:
    """The measurement on a fresh PostgreSQL schema, or why it was skipped."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (pip install 'vi-flow[postgres]')"
    from bench_replicas import fresh_schema, postgres, probe, start_servers

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres())
        if url is None:
            return "no PostgreSQL (set VI_FLOW_TEST_POSTGRES_URL or install postgresql)"
        problem, _ = probe(url)
        if problem:
            return problem
        schema = stack.enter_context(fresh_schema(url))
        server = start_servers(stack, 1, schema)[0]
        return asyncio.run(bench(server, functools.partial(seed_postgres, schema)))


# -- the report -------------------------------------------------------------------------


def _cells(found: Outcome) -> list[str]:
    cells = []
    for took in (found.idle, found.pruning):
        cells += [f"{len(took):,}", f"{percentile(took, 50):.1f}"]
        cells += [f"{percentile(took, 99):.1f}", f"{max(took):.1f}"]
    rate = found.pruned / found.prune_s
    cells += [f"{found.pruned:,} in {found.prune_s:.1f} s", f"{rate:,.0f}", f"{found.seed_s:.1f}"]
    p99 = percentile(found.pruning, 99)
    met = p99 < GOAL_P99_MS and found.pruned == RUNS
    return [*cells, "ok" if met else "BELOW GOAL"]


_LABELS = (
    *(f"{phase:<8} {what}" for phase in ("idle", "pruning")
      for what in ("GETs", "p50 ms", "p99 ms", "max ms")),
    "prune    runs", "prune    runs/s", "seeding  s",
    f"p99 while pruning < {GOAL_P99_MS:.0f} ms, all pruned",
)  # fmt: skip


def report(results: dict[str, Outcome | str]) -> None:
    print(f"\nGET latency, {CLIENTS} clients, idle vs while pruning {RUNS:,} old runs")
    columns = {
        name: _cells(found) if isinstance(found, Outcome) else ["skipped"] * len(_LABELS)
        for name, found in results.items()
    }
    print(f"  {'':<36}" + "".join(f"{name:>20}" for name in columns))
    for row, label in enumerate(_LABELS):
        print(f"  {label:<36}" + "".join(f"{cells[row]:>20}" for cells in columns.values()))
    for name, found in results.items():
        if isinstance(found, str):
            print(f"  {name}: skipped: {found}")


def main() -> None:
    results: dict[str, Outcome | str] = {"sqlite": on_sqlite()}
    results["postgresql"] = on_postgres()
    report(results)


if __name__ == "__main__":
    main()
