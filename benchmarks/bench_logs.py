"""Task log follow over SSH (``task.follow_logs()``) beside reading the same file directly.

The local server runs in its own process (``vi-flow serve`` on 127.0.0.1, local
provider, its embedded SSH server); the SDK follows a task's stdout through
``AsyncTask.follow_logs()`` (``tail -F`` in the task, over SSH). The baseline reads the
same ``stdout.log`` on this machine with a tail loop (read 64 KiB, on end of file sleep
1 ms) in a thread. Every round starts a new task; rounds alternate between the readers.

* Throughput: a task prints 200,000 lines as fast as it can; lines/s is counted from the
  first line received to the last. "live": the reader starts with the task, so reader,
  writer, ``tail`` and the SSH server share this machine's cores; "catch-up": the task has
  ended before the reader starts (the reader alone).
* Latency: a task writes 2,000 lines/s for 3 s, each starting with ``time.time_ns()``;
  latency = receive time - that stamp (same clock, same machine). The writer first
  prints ``ready`` and waits until the reader has seen it (a ``go`` file in its
  workspace), so a reader's start-up is not counted.

``--quick`` shrinks the counts and rounds.
"""

from __future__ import annotations

import asyncio
import sys
import time
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

QUICK = quick_flag()
THROUGHPUT_LINES = 20_000 if QUICK else 200_000
RATE = 2_000  # lines/s in the latency task
SECONDS = 1.0 if QUICK else 3.0
ROUNDS = 1 if QUICK else 3
POLL = 0.001  # the direct reader's sleep at end of file
READ_LIMIT = 60.0  # a bound on every read

FLOOD = r"""
import os, sys
n = int(sys.argv[1])
pad = "x" * 40
out = sys.stdout
for i in range(n):
    out.write(f"{i:08d} {pad}\n")
out.flush()
"""

STEADY = r"""
import os, sys, time
n, rate = int(sys.argv[1]), float(sys.argv[2])
os.write(1, b"ready\n")
deadline = time.monotonic() + 30
while not os.path.exists("go") and time.monotonic() < deadline:
    time.sleep(0.001)
pad = "x" * 40
start = time.perf_counter()
for i in range(n):
    wait = start + i / rate - time.perf_counter()
    if wait > 0:
        time.sleep(wait)
    os.write(1, f"{time.time_ns()} {i:07d} {pad}\n".encode())
"""


class Recorder:
    """What a reader does with each line: count it, time it, take its latency."""

    def __init__(self, expected: int, steady: bool, on_ready: Callable[[], None]) -> None:
        self.expected = expected
        self.steady = steady
        self.on_ready = on_ready
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies_ms: list[float] = []

    @property
    def done(self) -> bool:
        return self.count >= self.expected

    def line(self, line: str) -> None:
        if self.steady:
            if line == "ready":
                self.on_ready()
                return
            now = time.time_ns()
            self.latencies_ms.append((now - int(line.split(" ", 1)[0])) / 1e6)
        now_s = time.perf_counter()
        if not self.count:
            self.first = now_s
        self.last = now_s
        self.count += 1

    @property
    def rate(self) -> float:
        span = self.last - self.first
        return (self.count - 1) / span if span > 0 else float("nan")


# --------------------------------------------------------------------------- readers


async def sdk_read(task: Any, recorder: Recorder) -> None:
    """Follow the task's stdout over SSH with the SDK until ``expected`` lines came."""
    lines: AsyncIterator[str] = task.follow_logs()
    try:
        async for line in lines:
            recorder.line(line)
            if recorder.done:
                break
    finally:
        await lines.aclose()  # type: ignore[attr-defined]


def direct_read(path: Path, recorder: Recorder) -> None:
    """A tail loop on the local file: read what is there, sleep 1 ms at end of file."""
    deadline = time.monotonic() + READ_LIMIT
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(POLL)
    with path.open("rb") as log:
        partial = b""
        while not recorder.done and time.monotonic() < deadline:
            data = log.read(1 << 16)
            if not data:
                time.sleep(POLL)
                continue
            parts = (partial + data).split(b"\n")
            partial = parts.pop()
            for part in parts:
                recorder.line(part.decode("utf-8", "replace"))


# --------------------------------------------------------------------------- rounds


async def one_round(client: Any, how: str, steady: bool, catch_up: bool = False) -> Recorder:
    """Start one task and read it with ``how`` ("sdk" or "direct"), after it ended if ``catch_up``."""
    if steady:
        count = int(RATE * SECONDS)
        argv = [sys.executable, "-c", STEADY, str(count), str(RATE)]
    else:
        count = THROUGHPUT_LINES
        argv = [sys.executable, "-c", FLOOD, str(count)]
    task = await client.run(argv, name=f"bench-{how}")
    endpoint = await client.tasks.ssh_endpoint(task.task_id)
    go = Path(endpoint.workdir) / "go"
    recorder = Recorder(count, steady, go.touch)
    if catch_up:
        await task.wait(timeout=READ_LIMIT)
    if how == "sdk":
        await asyncio.wait_for(sdk_read(task, recorder), READ_LIMIT)
    else:
        await asyncio.to_thread(direct_read, Path(endpoint.stdout_path), recorder)
    if not recorder.done:
        raise RuntimeError(f"{how}: got {recorder.count} of {count} lines")
    await task.wait(timeout=READ_LIMIT)
    return recorder


async def run_all(server: ServerProcess) -> None:
    rates: dict[str, list[float]] = {
        "sdk": [],
        "direct": [],
        "sdk-catch-up": [],
        "direct-catch-up": [],
    }
    latencies: dict[str, list[float]] = {"sdk": [], "direct": []}
    async with compute_client(base_url=server.base_url, api_key=server.api_key) as client:
        await one_round(client, "sdk", steady=False)  # warm up: key, SSH, imports
        for _ in range(ROUNDS):
            for how in ("direct", "sdk"):
                rates[how].append((await one_round(client, how, steady=False)).rate)
                done = await one_round(client, how, steady=False, catch_up=True)
                rates[f"{how}-catch-up"].append(done.rate)
            for how in ("direct", "sdk"):
                latencies[how] += (await one_round(client, how, steady=True)).latencies_ms
    _report(rates, latencies)


def _report(rates: dict[str, list[float]], latencies: dict[str, list[float]]) -> None:
    print(
        f"\nLog follow throughput, {THROUGHPUT_LINES:,} lines of 50 bytes"
        f" (median of {ROUNDS} alternating rounds; server in its own process)"
    )
    for label, suffix in (("live", ""), ("catch-up", "-catch-up")):
        sdk, direct = median(rates["sdk" + suffix]), median(rates["direct" + suffix])
        print(
            f"  {label:<9} task.follow_logs() over SSH {sdk:>10,.0f} lines/s   direct file tail"
            f" {direct:>10,.0f} lines/s   ratio {sdk / direct:4.2f}"
        )
    count = len(latencies["sdk"])
    print(
        f"\nWrite-to-client latency, {RATE:,} lines/s for {SECONDS:g} s x {ROUNDS} round(s)"
        f" ({count:,} lines per path)"
    )
    for q in (50, 99):
        ours, base = percentile(latencies["sdk"], q), percentile(latencies["direct"], q)
        print(
            f"  p{q:<3} task.follow_logs() {ours:7.2f} ms   direct file tail {base:7.2f} ms"
            f"   ratio {ours / base:4.2f}   ({ours - base:+.2f} ms; lower is better)"
        )
    worst = max(latencies["sdk"])
    print(
        f"  max  task.follow_logs() {worst:7.2f} ms   direct file tail {max(latencies['direct']):7.2f} ms"
    )
    print("  (direct = a tail loop on the local stdout.log sleeping 1 ms at end of file)")


def main() -> None:
    private_config_dir()
    with server_process() as server:
        asyncio.run(run_all(server))


if __name__ == "__main__":
    main()
