"""``client.runs.prune`` (async and blocking) against the embedded local server."""

from __future__ import annotations

import time

import anyio
import pytest

import vi_flow
from vi_flow.models.retention import PruneResult

pytestmark = pytest.mark.anyio


async def _finished(client: vi_flow.AsyncClient, flow_id: str) -> str:
    run = await client.runs.create(flow_id)
    with anyio.fail_after(10):
        while not (run.status.condition and run.status.condition.terminal):
            await anyio.sleep(0.01)
            run = await client.runs.get(run.run_id)
    return run.run_id


SPEC = {"name": "p", "blocks": [{"block": "template", "id": "a", "settings": {"template": "x"}}]}


async def test_prune_answers_counts_and_removes_old_runs() -> None:
    async with vi_flow.AsyncClient() as client:
        flow = await client.flows.create(SPEC)
        await _finished(client, flow.flow_id)
        await anyio.sleep(1.2)
        dry = await client.runs.prune("1s", dry_run=True)
        assert isinstance(dry, PruneResult) and (dry.runs, dry.dry_run) == (1, True)
        done = await client.runs.prune(1)
        assert done.runs == 1 and done.organizations == ["org_default"]
        assert [r.run_id async for r in client.runs.list().all_items()] == []
        with pytest.raises(ValueError, match=r"older_than: .*'soon'"):
            await client.runs.prune("soon")


def test_the_blocking_twin_prunes_too() -> None:
    with vi_flow.Client() as client:
        flow = client.flows.create(SPEC)
        run = client.runs.create(flow.flow_id)
        while not (run.status.condition and run.status.condition.terminal):
            run = client.runs.get(run.run_id)
        time.sleep(1.1)
        assert client.runs.prune("1s", dry_run=True).runs == 1
        assert client.runs.prune("1s").runs == 1
        with pytest.raises(ValueError, match="older_than"):
            client.runs.prune(-5)
