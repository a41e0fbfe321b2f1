"""The Slurm compute provider on the real one-host cluster, through the provider protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

import vi_flow.server.providers.slurm.rest
from tests.providers_kit import Updates
from vi_flow.models.tasks import TaskConfig, TaskStatus
from vi_flow.server.providers.base import (
    CapacityError,
    ComputeProvider,
    LaunchSpec,
    ProviderUnavailable,
    RunningTask,
    UnsupportedOperation,
)
from vi_flow.server.providers.slurm import SlurmCredentialsError, SlurmProvider

from .conftest import SlurmCluster, launch, settings_for

pytestmark = [pytest.mark.slurm, pytest.mark.anyio]


async def test_is_a_compute_provider(provider: SlurmProvider) -> None:
    assert isinstance(provider, ComputeProvider)
    assert provider.name == "slurm"


async def test_submit_runs_and_completes(provider: SlurmProvider, updates: Updates) -> None:
    spec = await launch(provider, "task_ok", "echo hello from slurm; pwd")
    first = updates.of("task_ok")[0]
    assert first.status == TaskStatus.PENDING and first.provider_id
    running = await updates.wait("task_ok", TaskStatus.RUNNING)
    assert running.reason == "Started" and running.provider_id == first.provider_id
    done = await updates.wait("task_ok", TaskStatus.COMPLETED, TaskStatus.FAILED)
    assert (done.status, done.exit_code) == (TaskStatus.COMPLETED, 0)
    assert spec.paths.stdout.read_text() == f"hello from slurm\n{spec.paths.workdir}\n"
    assert not (spec.paths.root / ".vi-flow-env").exists()


async def test_the_command_starts_in_its_working_dir(
    provider: SlurmProvider, updates: Updates
) -> None:
    # QA AA: working_dir was the local provider's only; on Slurm the command started in
    # the workspace. HOME stays the workspace, as everywhere.
    spec = await launch(provider, "task_wd", 'pwd; echo "$HOME"', working_dir="sub/dir")
    done = await updates.wait("task_wd", TaskStatus.COMPLETED, TaskStatus.FAILED)
    assert (done.status, done.exit_code) == (TaskStatus.COMPLETED, 0)
    workdir = spec.paths.workdir
    assert spec.paths.stdout.read_text() == f"{workdir / 'sub' / 'dir'}\n{workdir}\n"


async def test_a_long_command_within_the_documented_limits_runs(
    provider: SlurmProvider, updates: Updates
) -> None:
    # QA AA: the batch script ran the command as one `bash -c` argument, which Linux
    # bounds at 128 KiB: eight arguments of 120,000 bytes (accepted: each < 128 KiB, all
    # < 1 MiB) failed at launch, "Argument list too long"
    spec = await launch(provider, "task_long", "true")  # for its paths and placement
    await updates.wait("task_long", TaskStatus.COMPLETED)
    count = 'for a; do printf "%s" "$a" | wc -c; done'
    argv = ["/bin/sh", "-c", count, "sh", *["x" * 120_000 for _ in range(8)]]
    await provider.submit(attrs.evolve(spec, task_id="task_long2", argv=argv,
                                       paths=provider.task_paths("task_long2")))  # fmt: skip
    done = await updates.wait("task_long2", TaskStatus.COMPLETED, TaskStatus.FAILED)
    stdout = provider.task_paths("task_long2").stdout.read_text()
    assert (done.status, stdout.split()) == (TaskStatus.COMPLETED, ["120000"] * 8), done


async def test_a_command_that_cannot_be_found_ends_127_in_the_shells_words(
    provider: SlurmProvider, updates: Updates
) -> None:
    # as docs/tasks.md says: the job's shell reports it (the local provider: StartFailed)
    spec = await launch(provider, "task_nf", "true")
    await updates.wait("task_nf", TaskStatus.COMPLETED)
    await provider.submit(attrs.evolve(spec, task_id="task_nf2", argv=["/nonexistent/prog"],
                                       paths=provider.task_paths("task_nf2")))  # fmt: skip
    done = await updates.wait("task_nf2", TaskStatus.COMPLETED, TaskStatus.FAILED)
    assert (done.status, done.exit_code, done.reason) == (TaskStatus.FAILED, 127, "NonZeroExit")
    stderr = provider.task_paths("task_nf2").stderr.read_text()
    assert "/nonexistent/prog" in stderr and "No such file" in stderr, stderr


async def test_exit_3_fails_with_code_3(provider: SlurmProvider, updates: Updates) -> None:
    spec = await launch(provider, "task_exit3", "echo bad >&2; exit 3")
    done = await updates.wait("task_exit3", TaskStatus.COMPLETED, TaskStatus.FAILED)
    assert (done.status, done.exit_code, done.reason) == (TaskStatus.FAILED, 3, "NonZeroExit")
    assert spec.paths.stderr.read_text() == "bad\n"


async def test_two_h100_are_visible(provider: SlurmProvider, updates: Updates) -> None:
    spec = await launch(provider, "task_gpu", "echo $CUDA_VISIBLE_DEVICES; sleep 0.5", gpu="h100:2")
    assert spec.placement.instance_type == "2xh100"
    done = await updates.wait("task_gpu", TaskStatus.COMPLETED, TaskStatus.FAILED)
    assert done.status == TaskStatus.COMPLETED
    assert len(spec.paths.stdout.read_text().strip().split(",")) == 2
    running = await updates.wait("task_gpu", TaskStatus.RUNNING)
    assert running.gpu_ids is not None and len(running.gpu_ids) == 2


async def test_cancel_running_and_pending(provider: SlurmProvider, updates: Updates) -> None:
    await launch(provider, "task_big", "sleep 60", gpu="h100:4")
    await updates.wait("task_big", TaskStatus.RUNNING)
    await launch(provider, "task_queued", "sleep 60", gpu="h100:1")
    await asyncio.sleep(0.3)
    assert [u.status for u in updates.of("task_queued")] == [TaskStatus.PENDING]
    await provider.cancel("task_queued", 1.0)
    queued = await updates.wait("task_queued", TaskStatus.CANCELLED)
    assert queued.reason == "Cancelled" and queued.exit_code is None
    assert TaskStatus.RUNNING not in [u.status for u in updates.of("task_queued")]
    await provider.cancel("task_big", 1.0)
    big = updates.of("task_big")[-1]
    assert (big.status, big.reason) == (TaskStatus.CANCELLED, "Cancelled")
    await provider.cancel("task_big", 1.0)  # already finished: a no-op


async def test_scancel_outside_is_cancelled_with_reason(
    provider: SlurmProvider, updates: Updates, slurm_cluster: SlurmCluster
) -> None:
    await launch(provider, "task_scancel", "sleep 60")
    running = await updates.wait("task_scancel", TaskStatus.RUNNING)
    slurm_cluster.run("scancel", str(running.provider_id))
    done = await updates.wait("task_scancel", TaskStatus.CANCELLED, TaskStatus.FAILED)
    assert (done.status, done.reason) == (TaskStatus.CANCELLED, "CancelledOutsideViFlow")
    assert done.message and "scancel" in done.message


async def test_exec_prefix_runs_inside_the_job(provider: SlurmProvider, updates: Updates) -> None:
    spec = await launch(provider, "task_exec", "sleep 30", gpu="h100:1")
    running = await updates.wait("task_exec", TaskStatus.RUNNING)
    prefix = provider.exec_prefix("task_exec", running.provider_id)
    assert prefix[prefix.index("srun") :][:3] == [
        "srun",
        f"--jobid={running.provider_id}",
        "--overlap",
    ]
    done = await asyncio.to_thread(
        subprocess.run,
        [*prefix, "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES $(pwd)"; exit 4'],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 4
    assert done.stdout.split() == [
        ",".join(map(str, running.gpu_ids or [])),
        str(spec.paths.workdir),
    ]


async def test_secrets_go_through_a_private_file(
    provider: SlurmProvider, updates: Updates, slurm_cluster: SlurmCluster
) -> None:
    secret = f"tok-{time.time_ns()}"
    spec = await launch(
        provider, "task_env", 'echo "$HF_TOKEN $VI_FLOW_TASK_ID"', {"HF_TOKEN": secret}
    )
    await updates.wait("task_env", TaskStatus.COMPLETED)
    assert spec.paths.stdout.read_text() == f"{secret} task_env\n"
    state = slurm_cluster.work / "slurm" / "state"
    found = subprocess.run(["grep", "-rl", secret, str(state)], capture_output=True, text=True)
    assert found.stdout == ""


async def test_instances_and_placement(provider: SlurmProvider) -> None:
    catalog = {i.instance_type: i for i in await provider.instances()}
    assert {"cpu", "h100", "2xh100", "4xh100"} <= set(catalog)
    assert catalog["4xh100"].gpu_count == 4 and catalog["4xh100"].gpu_memory_gb == 80
    placement = await provider.place(TaskConfig(command="true", gpu="h100:2", cpus=1))
    assert (placement.gpu_type, placement.gpu_count, placement.cpus) == ("h100", 2, 1)
    any_gpu = await provider.place(TaskConfig(command="true", gpu="gpu:40gb"))
    assert any_gpu.gpu_type == "h100"


async def test_unknown_gpu_type_names_what_exists(provider: SlurmProvider) -> None:
    with pytest.raises(CapacityError, match="h100") as caught:
        await provider.place(TaskConfig(command="true", gpu="a100"))
    assert "'a100'" in caught.value.message
    with pytest.raises(CapacityError, match="up to 4 per node"):
        await provider.place(TaskConfig(command="true", gpu="h100:8"))
    with pytest.raises(CapacityError, match="known instance types"):
        await provider.place(TaskConfig(command="true", instance_type="8xh100"))


async def test_reservations_are_listed_not_created(
    provider: SlurmProvider, slurm_cluster: SlurmCluster
) -> None:
    from vi_flow.models.tasks import ReservationRequest

    slurm_cluster.run(
        "scontrol",
        "create",
        "reservation",
        "reservationname=vi_res",
        "starttime=now+1hour",
        "duration=10",
        "users=root",
        "nodes=ALL",
        "flags=ignore_jobs",
    )
    try:
        found = {r.reservation_id: r for r in await provider.list_reservations()}
        assert found["vi_res"].status == "scheduled"
        assert found["vi_res"].end_time - found["vi_res"].start_time == 600_000
    finally:
        slurm_cluster.run("scontrol", "delete", "reservation=vi_res")
    with pytest.raises(UnsupportedOperation):
        await provider.create_reservation(ReservationRequest(gpu="h100"))


async def test_rest_down_is_unavailable_and_nothing_is_queued(
    slurm_cluster: SlurmCluster, tmp_path: Path, updates: Updates
) -> None:
    down = SlurmProvider(
        settings_for(slurm_cluster, tmp_path, url="http://127.0.0.1:9", max_retries=0)
    )
    await down.start(updates)
    try:
        with pytest.raises(ProviderUnavailable, match=r"127\.0\.0\.1:9"):
            await down.place(TaskConfig(command="true"))
        with pytest.raises(ProviderUnavailable, match=r"127\.0\.0\.1:9"):
            await down.submit(_spec(down, "task_down"))
    finally:
        await down.close()
    assert updates.items == []
    assert not (down.task_paths("task_down").root / ".vi-flow-env").exists()


async def test_bad_token_names_the_token_file(
    slurm_cluster: SlurmCluster, tmp_path: Path, updates: Updates
) -> None:
    token_file = tmp_path / "bad-token"
    token_file.write_text("not-a-jwt")
    bad = SlurmProvider(settings_for(slurm_cluster, tmp_path, token_file=token_file))
    await bad.start(updates)
    try:
        with pytest.raises(SlurmCredentialsError, match=str(token_file)):
            await bad.instances()
    finally:
        await bad.close()


async def test_a_partition_the_cluster_lacks_is_the_servers_fault_not_the_users(
    slurm_cluster: SlurmCluster, tmp_path: Path, updates: Updates, caplog: pytest.LogCaptureFixture
) -> None:
    # QA AA: `serve --slurm-partition bogus` started without a word, then answered every
    # task 422 (CapacityError), as if the user's request were at fault
    caplog.set_level(logging.WARNING, logger="vi_flow")
    provider = SlurmProvider(settings_for(slurm_cluster, tmp_path, partition="bogus"))
    await provider.start(updates)
    try:
        assert "'bogus'" in caplog.text and "the cluster has 'debug'" in caplog.text
        with pytest.raises(ProviderUnavailable, match="--slurm-partition") as refused:
            await launch(provider, "task_bp", "true")
        assert refused.value.status == 503 and "Invalid partition name" in refused.value.message
    finally:
        await provider.close()


async def test_polls_that_fail_are_warned_of_once_and_their_end_said(
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    updates: Updates,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # QA AA: the token expired while a task ran; its job ended and the task read
    # `running` for good, the log silent (a poll's failure was a debug line)
    monkeypatch.setattr(vi_flow.server.providers.slurm.rest, "_TOKEN_CACHE_S", 0.0)
    token_file = tmp_path / "token"
    token_file.write_text(slurm_cluster.token_file.read_text())
    provider = SlurmProvider(settings_for(slurm_cluster, tmp_path, token_file=token_file))
    await provider.start(updates)
    try:
        await launch(provider, "task_tok", "sleep 1.5")
        await updates.wait("task_tok", TaskStatus.RUNNING)
        caplog.set_level(logging.INFO, logger="vi_flow")
        token_file.write_text("not-a-jwt")  # the token it reads again gets refused
        await asyncio.sleep(3)  # the job ends meanwhile; many polls fail
        assert updates.of("task_tok")[-1].status == TaskStatus.RUNNING
        warned = [r for r in caplog.records if "cannot poll Slurm" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING, caplog.text
        assert "keep their last status" in warned[0].getMessage()
        token_file.write_text(slurm_cluster.token_file.read_text())  # renewed
        done = await updates.wait("task_tok", TaskStatus.COMPLETED, TaskStatus.FAILED)
        assert done.status == TaskStatus.COMPLETED
        assert "Slurm answers polls again" in caplog.text
    finally:
        await provider.close()


@contextlib.asynccontextmanager
async def _restarted(
    slurm_cluster: SlurmCluster, tmp_path: Path, task: LaunchSpec, job_id: str | None
) -> AsyncIterator[tuple[SlurmProvider, Updates]]:
    """A new provider on the cluster, as a restarted server's, that recovered ``task`` as
    running job ``job_id``, and its updates; closed on exit."""
    later = Updates(within=8)
    again = SlurmProvider(settings_for(slurm_cluster, tmp_path))
    await again.start(later)
    try:
        await again.recover([RunningTask(task, TaskStatus.RUNNING, job_id)])
        yield again, later
    finally:
        await again.close()


async def test_recover_watches_a_running_job(
    provider: SlurmProvider, updates: Updates, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    spec = await launch(provider, "task_recover", "sleep 60")
    running = await updates.wait("task_recover", TaskStatus.RUNNING)
    provider._tracked.clear()  # as if the server had stopped
    async with _restarted(slurm_cluster, tmp_path, spec, running.provider_id) as (again, later):
        await again.cancel("task_recover", 1.0)
        done = await later.wait("task_recover", TaskStatus.CANCELLED)
        assert done.reason == "Cancelled"


async def test_a_recovered_job_id_that_is_another_job_now_is_lost_and_left_alone(
    provider: SlurmProvider, updates: Updates, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    # QA: after a cluster reset job ids start again; the server then reported another
    # user's job of the task's old id as the task, and a cancel scancelled that job
    mine = await launch(provider, "task_mine", "true")
    await updates.wait("task_mine", TaskStatus.COMPLETED)
    await launch(provider, "task_theirs", "sleep 60")  # the job that took the id
    theirs = await updates.wait("task_theirs", TaskStatus.RUNNING)
    async with _restarted(slurm_cluster, tmp_path, mine, theirs.provider_id) as (again, later):
        await again.cancel("task_mine", 1.0)
        lost = await later.wait("task_mine", TaskStatus.FAILED)
        assert lost.reason == "JobLost" and "another job" in (lost.message or "")
    state = slurm_cluster.run("squeue", "-h", "-j", str(theirs.provider_id), "-o", "%T")
    assert state.strip() == "RUNNING"  # not cancelled by the server that lost it
    await provider.cancel("task_theirs", 1.0)


async def test_a_requeued_job_is_ended_not_run_twice_and_a_job_has_a_home(
    provider: SlurmProvider, updates: Updates, slurm_cluster: SlurmCluster
) -> None:
    # QA: Slurm requeues a batch job by default (node failure, preemption): it ran
    # again without its secrets (the first start deleted them), its first log
    # overwritten, and ended "completed". And a batch job had no HOME (caches fell to
    # the read-only /root).
    spec = await launch(provider, "task_home", 'echo "home=$HOME" >> starts; sleep 60')
    running = await updates.wait("task_home", TaskStatus.RUNNING)
    starts = spec.paths.workdir / "starts"
    for _ in range(50):
        if starts.exists() and starts.read_text():
            break
        await asyncio.sleep(0.1)
    assert starts.read_text() == f"home={spec.paths.workdir}\n"
    slurm_cluster.run("scontrol", "requeue", str(running.provider_id))
    ended = await updates.wait("task_home", TaskStatus.FAILED, TaskStatus.COMPLETED)
    assert (ended.status, ended.reason) == (TaskStatus.FAILED, "Requeued"), ended
    await asyncio.sleep(2)
    assert starts.read_text() == f"home={spec.paths.workdir}\n"  # it never ran again


def _spec(provider: SlurmProvider, task_id: str) -> LaunchSpec:
    from vi_flow.server.providers.base import Placement

    return LaunchSpec(
        task_id=task_id,
        organization_id="org_default",
        config=TaskConfig(command="true"),
        placement=Placement("cpu"),
        argv=["true"],
        env={},
        paths=provider.task_paths(task_id),
    )


async def test_many_tasks_at_once_all_complete(provider: SlurmProvider, updates: Updates) -> None:
    specs = await asyncio.gather(
        *(launch(provider, f"task_many{i}", f"echo {i}", cpus=1) for i in range(8))
    )
    for i, spec in enumerate(specs):
        done = await updates.wait(spec.task_id, TaskStatus.COMPLETED, TaskStatus.FAILED)
        assert (done.status, done.exit_code) == (TaskStatus.COMPLETED, 0)
        assert spec.paths.stdout.read_text() == f"{i}\n"


async def test_max_run_time_stops_the_job(provider: SlurmProvider, updates: Updates) -> None:
    await launch(provider, "task_slow", "sleep 30", max_run_time=1.0)
    done = await updates.wait(
        "task_slow", TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED
    )
    assert (done.status, done.reason) == (TaskStatus.FAILED, "TimeLimit")
    assert done.message and "max_run_time of 1 s" in done.message
