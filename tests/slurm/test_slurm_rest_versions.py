"""The REST versions of current Slurm (v0.0.40 onward), against a stand-in slurmrestd.

The real daemon of the test cluster (Debian's Slurm 22.05) speaks only v0.0.37/38, which
tests/slurm/test_slurm_rest.py covers. Newer versions changed the shapes: numbers became
``{"set", "number"}`` objects, job states and node flags lists, exit codes an object that
names the signal, and a submission takes ``K=V`` strings and its script inside ``job``.
This file serves those shapes (tests/slurm/shapes/, written from the published OpenAPI
schemas, not recorded from a live daemon) over real HTTP on loopback, checks what the
client sends as the schema requires, and runs the provider against it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.providers_kit import Updates
from vi_flow.models.tasks import TaskConfig, TaskStatus
from vi_flow.server.providers._exits import PENDING_REASONS, slurm_pending_reason
from vi_flow.server.providers.base import LaunchSpec
from vi_flow.server.providers.slurm import SlurmProvider, SlurmSettings
from vi_flow.server.providers.slurm.provider import _Tracked
from vi_flow.server.providers.slurm.rest import (
    JobSubmission,
    SlurmJob,
    SlurmNode,
    SlurmRestClient,
    SlurmVersionError,
)

pytestmark = pytest.mark.anyio

SHAPES = Path(__file__).parent / "shapes"
JOBS = json.loads((SHAPES / "v0.0.41_jobs.json").read_text())
NODES = json.loads((SHAPES / "v0.0.41_nodes.json").read_text())["nodes"]
TOKEN = "header.e30.signature"  # no exp claim


class FakeSlurmrestd:
    """Serves ``versions`` the way slurmrestd does; jobs come from the shapes by name."""

    def __init__(self, versions: list[str], *, openapi: bool = True) -> None:
        self.versions = versions
        self.openapi = openapi
        self.submitted: list[dict[str, Any]] = []
        self.by_id: dict[int, dict[str, Any]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/openapi/v3", self.document)
        app.router.add_get("/slurm/{version}/ping", self.ping)
        app.router.add_post("/slurm/{version}/job/submit", self.submit)
        app.router.add_get("/slurm/{version}/job/{job_id}", self.job)
        app.router.add_get("/slurm/{version}/nodes", self.nodes)
        return app

    def _check(self, request: web.Request) -> None:
        if request.headers.get("X-SLURM-USER-TOKEN") != TOKEN:
            raise web.HTTPUnauthorized()
        if request.match_info.get("version", self.versions[0]) not in self.versions:
            raise web.HTTPNotFound()

    async def document(self, request: web.Request) -> web.Response:
        if not self.openapi:
            raise web.HTTPNotFound()
        paths = {f"/slurm/{v}/{p}": {} for v in self.versions for p in ("ping", "jobs")}
        return web.json_response({"openapi": "3.0.2", "paths": paths})

    async def ping(self, request: web.Request) -> web.Response:
        self._check(request)
        return web.json_response({"pings": [{"hostname": "ctl", "pinged": "UP"}], "errors": []})

    async def submit(self, request: web.Request) -> web.Response:
        self._check(request)
        body = await request.json()
        self.submitted.append(body)
        job = body["job"]
        problems = [
            "script must be inside job" for _ in [0] if not isinstance(job.get("script"), str)
        ]
        if not all(isinstance(e, str) and "=" in e for e in job.get("environment", [])):
            problems.append("environment must be a list of K=V strings")
        if not isinstance(job.get("memory_per_node"), dict):
            problems.append("memory_per_node must be a uint64_no_val object")
        if problems:
            errors = [{"error_number": 9001, "description": "; ".join(problems)}]
            return web.json_response({"errors": errors}, status=400)
        record = dict(JOBS[job["name"].removeprefix("task_")])
        self.by_id[record["job_id"]] = record
        return web.json_response({"job_id": record["job_id"], "step_id": "batch", "errors": []})

    async def job(self, request: web.Request) -> web.Response:
        self._check(request)
        record = self.by_id.get(int(request.match_info["job_id"]))
        if record is None:
            errors = [{"error_number": 2017, "description": "Invalid job id specified"}]
            return web.json_response({"jobs": [], "errors": errors}, status=500)
        return web.json_response({"jobs": [record], "errors": []})

    async def nodes(self, request: web.Request) -> web.Response:
        self._check(request)
        return web.json_response({"nodes": NODES, "errors": []})


Serve = Callable[[FakeSlurmrestd], Any]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)

    async def start(fake: FakeSlurmrestd) -> str:
        runner = web.AppRunner(fake.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def client(url: str, tmp_path: Path) -> SlurmRestClient:
    return SlurmRestClient(url, user="vi", token_file=tmp_path / "token")


async def test_the_newest_version_both_sides_speak_is_chosen(
    serve: Callable[..., Any], tmp_path: Path
) -> None:
    url = await serve(FakeSlurmrestd(["v0.0.39", "v0.0.40", "v0.0.41", "v0.0.44"]))
    async with client(url, tmp_path) as rest:
        assert await rest.version() == "v0.0.41"
    url = await serve(FakeSlurmrestd(["v0.0.40"], openapi=False))  # no document: probed
    async with client(url, tmp_path) as rest:
        assert await rest.version() == "v0.0.40"
    url = await serve(FakeSlurmrestd(["v0.0.44"]))
    async with client(url, tmp_path) as rest:
        with pytest.raises(SlurmVersionError, match=r"offers REST versions \['v0.0.44'\]"):
            await rest.version()


def test_a_submission_takes_the_shape_of_its_version() -> None:
    job = JobSubmission(
        name="t",
        command="echo hi",
        working_dir="/w",
        stdout_path="/o",
        stderr_path="/e",
        memory_mb=512,
        gpu_type="h100",
        gpu_count=2,
        env={"A": "1"},
        time_limit_s=61,
    )
    old = job.body("v0.0.38")
    assert old["job"]["environment"]["A"] == "1" and old["job"]["gres"] == "gpu:h100:2"
    assert (old["job"]["memory_per_node"], old["job"]["time_limit"]) == (512, 2)
    new = job.body("v0.0.41")
    assert "script" not in new and new["job"]["script"] == job.script()
    assert "A=1" in new["job"]["environment"] and new["job"]["tres_per_node"] == "gres/gpu:h100:2"
    assert new["job"]["memory_per_node"] == {"set": True, "infinite": False, "number": 512}
    assert new["job"]["time_limit"]["number"] == 2
    assert job.body("v0.0.40")["script"] == job.script()  # v0.0.40 still reads it on top


@pytest.mark.parametrize(
    ("command", "returncode"),
    [("exit 3", 3), ("exit 147", 147), ("exit 150", 150), ("kill -9 $$", -9), ("exit 143", -15),
     ("kill -USR1 $$", -10), ("kill -INT $$", -2), ("exit 131", -3)],
)  # fmt: skip
def test_the_batch_script_ends_as_its_sandboxed_command_did(
    tmp_path: Path, command: str, returncode: int
) -> None:
    # bwrap says 128 + N for a command killed by signal N; the script dies of N so that
    # Slurm records the signal, but only of one that ends a process (QA AA: after `exit
    # 147`, 128 + SIGSTOP, the shell stopped itself and the job never ended). `env --`
    # stands in for the bwrap prefix (the script still checks that bwrap is installed).
    job = JobSubmission(
        name="t", command=command, working_dir=str(tmp_path), stdout_path="/o",
        stderr_path="/e", sandbox=("env", "--"),
    )  # fmt: skip
    script = tmp_path / "job.sh"
    script.write_text(job.script())
    done = subprocess.run(["/bin/bash", str(script)], timeout=20, capture_output=True)
    assert done.returncode == returncode, done.stderr


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")
@pytest.mark.parametrize(
    ("sent", "command", "said", "returncode"),
    [
        ("TERM", "trap 'echo got-term; sleep 0.5; echo saved; exit 0' TERM; echo up; sleep 30 & wait",
         ["up", "got-term", "saved"], 0),
        ("TERM", "trap '' TERM; echo up; sleep 30", ["up"], -9),  # killed at KillWait
        # `scancel --signal=USR1` to save a checkpoint: it killed the shell, and the task
        ("USR1", "trap 'echo got-usr1; sleep 0.5; echo saved; exit 0' USR1; echo up; sleep 30 & wait",
         ["up", "got-usr1", "saved"], 0),
        ("INT", "trap 'echo got-int; exit 4' INT; echo up; sleep 30 & wait", ["up", "got-int"], 4),
        ("USR2", "echo up; sleep 30", ["up"], -12),  # the command dies of it, as the job
    ],
)  # fmt: skip
def test_the_batch_script_gives_its_task_the_signals_slurm_sends_a_job(
    tmp_path: Path, sent: str, command: str, said: list[str], returncode: int
) -> None:
    # QA AU: Slurm ends a job with SIGTERM to every process of it, then SIGKILL after
    # KillWait; the batch shell died of the TERM at once, bwrap with it, and the sandbox
    # before the task's own handler could save. `scancel --signal` sends any signal the
    # same way. Here the script runs in a session of its own, which gets what slurmstepd
    # sends a job's processes.
    sandbox = ("bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--unshare-pid", "--die-with-parent", "--")  # fmt: skip
    job = JobSubmission(
        name="t", command=command, working_dir=str(tmp_path), stdout_path="/o",
        stderr_path="/e", sandbox=sandbox,
    )  # fmt: skip
    script = tmp_path / "job.sh"
    script.write_text(job.script())
    out = tmp_path / "out"
    with out.open("wb") as sink:
        shell = subprocess.Popen(["/bin/bash", str(script)], stdout=sink, start_new_session=True)
    try:
        for _ in range(500):
            if out.read_bytes():
                break
            time.sleep(0.01)
        for pid in _session(shell.pid):  # the signal to each, the sandbox's too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.Signals[f"SIG{sent}"])
        with contextlib.suppress(subprocess.TimeoutExpired):
            shell.wait(timeout=3)  # KillWait
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)  # Slurm's SIGKILL
        shell.wait(timeout=10)
    assert out.read_text().split() == said
    assert shell.returncode == returncode  # how Slurm reports the job's end
    for _ in range(100):
        if not _session(shell.pid):
            break
        time.sleep(0.05)
    assert _session(shell.pid) == []  # nothing of it outlives its job


def _session(sid: int) -> list[int]:
    """The processes of the session ``sid`` (a new PID namespace keeps the session)."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if entry.isdigit() and int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry))
    return found


def test_new_shapes_decode_to_the_same_figures() -> None:
    exit3 = SlurmJob.from_rest(JOBS["exit3"])
    assert (exit3.status, exit3.exit_code, exit3.signal, exit3.end_time) == (
        "failed",
        3,
        None,
        1796190002.0,
    )
    kill9 = SlurmJob.from_rest(JOBS["kill9"])
    assert (kill9.exit_code, kill9.signal, kill9.launch_failed) == (None, 9, False)
    pending = SlurmJob.from_rest(JOBS["pending"])
    assert (pending.status, pending.exit_code, pending.start_time) == ("pending", None, None)
    drained, mixed = (SlurmNode.from_rest(n) for n in NODES)
    assert (drained.state, drained.flags, drained.available) == ("idle", ("DRAIN",), False)
    assert (mixed.available, mixed.gpus, mixed.gpus_used) == (True, {"h100": 4}, {"h100": 1})


async def run_on(provider: SlurmProvider, task_id: str) -> None:
    config = TaskConfig(name=task_id, command="true")
    await provider.submit(
        LaunchSpec(
            task_id=task_id,
            organization_id="org_default",
            config=config,
            placement=await provider.place(config),
            argv=["/bin/sh", "-c", "true"],
            env={"VI_FLOW_TASK_ID": task_id, "SECRET": "s3"},
            paths=provider.task_paths(task_id),
        )
    )


async def test_the_provider_reports_the_same_figures_on_v0_0_41(
    serve: Callable[..., Any], tmp_path: Path
) -> None:
    fake = FakeSlurmrestd(["v0.0.38", "v0.0.41"])
    settings = SlurmSettings(
        url=await serve(fake),
        user="vi",
        token_file=tmp_path / "token",
        tasks_dir=tmp_path / "tasks",
        volumes_dir=tmp_path / "volumes",
        poll_interval=0.05,
        idle_poll_interval=0.2,
    )
    provider, updates = SlurmProvider(settings), Updates(within=5)
    await provider.start(updates)
    try:
        for task_id in ("task_exit3", "task_kill9", "task_pending"):
            await run_on(provider, task_id)
        done = await updates.wait("task_exit3", TaskStatus.FAILED)
        assert (done.exit_code, done.signal, done.reason) == (3, None, "NonZeroExit")
        done = await updates.wait("task_kill9", TaskStatus.FAILED)
        assert (done.exit_code, done.signal, done.reason) == (None, 9, "Killed")
        waiting = await updates.latest("task_pending", lambda u: u.reason != "Queued")
        assert (waiting.status, waiting.reason) == (TaskStatus.PENDING, "ReqNodeNotAvail")
        assert waiting.raw_reason == "ReqNodeNotAvail, UnavailableNodes:n1"
    finally:
        await provider.close()
    assert all("SECRET=s3" not in json.dumps(body) for body in fake.submitted)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("None", "Queued"),
        ("Resources", "Resources"),
        ("Priority", "Priority"),
        ("PartitionDown", "PartitionDown"),
        ("PartitionInactive", "PartitionDown"),
        ("ReqNodeNotAvail, UnavailableNodes:n[1-3]", "ReqNodeNotAvail"),
        ("JobHeldAdmin", "Held"),
        ("launch_failed_requeued_held", "Held"),
        ("QOSMaxCpuPerUserLimit", "Limit"),
        ("AssocGrpGRES", "Limit"),
        ("SomethingNew", "Other"),
    ],
)
def test_pending_reasons_map_slurms_words(raw: str, reason: str) -> None:
    assert slurm_pending_reason(raw) == reason
    assert reason in PENDING_REASONS


def test_slurms_bare_error_leads_with_the_controller_not_the_token(tmp_path: Path) -> None:
    # QA AA: with slurmctld stopped, 22.05 answers -1 "Unspecified error", and the message
    # began "Slurm refused the token" for a token that was fine
    rest = client("http://127.0.0.1:9", tmp_path)
    bare = rest._error([{"error_number": -1, "description": "Unspecified error"}], 500, "POST")
    assert bare.message.startswith(
        "POST: Slurm answered 'Unspecified error', which it gives both when slurmctld does not"
    )
    assert "check that slurmctld is running; if it is, the token in" in bare.message
    refused = rest._error([{"error_number": 6000, "description": "Invalid token"}], 401, "POST")
    assert refused.message.startswith("POST: Slurm refused the token in")


def test_a_launch_failure_of_another_users_job_names_the_user(tmp_path: Path) -> None:
    # QA AU: with --slurm-user nobody every job failed "the task directory ... is not
    # shared with node vm", though it was: the job's user could not write in the
    # directories the (root) server made
    settings = SlurmSettings(
        url="http://127.0.0.1:9", user="nobody", token_file=tmp_path / "token",
        tasks_dir=tmp_path / "tasks", volumes_dir=tmp_path / "volumes",
    )  # fmt: skip
    provider = SlurmProvider(settings)
    job = SlurmJob(
        job_id=58, name="task_a", state="FAILED", status="failed", reason="JobLaunchFailure",
        exit_code=None, signal=None, node="vm", gpu_ids=(), stdout_path="", stderr_path="",
        submit_time=None, start_time=None, end_time=None, raw_exit=4021, launch_failed=True,
    )  # fmt: skip
    tracked = _Tracked(task_id="task_a", job_id=58, status=TaskStatus.RUNNING)
    said = provider._launch_failure(tracked, job)
    assert f"the task directory {tmp_path / 'tasks' / 'task_a'} is not shared with node vm" in said
    mine = os.geteuid() == pwd.getpwnam("nobody").pw_uid
    assert mine or "or the job's user 'nobody' may not write in it" in said
