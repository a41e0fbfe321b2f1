"""The server's event rate: live runs beside replays of the same events; memory over 1M events.

``vi-flow serve`` runs in its own process; this process only reads, with aiohttp and a
byte count of frame ends (no parsing), so the figures are the server's. Each round, in
rotated order:

* ``live N``: N streams at once, each ``POST /v1/flows/{id}/events`` starting an ``emit``
  run of TOTAL/N events and reading it to ``flow_completed`` (the engine makes, stores
  and sends every event while the reader follows);
* ``replay N``: N streams at once, each ``GET /v1/runs/{id}/events`` of a finished run of
  the same size (stored events, sent as fast as they go).

Printed: total events/s over the N streams (median, min-max) and the server's CPU
(percent of one core). Goal (issue 15): live >= 0.5x replay, for 1 and for 32 streams.
Then memory: one run of 1,000,000 live events read through ``AsyncFlow.events()``; the
resident sets of the client and of the server, sampled every 10 %, must not grow by more
than 20 MB after the first 20 %. ``--quick`` shrinks the event counts by 10 but keeps the 5
rounds: a quick round lasts tens of milliseconds, and a median of 2 of those only measured
whatever else the machine was doing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import aiohttp
from _common import (
    Samples,
    ServerProcess,
    process_rss_mb,
    quick_flag,
    ratio_line,
    rotated,
    rss_mb,
    server_process,
)

import vi_flow

QUICK = quick_flag()
TOTAL = 20_000 if QUICK else 200_000
MEMORY_COUNT = 100_000 if QUICK else 1_000_000
ROUNDS = 5
STREAMS = (1, 32)
FLAT_MB = 20.0
TIMEOUT = aiohttp.ClientTimeout(total=300)


def _flow(count: int) -> dict[str, object]:
    return {"name": f"emit-{count}", "blocks": [{"block": "emit", "id": "e", "settings": {"count": count}}]}  # fmt: skip


async def _count(resp: aiohttp.ClientResponse) -> tuple[int, str]:
    frames, last = 0, b""
    async for chunk in resp.content.iter_any():
        frames += chunk.count(b"\n\n") + (last == b"\n" and chunk[:1] == b"\n")
        last = chunk[-1:]
    return frames, resp.headers.get("X-Execution-Id", "")


async def read_stream(session: aiohttp.ClientSession, method: str, url: str) -> tuple[int, str]:
    """Read one SSE stream to its end; return the frames and the run id."""
    async with session.request(method, url, json={} if method == "POST" else None) as resp:
        resp.raise_for_status()
        return await _count(resp)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(
    server: ServerProcess, samples: Samples, name: str, jobs: list[tuple[str, str]]
) -> list[str]:
    """Run the streams at once; record total events/s and the server's CPU share."""
    headers = {"Authorization": f"Bearer {server.api_key}", "Accept": "text/event-stream"}
    async with aiohttp.ClientSession(headers=headers, timeout=TIMEOUT) as session:
        cpu, wall = cpu_seconds(server.process.pid), time.perf_counter()
        got = await asyncio.gather(*(read_stream(session, m, server.base_url + p) for m, p in jobs))
        wall, cpu = time.perf_counter() - wall, cpu_seconds(server.process.pid) - cpu
    samples.add(name, sum(n for n, _ in got) / wall)
    samples.add(f"{name} cpu%", 100 * cpu / wall)
    return [run for _, run in got]


async def one_round(
    server: ServerProcess, samples: Samples, flows: dict[int, str], runs: dict[int, list[str]],
    order: list[str],
) -> None:  # fmt: skip
    steps: dict[str, Callable[[], Awaitable[list[str]]]] = {}
    for n in STREAMS:
        steps[f"live {n}"] = lambda n=n: timed(  # type: ignore[misc]
            server, samples, f"live {n}", [("POST", f"/flows/{flows[n]}/events")] * n
        )
        steps[f"replay {n}"] = lambda n=n: timed(  # type: ignore[misc]
            server, samples, f"replay {n}", [("GET", f"/runs/{r}/events") for r in runs[n]]
        )
    for name in order:
        await steps[name]()


async def setup(server: ServerProcess) -> tuple[dict[int, str], dict[int, list[str]], str]:
    """One emit flow per stream count, finished runs to replay, and the memory flow."""
    async with vi_flow.AsyncClient(base_url=server.base_url, api_key=server.api_key) as client:
        flows = {n: (await client.flows.create(_flow(TOTAL // n))).flow_id for n in STREAMS}
        memory = (await client.flows.create(_flow(MEMORY_COUNT))).flow_id
    runs: dict[int, list[str]] = {}
    for n in STREAMS:
        scratch = Samples()
        runs[n] = await timed(server, scratch, "setup", [("POST", f"/flows/{flows[n]}/events")] * n)
    return flows, runs, memory


async def memory_check(server: ServerProcess, flow_id: str) -> None:
    """Stream MEMORY_COUNT live events through the SDK, keeping none; sample both RSS."""
    pid, every = server.process.pid, MEMORY_COUNT // 10
    marks: list[tuple[float, float]] = []
    async with vi_flow.AsyncClient(base_url=server.base_url, api_key=server.api_key) as client:
        count, started = 0, time.perf_counter()
        async for _ in client.flow(flow_id).events(timeout=600):
            count += 1
            if count % every == 0:
                marks.append((rss_mb()[0], process_rss_mb(pid)))
    wall = time.perf_counter() - started
    if count != MEMORY_COUNT + 5:  # run_started, step_started/output/completed, flow_completed
        raise RuntimeError(f"memory run: {count} events, expected {MEMORY_COUNT + 5}")
    print(f"\nMemory: {count:,} live events through AsyncFlow.events(), none kept ({wall:.1f} s)")
    for who, i in (("client", 0), ("server", 1)):
        series = [m[i] for m in marks]
        growth = max(series[2:]) - series[1]
        verdict = "flat" if growth < FLAT_MB else "NOT FLAT"
        print(f"  {who} RSS MB at each 10 %: " + " ".join(f"{v:.0f}" for v in series))
        print(f"  {who} growth after 20 %: {growth:+.1f} MB (goal < {FLAT_MB:.0f} MB) {verdict}")


async def main() -> None:
    samples = Samples()
    # the server's default quota is 1,000,000 events per run; the memory run needs a few more
    env = {**os.environ, "VI_FLOW_QUOTA_EVENTS_PER_RUN": str(2 * MEMORY_COUNT)}
    with server_process(env=env) as server:
        flows, runs, memory = await setup(server)
        names = [f"{kind} {n}" for n in STREAMS for kind in ("live", "replay")]
        for round_no in range(ROUNDS):
            await one_round(server, samples, flows, runs, rotated(names, round_no))
        print(
            f"\nServer events/s, {TOTAL:,} events per round in total, median of {ROUNDS} rotated rounds"
        )
        for n in STREAMS:
            ratio_line(samples, f"live vs replay, {n} stream(s)", f"live {n}", f"replay {n}", "ev/s", 0.5)  # fmt: skip
            print(f"      server CPU: live {samples.spread(f'live {n} cpu%', '%')}, replay {samples.spread(f'replay {n} cpu%', '%')}")  # fmt: skip
        await memory_check(server, memory)


if __name__ == "__main__":
    asyncio.run(main())
