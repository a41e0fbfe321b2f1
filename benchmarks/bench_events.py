"""Client events/s: ``AsyncRun.events()`` and sync ``Run.events()`` beside raw aiohttp + orjson.

A stand-in source (``_sse_source.py``) runs in its own process and serves one finished
run of 200,000 events in the mix of a real run (nine event types: logs on stdout and
stderr, step started/input/output/completed/failed/paused, tool calls, run started,
ending with ``flow_completed``), built with the SDK's own models in the server's frame
layout. It only writes a prepared body, so what is measured is the reader. Three
readers take the same stream, in rotated order each round:

* raw: aiohttp, a split on blank lines, ``orjson.loads`` of each ``data:`` line (the
  parser the SDK itself uses);
* async: ``AsyncClient().run(id).events()``, typed events;
* sync: ``Client().run(id).events()``, typed events through the sync bridge.

Each reader runs twice: counting the events, and touching one payload field of every
event (``time``: ``payload["time"]`` for raw, ``event.time`` for the SDK). The SDK reads
an event's JSON on first use, so the counting figure alone would flatter it; both are
printed.

Printed: the median of the rounds with min-max, events per second of wall time and per
CPU-second of this process (which holds only the reader). Goals (issue 15): async >=
0.85x raw, sync >= 0.8x async. ``--quick`` shrinks the count by 10.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
from _common import Samples, quick_flag, ratio_line, rotated

import vi_flow

QUICK = quick_flag()
COUNT = 20_000 if QUICK else 200_000
ROUNDS = 3 if QUICK else 7
RUN = "run-bench"
TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_source(count: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``_sse_source.py`` in its own process; return it and its base URL."""
    port = _free_port()
    script = Path(__file__).with_name("_sse_source.py")
    proc = subprocess.Popen([sys.executable, str(script), str(count), str(port)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}/v1"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the event source did not start")


# --------------------------------------------------------------------------- readers


async def _raw_read(resp: aiohttp.ClientResponse, touch: bool) -> int:
    count, rest, loads = 0, b"", orjson.loads
    async for chunk in resp.content.iter_any():
        *frames, rest = (rest + chunk).split(b"\n\n")
        for frame in frames:
            start = frame.find(b"data: ")
            if start >= 0:
                payload = loads(frame[start + 6 :])
                if touch:
                    payload["time"]  # the touch is the point
                count += 1
    return count


async def raw_events(base_url: str, touch: bool = False) -> int:
    """aiohttp + orjson: the strongest plain reader of the same stream."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{base_url}/runs/{RUN}/events") as resp,
    ):
        resp.raise_for_status()
        return await _raw_read(resp, touch)


async def async_events(base_url: str, touch: bool = False) -> int:
    """``AsyncRun.events()``: every event parsed into its typed model."""
    async with vi_flow.AsyncClient(base_url=base_url, api_key="bench") as client:
        count = 0
        async for event in client.flow("flow-bench").run(RUN).events(timeout=TIMEOUT):
            if touch:
                event.time  # noqa: B018
            count += 1
        return count


def sync_events(client: vi_flow.Client, touch: bool = False) -> int:
    """Sync ``Run.events()`` on a client opened once (as a script would)."""
    count = 0
    for event in client.flow("flow-bench").run(RUN).events(timeout=TIMEOUT):
        if touch:
            event.time  # noqa: B018
        count += 1
    return count


def measure(samples: Samples, name: str, read: Callable[[], int]) -> None:
    """Run one reader; record wall and CPU rates; check it saw every event."""
    wall, cpu = time.perf_counter(), time.process_time()
    got = read()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if got != COUNT:
        raise RuntimeError(f"{name}: {got} events, expected {COUNT}")
    samples.add(f"{name} wall", COUNT / wall)
    samples.add(f"{name} cpu", COUNT / cpu)


def main() -> None:
    source, base_url = start_source(COUNT)
    samples = Samples()
    try:
        with vi_flow.Client(base_url=base_url, api_key="bench") as client:
            readers: dict[str, Callable[[], int]] = {
                "raw": lambda: asyncio.run(raw_events(base_url)),
                "async": lambda: asyncio.run(async_events(base_url)),
                "sync": lambda: sync_events(client),
                "raw touch": lambda: asyncio.run(raw_events(base_url, touch=True)),
                "async touch": lambda: asyncio.run(async_events(base_url, touch=True)),
                "sync touch": lambda: sync_events(client, touch=True),
            }
            for read in readers.values():  # warm every path once
                read()
            for round_no in range(ROUNDS):
                for name in rotated(list(readers), round_no):
                    measure(samples, name, readers[name])
    finally:
        source.terminate()
        source.wait(10)
    print(f"\nClient events/s, {COUNT:,} events of 9 types, median of {ROUNDS} rotated rounds")
    for touch in ("", " touch"):
        what = "one field of each event read" if touch else "events counted"
        for kind in ("wall", "cpu"):
            ratio_line(samples, f"AsyncRun.events() vs raw aiohttp + orjson, {what} ({kind})",
                       f"async{touch} {kind}", f"raw{touch} {kind}", "ev/s", 0.85)  # fmt: skip
            ratio_line(samples, f"sync Run.events() vs AsyncRun.events(), {what} ({kind})",
                       f"sync{touch} {kind}", f"async{touch} {kind}", "ev/s", 0.8)  # fmt: skip


if __name__ == "__main__":
    main()
