"""Retention: pruning 100,000 old runs while the server keeps answering GETs.

A ``vi-flow serve`` in its own process gets one real finished run (a one-block flow); its
rows (``runs``, ``engine_runs``, ``engine_steps``, ``engine_events``) are then cloned
100,000 times straight into ``state.db`` (new ids, finished 40 days ago), which is what
months of use leave behind. Then GET latency is measured twice, with the same load
(``CLIENTS`` connections each looping ``GET /v1/runs/{recent}`` and ``GET /v1/runs``):

* ``idle``: for ``IDLE_SECONDS``, nothing else happening;
* ``pruning``: while ``POST /v1/retention/prune {"olderThan": "30d"}`` deletes them all.

Printed side by side: p50, p99 and max latency, requests, and the prune's rate. Goal
(issue 17): p99 under 100 ms while pruning. ``--quick`` seeds 10,000 runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp
from _common import ServerProcess, percentile, quick_flag, server_process

QUICK = quick_flag()
RUNS = 10_000 if QUICK else 100_000
CLIENTS = 4
IDLE_SECONDS = 3.0 if QUICK else 8.0
PRUNE_LIMIT = 600.0  # seconds: the prune must finish within this
GOAL_P99_MS = 100.0
DAY_MS = 86_400_000

_TABLES = ("runs", "engine_runs", "engine_steps", "engine_events")


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _clone(row: tuple[object, ...], cols: list[str], run_id: str, old: int) -> tuple[object, ...]:
    values = dict(zip(cols, row, strict=True))
    values["run_id"] = run_id
    for name in ("created_at", "updated_at", "started_at", "ended_at"):
        if name in values and values[name] is not None:
            values[name] = old
    values.pop("seq", None)
    return tuple(values.values())


def seed(db: Path, template: str, count: int) -> None:
    """Clone run ``template``'s rows ``count`` times, finished 40 days ago."""
    conn = sqlite3.connect(db, timeout=60)
    old = int(time.time() * 1000) - 40 * DAY_MS
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
    http: aiohttp.ClientSession, urls: list[str], work: asyncio.Future[object]
) -> list[float]:
    stop = asyncio.Event()
    loads = [asyncio.ensure_future(_load(http, urls, stop)) for _ in range(CLIENTS)]
    try:
        await asyncio.wait_for(asyncio.shield(work), PRUNE_LIMIT)
    finally:
        stop.set()
    return [ms for batch in await asyncio.gather(*loads) for ms in batch]


async def bench(server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    base = server.base_url
    async with aiohttp.ClientSession(headers=headers) as http:
        recent = await _finished_run(http, base)
        started = time.perf_counter()
        await asyncio.to_thread(seed, server.home / "state.db", recent, RUNS)
        print(f"seeded {RUNS:,} old runs in {time.perf_counter() - started:.1f} s")
        urls = [f"{base}/runs/{recent}", f"{base}/runs?pageSize=20"]
        idle = await _measure(http, urls, asyncio.ensure_future(asyncio.sleep(IDLE_SECONDS)))

        async def prune() -> dict[str, object]:
            async with http.post(f"{base}/retention/prune", json={"olderThan": "30d"}) as resp:
                assert resp.status == 200, await resp.text()
                return dict(await resp.json())

        started = time.perf_counter()
        job = asyncio.ensure_future(prune())
        pruning = await _measure(http, urls, job)
        seconds = time.perf_counter() - started
        result = job.result()
    _report(idle, pruning, result, seconds)


def _row(name: str, took: list[float]) -> str:
    return (
        f"  {name:<10} {len(took):>8,} GETs  p50 {percentile(took, 50):7.1f} ms"
        f"  p99 {percentile(took, 99):7.1f} ms  max {max(took):7.1f} ms"
    )


def _report(
    idle: list[float], pruning: list[float], result: dict[str, object], seconds: float
) -> None:
    pruned = int(str(result["runs"]))
    print(f"\nGET latency, {CLIENTS} clients, idle vs while pruning {RUNS:,} old runs")
    print(_row("idle", idle))
    print(_row("pruning", pruning))
    print(f"  prune: {pruned:,} runs in {seconds:.1f} s ({pruned / seconds:,.0f} runs/s)")
    p99 = percentile(pruning, 99)
    verdict = "ok" if p99 < GOAL_P99_MS and pruned == RUNS else "BELOW GOAL"
    print(f"  p99 while pruning {p99:.1f} ms (goal < {GOAL_P99_MS:.0f} ms, all pruned) {verdict}")


def main() -> None:
    with server_process() as server:
        asyncio.run(bench(server))


if __name__ == "__main__":
    main()
