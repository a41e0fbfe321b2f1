"""Run events/s through ``AsyncFlow.events()`` and sync ``Flow.events()`` beside raw aiohttp.

One flow with the built-in ``emit`` block makes a run of 200,000 ``log`` events. The
server runs in its own process (``vi-flow serve`` on 127.0.0.1), so this process holds
only the client. Three readers take the same stream from the same server:

* raw: aiohttp, a byte-level split on blank lines, ``json.loads`` of each ``data:`` line;
* async: ``AsyncFlow.events()`` (live) / ``AsyncRun.events()`` (replay of the finished run);
* sync: ``Client().flow(id).events()`` (live) / ``.run(id).events()`` (replay).

Rounds alternate between the readers. Two rates are printed: wall events/s (a replay is
bounded by how fast the server sends, a live run by how fast the engine makes events) and
client-CPU events/s (events per CPU-second of this process; the server's work is not in
it), which is what isolates the SDK's own cost; the goals are judged on it: async >= 1.0x
raw, sync >= 0.6x async. Then memory: 1,000,000 live events through ``AsyncFlow.events()``, none kept; the
resident set after 20 % and at the end must differ by less than 20 MB.
``--quick`` shrinks every count by 10.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
from _common import (
    ServerProcess,
    median,
    private_config_dir,
    quick_flag,
    report,
    rss_mb,
    server_process,
)

import vi_flow

QUICK = quick_flag()
COUNT = 20_000 if QUICK else 200_000
MEMORY_COUNT = 100_000 if QUICK else 1_000_000
REPLAY_ROUNDS = 5
LIVE_ROUNDS = 1 if QUICK else 3
FLAT_MB = 20.0
STREAM_TIMEOUT = 120.0  # a bound on every stream, connect and idle gaps
EXTRA_EVENTS = 5  # run_started, step_started, step_completed, flow_completed, ...

Sample = tuple[int, float, float]  # (events, wall seconds, client CPU seconds)


def _emit_flow(count: int) -> dict[str, object]:
    return {
        "name": f"emit-{count}",
        "blocks": [{"block": "emit", "id": "e", "settings": {"count": count}}],
    }


class Clock:
    """Wall and process-CPU time since creation (CPU of every thread of this process)."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def sample(self, events: int) -> Sample:
        return events, time.perf_counter() - self.wall, time.process_time() - self.cpu


# --------------------------------------------------------------------------- raw baseline


def _split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    *frames, rest = buffer.split(b"\n\n")
    return frames, rest


def _data_of(frame: bytes) -> bytes | None:
    start = frame.find(b"data: ")
    if start < 0:
        return None  # a comment such as ": heartbeat"
    end = frame.find(b"\n", start)
    return frame[start + 6 : end if end >= 0 else len(frame)]


async def _raw_read(resp: aiohttp.ClientResponse) -> int:
    count, rest = 0, b""
    async for chunk in resp.content.iter_any():
        frames, rest = _split_frames(rest + chunk)
        for frame in frames:
            data = _data_of(frame)
            if data is not None:
                json.loads(data)
                count += 1
    return count


async def raw_events(server: ServerProcess, method: str, path: str) -> Sample:
    """Read one SSE stream with aiohttp + ``json.loads``; ``path`` is under /v1."""
    headers = {"Authorization": f"Bearer {server.api_key}", "Accept": "text/event-stream"}
    timeout = aiohttp.ClientTimeout(total=STREAM_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        body: dict[str, object] | None = {} if method == "POST" else None
        clock = Clock()
        async with session.request(
            method, server.base_url + path, json=body, headers=headers
        ) as resp:
            resp.raise_for_status()
            return clock.sample(await _raw_read(resp))


# --------------------------------------------------------------------------- SDK readers


async def _count_async(events: AsyncIterator[object], clock: Clock) -> Sample:
    count = 0
    async for _ in events:
        count += 1
    return clock.sample(count)


async def async_events(server: ServerProcess, flow_id: str, run_id: str | None) -> Sample:
    """``AsyncFlow.events()`` (a new live run) or ``AsyncRun.events()`` (replay of ``run_id``)."""
    async with vi_flow.AsyncClient(base_url=server.base_url, api_key=server.api_key) as client:
        await client.flows.get(flow_id)  # connect before the clock starts, like the raw reader
        flow = client.flow(flow_id)
        clock = Clock()
        if run_id is None:
            return await _count_async(flow.events(timeout=STREAM_TIMEOUT), clock)
        return await _count_async(flow.run(run_id).events(timeout=STREAM_TIMEOUT), clock)


def _count_sync(events: Iterator[object], clock: Clock) -> Sample:
    count = 0
    for _ in events:
        count += 1
    return clock.sample(count)


def sync_events(client: vi_flow.Client, flow_id: str, run_id: str | None) -> Sample:
    """Sync ``Flow.events()`` (a new live run) or ``Run.events()`` (replay of ``run_id``)."""
    flow = client.flow(flow_id)
    clock = Clock()
    if run_id is None:
        return _count_sync(flow.events(timeout=STREAM_TIMEOUT), clock)
    return _count_sync(flow.run(run_id).events(timeout=STREAM_TIMEOUT), clock)


# --------------------------------------------------------------------------- rounds


class Results:
    """Samples per reader and mode; checks every reader saw the same number of events."""

    def __init__(self) -> None:
        self.samples: dict[str, list[Sample]] = {}

    def add(self, key: str, sample: Sample, expected: int) -> None:
        if sample[0] != expected:
            raise RuntimeError(f"{key}: got {sample[0]} events, expected {expected}")
        self.samples.setdefault(key, []).append(sample)

    def wall(self, key: str) -> float:
        return median([n / wall for n, wall, _ in self.samples[key]])

    def cpu(self, key: str) -> float:
        return median([n / cpu for n, _, cpu in self.samples[key]])


async def _setup(server: ServerProcess) -> tuple[str, str, str, int]:
    """Create the two flows and one finished run of COUNT events to replay."""
    async with vi_flow.AsyncClient(base_url=server.base_url, api_key=server.api_key) as client:
        flow = await client.flows.create(_emit_flow(COUNT))
        memory_flow = await client.flows.create(_emit_flow(MEMORY_COUNT))
        run_id, total = "", 0
        async for event in client.flow(flow.flow_id).events(timeout=STREAM_TIMEOUT):
            run_id, total = event.execution_id, total + 1
        return flow.flow_id, memory_flow.flow_id, run_id, total


def _round(
    server: ServerProcess,
    sync_client: vi_flow.Client,
    results: Results,
    ids: tuple[str, str, int],
    live: bool,
) -> None:
    flow_id, run_id, total = ids
    mode = "live" if live else "replay"
    raw_path = f"/flows/{flow_id}/events" if live else f"/runs/{run_id}/events"
    raw = asyncio.run(raw_events(server, "POST" if live else "GET", raw_path))
    results.add(f"{mode}-raw", raw, total)
    replayed = None if live else run_id
    results.add(f"{mode}-async", asyncio.run(async_events(server, flow_id, replayed)), total)
    results.add(f"{mode}-sync", sync_events(sync_client, flow_id, replayed), total)


def _report(results: Results) -> None:
    note = "median of alternating rounds; server in its own process"
    for goal, ours, base, title in (
        (1.0, "async", "raw", "AsyncFlow.events() vs raw aiohttp + json.loads"),
        (0.6, "sync", "async", "sync Flow.events() vs AsyncFlow.events()"),
    ):
        rows = [
            (f"{mode} client-CPU", results.cpu(f"{mode}-{ours}"), results.cpu(f"{mode}-{base}"))
            for mode in ("replay", "live")
        ]
        report(f"{title}, {COUNT:,} events ({note})", rows, "ev/s", goal)
        for mode in ("replay", "live"):
            a, b = results.wall(f"{mode}-{ours}"), results.wall(f"{mode}-{base}")
            print(
                f"  {mode + ' wall (context)':<28} vi_flow {a:>10.0f} ev/s  baseline {b:>10.0f} ev/s"
                f"  ratio {a / b:4.2f}"
            )
    print(
        "\n  Goals are judged on client-CPU rate: events per CPU-second of this process, which"
        " holds\n  only the client (the server is another process), so it isolates the SDK's"
        " own cost.\n  Wall rates are context: a replay also waits on the server's sending, a"
        " live run on the\n  engine making events, and both move with the load of other"
        " processes on this machine."
    )


# --------------------------------------------------------------------------- memory


async def memory_check(server: ServerProcess, flow_id: str) -> None:
    """Stream MEMORY_COUNT live events, keeping none; print the resident set as it goes."""
    marks: dict[int, float] = {}
    every = MEMORY_COUNT // 10
    async with vi_flow.AsyncClient(base_url=server.base_url, api_key=server.api_key) as client:
        start_rss, start_hwm = rss_mb()
        clock, count = Clock(), 0
        async for _ in client.flow(flow_id).events(timeout=STREAM_TIMEOUT):
            count += 1
            if count % every == 0:
                marks[count] = rss_mb()[0]
        _, wall, _ = clock.sample(count)
    end_rss, end_hwm = rss_mb()
    at_fifth = marks.get(2 * every, start_rss)
    late_peak = max(v for k, v in marks.items() if k >= 2 * every)
    growth = late_peak - at_fifth
    verdict = "flat" if growth < FLAT_MB else "NOT FLAT"
    print(f"\nMemory: {count:,} live events through AsyncFlow.events(), none kept ({wall:.1f} s)")
    print("  RSS MB at each 10 %: " + " ".join(f"{marks[k]:.0f}" for k in sorted(marks)))
    print(
        f"  RSS before {start_rss:.1f} MB, after 20 % {at_fifth:.1f} MB, end {end_rss:.1f} MB;"
        f" peak (VmHWM) {start_hwm:.1f} -> {end_hwm:.1f} MB"
    )
    print(
        f"  growth from 20 % to the highest later sample: {growth:+.1f} MB"
        f" (goal < {FLAT_MB:.0f} MB) {verdict}"
    )


def main() -> None:
    private_config_dir()
    with server_process() as server:
        flow_id, memory_flow_id, run_id, total = asyncio.run(_setup(server))
        if total != COUNT + EXTRA_EVENTS:
            print(f"note: a run of emit(count={COUNT}) has {total} events")
        results = Results()
        with vi_flow.Client(base_url=server.base_url, api_key=server.api_key) as sync_client:
            for _ in range(REPLAY_ROUNDS):
                _round(server, sync_client, results, (flow_id, run_id, total), live=False)
            for _ in range(LIVE_ROUNDS):
                _round(server, sync_client, results, (flow_id, run_id, total), live=True)
        _report(results)
        asyncio.run(memory_check(server, memory_flow_id))


if __name__ == "__main__":
    main()
