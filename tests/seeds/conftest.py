"""Fixtures for the seed examples: the ids the seeds use exist on the local server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

import vi_flow

SEED_FLOW = {
    "name": "Seed training flow",
    "training_project": "dataset_abc",
    "settings": {"epochs": 3, "learning_rate": 0.001, "device": "cpu"},
    "tolerations": {"gpu": ["a100", "h100"]},
    "blocks": [
        {
            "block": "template",
            "id": "prepare",
            "settings": {"template": "data", "format": "text"},
        },
        {"block": "template", "id": "train", "settings": {"template": "model"}},
    ],
}


async def _seed(client: vi_flow.AsyncClient) -> None:
    await client.flows.create(SEED_FLOW, flow_id="flow_abc123")
    run = await client.runs.create("flow_abc123", run_id="run_abc123")
    with anyio.fail_after(20):
        while (
            not (run := await client.runs.get(run.run_id)).status.conditions[-1].condition.terminal
        ):
            await anyio.sleep(0.02)


@pytest.fixture
def client() -> Iterator[vi_flow.Client]:
    with vi_flow.Client() as c:
        c._portal.call(_seed, c.async_client)
        yield c


@pytest.fixture
async def aclient() -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as c:
        await _seed(c)
        yield c
