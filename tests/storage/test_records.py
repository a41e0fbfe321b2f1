"""The store's typed methods (organizations, tokens, flows, runs, idempotency) on both
backends: what a server replica reads back is what any replica wrote."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from vi_flow.models.common import Condition
from vi_flow.models.flows import FlowSpec
from vi_flow.models.runs import RunSpec
from vi_flow.server.errors import APIProblem
from vi_flow.server.store import Store

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    store = Store.open(database)
    yield store
    await store.close()


async def test_organizations_and_tokens(store: Store) -> None:
    org = await store.create_org("team", "org_team")
    assert await store.org_exists(org) and not await store.org_exists("org_none")
    admin = await store.create_token(org, "ops", admin=True)
    user = await store.create_token(org, "ci")
    assert await store.lookup_token(admin) == (org, "ops", True)
    assert await store.lookup_token(user) == (org, "ci", False)
    assert await store.lookup_token("vf_unknown") is None
    names = [(t["name"], t["admin"]) for t in await store.list_tokens(org)]
    assert sorted(names) == [("ci", False), ("ops", True)]
    assert await store.revoke_tokens(org, "ci") == (1, [])
    with pytest.raises(APIProblem) as refused:
        await store.revoke_tokens(org, "ops")
    assert refused.value.status == 409
    assert await store.lookup_token(user) is None


async def test_flows_pages_and_etags(store: Store) -> None:
    made = [await store.create_flow("org", FlowSpec(name=f"f{i}")) for i in range(5)]
    page, cursor = await store.list_flows("org", 2)
    assert [f.flow_id for f in page] == [made[4].flow_id, made[3].flow_id]
    rest, end = await store.list_flows("org", 10, cursor or 0)
    assert [f.flow_id for f in rest] == [f.flow_id for f in reversed(made[:3])]
    assert end is None
    oldest, _ = await store.list_flows("org", 1, newest=False)
    assert oldest[0].flow_id == made[0].flow_id
    changed = await store.update_flow("org", made[0].flow_id, FlowSpec(name="new"))
    assert changed.metadata.generation == 2 and changed.etag != made[0].etag
    with pytest.raises(APIProblem) as stale:
        await store.update_flow("org", made[0].flow_id, FlowSpec(name="x"), if_match="old")
    assert stale.value.code == "ETAG_MISMATCH"
    with pytest.raises(APIProblem) as taken:
        await store.create_flow("org", FlowSpec(name="dup"), made[1].flow_id)
    assert taken.value.status == 409
    other = await store.create_flow("other", FlowSpec(name="same id"), made[1].flow_id)
    assert other.organization_id == "other"


async def test_flow_versions(store: Store) -> None:
    flow = await store.create_flow("org", FlowSpec(name="one"))
    with pytest.raises(APIProblem) as none_yet:
        await store.get_flow_version("org", flow.flow_id, "production")
    assert none_yet.value.code == "FLOW_VERSION_NOT_FOUND"
    assert await store.publish_flow("org", flow.flow_id) == 1
    await store.update_flow("org", flow.flow_id, FlowSpec(name="two"))
    assert await store.publish_flow("org", flow.flow_id) == 2
    promoted = await store.promote_flow("org", flow.flow_id, 1)
    assert (promoted.production_version, promoted.latest_version) == (1, 2)
    assert await store.resolve_flow_version("org", flow.flow_id, "production") == (
        FlowSpec(name="one"),
        "1",
    )
    assert (await store.get_flow_version("org", flow.flow_id, 2)).name == "two"
    assert (await store.get_flow_version("org", flow.flow_id, "draft")).name == "two"
    with pytest.raises(APIProblem) as other_org:
        await store.get_flow_version("other", flow.flow_id, "draft")
    assert other_org.value.code == "FLOW_NOT_FOUND"
    await store.delete_flow("org", flow.flow_id)
    with pytest.raises(APIProblem) as gone:
        await store.get_flow("org", flow.flow_id)
    assert gone.value.code == "FLOW_NOT_FOUND"


async def test_runs_conditions_and_filters(store: Store) -> None:
    spec = RunSpec(flow=FlowSpec(name="f"), flow_id="flow_x")
    first = await store.create_run("org", spec, "run_1")
    second = await store.create_run("org", RunSpec(flow=FlowSpec(name="g"), flow_id="flow_y"))
    with pytest.raises(APIProblem):
        await store.create_run("org", spec, "run_1")
    await store.set_run_condition(("org", "run_1"), Condition.RUNNING)
    done = await store.set_run_condition(("org", "run_1"), "Cancelled", "stop", "UserCancelled")
    late = await store.set_run_condition(("org", "run_1"), Condition.SUCCEEDED)
    assert late == done and done.spec.killed_at is not None
    assert [c.condition for c in late.status.conditions] == ["Pending", "Running", "Cancelled"]
    assert late.status.conditions[-1].reason == "UserCancelled"
    by_flow, _ = await store.list_runs("org", 10, flow_id="flow_y")
    assert [r.run_id for r in by_flow] == [second.run_id]
    cancelled, _ = await store.list_runs("org", 10, condition="Cancelled")
    assert [r.run_id for r in cancelled] == [first.run_id]
    every, _ = await store.list_runs("org", 10)
    assert len(every) == 2
    assert [r.run_id for r in await store.list_active_runs()] == [second.run_id]
    await store.set_run_log(("org", "run_1"), "engine")
    assert (await store.get_run("run_1", "org")).status.log == "engine"
    with pytest.raises(APIProblem) as busy:
        await store.delete_run("org", second.run_id)
    assert busy.value.status == 409
    await store.delete_run("org", "run_1")
    with pytest.raises(APIProblem) as gone:
        await store.get_run("run_1", "org")
    assert gone.value.code == "RUN_NOT_FOUND"


async def test_idempotency_records(store: Store) -> None:
    body = b'{"ok": true, "raw": "\x00\xff"}'
    assert await store.get_idempotent("org", "k", "POST", "/v1/runs") is None
    await store.put_idempotent("org", "k", "POST", "/v1/runs", ("h1", 201, body))
    assert await store.get_idempotent("org", "k", "POST", "/v1/runs") == ("h1", 201, body)
    await store.put_idempotent("org", "k", "POST", "/v1/runs", ("h2", 200, b"{}"))
    assert await store.get_idempotent("org", "k", "POST", "/v1/runs") == ("h2", 200, b"{}")
    assert await store.get_idempotent("other", "k", "POST", "/v1/runs") is None
    await store.forget_idempotent("org", "k", "POST", "/v1/runs")
    assert await store.get_idempotent("org", "k", "POST", "/v1/runs") is None
