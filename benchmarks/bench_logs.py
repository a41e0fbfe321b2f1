"""Task log follow over SSH (``task.follow_logs()``) beside ``tail -F`` and a direct read loop.

The local server runs in its own process (``vi-flow serve`` on 127.0.0.1, local
provider, its embedded SSH server); the SDK follows a task's stdout through
``AsyncTask.follow_logs()`` over SSH. Two baselines read the same ``stdout.log`` on this
machine: GNU ``tail -n +1 -F`` of the file, its output read through a pipe
(:func:`tail_read`, also the baseline of ``bench_log_follow_http.py``), at the same time
as the SDK reads the same task; and, in rounds of its own, a direct tail loop (read
64 KiB, on end of file sleep 1 ms) in a thread, the ceiling with no pipe at all. The
order of the two kinds of round rotates.

* Throughput: a task prints 200,000 lines as fast as it can; lines/s is counted from the
  first line received to the last. "live": the readers start with the task, so readers,
  writer and the SSH server share this machine's cores; "catch-up": the task has ended
  before the readers start. Connect is measured too: "to first line" is the time from
  starting a reader (for the SDK: the endpoint request, SSH connect and authentication,
  the remote command; for ``tail``: its spawn) to its first line, and "with connect" is
  the rate counted from that start.
* Latency: a task writes 2,000 lines/s for 3 s, each starting with ``time.time_ns()``;
  latency = receive time - that stamp (same clock, same machine). The writer first
  prints ``ready`` and waits until its readers have seen it (a ``go`` file in its
  workspace), so a reader's start-up is not counted.

Goals (issue 15), against ``tail -F``: catch-up >= 0.8, live >= 0.9. ``--quick``
shrinks the counts and rounds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from _common import (
    Samples,
    ServerProcess,
    compute_client,
    percentile,
    private_config_dir,
    quick_flag,
    ratio_line,
    rotated,
    server_process,
)

QUICK = quick_flag()
THROUGHPUT_LINES = 20_000 if QUICK else 200_000
RATE = 2_000  # lines/s in the latency task
SECONDS = 1.0 if QUICK else 3.0
ROUNDS = 1 if QUICK else 3
POLL = 0.001  # the direct reader's sleep at end of file
READ_LIMIT = 60.0  # a bound on every read
GOALS = {"catch-up": 0.8, "live": 0.9}  # against tail -F (issue 15)

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
        self.started = time.perf_counter()
        self.first = 0.0
        self.last = 0.0
        self.latencies_ms: list[float] = []

    @property
    def done(self) -> bool:
        return self.count >= self.expected

    def start(self) -> None:
        """The reader starts now (its connect, spawn ... count from here)."""
        self.started = time.perf_counter()

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
        """Lines/s from the first line to the last."""
        span = self.last - self.first
        return (self.count - 1) / span if span > 0 else float("nan")

    @property
    def rate_with_start(self) -> float:
        """Lines/s from the reader's start (connect included) to the last line."""
        span = self.last - self.started
        return self.count / span if span > 0 else float("nan")

    @property
    def to_first_ms(self) -> float:
        """Milliseconds from the reader's start to its first line."""
        return (self.first - self.started) * 1e3


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


async def tail_read(path: Path, recorder: Recorder) -> None:
    """GNU ``tail -n +1 -F`` of the file, its output read through a pipe."""
    proc = await asyncio.create_subprocess_exec(
        "tail",
        "-n",
        "+1",
        "-F",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    partial = b""
    try:
        while not recorder.done:
            data = await proc.stdout.read(1 << 16)
            if not data:
                break
            *lines, partial = (partial + data).split(b"\n")
            for line in lines:
                recorder.line(line.decode("utf-8", "replace"))
    finally:
        proc.kill()
        await proc.wait()


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


async def one_round(client: Any, readers: tuple[str, ...], kind: str) -> dict[str, Recorder]:
    """One task read by ``readers`` ("sdk", "tail", "direct") at once; ``kind`` is
    "catch-up" (read after it ended), "live" or "latency"."""
    steady = kind == "latency"
    if steady:
        count = int(RATE * SECONDS)
        argv = ["python3", "-c", STEADY, str(count), str(RATE)]
    else:
        count = THROUGHPUT_LINES
        argv = ["python3", "-c", FLOOD, str(count)]
    task = await client.run(argv, name=f"bench-{kind}")
    endpoint = await client.tasks.ssh_endpoint(task.task_id)
    go, log = Path(endpoint.workdir) / "go", Path(endpoint.stdout_path)
    seen: set[str] = set()

    def ready(name: str) -> Callable[[], None]:
        def mark() -> None:
            seen.add(name)
            if len(seen) == len(readers):
                go.touch()

        return mark

    recorders = {name: Recorder(count, steady, ready(name)) for name in readers}
    if kind == "catch-up":
        await task.wait(timeout=READ_LIMIT)
    runs = {
        "sdk": lambda r: sdk_read(task, r),
        "tail": lambda r: tail_read(log, r),
        "direct": lambda r: asyncio.to_thread(direct_read, log, r),
    }
    for recorder in recorders.values():
        recorder.start()
    await asyncio.wait_for(
        asyncio.gather(*(runs[name](recorders[name]) for name in readers)), READ_LIMIT
    )
    for name, recorder in recorders.items():
        if not recorder.done:
            raise RuntimeError(f"{name}: got {recorder.count} of {count} lines")
    await task.wait(timeout=READ_LIMIT)
    return recorders


# The SDK and tail -F read the same task at the same time (as in bench_log_follow_http.py);
# the direct loop, a reader with no pipe, has rounds of its own.
GROUPS: list[tuple[str, ...]] = [("sdk", "tail"), ("direct",)]


async def run_all(server: ServerProcess) -> None:
    rates, starts = Samples(), Samples()
    latencies: dict[str, list[float]] = {}
    async with compute_client(base_url=server.base_url, api_key=server.api_key) as client:
        await one_round(client, ("sdk",), "catch-up")  # warm up: key, SSH, imports
        for round_no in range(ROUNDS):
            for kind in ("catch-up", "live", "latency"):
                for group in rotated(GROUPS, round_no):  # type: ignore[arg-type]
                    for name, rec in (await one_round(client, group, kind)).items():
                        if kind == "latency":
                            latencies.setdefault(name, []).extend(rec.latencies_ms)
                            continue
                        rates.add(f"{name} {kind}", rec.rate)
                        rates.add(f"{name} {kind}+start", rec.rate_with_start)
                        starts.add(f"{name} {kind}", rec.to_first_ms)
    _report(rates, starts, latencies)


def _report(rates: Samples, starts: Samples, latencies: dict[str, list[float]]) -> None:
    print(
        f"\nLog follow over SSH, {THROUGHPUT_LINES:,} lines of 50 bytes (median of {ROUNDS}"
        " rotated rounds, min-max; server in its own process)"
    )
    for kind, goal in GOALS.items():
        sdk, tail, direct = f"sdk {kind}", f"tail {kind}", f"direct {kind}"
        ratio_line(rates, f"{kind}: task.follow_logs() vs tail -F", sdk, tail, "lines/s", goal)
        ratio_line(rates, f"{kind}: vs a direct read loop", sdk, direct, "lines/s", 0.0)
        ratio_line(
            rates,
            f"{kind}, with connect (rate from the reader's start): vs tail -F",
            f"{sdk}+start",
            f"{tail}+start",
            "lines/s",
            goal,
        )
        print(
            f"      to first line: sdk {starts.median(sdk):.1f} ms, tail -F"
            f" {starts.median(tail):.1f} ms, direct {starts.median(direct):.1f} ms"
        )
    print(f"\nWrite-to-client latency, {RATE:,} lines/s for {SECONDS:g} s x {ROUNDS} round(s)")
    for name, values in latencies.items():
        print(
            f"  {name:<6} p50 {percentile(values, 50):7.2f}   p99 {percentile(values, 99):7.2f}"
            f"   max {max(values):7.2f} ms   ({len(values):,} lines)"
        )


def main() -> None:
    private_config_dir()
    with server_process() as server:
        asyncio.run(run_all(server))


if __name__ == "__main__":
    main()
