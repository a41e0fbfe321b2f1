"""Task log follow over HTTP (SSE) beside ``tail -F`` of the same file, in the same run.

The local server runs in its own process (``vi-flow serve`` on 127.0.0.1); the SDK
follows a task's stdout with ``log_transport = http`` (``GET /v1/tasks/{id}/logs
?follow=true``, the SSE decoder, the line splitter), and the baseline is GNU ``tail -F``
of the same ``stdout.log`` on this machine, its output read through a pipe. Both read the
same file of the same task at the same time, so they meet the same writer and disk.

* Catch-up: a task prints 200,000 lines of 50 bytes as fast as it can and ends; then each
  reader takes the whole file from the start (lines/s, first line to last).
* Live: a task prints the same flood while both readers follow it from its start.
* Latency: a task writes 2,000 lines/s for 3 s, each line starting with ``time.time_ns()``;
  latency = receive time - that stamp (same clock), p50 and p99 per reader. The writer
  first prints ``ready`` and waits for a ``go`` file until both readers saw it.

Printed: medians over rounds and the ratio HTTP / tail. ``--quick`` shrinks counts and
rounds.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from _common import (
    ServerProcess,
    compute_client,
    median,
    percentile,
    private_config_dir,
    quick_flag,
    server_process,
)

# The same writers, reader bookkeeping and tail -F baseline as the SSH benchmark.
from bench_logs import FLOOD, STEADY, Recorder, tail_read

QUICK = quick_flag()
LINES = 20_000 if QUICK else 200_000
RATE = 2_000
SECONDS = 1.0 if QUICK else 3.0
ROUNDS = 1 if QUICK else 3
LIMIT = 120.0


async def http_read(client: Any, task_id: str, recorder: Recorder) -> None:
    """The SDK's follow, over HTTP (the client was made with log_transport = http)."""
    lines: AsyncIterator[str] = client.follow_logs(task_id)
    try:
        async for line in lines:
            recorder.line(line)
            if recorder.done:
                break
    finally:
        await lines.aclose()  # type: ignore[attr-defined]


async def one_round(client: Any, kind: str) -> dict[str, Recorder]:
    """One task read by both readers at once; ``kind``: catch-up, live or latency."""
    steady = kind == "latency"
    count = int(RATE * SECONDS) if steady else LINES
    script, extra = (STEADY, [str(RATE)]) if steady else (FLOOD, [])
    task = await client.run(["python3", "-c", script, str(count), *extra], name="bench")
    root = Path((await client.tasks.get(task.task_id)).workdir).parent
    seen: set[str] = set()

    def ready(name: str) -> Callable[[], None]:
        def mark() -> None:
            seen.add(name)
            if len(seen) == 2:
                (root / "workspace" / "go").touch()

        return mark

    recorders = {name: Recorder(count, steady, ready(name)) for name in ("http", "tail")}
    if kind == "catch-up":
        await task.wait(timeout=LIMIT)
    await asyncio.wait_for(
        asyncio.gather(
            http_read(client, task.task_id, recorders["http"]),
            tail_read(root / "logs" / "stdout.log", recorders["tail"]),
        ),
        LIMIT,
    )
    await task.wait(timeout=LIMIT)
    return recorders


async def run_all(server: ServerProcess) -> None:
    os.environ["VI_FLOW_LOG_TRANSPORT"] = "http"
    rates: dict[str, dict[str, list[float]]] = {"catch-up": {}, "live": {}}
    latencies: dict[str, list[float]] = {"http": [], "tail": []}
    async with compute_client(base_url=server.base_url, api_key=server.api_key) as client:
        await one_round(client, "catch-up")  # warm up: imports, the first connection
        for _ in range(ROUNDS):
            for kind in ("catch-up", "live"):
                for name, recorder in (await one_round(client, kind)).items():
                    rates[kind].setdefault(name, []).append(recorder.rate)
            for name, recorder in (await one_round(client, "latency")).items():
                latencies[name] += recorder.latencies_ms
    _report(rates, latencies)


def _report(rates: dict[str, dict[str, list[float]]], latencies: dict[str, list[float]]) -> None:
    print(f"\nLog follow over HTTP vs tail -F, {LINES:,} lines of 50 bytes (median of {ROUNDS})")
    for kind, by_reader in rates.items():
        http, tail = median(by_reader["http"]), median(by_reader["tail"])
        print(
            f"  {kind:<9} follow over HTTP {http:>10,.0f} lines/s   tail -F {tail:>10,.0f}"
            f" lines/s   ratio {http / tail:4.2f}"
        )
    print(f"Latency at {RATE:,} lines/s for {SECONDS:g} s (ms, writer to reader)")
    for name, values in latencies.items():
        print(
            f"  {name:<5} p50 {percentile(values, 50):7.2f}   p99 {percentile(values, 99):7.2f}"
            f"   max {max(values):7.2f}   ({len(values):,} lines)"
        )


def main() -> None:
    private_config_dir()
    with server_process() as server:
        asyncio.run(run_all(server))


if __name__ == "__main__":
    main()
