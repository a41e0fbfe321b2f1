"""Seed 000 (Vi SDK flows): every example as written, sync, then translated to async.

Only the import lines changed (``vi.api...`` -> ``vi_flow``). Each test checks what the
example printed, since that is what its user would look at.
"""

from __future__ import annotations

import builtins

import pytest

import vi_flow


def test_list_basic(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Basic listing
    flows = client.flows.list()

    for flow in flows.items:
        print(f"Flow: {flow.flow_id}")
        print(f"Created: {flow.metadata.time_created}")

    out = capsys.readouterr().out
    assert "Flow: flow_abc123" in out and "Created: 17" in out


def test_list_pages_with_details(
    client: vi_flow.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    # Iterate through all pages with details
    for page in client.flows.list():
        for flow in page.items:
            print(f"Flow: {flow.flow_id}")
            print(f"  Name: {flow.spec.name}")
            print(f"  Created: {flow.metadata.time_created}")
            print(f"  Blocks: {len(flow.spec.blocks)}")

    out = capsys.readouterr().out
    assert "  Name: Seed training flow" in out and "  Blocks: 2" in out


def test_list_recent(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Find recent flows (last 7 days)
    from datetime import datetime, timedelta

    cutoff = (datetime.now() - timedelta(days=7)).timestamp() * 1000

    recent_flows = []
    for page in client.flows.list():
        for flow in page.items:
            if flow.metadata.time_created > cutoff:
                recent_flows.append(flow)

    print(f"Found {len(recent_flows)} recent flows")
    assert capsys.readouterr().out == "Found 1 recent flows\n"


def test_collect_all(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Collect all flows
    all_flows = list(client.flows.list().all_items())
    print(f"Total flows: {len(all_flows)}")
    assert capsys.readouterr().out == "Total flows: 1\n"


def test_get_basic(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Basic usage
    flow = client.flows.get("flow_abc123")

    print(f"Flow ID: {flow.flow_id}")
    print(f"Name: {flow.spec.name}")
    print(f"Blocks: {len(flow.spec.blocks)}")
    assert capsys.readouterr().out == "Flow ID: flow_abc123\nName: Seed training flow\nBlocks: 2\n"


def test_get_info(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Display detailed information
    flow = client.flows.get("flow_abc123")
    flow.info()  # Prints formatted flow summary
    out = capsys.readouterr().out
    assert "flow_abc123" in out and "Seed training flow" in out and "template" in out


def test_get_blocks(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Inspect flow blocks
    flow = client.flows.get("flow_abc123")

    print(f"Flow: {flow.spec.name}")
    print(f"Blocks ({len(flow.spec.blocks)}):")

    for i, block in enumerate(flow.spec.blocks, 1):
        print(f"  {i}. {block.block}")
        if block.settings:
            for key, value in list(block.settings.items())[:3]:
                print(f"      {key}: {value}")

    out = capsys.readouterr().out
    # A template block has two settings (an unknown one is refused at create, issue 12)
    assert "  1. template\n      template: data\n      format: text\n  2. template" in out


def test_get_settings(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Access flow settings
    flow = client.flows.get("flow_abc123")

    # Global settings
    print("Global Settings:")
    for key, value in flow.spec.settings.items():
        print(f"  {key}: {value}")

    # Tolerations
    print("\nTolerations:")
    for key, values in flow.spec.tolerations.items():
        print(f"  {key}: {values}")

    out = capsys.readouterr().out
    assert "  epochs: 3\n  learning_rate: 0.001" in out and "  gpu: ['a100', 'h100']" in out


def test_get_properties(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Access specific properties
    flow = client.flows.get("flow_abc123")

    print(f"Organization: {flow.organization_id}")
    print(f"Schema: {flow.spec.schema}")
    print(f"ETag: {flow.etag}")

    if flow.spec.training_project:
        print(f"Training Project: {flow.spec.training_project}")

    out = capsys.readouterr().out
    assert "Organization: org_default\nSchema: vi_flow/v1\nETag: " in out
    assert "Training Project: dataset_abc" in out


def test_delete(client: vi_flow.Client) -> None:
    # Delete a flow
    deleted = client.flows.delete("flow_abc123")
    assert deleted.flow_id == "flow_abc123"
    with pytest.raises(vi_flow.FlowNotFoundError):
        client.flows.get("flow_abc123")


def test_delete_with_confirmation(
    client: vi_flow.Client, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builtins, "input", lambda prompt: "yes")
    # Delete with confirmation
    flow = client.flows.get("flow_abc123")
    print(f"About to delete flow: {flow.spec.name}")
    print(f"  Blocks: {len(flow.spec.blocks)}")

    confirm = input("Delete? (yes/no): ")
    if confirm.lower() == "yes":
        client.flows.delete("flow_abc123")
        print("Deleted.")

    assert capsys.readouterr().out.endswith("Deleted.\n")
    assert client.flows.list().items == []


# The same examples on AsyncClient.

pytestmark_async = pytest.mark.anyio


@pytest.mark.anyio
async def test_async_list_and_pages(
    aclient: vi_flow.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client = aclient
    flows = await client.flows.list()
    for flow in flows.items:
        print(f"Flow: {flow.flow_id}")
        print(f"Created: {flow.metadata.time_created}")
    async for page in client.flows.list():
        for flow in page.items:
            print(f"  Name: {flow.spec.name}")
            print(f"  Blocks: {len(flow.spec.blocks)}")
    all_flows = [flow async for flow in client.flows.list().all_items()]
    print(f"Total flows: {len(all_flows)}")
    out = capsys.readouterr().out
    assert "Flow: flow_abc123" in out and "  Blocks: 2" in out and "Total flows: 1" in out


@pytest.mark.anyio
async def test_async_get_and_delete(
    aclient: vi_flow.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client = aclient
    flow = await client.flows.get("flow_abc123")
    print(f"Flow ID: {flow.flow_id}")
    print(f"Schema: {flow.spec.schema}")
    for i, block in enumerate(flow.spec.blocks, 1):
        print(f"  {i}. {block.block}")
    for key, values in flow.spec.tolerations.items():
        print(f"  {key}: {values}")
    flow.info()
    deleted = await client.flows.delete("flow_abc123")
    out = capsys.readouterr().out
    assert "Flow ID: flow_abc123\nSchema: vi_flow/v1\n  1. template\n  2. template\n  gpu:" in out
    assert deleted.deleted
