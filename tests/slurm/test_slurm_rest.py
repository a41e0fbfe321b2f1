"""The slurmrestd client against the real one-host cluster: jobs, nodes, errors, secrets."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vi_flow.server.providers.slurm.rest import (
    JobSubmission,
    SlurmAuthError,
    SlurmConnectionError,
    SlurmInvalidRequestError,
    SlurmJob,
    SlurmJobNotFoundError,
    SlurmRestClient,
    decode_wait_status,
    job_status,
    parse_gpu_indices,
    parse_gres,
)

from .conftest import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.anyio]

TERMINAL = ("completed", "failed", "cancelled")


class Sleeps:
    """Records the backoff the client asks for instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
async def rest(slurm_cluster: SlurmCluster) -> AsyncIterator[SlurmRestClient]:
    client = SlurmRestClient(
        slurm_cluster.url, user=slurm_cluster.user, token_file=slurm_cluster.token_file
    )
    async with client:
        yield client


def job(cluster: SlurmCluster, tmp_path: Path, command: str, **kwargs: object) -> JobSubmission:
    tmp_path.chmod(0o755)
    return JobSubmission(
        name="vi-flow-test",
        command=command,
        working_dir=str(tmp_path),
        stdout_path=str(tmp_path / "out.log"),
        stderr_path=str(tmp_path / "err.log"),
        memory_mb=64,
        **kwargs,  # type: ignore[arg-type]
    )


async def until(rest: SlurmRestClient, job_id: int, statuses: tuple[str, ...]) -> SlurmJob:
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        found = await rest.get_job(job_id)
        if found.status in statuses:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}: {found}")


def fake_token(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


# -- pure decoding -------------------------------------------------------------------------


def test_wait_status_is_decoded() -> None:
    assert decode_wait_status(768) == (3, None)
    assert decode_wait_status(0) == (0, None)
    assert decode_wait_status(15) == (None, 15)
    assert decode_wait_status(9) == (None, 9)
    assert decode_wait_status(None) == (None, None)


def test_states_and_gres_are_mapped() -> None:
    assert [job_status(s) for s in ("PENDING", "RUNNING", "COMPLETED", "CANCELLED")] == [
        "pending",
        "running",
        "completed",
        "cancelled",
    ]
    assert {job_status(s) for s in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")} == {
        "failed"
    }
    assert parse_gres("gpu:h100:2(IDX:0-1),gpu:a100:1(S:0)") == {"h100": 2, "a100": 1}
    assert parse_gres("gpu:4") == {"gpu": 4}
    assert parse_gres("(null)") == {}
    assert parse_gpu_indices(["gpu:h100:3(IDX:0,2-3)"]) == (0, 2, 3)
    assert parse_gpu_indices(["gpu:h100:0(IDX:N/A)"]) == ()


# -- against the cluster -----------------------------------------------------------------


async def test_version_is_discovered_and_nodes_have_four_h100(rest: SlurmRestClient) -> None:
    assert rest.token_file.stat().st_mode & 0o777 == 0o600
    assert await rest.version() == "v0.0.38"
    nodes = await rest.list_nodes()
    assert len(nodes) == 1
    assert nodes[0].gpus == {"h100": 4}
    assert nodes[0].cpus >= 1 and nodes[0].memory_mb > 0
    assert nodes[0].available
    assert await rest.list_reservations() == []


async def test_exit_3_is_failed_with_code_3(
    rest: SlurmRestClient, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    job_id = await rest.submit_job(job(slurm_cluster, tmp_path, "echo boom >&2; exit 3"))
    done = await until(rest, job_id, TERMINAL)
    assert (done.status, done.exit_code, done.signal) == ("failed", 3, None)
    assert done.stderr_path == str(tmp_path / "err.log")
    assert (tmp_path / "err.log").read_text() == "boom\n"


async def test_gres_sets_cuda_visible_devices(
    rest: SlurmRestClient, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    submission = job(
        slurm_cluster, tmp_path, "echo $CUDA_VISIBLE_DEVICES", gpu_type="h100", gpu_count=2
    )
    done = await until(rest, await rest.submit_job(submission), TERMINAL)
    assert done.status == "completed" and done.exit_code == 0
    assert len((tmp_path / "out.log").read_text().strip().split(",")) == 2


async def test_cancel_running_job_reads_signal(
    rest: SlurmRestClient, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    job_id = await rest.submit_job(job(slurm_cluster, tmp_path, "echo up; sleep 60"))
    running = await until(rest, job_id, ("running",))
    assert running.node
    await rest.cancel_job(job_id)
    done = await until(rest, job_id, TERMINAL)
    assert done.status == "cancelled"
    assert done.exit_code is None
    await rest.cancel_job(job_id)  # cancelling a finished job is a no-op


async def test_unknown_job_is_typed_and_not_retried(rest: SlurmRestClient) -> None:
    sleeps = Sleeps()
    rest._sleep = sleeps
    with pytest.raises(SlurmJobNotFoundError) as caught:
        await rest.get_job(987654)
    assert caught.value.errno == 2017 and not caught.value.transient
    with pytest.raises(SlurmJobNotFoundError):
        await rest.cancel_job(987654)
    assert sleeps.calls == []


async def test_impossible_request_is_typed_and_not_retried(
    rest: SlurmRestClient, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    sleeps = Sleeps()
    rest._sleep = sleeps
    with pytest.raises(SlurmInvalidRequestError) as caught:
        await rest.submit_job(job(slurm_cluster, tmp_path, "true", gpu_type="h100", gpu_count=8))
    assert caught.value.errno == 2014 and not caught.value.transient
    assert sleeps.calls == []


async def test_rest_down_names_the_url(slurm_cluster: SlurmCluster) -> None:
    sleeps = Sleeps()
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    client = SlurmRestClient(url, user="root", token_file=slurm_cluster.token_file, sleep=sleeps)
    async with client:
        with pytest.raises(SlurmConnectionError) as caught:
            await client.list_nodes()
    assert url in str(caught.value) and caught.value.transient
    assert len(sleeps.calls) == client.max_retries


async def test_bad_token_names_the_token_file(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    token = fake_token({"exp": int(time.time()) + 3600, "iat": 0, "sun": "root"})
    token_file = tmp_path / "token"
    token_file.write_text(token)
    client = SlurmRestClient(slurm_cluster.url, user="root", token_file=token_file)
    async with client:
        with pytest.raises(SlurmAuthError) as caught:
            await client.list_nodes()
    assert str(token_file) in str(caught.value)
    assert token not in str(caught.value) and token not in repr(client)


async def test_expired_token_names_the_token_file(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(fake_token({"exp": int(time.time()) - 60, "sun": "root"}))
    client = SlurmRestClient(slurm_cluster.url, user="root", token_file=token_file)
    async with client:
        with pytest.raises(SlurmAuthError, match="expired") as caught:
            await client.list_nodes()
        assert str(token_file) in str(caught.value)
        token_file.unlink()
        with pytest.raises(SlurmAuthError, match="cannot read"):
            await client._headers(reload=True)


async def test_secrets_stay_out_of_slurm_state(
    rest: SlurmRestClient, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    from vi_flow.server.providers._job_files import write_secret_file

    secret = "s3cr3t-value-" + str(time.time_ns())
    secret_file = tmp_path / "env"
    write_secret_file(secret_file, {"API_KEY": secret})
    assert secret_file.stat().st_mode & 0o777 == 0o600
    submission = job(slurm_cluster, tmp_path, 'echo "key=$API_KEY"', secret_file=str(secret_file))
    job_id = await rest.submit_job(submission)
    done = await until(rest, job_id, TERMINAL)
    assert done.status == "completed"
    assert (tmp_path / "out.log").read_text() == f"key={secret}\n"
    assert not secret_file.exists()
    state = slurm_cluster.work / "slurm" / "state"
    found = subprocess.run(["grep", "-rl", secret, str(state)], capture_output=True, text=True)
    assert found.stdout == ""
    assert secret not in slurm_cluster.run("scontrol", "show", "job", "-d", str(job_id))


@pytest.mark.parametrize("version", ["v0.0.37", "v0.0.38"])
async def test_each_known_version_submits_and_reads(
    rest: SlurmRestClient, slurm_cluster: SlurmCluster, tmp_path: Path, version: str
) -> None:
    rest._version = version  # this daemon serves both; discovery picks v0.0.38
    job_id = await rest.submit_job(
        job(slurm_cluster, tmp_path, "exit 3", gpu_type="h100", gpu_count=1)
    )
    done = await until(rest, job_id, TERMINAL)
    assert (done.status, done.exit_code) == ("failed", 3)
    assert (await rest.list_nodes())[0].gpus == {"h100": 4}
    assert job_id in {j.job_id for j in await rest.list_jobs()}
