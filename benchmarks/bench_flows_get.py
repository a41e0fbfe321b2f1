"""Requests against a ``vi-flow serve`` in its own process: gets, the sync bridge, execute.

The server runs in its own process, so client and server never share a GIL. In every
round the contenders run in rotated order (nobody is always first, the sync ones
included); the medians of the rounds are compared, with min-max printed. Every contender
measures warm connections: the async ones open a fresh client per stretch of the round
and warm it (one call, then one burst of 64) before timing. Contenders:

* ``raw``: aiohttp + orjson on one session (the strongest plain client);
* ``async``: ``AsyncClient.flows.get``;
* ``sync``: ``Client.flows.get`` (one thread), and 64 threads sharing one ``Client``:
  a crew of 64 threads started once, as a service's worker threads live (the goal's
  figure), and, printed beside it, 64 threads started for each round, whose first
  calls also pay for the threads' own warm-up;
* ``execute``: ``AsyncFlow.execute()`` of a one-block ``template`` flow, in seconds per
  call beside a ``flows.get`` on the same server (``get``), sequential.

Goals (issue 15): async >= 0.7x raw; sync >= 0.85x async sequential; 64 threads on one
``Client`` >= 0.6x async at 64 concurrent; execute <= 3x a get. ``--quick`` shrinks counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from _common import Samples, ServerProcess, quick_flag, ratio_line, rotated, server_process

import vi_flow

QUICK = quick_flag()
ROUNDS = 3 if QUICK else 7
SEQUENTIAL = 100 if QUICK else 400
CONCURRENT = 64
PER_WORKER = 4 if QUICK else 12
EXECUTES = 30 if QUICK else 150

Call = Callable[[], Awaitable[None]]


async def sequential(fn: Call, count: int) -> float:
    """Calls per second of ``count`` calls one after another."""
    started = time.perf_counter()
    for _ in range(count):
        await fn()
    return count / (time.perf_counter() - started)


async def concurrent(fn: Call) -> float:
    """Calls per second of CONCURRENT coroutines making PER_WORKER calls each."""

    async def worker() -> None:
        for _ in range(PER_WORKER):
            await fn()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENT)))
    return CONCURRENT * PER_WORKER / (time.perf_counter() - started)


def threaded(fn: Callable[[], object]) -> float:
    """Calls per second of CONCURRENT threads making PER_WORKER calls each.

    The clock starts once every thread is started and waiting, as the async contender's
    starts once its coroutines exist: starting 64 threads is not the client's cost.
    """
    ready = threading.Barrier(CONCURRENT + 1)

    def worker() -> None:
        ready.wait()
        for _ in range(PER_WORKER):
            fn()

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return CONCURRENT * PER_WORKER / (time.perf_counter() - started)


class ThreadCrew:
    """CONCURRENT threads started once; each burst, every one makes PER_WORKER calls.

    A service's worker threads live across requests: the crew's calls are timed the way
    ``threaded`` times fresh threads' (from the moment all are released), without each
    thread's first steps. ``close()`` ends the threads.
    """

    def __init__(self, fn: Callable[[], object]) -> None:
        self._fn = fn
        self._go = threading.Barrier(CONCURRENT + 1)
        self._done = threading.Barrier(CONCURRENT + 1)
        self._closing = False
        self._threads = [threading.Thread(target=self._work) for _ in range(CONCURRENT)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        try:
            while True:
                self._go.wait()
                if self._closing:
                    return
                try:
                    for _ in range(PER_WORKER):
                        self._fn()
                except BaseException:
                    self._done.abort()  # the burst fails instead of waiting for ever
                    self._go.abort()
                    raise
                self._done.wait()
        except threading.BrokenBarrierError:
            return  # another thread's call failed: the benchmark stops

    def burst(self) -> float:
        """Calls per second of one burst."""
        self._go.wait()
        started = time.perf_counter()
        self._done.wait()
        return CONCURRENT * PER_WORKER / (time.perf_counter() - started)

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(threading.BrokenBarrierError):  # a burst failed: all ended
            self._go.wait(timeout=30)
        for thread in self._threads:
            thread.join(30)


def sync_sequential(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(SEQUENTIAL):
        fn()
    return SEQUENTIAL / (time.perf_counter() - started)


async def _async_contenders(
    server: ServerProcess, client: vi_flow.AsyncClient, raw: aiohttp.ClientSession,
    flow_id: str, exec_id: str,
) -> dict[str, Callable[[], Awaitable[float]]]:  # fmt: skip
    url = f"{server.base_url}/flows/{flow_id}"
    headers = {"Authorization": f"Bearer {server.api_key}"}

    async def raw_get() -> None:
        async with raw.get(url, headers=headers) as resp:
            orjson.loads(await resp.read())

    async def sdk_get() -> None:
        await client.flows.get(flow_id)

    flow = client.flow(exec_id)

    async def execute() -> None:
        await flow.execute(message="hi")

    await raw_get()
    await sdk_get()
    # One burst each, so that the 64-at-once contenders find their connections open too.
    await asyncio.gather(*(raw_get() for _ in range(CONCURRENT)))
    await asyncio.gather(*(sdk_get() for _ in range(CONCURRENT)))
    return {
        "raw seq": lambda: sequential(raw_get, SEQUENTIAL),
        "async seq": lambda: sequential(sdk_get, SEQUENTIAL),
        "raw 64": lambda: concurrent(raw_get),
        "async 64": lambda: concurrent(sdk_get),
        "get": lambda: sequential(sdk_get, EXECUTES),
        "execute": lambda: sequential(execute, EXECUTES),
    }


async def async_round(
    server: ServerProcess, flow_id: str, exec_id: str, samples: Samples, order: list[str]
) -> None:
    """The async contenders of ``order``, in that order, on one fresh and warmed client."""
    async with (
        vi_flow.AsyncClient(base_url=server.base_url, api_key=server.api_key) as client,
        aiohttp.ClientSession() as raw,
    ):
        contenders = await _async_contenders(server, client, raw, flow_id, exec_id)
        for name in order:
            if name in contenders:
                samples.add(name, await contenders[name]())


def _setup(server: ServerProcess) -> tuple[str, str]:
    with vi_flow.Client(base_url=server.base_url, api_key=server.api_key) as client:
        flow = client.flows.create({"name": "bench", "blocks": [{"block": "template", "id": "a"}]})
        one = client.flows.create(
            {"name": "one-block", "blocks": [
                {"block": "template", "id": "t", "settings": {"template": "hello {{message}}"}}]}
        )  # fmt: skip
        return flow.flow_id, one.flow_id


def stretches(order: list[str], sync: set[str]) -> list[list[str]]:
    """``order`` cut where it changes between sync and async contenders."""
    cut: list[list[str]] = []
    for name in order:
        if cut and (name in sync) == (cut[-1][0] in sync):
            cut[-1].append(name)
        else:
            cut.append([name])
    return cut


def main() -> None:
    samples = Samples()
    names = ["raw seq", "async seq", "sync seq", "raw 64", "async 64", "sync 64 threads",
             "sync 64 fresh", "get", "execute"]  # fmt: skip
    with server_process() as server:
        flow_id, exec_id = _setup(server)
        with vi_flow.Client(base_url=server.base_url, api_key=server.api_key) as client:

            def sync_get() -> None:
                client.flows.get(flow_id)

            crew = ThreadCrew(sync_get)
            sync = {
                "sync seq": lambda: sync_sequential(sync_get),
                "sync 64 threads": crew.burst,
                "sync 64 fresh": lambda: threaded(sync_get),
            }
            sync_get()
            try:
                for round_no in range(ROUNDS + 1):  # round 0 warms every path, dropped
                    target = samples if round_no else Samples()
                    for stretch in stretches(rotated(names, round_no), set(sync)):
                        if stretch[0] in sync:
                            for name in stretch:
                                target.add(name, sync[name]())
                        else:
                            asyncio.run(async_round(server, flow_id, exec_id, target, stretch))
            finally:
                crew.close()
    _report(samples)


def _report(samples: Samples) -> None:
    print(f"\nRequests to a server in its own process (median of {ROUNDS} rotated rounds)")
    ratio_line(samples, "flows.get sequential: async vs raw aiohttp + orjson",
               "async seq", "raw seq", "req/s", 0.7)  # fmt: skip
    ratio_line(samples, "flows.get 64 concurrent: async vs raw aiohttp + orjson",
               "async 64", "raw 64", "req/s", 0.7)  # fmt: skip
    ratio_line(samples, "flows.get sequential: sync vs async",
               "sync seq", "async seq", "req/s", 0.85)  # fmt: skip
    ratio_line(samples, "flows.get: 64 threads (started once) on one Client vs async 64 concurrent",
               "sync 64 threads", "async 64", "req/s", 0.6)  # fmt: skip
    fresh = samples.median("sync 64 fresh") / samples.median("async 64")
    print(f"      sync 64 fresh      {samples.spread('sync 64 fresh', 'req/s')}"
          f"  (64 threads started for each round: ratio {fresh:.2f}, not the goal's figure)")  # fmt: skip
    ratio_line(samples, "execute of a one-block template flow vs flows.get (rate: get/execute <= 3 means ratio >= 0.33)",
               "execute", "get", "req/s", 1 / 3)  # fmt: skip


if __name__ == "__main__":
    main()
