"""Shared benchmark helpers: a private home, medians, and ratio printing."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs


def private_home() -> str:
    """Point VI_FLOW_HOME at a fresh temporary directory and return it.

    The home's background server, if the benchmark starts one, is stopped at exit.
    """
    home = tempfile.mkdtemp(prefix="vi-flow-bench-")
    os.environ["VI_FLOW_HOME"] = home
    atexit.register(_stop_home_server, Path(home))
    return home


def _stop_home_server(home: Path) -> None:
    """SIGTERM the home's server (named by its run file) and wait until it is gone."""
    try:
        pid = int(json.loads((home / "server.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return
    if pid == os.getpid():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


async def rate(fn: Callable[[], Awaitable[None]], *, count: int) -> float:
    """Run ``fn`` ``count`` times and return calls per second."""
    started = time.perf_counter()
    for _ in range(count):
        await fn()
    return count / (time.perf_counter() - started)


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(title: str, rows: list[tuple[str, float, float]], unit: str, goal: float) -> None:
    """Print ``name: ours vs baseline = ratio`` lines and whether each meets the goal."""
    print(f"\n{title}")
    for name, ours, base in rows:
        ratio = ours / base if base else float("nan")
        verdict = "ok" if ratio >= goal else "BELOW GOAL"
        print(
            f"  {name:<28} vi_flow {ours:>10.0f} {unit}  baseline {base:>10.0f} {unit}  ratio {ratio:4.2f}  (goal >= {goal}) {verdict}"
        )


# --------------------------------------------------------------------------- added for the
# event, log and Slurm benchmarks: a server in its own process, percentiles, RSS, --quick.


def private_config_dir() -> str:
    """Point VI_FLOW_CONFIG_DIR at a fresh temporary directory (SSH keys, known_hosts)."""
    config = tempfile.mkdtemp(prefix="vi-flow-bench-config-")
    os.environ["VI_FLOW_CONFIG_DIR"] = config
    atexit.register(shutil.rmtree, config, ignore_errors=True)
    return config


def quick_flag() -> bool:
    """Whether ``--quick`` was given (other arguments, such as nox posargs, are ignored)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--quick", action="store_true")
    known, _ = parser.parse_known_args()
    return bool(known.quick)


@attrs.frozen
class ServerProcess:
    """A ``vi-flow serve`` running in its own process, so client and server never share a GIL."""

    base_url: str
    api_key: str
    home: Path
    process: subprocess.Popen[bytes]


_LISTENING = re.compile(rb"listening on (http://\S+/v1)")


@contextlib.contextmanager
def server_process(
    *args: str,
    env: dict[str, str] | None = None,
    start_timeout: float = 60.0,
    launcher: list[str] | None = None,
) -> Iterator[ServerProcess]:
    """Run ``vi-flow serve --port 0`` on 127.0.0.1 with a fresh home; stop it with SIGTERM.

    The home (a run of a million events takes hundreds of MB) is deleted afterwards.

    Args:
        *args: More ``vi-flow serve`` options (``--provider slurm``...).
        env: Environment of the server (default: this process's).
        start_timeout: Seconds to wait for the "listening on" line.
        launcher: Run this instead of ``vi-flow serve`` (``HOME`` is appended first,
            then ``args``); it must print the same "listening on" line.
    """
    home = Path(tempfile.mkdtemp(prefix="vi-flow-bench-server-"))
    log_path = home / "server.log"
    argv = [sys.executable, "-m", "vi_flow.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    command = [*launcher, str(home), *args] if launcher else [*argv, "--home", str(home), *args]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
    try:
        url = _wait_listening(proc, log_path, start_timeout)
        token = (home / "admin-token").read_text().strip()
        yield ServerProcess(base_url=url, api_key=token, home=home, process=proc)
    finally:
        _stop(proc)
        shutil.rmtree(home, ignore_errors=True)


def _wait_listening(proc: subprocess.Popen[bytes], log_path: Path, limit: float) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = _LISTENING.search(log_path.read_bytes())
        if found:
            return found.group(1).decode()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log_path.read_bytes()[-2000:].decode("utf-8", "replace")
    raise RuntimeError(f"vi-flow serve did not start (exit {proc.poll()}):\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, nearest-rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def rss_mb() -> tuple[float, float]:
    """This process's resident set and its peak (VmRSS, VmHWM) in MB, from /proc/self/status."""
    fields: dict[str, float] = {}
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith((b"VmRSS:", b"VmHWM:")):
                name, value = line.split(b":", 1)
                fields[name.decode()] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan"))


def compute_client(**kwargs: Any) -> Any:
    """``vi_flow.AsyncClient(**kwargs)``: the client with the seed's task methods."""
    import vi_flow

    return vi_flow.AsyncClient(**kwargs)


# --------------------------------------------------------------------------- issue 15: rotated
# rounds, medians with their spread, ratios judged in the same run.


def rotated(names: list[str], round_no: int) -> list[str]:
    """``names`` rotated by ``round_no``, so no contender is always first (or last)."""
    shift = round_no % len(names)
    return names[shift:] + names[:shift]


class Samples:
    """Named series of samples (a rate or a latency per round)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])

    def spread(self, name: str, unit: str) -> str:
        """``median unit (min-max)``."""
        got = self.values[name]
        return f"{statistics.median(got):>10,.0f} {unit} ({min(got):,.0f}–{max(got):,.0f})"


def ratio_line(
    samples: Samples,
    label: str,
    ours: str,
    base: str,
    unit: str,
    goal: float,
    *,
    lower_is_better: bool = False,
) -> float:
    """Print one ``ours vs base`` line with medians, min-max and the verdict; return the ratio.

    For a latency (``lower_is_better``) the ratio is ``ours / base`` and the goal an upper
    bound; for a rate it is ``ours / base`` and the goal a lower bound.
    """  # fmt: skip
    ratio = samples.median(ours) / samples.median(base)
    met = ratio <= goal if lower_is_better else ratio >= goal
    sign = "<=" if lower_is_better else ">="
    print(f"  {label}")
    print(f"      {ours:<18} {samples.spread(ours, unit)}")
    print(f"      {base:<18} {samples.spread(base, unit)}")
    verdict = "ok" if met else "BELOW GOAL"
    shown = f"{ratio:5.2f}"
    digits = 2
    while float(shown) == goal and ratio != goal and digits < 6:
        digits += 1  # 1.3004 would read "1.30 (goal <= 1.3) BELOW GOAL": 1.3004 it is
        shown = f"{ratio:5.{digits}f}"
    print(f"      ratio {shown}  (goal {sign} {goal:.2g})  {verdict}")
    return ratio


def process_rss_mb(pid: int) -> float:
    """Resident set of process ``pid`` in MB (VmRSS)."""
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
