"""50 tasks submitted at once: submit -> running, beside spawning the same 50 processes directly.

A local server runs in its own process (``_serve.py``: the local provider with 64 CPUs
declared, so all 50 one-CPU tasks may run at once; each runs in the bubblewrap sandbox
when the machine has it). Each round, in rotated order:

* ``server``: ``AsyncClient.tasks.create`` of 50 tasks at once (``asyncio.gather``);
* ``direct``: ``asyncio.create_subprocess_exec("/bin/sh", "-c", ...)`` 50 times at once;
* ``sandboxed``: the same, behind the server's own bubblewrap prefix (only where the
  machine has the sandbox): what the sandbox alone costs, since every server task runs in it.

Every process prints ``date +%s%N`` first thing; its latency is that stamp minus the
time the batch was submitted (one clock, one machine). Printed: the median over rounds
of each batch's p50 (and p90), min-max. Goal (issue 15): server p50 <= 1.5x direct.
``--quick`` runs fewer rounds.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import (
    Samples,
    ServerProcess,
    percentile,
    quick_flag,
    ratio_line,
    rotated,
    server_process,
)

import vi_flow
from vi_flow.models.tasks import TaskConfig, TaskStatus
from vi_flow.server.providers.local.sandbox import detect_sandbox

QUICK = quick_flag()
ROUNDS = 2 if QUICK else 5
TASKS = 50
COMMAND = "date +%s%N"


async def direct_batch(prefix: Sequence[str] = ()) -> list[float]:
    """Spawn TASKS shells at once (behind ``prefix``); their start latencies in ms."""
    submitted = time.time_ns()
    procs = await asyncio.gather(*(
        asyncio.create_subprocess_exec(
            *prefix, "/bin/sh", "-c", COMMAND, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(TASKS)
    ))  # fmt: skip
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    return [(int(out.strip()) - submitted) / 1e6 for out, _ in outs]


async def _finished(client: vi_flow.AsyncClient, ids: list[str]) -> None:
    # The first look comes after the tasks have started (their stamps are the measure),
    # so this polling never competes with the starts it measures.
    await asyncio.sleep(2.0)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        tasks = await asyncio.gather(*(client.tasks.get(i) for i in ids))
        if all(TaskStatus(t.status).terminal for t in tasks):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("tasks did not finish in 120 s")


async def server_batch(server: ServerProcess, client: vi_flow.AsyncClient) -> list[float]:
    """Submit TASKS tasks at once through the server; their start latencies in ms."""
    config = TaskConfig(name="start", command=COMMAND, cpus=1)
    submitted = time.time_ns()
    tasks = await asyncio.gather(*(client.tasks.create(config) for _ in range(TASKS)))
    ids = [t.task_id for t in tasks]
    await _finished(client, ids)
    stamps = [(server.home / "tasks" / i / "logs" / "stdout.log").read_text() for i in ids]
    return [(int(s.strip()) - submitted) / 1e6 for s in stamps]


def record(samples: Samples, name: str, latencies: list[float]) -> None:
    if len(latencies) != TASKS:
        raise RuntimeError(f"{name}: {len(latencies)} latencies")
    samples.add(name, percentile(latencies, 50))
    samples.add(f"{name} p90", percentile(latencies, 90))


def sandbox_prefix(tmp: Path) -> list[str] | None:
    """The server's bubblewrap prefix for a task directory under ``tmp`` (None without it)."""
    sandbox = detect_sandbox(tmp, {})
    if not sandbox.enabled:
        return None
    root = tmp / "task"
    (root / "workspace").mkdir(parents=True)
    return sandbox.prefix(root, [], root / "workspace")


async def main() -> None:
    launcher = [sys.executable, str(Path(__file__).with_name("_serve.py"))]
    samples = Samples()
    with (
        tempfile.TemporaryDirectory() as tmp,
        server_process("64", launcher=launcher) as server,
    ):
        prefix = sandbox_prefix(Path(tmp))
        names = ["server", "direct"] + (["sandboxed"] if prefix is not None else [])
        async with vi_flow.AsyncClient(base_url=server.base_url, api_key=server.api_key) as client:
            await server_batch(server, client)  # warm both paths
            await direct_batch()
            for round_no in range(ROUNDS):
                for name in rotated(names, round_no):
                    if name == "server":
                        record(samples, name, await server_batch(server, client))
                    else:
                        sandboxed = name == "sandboxed" and prefix is not None
                        record(samples, name, await direct_batch(prefix if sandboxed else ()))
    print(
        f"\n{TASKS} tasks submitted at once, submit -> running (median of {ROUNDS} rotated rounds)"
    )
    ratio_line(samples, "p50 latency: server tasks vs create_subprocess_exec",
               "server", "direct", "ms", 1.5, lower_is_better=True)  # fmt: skip
    print(f"      p90: server {samples.spread('server p90', 'ms')}, direct {samples.spread('direct p90', 'ms')}")  # fmt: skip
    if prefix is not None:
        ratio_line(samples, "p50 latency: server tasks vs the same spawns behind the server's sandbox",
                   "server", "sandboxed", "ms", 1.5, lower_is_better=True)  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
