"""Seeds 001 and 003 (Vi SDK runs; 001 is the same page as 003, flattened): every example.

Only the import lines changed. ``wait_for_run`` keeps its 30 s poll interval: the seed run
has already finished, so it returns on the first look.
"""

from __future__ import annotations

import pytest

import vi_flow


def test_list_basic(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Basic listing
    runs = client.runs.list()

    for run in runs.items:
        print(f"Run: {run.run_id}")
        print(f"Created: {run.metadata.time_created}")

    assert "Run: run_abc123\nCreated: 17" in capsys.readouterr().out


def test_list_custom_pagination(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # With custom pagination
    from vi_flow import PaginationParams

    runs = client.runs.list(pagination=PaginationParams(page_size=50))

    for run in runs.items:
        print(f"{run.run_id}")

    assert capsys.readouterr().out == "run_abc123\n"


def test_list_dict_pagination(client: vi_flow.Client) -> None:
    # Using dict for pagination
    runs = client.runs.list(pagination={"page_size": 50})
    assert [r.run_id for r in runs.items] == ["run_abc123"]


def test_iterate_pages_with_status(
    client: vi_flow.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    # Iterate all pages with status
    for page in client.runs.list():
        for run in page.items:
            status = "Unknown"
            if run.status.conditions:
                status = run.status.conditions[-1].condition.value
            print(f"{run.run_id}: {status}")

    assert capsys.readouterr().out == "run_abc123: Succeeded\n"


def test_find_completed(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Find completed runs
    completed_runs = []

    for page in client.runs.list():
        for run in page.items:
            if run.status.conditions:
                latest = run.status.conditions[-1]
                if latest.condition.value == "Succeeded":
                    completed_runs.append(run)

    print(f"Found {len(completed_runs)} completed runs")
    assert capsys.readouterr().out == "Found 1 completed runs\n"


def test_collect_all(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Collect all runs
    all_runs = list(client.runs.list().all_items())
    print(f"Total runs: {len(all_runs)}")
    assert capsys.readouterr().out == "Total runs: 1\n"


def test_get_basic(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Basic usage
    run = client.runs.get("run_abc123")

    print(f"Run ID: {run.run_id}")
    print(f"Organization: {run.organization_id}")
    assert capsys.readouterr().out == "Run ID: run_abc123\nOrganization: org_default\n"


def test_check_status(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Check run status
    run = client.runs.get("run_abc123")

    if run.status.conditions:
        latest = run.status.conditions[-1]
        print(f"Status: {latest.condition.value}")
        print(f"Message: {latest.message}")

    assert capsys.readouterr().out.startswith("Status: Succeeded\nMessage: ")


def test_flow_configuration(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Access flow configuration
    run = client.runs.get("run_abc123")

    print(f"Flow Name: {run.spec.flow.name}")
    print(f"Schema: {run.spec.flow.schema}")
    print(f"Blocks: {len(run.spec.flow.blocks)}")

    if run.spec.training_project:
        print(f"Training Dataset: {run.spec.training_project}")

    out = capsys.readouterr().out
    assert out.startswith("Flow Name: Seed training flow\nSchema: vi_flow/v1\nBlocks: 2\n")
    assert "Training Dataset: dataset_abc" in out


def test_info(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Display detailed information
    run = client.runs.get("run_abc123")
    run.info()  # Prints formatted run summary
    out = capsys.readouterr().out
    assert "run_abc123" in out and "Succeeded" in out


def test_wait_for_run(client: vi_flow.Client, capsys: pytest.CaptureFixture[str]) -> None:
    # Wait for run completion
    import time

    def wait_for_run(run_id: str, max_wait: int = 3600, check_interval: int = 30) -> str:
        """Wait for a run to complete."""
        start_time = time.time()

        while time.time() - start_time < max_wait:
            run = client.runs.get(run_id)

            if run.status.conditions:
                latest = run.status.conditions[-1]
                status = latest.condition.value

                print(f"Status: {status}")

                if status in ["Succeeded", "Failed", "Error", "Cancelled"]:
                    return status

            time.sleep(check_interval)

        raise TimeoutError("Run did not complete in time")

    status = wait_for_run("run_abc123")
    if status == "Succeeded":
        model = client.get_model("run_abc123")

    assert capsys.readouterr().out == "Status: Succeeded\n"
    assert model is not None


@pytest.mark.anyio
async def test_async_runs_examples(
    aclient: vi_flow.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client = aclient
    runs = await client.runs.list(pagination={"page_size": 50})
    for run in runs.items:
        print(f"{run.run_id}")
    async for page in client.runs.list():
        for run in page.items:
            if run.status.conditions:
                print(f"{run.run_id}: {run.status.conditions[-1].condition.value}")
    all_runs = [run async for run in client.runs.list().all_items()]
    print(f"Total runs: {len(all_runs)}")
    run = await client.runs.get("run_abc123")
    print(f"Flow Name: {run.spec.flow.name}")
    run.info()
    model = await client.get_model("run_abc123")
    out = capsys.readouterr().out
    assert (
        "run_abc123\nrun_abc123: Succeeded\nTotal runs: 1\nFlow Name: Seed training flow\n" in out
    )
    assert model is not None
