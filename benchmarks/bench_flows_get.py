"""``client.flows.get()`` requests/s against raw aiohttp on the same local server, same run.

Sequential and 64 concurrent; rounds alternate between the two so that noise on a shared
machine hits both alike; the medians are compared. Goal: at least 0.7x raw aiohttp.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from _common import median, private_home, report

import vi_flow

ROUNDS = 5
SEQUENTIAL = 400
CONCURRENT_TASKS = 64
CONCURRENT_PER_TASK = 15


async def _concurrent(fn: object) -> float:
    async def worker() -> None:
        for _ in range(CONCURRENT_PER_TASK):
            await fn()  # type: ignore[operator]

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENT_TASKS)))
    return CONCURRENT_TASKS * CONCURRENT_PER_TASK / (time.perf_counter() - started)


async def _sequential(fn: object) -> float:
    started = time.perf_counter()
    for _ in range(SEQUENTIAL):
        await fn()  # type: ignore[operator]
    return SEQUENTIAL / (time.perf_counter() - started)


async def main() -> None:
    private_home()
    async with vi_flow.AsyncClient() as client:
        flow = await client.flows.create(
            {"name": "bench", "blocks": [{"block": "template", "id": "a"}]}
        )
        endpoint = await client.http.connection.endpoint()
        url = f"{endpoint.base_url}/flows/{flow.flow_id}"
        headers = {"Authorization": f"Bearer {endpoint.api_key}"}
        async with aiohttp.ClientSession() as raw:

            async def raw_get() -> None:
                async with raw.get(url, headers=headers) as resp:
                    orjson.loads(await resp.read())

            async def sdk_get() -> None:
                await client.flows.get(flow.flow_id)

            results: dict[str, list[float]] = {
                "seq_sdk": [],
                "seq_raw": [],
                "con_sdk": [],
                "con_raw": [],
            }
            await _sequential(sdk_get)
            await _sequential(raw_get)  # warm both paths
            for _ in range(ROUNDS):
                results["seq_raw"].append(await _sequential(raw_get))
                results["seq_sdk"].append(await _sequential(sdk_get))
                results["con_raw"].append(await _concurrent(raw_get))
                results["con_sdk"].append(await _concurrent(sdk_get))
    report(
        f"flows.get() vs raw aiohttp + orjson (median of {ROUNDS} alternating rounds)",
        [
            ("sequential", median(results["seq_sdk"]), median(results["seq_raw"])),
            (
                f"{CONCURRENT_TASKS} concurrent",
                median(results["con_sdk"]),
                median(results["con_raw"]),
            ),
        ],
        "req/s",
        0.7,
    )


if __name__ == "__main__":
    asyncio.run(main())
