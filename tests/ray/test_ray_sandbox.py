"""On Ray, a job sees its own task directory and volumes, not another organization's.

Every job runs as the Ray workers' one account, so the entry point runs the command in a
bubblewrap sandbox on the node. Organization B's job holds a secret file, a secret
environment value and a volume; organization A's job tries to read them and fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import vi_flow
from tests import keyrings
from vi_flow.models.tasks import TaskStatus

pytestmark = [pytest.mark.ray, pytest.mark.anyio]

SECRET = "b-ray-secret-93c1"

# Prints LEAK for every secret it could reach; ends with "probed".
_PROBE = r"""
tasks="$VI_FLOW_WORKSPACE/../.."
ls "$tasks" 2>/dev/null | grep -vx "$VI_FLOW_TASK_ID" | sed 's/^/LEAK task /'
for p in "$tasks/{victim}/workspace/secret.txt" {volume}/secret.txt; do
  if cat "$p" >/dev/null 2>&1; then echo "LEAK $p"; fi
done
grep -l {secret} /proc/[0-9]*/environ 2>/dev/null | sed 's/^/LEAK environ /'
echo probed
"""


@pytest.fixture
async def client(ray_server: object) -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as c:
        yield c


async def test_a_job_reaches_nothing_of_another_organization(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = await client.http.request("POST", "/organizations", json={"name": "b"})
    token = await client.tokens.create("b", organization_id=org["organizationId"])
    base_url = (await client.http.connection.endpoint()).base_url
    # Found by QA: without Ray's token authentication any task can submit a Ray job of
    # its own through the dashboard, outside the sandbox. With two organizations, such a
    # server runs no tasks until its operator says every organization trusts the others.
    with pytest.raises(vi_flow.APIStatusError) as refused:
        await client.run("true")
    assert refused.value.status_code == 503 and refused.value.code == "SANDBOX_UNAVAILABLE"
    assert "token authentication" in refused.value.message
    monkeypatch.setenv("VI_FLOW_ALLOW_UNSANDBOXED", "1")  # the sandbox itself is checked here
    async with vi_flow.AsyncClient(base_url=base_url, api_key=token.token) as b:
        volume = await b.create_volume(1, name="theirs", interface="file")
        assert volume.path
        victim = await b.run(
            f"echo {SECRET} > secret.txt; echo {SECRET} > data/secret.txt; sleep 60",
            env={"HF_TOKEN": SECRET},
            mounts={"/data": "volume://theirs"},
            wait=True,
        )
        try:
            probe = _PROBE.format(victim=victim.task_id, volume=volume.path, secret=SECRET)
            task = await client.run(probe)
            assert await task.wait(timeout=30) == TaskStatus.COMPLETED
            out = await task.logs()
            assert "probed" in out, out
            assert [line for line in out.splitlines() if "LEAK" in line] == []
        finally:
            await b.cancel(victim.task_id)


@keyrings.x86_64_only
async def test_a_job_reaches_no_keyring(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # QA AI found it on the local provider: the keyrings are the kernel's, per user, and
    # every job runs as the Ray workers' one account.
    monkeypatch.setenv("VI_FLOW_ALLOW_UNSANDBOXED", "1")  # an organization "b" may exist
    with keyrings.stored_key() as name:
        task = await client.run(keyrings.probe(name))
        assert await task.wait(timeout=30) == TaskStatus.COMPLETED
        out = await task.logs()
        assert keyrings.refused(out), out
