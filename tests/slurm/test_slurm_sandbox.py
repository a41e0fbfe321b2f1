"""On Slurm, a job sees its own task directory and volumes, not another organization's.

Every job of this one-host cluster runs as the one account the server submits as (root
here), so file modes cannot keep organizations apart: the batch script runs the command
in a bubblewrap sandbox on the node, and shells (``srun --jobid``) enter the same one.
Organization B's job holds a secret file and a secret environment value; organization
A's job and A's shell try to read them, and every other task's directory, and fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import vi_flow
from tests import keyrings
from vi_flow.models.tasks import TaskStatus

pytestmark = [pytest.mark.slurm, pytest.mark.anyio]

SECRET = "b-secret-token-5e1f"

# Prints LEAK for every secret it could reach; ends with "probed".
_PROBE = r"""
tasks="$VI_FLOW_WORKSPACE/../.."
ls "$tasks" 2>/dev/null | grep -vx "$VI_FLOW_TASK_ID" | sed 's/^/LEAK task /'
for p in "$tasks/{victim}/workspace/secret.txt" "$tasks/{victim}/.vi-flow-env" {volume}/secret.txt; do
  if cat "$p" >/dev/null 2>&1; then echo "LEAK $p"; fi
done
grep -l {secret} /proc/[0-9]*/environ 2>/dev/null | sed 's/^/LEAK environ /'
echo probed
"""


@pytest.fixture
async def client(slurm_server: object) -> AsyncIterator[vi_flow.AsyncClient]:
    async with vi_flow.AsyncClient() as c:
        yield c


async def _organization_b(client: Any) -> vi_flow.AsyncClient:
    org = await client.http.request("POST", "/organizations", json={"name": "b"})
    token = await client.tokens.create("b", organization_id=org["organizationId"])
    base_url = (await client.http.connection.endpoint()).base_url
    return vi_flow.AsyncClient(base_url=base_url, api_key=token.token)


async def test_a_job_and_a_shell_reach_nothing_of_another_organization(client: Any) -> None:
    async with await _organization_b(client) as b:
        volume = await b.create_volume(1, name="theirs", interface="file")
        assert volume.path  # where the volume lives on the cluster's shared storage
        victim = await b.run(
            f"echo {SECRET} > secret.txt; echo {SECRET} > data/secret.txt; sleep 60",
            env={"HF_TOKEN": SECRET},
            mounts={"/data": "volume://theirs"},
            wait=True,
        )
        probe = _PROBE.format(victim=victim.task_id, volume=volume.path, secret=SECRET)
        try:
            task = await client.run(probe)
            assert await task.wait(timeout=20) == TaskStatus.COMPLETED
            out = await task.logs()
            assert "probed" in out, out
            assert [line for line in out.splitlines() if "LEAK" in line] == []
            holder = await client.run("sleep 60", wait=True)
            shell = await client.shell(holder.task_id, command=probe)
            assert "probed" in shell.stdout, shell.stderr
            assert [line for line in shell.stdout.splitlines() if "LEAK" in line] == []
            await client.cancel(holder.task_id)
        finally:
            await b.cancel(victim.task_id)


@keyrings.x86_64_only
async def test_a_job_and_a_shell_reach_no_keyring(client: Any) -> None:
    # QA AI found it on the local provider: the keyrings are the kernel's, per user, and
    # every job runs as the one account the server submits as.
    with keyrings.stored_key() as name:
        task = await client.run(keyrings.probe(name))
        assert await task.wait(timeout=30) == TaskStatus.COMPLETED
        out = await task.logs()
        assert keyrings.refused(out), out
        holder = await client.run("sleep 60", wait=True)
        try:
            shell = await client.shell(holder.task_id, command=keyrings.probe(name))
        finally:
            await client.cancel(holder.task_id)
        assert keyrings.refused(shell.stdout), shell


async def test_a_tasks_environment_is_loaded_inside_its_sandbox(client: Any) -> None:
    # Found by QA: the batch script sourced the task's env before it ran bubblewrap, so
    # a PATH naming a folder of the task's own put its `bwrap` in charge, outside the
    # sandbox, as root (it read the admin token). And CUDA_VISIBLE_DEVICES of the env
    # took the place of what Slurm gave the job.
    async with await _organization_b(client) as b:
        tools = (await b.create_volume(1, name="tools", interface="file")).path
        fake = "printf '#!/bin/sh\\necho ESCAPED\\n' > tools/bwrap; chmod +x tools/bwrap"
        made = await b.run(fake, mounts={"/tools": "volume://tools"})
        assert await made.wait(timeout=30) == TaskStatus.COMPLETED
        env = {"PATH": f"{tools}:/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "MINE": "x"}
        task = await b.run(
            'echo "inside $MINE $PATH"; echo "gpus=${CUDA_VISIBLE_DEVICES-none}"', env=env
        )
        assert await task.wait(timeout=30) == TaskStatus.COMPLETED
        out = await task.logs()
        assert "ESCAPED" not in out, out
        assert f"inside x {tools}:/usr/bin:/bin" in out  # the env itself still applies
        assert "gpus=none" in out, out  # a CPU job: Slurm gave it no GPUs


async def test_a_shells_task_environment_is_loaded_inside_the_sandbox(client: Any) -> None:
    # Found by QA (on the local provider, the same code here): a shell's process got the
    # task's env, so its PATH chose the `srun` the server ran on its own host, outside
    # every sandbox, and the node's `bwrap` (LD_PRELOAD: the same).
    async with await _organization_b(client) as b:
        tools = (await b.create_volume(1, name="shell-tools", interface="file")).path
        fake = "; ".join(
            f"printf '#!/bin/sh\\necho ESCAPED {name}\\n' > tools/{name}; chmod +x tools/{name}"
            for name in ("srun", "bwrap")
        )
        made = await b.run(fake, mounts={"/tools": "volume://shell-tools"})
        assert await made.wait(timeout=30) == TaskStatus.COMPLETED
        env = {"PATH": f"{tools}:/usr/bin:/bin", "MINE": "x y"}
        task = await b.run("sleep 60", env=env, wait=True)
        try:
            shell = await b.shell(task.task_id, command='echo "inside $MINE $PATH"', echo=False)
        finally:
            await b.cancel(task.task_id)
        assert "ESCAPED" not in shell.stdout + shell.stderr, shell
        assert shell.stdout == f"inside x y {tools}:/usr/bin:/bin\n", shell.stderr


async def test_a_volume_mounted_into_a_running_job_reaches_the_shells_opened_after(
    client: Any,
) -> None:
    # It answered "mounted" and a shell found a dangling link: the shells' sandbox had
    # the job's volumes of submit time only (found by QA)
    volume = await client.create_volume(1, name="late", interface="file")
    mark = anyio.Path(volume.path, "mark")
    await mark.write_text("here\n")  # on the cluster's shared storage
    task = await client.run("sleep 30", wait=True)
    try:
        assert await client.mount_volume("late", task.task_id)
        shown = await client.shell(task.task_id, command="cat volumes/late/mark", echo=False)
        assert shown.exit_status == 0 and shown.stdout == "here\n", shown.stderr
    finally:
        await client.cancel(task.task_id)
