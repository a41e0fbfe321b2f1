"""The Ray provider's pieces that need no cluster: settings, catalog, and the entry point
(run here with ``/bin/sh``, as Ray's job supervisor runs it)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from vi_flow.models.tasks import TaskConfig
from vi_flow.server.providers import PROVIDERS, CapacityError
from vi_flow.server.providers.base import LaunchSpec, Placement, TaskPaths
from vi_flow.server.providers.ray import RaySettings
from vi_flow.server.providers.ray.api import RayJob, RayNode
from vi_flow.server.providers.ray.catalog import catalog, placement
from vi_flow.server.providers.ray.entrypoint import (
    ENV_FILE,
    entrypoint,
    prepare,
    read_exit_code,
    read_started,
    revoke,
)
from vi_flow.server.state import ServerSettings

NODE = {
    "node_id": "n1",
    "state": "ALIVE",
    "resources_total": {"CPU": 2.0, "GPU": 4.0, "memory": 8 * 1024**3, "accelerator_type:H100": 1},
}


def test_settings_come_from_extra_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VI_FLOW_RAY_URL", raising=False)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:7000")
    settings = RaySettings.from_server_settings(ServerSettings(home=tmp_path))
    assert settings.url == "http://127.0.0.1:7000"
    assert settings.tasks_dir == tmp_path / "ray" / "tasks"
    monkeypatch.setenv("VI_FLOW_RAY_URL", "http://127.0.0.1:7001/")
    assert RaySettings.from_server_settings(ServerSettings(home=tmp_path)).url.endswith(":7001")
    given = ServerSettings(home=tmp_path, extra={"ray": {"url": "http://h:1", "poll_interval": 1}})
    assert RaySettings.from_server_settings(given).url == "http://h:1"
    assert PROVIDERS["ray"] == "vi_flow.server.providers.ray"


def test_catalog_and_placement_from_the_node_list() -> None:
    busy = RayNode.from_api(NODE, {"GPU": [3.0, 4.0], "CPU": [1.0, 2.0]})
    assert (busy.gpu_type, busy.accelerator, busy.free_gpus, busy.memory_gb) == (
        "h100",
        "H100",
        1,
        8,
    )
    found = {i.instance_type: i.available for i in catalog([busy])}
    assert found == {"cpu": True, "h100": True, "2xh100": False, "4xh100": False}
    assert placement(TaskConfig(command="x", gpu="h100:2"), [busy]).instance_type == "2xh100"
    with pytest.raises(CapacityError, match=r"'a100'.*h100 \(up to 4 per node\)"):
        placement(TaskConfig(command="x", gpu="a100"), [busy])
    with pytest.raises(CapacityError, match="at most 2"):
        placement(TaskConfig(command="x", cpus=3), [busy])
    dead = RayNode.from_api({**NODE, "state": "DEAD"}, {})
    with pytest.raises(CapacityError, match="no GPUs"):
        placement(TaskConfig(command="x", gpu="h100"), [dead])


def test_job_record_keeps_only_the_first_line_of_rays_message() -> None:
    job = RayJob.from_api(
        {
            "submission_id": "t",
            "status": "FAILED",
            "message": "failed\nlog tail",
            "start_time": 5000,
        }
    )
    assert (job.state, job.message, job.start_time, job.terminal) == ("FAILED", "failed", 5.0, True)


def _spec(root: Path, argv: list[str], env: dict[str, str]) -> LaunchSpec:
    paths = TaskPaths(
        root, root / "work space", root / "logs" / "o.log", root / "logs" / "e.log", root / "out"
    )
    config = TaskConfig(command=argv)
    return LaunchSpec("task_1", "org", config, Placement("cpu"), argv, env, paths)


def _run(spec: LaunchSpec, gpus: str = "") -> int:
    env = {"PATH": os.environ["PATH"], "CUDA_VISIBLE_DEVICES": gpus}
    return subprocess.run(["/bin/sh", "-c", entrypoint(spec)], env=env, timeout=10).returncode


def test_entry_point_runs_the_command_with_its_secret_env(tmp_path: Path) -> None:
    root = tmp_path / "it's here"
    spec = _spec(
        root, ["/bin/sh", "-c", 'echo "$TOKEN" "$(pwd)"; echo err >&2; exit 7'], {"TOKEN": "a b'c"}
    )
    prepare(spec)
    assert stat.S_IMODE((root / ENV_FILE).stat().st_mode) == 0o600
    assert _run(spec, "2,3") == 7
    assert spec.paths.stdout.read_text() == f"a b'c {spec.paths.workdir}\n"
    assert spec.paths.stderr.read_text() == "err\n"
    assert read_exit_code(spec.paths) == 7
    started = read_started(spec.paths)
    assert started is not None and started.gpu_ids == (2, 3)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".vi-flow-env")) == []


def test_a_revoked_token_means_the_command_never_runs(tmp_path: Path) -> None:
    spec = _spec(tmp_path, ["touch", str(tmp_path / "ran")], {})
    prepare(spec)
    assert revoke(spec.paths) is True
    assert _run(spec) == 0
    assert not (tmp_path / "ran").exists() and read_started(spec.paths) is None
    assert revoke(spec.paths) is False  # nothing left to take


def test_the_env_is_loaded_behind_the_sandbox_and_keeps_rays_gpus(tmp_path: Path) -> None:
    # Found by QA on Slurm (the Ray entry point did the same): the env was sourced before
    # bubblewrap ran, so the task's PATH chose the `bwrap` that ran, outside the sandbox.
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "bwrap").write_text("#!/bin/sh\necho ESCAPED\n")
    (tools / "bwrap").chmod(0o755)
    sandbox = ["env", "IN_SANDBOX=1"]  # stands for bwrap's argv: it runs what follows
    code = 'echo "$IN_SANDBOX $MINE ${CUDA_VISIBLE_DEVICES-none}"; command -v bwrap'
    env = {"PATH": f"{tools}:/usr/bin:/bin", "MINE": "x", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    spec = _spec(tmp_path / "t", ["/bin/sh", "-c", code], env)
    prepare(spec)
    run = ["/bin/sh", "-c", entrypoint(spec, sandbox)]
    for given, seen in (("2", "2"), (None, "none")):  # what Ray gave the job, or nothing
        outer = {"PATH": "/usr/bin:/bin", **({"CUDA_VISIBLE_DEVICES": given} if given else {})}
        (spec.paths.root / ENV_FILE).unlink(missing_ok=True)
        prepare(spec)
        spec.paths.stdout.unlink(missing_ok=True)
        assert subprocess.run(run, env=outer, timeout=10).returncode == 0
        assert spec.paths.stdout.read_text() == f"1 x {seen}\n{tools}/bwrap\n"


def test_links_the_task_leaves_never_carry_a_marker_out_of_its_directory(tmp_path: Path) -> None:
    # Found by QA on Ray: the entry point's shell (outside the sandbox) wrote the exit
    # status through a `.vi-flow-exit` link the task left in its directory (one pointed at
    # the server's state.db, and every organization lost the server), and the server read
    # the markers through links (one to /dev/zero grew the server by gigabytes a poll).
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    root = tmp_path / "t"
    code = (
        f'ln -s {victim} "$VI_FLOW_ROOT/.vi-flow-exit"; '
        'ln -sf /dev/zero "$VI_FLOW_ROOT/.vi-flow-started"; exit 7'
    )
    spec = _spec(root, ["/bin/sh", "-c", code], {"VI_FLOW_ROOT": str(root)})
    prepare(spec)
    assert _run(spec) == 7
    assert victim.read_text() == "keep\n"
    assert read_exit_code(spec.paths) == 7  # written anew, in place of the link
    assert (root / ".vi-flow-started").is_symlink()
    assert read_started(spec.paths) is None  # not read through the link
    (root / ".vi-flow-exit").unlink()
    (root / ".vi-flow-exit").symlink_to("/dev/zero")
    assert read_exit_code(spec.paths) is None
    (root / ".vi-flow-exit").unlink()
    os.mkfifo(root / ".vi-flow-exit")  # a FIFO with no writer would block an open
    assert read_exit_code(spec.paths) is None


def test_the_task_starts_from_an_allow_list_not_the_jobs_environment(tmp_path: Path) -> None:
    # Found by QA on Ray: tasks saw the whole environment of whoever started Ray
    # (RAY_ADDRESS, their HOME, anything else they had exported).
    spec = _spec(tmp_path / "t", ["/bin/sh", "-c", "env"], {"MINE": "x"})
    prepare(spec)
    outer = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
        "RAY_ADDRESS": "127.0.0.1:6379",
        "CLOUD_KEY": "secret",
        "CUDA_VISIBLE_DEVICES": "1",
    }
    run = ["/bin/sh", "-c", entrypoint(spec, ["env", "IN_SANDBOX=1"])]
    assert subprocess.run(run, env=outer, timeout=10).returncode == 0
    seen = dict(line.split("=", 1) for line in spec.paths.stdout.read_text().splitlines())
    assert "RAY_ADDRESS" not in seen and "CLOUD_KEY" not in seen
    assert seen["HOME"] == str(spec.paths.workdir)
    assert (seen["PATH"], seen["LANG"], seen["MINE"]) == ("/usr/bin:/bin", "C.UTF-8", "x")
    assert (seen["CUDA_VISIBLE_DEVICES"], seen["IN_SANDBOX"]) == ("1", "1")
