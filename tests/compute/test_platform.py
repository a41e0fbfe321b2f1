"""Seed 002's escape hatches and account calls, sync and async, on the local server."""

from __future__ import annotations

from pathlib import Path

import pytest

import vi_flow
from vi_flow import NotImplementedByProviderError
from vi_flow.compute._platform import DEV_TASK_NAME


def test_sync_escape_hatches_and_account_calls() -> None:
    with vi_flow.Client() as client:
        instances = client.provider_port().request("GET", "/instances")
        assert instances["items"], "the local machine offers at least a CPU instance"
        assert client.get_provider_init() is client
        assert client.get_ssh_key_manager() is client.ssh_keys
        assert client.get_user("me") == {"id": "admin", "organizationId": "org_default"}
        assert client.get_user("somebody-else") is None
        assert client.get_user_teammates("me") == []
        assert client.list_projects() == [{"id": "org_default", "name": "org_default"}]
        with pytest.raises(NotImplementedByProviderError, match=r"task_x.*8888"):
            client.get_ssh_tunnel_manager().open_tunnel("task_x", 8888)
        assert client.volumes() == []


def test_sync_dev_context_is_reused_and_stopped(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "hello.txt").write_text("hi from the laptop\n")
    with vi_flow.Client() as client:
        with client.dev_context() as dev:
            assert dev.name == DEV_TASK_NAME and dev.status == "running"
            remote = client.get_remote_operations()
            remote.upload(dev.task_id, tmp_path / "src", "code")
            result = remote.execute_command(dev.task_id, "cat code/hello.txt")
            assert (result.exit_status, result.stdout) == (0, "hi from the laptop\n")
        with client.dev_context(auto_stop=True) as again:
            assert again.task_id == dev.task_id
        assert client.get_task(dev.task_id).wait(timeout=30) == "cancelled"


@pytest.mark.anyio
async def test_async_escape_hatches() -> None:
    async with vi_flow.AsyncClient() as client:
        port = client.provider_port()
        assert port is client.http
        assert (await client.list_projects())[0]["id"] == "org_default"
        async with client.dev_context(auto_stop=True) as dev:
            result = await client.get_remote_operations().execute_command(
                dev.task_id, ["echo", "; rm -rf ~"]
            )
            assert result.stdout == "; rm -rf ~\n"
        assert await dev.wait(timeout=30) == "cancelled"
