"""Idle resident memory of ``vi-flow serve`` beside a bare aiohttp.web + sqlite3 server.

Both run in their own processes and answer a few ``GET /v1/flows`` first (so what a
first request loads is counted); then, idle, their resident sets (VmRSS) are read. Each
round starts both afresh, in rotated order. Goal (issue 15): vi-flow <= 1.3x the bare
server. ``--quick`` runs fewer rounds.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import Samples, process_rss_mb, quick_flag, ratio_line, rotated, server_process

QUICK = quick_flag()
ROUNDS = 2 if QUICK else 5
SETTLE = 1.0  # seconds idle before reading the resident set


async def _touch(base_url: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(5):
            async with session.get(f"{base_url}/flows") as resp:
                resp.raise_for_status()
                await resp.read()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the bare server did not start")


def bare_rss() -> float:
    """Start the bare server, touch it, wait idle, return its RSS in MB."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(__file__).with_name("_bare_server.py")
        proc = subprocess.Popen([sys.executable, str(script), f"{tmp}/bare.db", str(port)])
        try:
            _wait_port(port)
            asyncio.run(_touch(f"http://127.0.0.1:{port}/v1", None))
            time.sleep(SETTLE)
            return process_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)


def vi_flow_rss() -> float:
    """Start ``vi-flow serve``, touch it, wait idle, return its RSS in MB."""
    with server_process() as server:
        asyncio.run(_touch(server.base_url, server.api_key))
        time.sleep(SETTLE)
        return process_rss_mb(server.process.pid)


def main() -> None:
    samples = Samples()
    runs = {"vi-flow serve": vi_flow_rss, "bare aiohttp+sqlite3": bare_rss}
    for round_no in range(ROUNDS):
        for name in rotated(list(runs), round_no):
            samples.add(name, runs[name]())
    print(f"\nIdle server resident memory (median of {ROUNDS} rotated rounds)")
    ratio_line(samples, "vi-flow serve vs bare aiohttp.web + sqlite3", "vi-flow serve",
               "bare aiohttp+sqlite3", "MB", 1.3, lower_is_better=True)  # fmt: skip


if __name__ == "__main__":
    main()
